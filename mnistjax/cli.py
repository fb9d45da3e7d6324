"""Command-line plumbing shared by the scripts in experiments/: flags from Config, one-line errors."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import textwrap
from collections.abc import Iterator

from absl import flags
from absl import logging as absl_logging

from mnistjax import config as config_lib
from mnistjax.errors import Interrupted, MnistjaxError, NonFiniteLoss

EXIT_USAGE = 2
EXIT_DIVERGED = 3
EXIT_INTERRUPTED = 130

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


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
  """Turns errors a user can fix into one line: exit status 2 for bad settings, data or
  workdir, 3 for a diverged run, 130 for Ctrl-C (wherever it lands)."""
  try:
    yield
  except NonFiniteLoss as e:
    fail(str(e), EXIT_DIVERGED)
  except Interrupted as e:
    fail(str(e), EXIT_INTERRUPTED)
  except MnistjaxError as e:
    fail(str(e))
  except KeyboardInterrupt:
    fail("interrupted", EXIT_INTERRUPTED)


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
      print(f"--{name} is gone: {why}; the flag is ignored", flush=True)
  if not flags.FLAGS["verbosity"].present:
    absl_logging.set_verbosity(absl_logging.WARNING)  # orbax logs every save at INFO
  return rest
