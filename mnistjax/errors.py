"""Errors a user can fix, each reported as one line by the command-line tools."""


class MnistjaxError(Exception):
  """Base class: the message is one line that names the problem and the fix."""


class ConfigError(MnistjaxError, ValueError):
  """A setting has an invalid value (unknown name, out of range)."""


class DataError(MnistjaxError):
  """A dataset file is missing, truncated, corrupt or inconsistent."""


class NonFiniteLoss(MnistjaxError):
  """The training loss became NaN or infinite."""


class Interrupted(MnistjaxError):
  """The run was stopped by the user (Ctrl-C) between or inside epochs."""


class WorkdirError(MnistjaxError):
  """The run's folder can't be used as asked (in use, holds another run, not writable, full)."""
