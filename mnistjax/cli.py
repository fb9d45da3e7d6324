"""Command-line plumbing shared by the scripts in experiments/: flags from Config, one-line errors."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator

from absl import flags

from mnistjax import config as config_lib
from mnistjax.errors import MnistjaxError

EXIT_USAGE = 2

# JAX reports at INFO level that no TPU is present; absl would print it on every run.
logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)

_DEFINE = {"bool": flags.DEFINE_bool, "int": flags.DEFINE_integer,
           "float": flags.DEFINE_float, "str": flags.DEFINE_string}


def _kind(field) -> str:
  type_name = field.type if isinstance(field.type, str) else field.type.__name__
  return type_name.split("|")[0].strip()


def define_config_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """One flag per Config field, with the field's default and help."""
  for field in config_lib.fields():
    _DEFINE[_kind(field)](field.name, field.default, field.metadata["help"],
                          flag_values=flag_values)


def config_from_flags(base: config_lib.Config | None = None,
                      flag_values: flags.FlagValues = flags.FLAGS) -> config_lib.Config:
  """base (default: Config()) with the flags given on the command line applied, validated."""
  base = base or config_lib.Config()
  given = {f.name: flag_values[f.name].value for f in config_lib.fields()
           if flag_values[f.name].present}
  return base.replace(**given).validate()


def fail(message: str) -> None:
  """Ends the program with one line on stderr and exit status 2."""
  print(f"{os.path.basename(sys.argv[0])}: error: {message}", file=sys.stderr)
  sys.exit(EXIT_USAGE)


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
  """Turns errors a user can fix (bad settings, bad data) into one line and exit status 2."""
  try:
    yield
  except MnistjaxError as e:
    fail(str(e))


def parse_flags(argv: list[str]) -> list[str]:
  """absl's parser, with a one-line error instead of its usage dump."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    fail(str(e).splitlines()[0])
    raise  # unreachable: fail exits
