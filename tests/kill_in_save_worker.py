"""experiments/run.py as a user runs it, except that the process kills itself (SIGKILL) right
after starting the checkpoint save of epoch KILL_EPOCH, while orbax is still writing it:
tests/test_cli.py then resumes the run and checks it ends where a straight run does."""

from __future__ import annotations

import os
import pathlib
import runpy
import signal
import sys

import orbax.checkpoint as ocp

KILL_EPOCH = int(os.environ["KILL_EPOCH"])
save = ocp.CheckpointManager.save


def save_then_die(self, step, *args, **kwargs):
  result = save(self, step, *args, **kwargs)  # async: the write goes on in a thread
  if step == KILL_EPOCH:
    os.kill(os.getpid(), signal.SIGKILL)
  return result


ocp.CheckpointManager.save = save_then_die
root = pathlib.Path(__file__).resolve().parents[1]
sys.argv = [str(root / "experiments" / "run.py"), *sys.argv[1:]]
runpy.run_path(sys.argv[0], run_name="__main__")
