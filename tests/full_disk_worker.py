"""experiments/run.py as a user runs it, on a disk that fills while a checkpoint is written:
the room checked before each save is reported as plenty, so that orbax's writes hit the full
disk themselves (tests/test_cli.py checks the run still ends in one line)."""

from __future__ import annotations

import collections
import pathlib
import runpy
import sys

from mnistjax import checkpoint

Usage = collections.namedtuple("Usage", "total used free")
checkpoint.shutil.disk_usage = lambda path: Usage(1 << 40, 0, 1 << 40)
root = pathlib.Path(__file__).resolve().parents[1]
sys.argv = [str(root / "experiments" / "run.py"), *sys.argv[1:]]
runpy.run_path(sys.argv[0], run_name="__main__")
