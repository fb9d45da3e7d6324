"""Command-line plumbing shared by the scripts in experiments/: flags from Config, one-line errors.

Exit statuses: 0 done; 2 bad input (settings, data, workdir), one line on stderr; 3 a run
diverged; 128 + the signal's number where a signal stopped the run: 130 Ctrl-C (SIGINT), 143
SIGTERM (a scheduler taking the machine back), 129 SIGHUP (a closed terminal). A stopped or
diverged run keeps its last finished epoch's checkpoint: continue it with --resume.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import textwrap
import threading
from collections.abc import Iterator

from absl import flags
from absl import logging as absl_logging

from mnistjax import config as config_lib
from mnistjax import errors
from mnistjax.errors import Interrupted, MnistjaxError, NonFiniteLoss

EXIT_USAGE = 2
EXIT_DIVERGED = 3
EXIT_INTERRUPTED = 128 + signal.SIGINT  # 130; SIGTERM 143, SIGHUP 129

# JAX reports at INFO level that no TPU is present; absl would print it on every run.
logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)

def listing() -> str:
  """The models, optimisers and studies, for --list."""
  from mnistjax import models, step, studies  # pylint: disable=g-import-not-at-top
  lines = ["models:"] + [f"  {name:<16}{spec.description}" for name, spec in models.MODELS.items()]
  lines += ["optimizers:"] + [f"  {name:<16}{', '.join(opt.hparams)}"
                              for name, opt in step.OPTIMIZERS.items()]
  lines += ["studies:"] + [f"  {name:<16}{study.description} ({len(study.variants)} run(s))"
                           for name, study in studies.STUDIES.items()]
  return "\n".join(lines)


def fail(message: str, status: int = EXIT_USAGE) -> None:
  """Ends the program with one line on stderr and the exit status (2: bad input)."""
  print(f"{os.path.basename(sys.argv[0])}: error: {message}", file=sys.stderr)
  sys.exit(status)


def _raise_signal(signum, frame):
  raise errors.Signal(signum)


def exit_at_once_on_a_signal() -> None:
  """For a program's last moments, once its result or its one line is out and its files are
  written: a Ctrl-C, SIGTERM or SIGHUP then ends the process at once with the signal's status.
  Ctrl-C pressed twice landed its second press in jax's clean-up at exit: a traceback."""
  for signum in errors.SIGNALS:
    signal.signal(signum, _exit_now)


def _exit_now(signum, frame):
  exit_now(128 + signum)


def exit_now(status: int) -> None:
  """Ends the process as a killed one would, without the interpreter's clean-up: for a program
  stopped by a signal, whose files are written and whose line is out. Two Ctrl-C while a run
  started (the second raised inside jax's tracing or compiling) left jax's state such that its
  clean-up at exit crashed (docs/workdir.md, Signals)."""
  for stream in (sys.stdout, sys.stderr):
    try:
      stream.flush()
    except Exception:  # pylint: disable=broad-except  # cut in a write: what is out is out
      pass
  os._exit(status)  # pylint: disable=protected-access


def stopped_by_a_signal(status: object) -> bool:
  """Whether an exit status is one user_errors gives a run stopped by Ctrl-C, SIGTERM or
  SIGHUP."""
  return status in tuple(128 + signum for signum in errors.SIGNALS)


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
  """Turns errors a user can fix into one line: exit status 2 for bad settings, data or
  workdir, 3 for a diverged run, 128 + the signal's number for Ctrl-C, SIGTERM or SIGHUP
  (wherever it lands: SIGTERM and SIGHUP are raised as Ctrl-C is, errors.Signal)."""
  previous = {}
  if threading.current_thread() is threading.main_thread():
    for signum in errors.SIGNALS:
      if signum != signal.SIGINT:  # which raises KeyboardInterrupt already
        previous[signum] = signal.signal(signum, _raise_signal)
  try:
    yield
  except NonFiniteLoss as e:
    fail(str(e), EXIT_DIVERGED)
  except Interrupted as e:
    fail(str(e), 128 + e.signum)
  except MnistjaxError as e:
    fail(str(e))
  except KeyboardInterrupt as e:
    signum = getattr(e, "signum", signal.SIGINT)
    fail("interrupted" if signum == signal.SIGINT else
         f"stopped by {signal.Signals(signum).name}", 128 + signum)
  finally:
    for signum, handler in previous.items():
      signal.signal(signum, handler)


HELP_FLAGS = ("-h", "--help", "-help", "--helpshort", "-?")


def _flag_line(flag: flags.Flag) -> str:
  name = f"--[no]{flag.name}" if flag.boolean else f"--{flag.name}"
  if flag.default not in (None, "", []):
    name += f" (default {str(flag.default).lower() if flag.boolean else flag.default})"
  return f"  {name}\n" + textwrap.fill(" ".join(flag.help.split()), width=88,
                                       initial_indent=" " * 6, subsequent_indent=" " * 6)


def help_text(doc: str, main_flags: list[str],
              flag_values: flags.FlagValues = flags.FLAGS) -> str:
  """The program's docstring, then its own flags and the Config flags by section."""
  lines = [doc.strip(), "", "run:"] + [_flag_line(flag_values[n]) for n in main_flags]
  for section in config_lib.SECTIONS:
    fields = [f for f in config_lib.fields() if f.metadata["section"] == section
              and f.name in flag_values]  # a script without the Config flags lists its own
    if fields:
      lines += ["", f"{section}:"] + [_flag_line(flag_values[f.name]) for f in fields]
  lines += ["", "--helpfull lists every flag, JAX's and absl's included."]
  return "\n".join(lines)


def parse_flags(argv: list[str], doc: str = "", main_flags: tuple[str, ...] = ()) -> list[str]:
  """absl's parser, with a one-line error instead of its usage dump, and a --help (or -h) that
  lists the run's own settings and exits 0."""
  if any(arg in HELP_FLAGS for arg in argv[1:]):
    try:
      print(help_text(doc, list(main_flags)), flush=True)
    except BrokenPipeError:  # `run.py --help | head`: the reader left, nothing to report
      os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    sys.exit(0)
  try:
    rest = flags.FLAGS(argv)
  except flags.Error as e:
    fail(str(e).splitlines()[0])
    raise  # unreachable: fail exits
  for name, why in config_lib.RETIRED.items():
    if name in flags.FLAGS and flags.FLAGS[name].present:
      value = flags.FLAGS[name].value
      if value not in config_lib.RETIRED_STRINGS.get(name, (value,)):  # e.g. --data_source=tfds
        fail(f"--{name}={value} is gone: {why}; drop the flag")
      print(f"--{name} is gone: {why}; the flag is ignored", flush=True)
  if not flags.FLAGS["verbosity"].present:
    absl_logging.set_verbosity(absl_logging.WARNING)  # orbax logs every save at INFO
  return rest
