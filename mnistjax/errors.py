"""Errors a user can fix, each reported as one line by the command-line tools."""

import signal


class MnistjaxError(Exception):
  """Base class: the message is one line that names the problem and the fix."""


class ConfigError(MnistjaxError, ValueError):
  """A setting has an invalid value (unknown name, out of range)."""


class DataError(MnistjaxError):
  """A dataset file is missing, truncated, corrupt or inconsistent."""


class NonFiniteLoss(MnistjaxError):
  """The training loss became NaN or infinite."""


class Interrupted(MnistjaxError):
  """The run was stopped by Ctrl-C, SIGTERM or SIGHUP between or inside epochs; `signum` is
  the signal's number (the command line exits with 128 + it)."""

  def __init__(self, message: str, signum: int = signal.SIGINT):
    super().__init__(message)
    self.signum = int(signum)


# What stops a run as Ctrl-C does: a scheduler taking the machine back, a closed terminal.
SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP")
                if hasattr(signal, name))


class Signal(KeyboardInterrupt):
  """SIGTERM or SIGHUP (a scheduler taking the machine back, a closed terminal), raised where
  Ctrl-C raises KeyboardInterrupt, so that a run stops the same way; `signum` as Interrupted's.
  """

  def __init__(self, signum: int):
    super().__init__(signal.Signals(signum).name)
    self.signum = int(signum)


class WorkdirError(MnistjaxError):
  """The run's folder can't be used as asked (in use, holds another run, not writable, full)."""
