"""A run's directory: one owner of its lifecycle, and every file a run writes goes through it.

- One run at a time: a run holds an exclusive lock on DIR/.lock for its whole life. The
  kernel drops the lock when the process dies, so a killed run leaves no stale lock; a second
  run gets one line naming the holder.
- A fresh run refuses a folder that holds an earlier run (continue it with --resume, or
  replace it with --overwrite). --overwrite moves the earlier run's files into DIR/.replaced/
  and deletes them only once the new run has a checkpoint of its own, or has finished.
- Nothing written is lost or half-written, whatever fails next: JSON, text, PNG and .npy
  files are written atomically (a temp file, then a rename); the .jsonl records are appended
  one flushed line at a time, and a last line cut short (a crash, a full disk) is dropped by
  the readers and cut off before the next append. Records are strict JSON: NaN and
  infinities are written as null.
- Every error a user can cause here (a file where the folder should be, no permission, a
  read-only or full disk, a folder in use) is a WorkdirError: one line that names the fix.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import json
import math
import os
import pathlib
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any

import jax

from mnistjax.config import Config
from mnistjax.errors import WorkdirError

# What a run writes, besides checkpoints/ (orbax's).
RESULTS = ("config.json", "metrics.jsonl", "train_log.jsonl", "log.txt", "summary.json",
           "predictions.npy", "classification_report.txt", "confusion_matrix.csv", "loss.png",
           "error.png", "predictions.png", "confusion_matrix.png", "sweep_accuracy.png",
           "sweep_curves.png", "study.json")
CHECKPOINTS = "checkpoints"
REPLACED = ".replaced"
LOCK = ".lock"


def _umask() -> int:
  mask = os.umask(0)
  os.umask(mask)
  return mask


_FILE_MODE = 0o666 & ~_umask()  # what open() would give a new file


@contextlib.contextmanager
def _os_errors(path: pathlib.Path, doing: str) -> Iterator[None]:
  """OSErrors a user can fix, as one line: a full disk, no permission, a read-only mount."""
  try:
    yield
  except OSError as e:
    fix = {errno.ENOSPC: "free space on that disk",
           errno.EDQUOT: "free space on that disk (your quota is used up)",
           errno.EROFS: "choose a --workdir on a writable disk",
           errno.EACCES: "choose a --workdir you can write to",
           errno.EPERM: "choose a --workdir you can write to"}.get(
               e.errno, "choose another --workdir")
    raise WorkdirError(f"{path}: {e.strerror or e} while {doing}; {fix}") from None


def write_bytes(path: pathlib.Path, payload: bytes) -> None:
  """Writes atomically: readers see the old file or the new one, never half of one."""
  with _os_errors(path, "writing it"):
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
      with os.fdopen(fd, "wb") as f:
        f.write(payload)
        f.flush()
        os.fsync(f.fileno())
      os.chmod(tmp, _FILE_MODE)  # mkstemp's files are 0600; the run's others are not
      os.replace(tmp, path)
    finally:
      pathlib.Path(tmp).unlink(missing_ok=True)


def write_text(path: pathlib.Path, text: str) -> None:
  write_bytes(path, text.encode())


def _strict(value: Any) -> Any:
  """value with every float that is not finite replaced by None (JSON has no NaN)."""
  if isinstance(value, float):
    return value if math.isfinite(value) else None
  if isinstance(value, dict):
    return {k: _strict(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_strict(v) for v in value]
  return value


def dumps(obj: Any, **kwargs) -> str:
  """Strict JSON: NaN and infinities as null."""
  return json.dumps(_strict(obj), allow_nan=False, default=str, **kwargs)


def write_json(path: pathlib.Path, obj: Any) -> None:
  write_text(path, dumps(obj, indent=2, sort_keys=True) + "\n")


def read_jsonl(path: pathlib.Path) -> list[dict[str, Any]]:
  """The records of a .jsonl file; a last line cut short (a crash, a full disk) is dropped."""
  if not path.exists():
    return []
  lines = path.read_text().split("\n")
  records = []
  for i, line in enumerate(lines):
    if not line.strip():
      continue
    try:
      records.append(json.loads(line))
    except json.JSONDecodeError:
      if i == len(lines) - 1:  # no newline after it: a write that never finished
        break
      raise WorkdirError(f"{path}: line {i + 1} is not JSON; the file was edited or damaged: "
                         "restore it, or start the run again with --overwrite") from None
  return records


def make_folder(path: str | os.PathLike) -> pathlib.Path:
  """The folder at path, created if need be; a WorkdirError (one line) where it can't be."""
  path = pathlib.Path(path).expanduser().absolute()
  if path.exists() and not path.is_dir():
    raise WorkdirError(f"--workdir={path} is a file, not a folder; give a folder")
  with _os_errors(path, "creating the run's folder"):
    path.mkdir(parents=True, exist_ok=True)
    if not os.access(path, os.W_OK):
      raise OSError(errno.EACCES, os.strerror(errno.EACCES))
  return path


def _holder(lock_path: pathlib.Path) -> str:
  try:
    return lock_path.read_text().strip() or "another run"
  except OSError:
    return "another run"


class Workdir:
  """The folder of one run: its lock, its lifecycle and its files.

  `open(mode)` settles the folder before anything is loaded or compiled: "new" (the folder
  holds no earlier run), "overwrite" (an earlier run is moved aside) or "resume" (it holds a
  checkpoint to continue from). In a multi-host run only process 0 locks, settles, prints and
  writes (the others only take part in the checkpoints, which orbax writes together).
  """

  def __init__(self, path: str | os.PathLike, echo: Callable[[str], None] = print):
    self.path = pathlib.Path(path).expanduser().absolute()
    self.primary = jax.process_index() == 0
    self._echo = echo
    self._lock = None

  # -- lifecycle

  def open(self, mode: str = "new") -> Workdir:
    """Creates and locks the folder, and settles it for a run of `mode`: "new", "overwrite"
    or "resume". Raises WorkdirError (one line) where it cannot."""
    self.mode = mode
    make_folder(self.path)
    if not self.primary:
      return self
    with _os_errors(self.path, "locking the run's folder"):
      self._take_lock()
    try:
      self._settle(mode)
    except BaseException:
      self.close()
      raise
    return self

  def _take_lock(self) -> None:
    lock_path = self.path / LOCK
    handle = open(lock_path, "a+")  # pylint: disable=consider-using-with
    try:
      fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
      handle.close()
      raise WorkdirError(f"{self.path} is in use by {_holder(lock_path)}; wait for it to end, "
                         "or give another --workdir") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"run {os.getpid()} on {socket.gethostname()} since "
                 f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n")
    handle.flush()
    self._lock = handle

  def close(self) -> None:
    """Releases the folder's lock (the kernel also does when the process dies)."""
    if self._lock is not None:
      self._lock.close()
      self._lock = None

  def __enter__(self) -> Workdir:
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  def holds_run(self) -> bool:
    """Whether the folder holds files of a run."""
    return any((self.path / name).exists() for name in (*RESULTS, CHECKPOINTS))

  def has_checkpoint(self) -> bool:
    folder = self.path / CHECKPOINTS
    return folder.is_dir() and any(p.name.isdigit() for p in folder.iterdir())

  def _settle(self, mode: str) -> None:
    if mode == "resume":
      if not self.has_checkpoint():
        what = ("holds no run" if not self.holds_run() else
                "holds no checkpoint (its run stopped before the end of its first epoch, or "
                "ran with --checkpoint=false)")
        raise WorkdirError(f"nothing to resume: {self.path} {what}; start the run without "
                           "--resume" + (" and with --overwrite" if self.holds_run() else ""))
    elif mode == "new":
      if self.holds_run():
        raise WorkdirError(f"{self.path} holds an earlier run; continue it with --resume, or "
                           "replace it with --overwrite")
    elif mode == "overwrite":
      self._move_aside()
    else:
      raise ValueError(f"unknown workdir mode {mode!r}")

  def _move_aside(self) -> None:
    """Moves an earlier run's files into .replaced/, where they stay until this run has a
    checkpoint of its own (`replaced_done`). Where .replaced/ is already there, the files
    beside it are those of a run that never got that far: they hold no checkpoint."""
    replaced = self.path / REPLACED
    with _os_errors(self.path, "moving the earlier run aside"):
      if replaced.exists():
        for name in (*RESULTS, CHECKPOINTS):
          target = self.path / name
          shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
        return
      if not self.holds_run():
        return
      replaced.mkdir()
      for name in (*RESULTS, CHECKPOINTS):
        if (self.path / name).exists():
          os.replace(self.path / name, replaced / name)

  def replaced_done(self) -> None:
    """This run has a checkpoint (or finished): the files it replaced can go."""
    if self.primary:
      shutil.rmtree(self.path / REPLACED, ignore_errors=True)

  # -- records

  def log(self, line: str) -> None:
    """Prints a line and appends it to log.txt."""
    if not self.primary:
      return
    self._echo(line)
    self.log_only(line)

  def log_only(self, line: str) -> None:
    """Appends a line to log.txt without printing it (an error the command line reports)."""
    if self.primary:
      self._append_line("log.txt", line)

  def _append_line(self, name: str, line: str) -> None:
    path = self.path / name
    with _os_errors(path, "appending to it"):
      with open(path, "ab+") as f:
        f.seek(0, os.SEEK_END)
        if f.tell():  # a last line cut short by a crash or a full disk: cut it off
          f.seek(-1, os.SEEK_END)
          if f.read(1) != b"\n":
            f.seek(0)
            content = f.read()
            f.truncate(content.rfind(b"\n") + 1)
        f.write((line + "\n").encode())
        f.flush()
        os.fsync(f.fileno())

  def append(self, name: str, record: dict[str, Any]) -> None:
    """Appends a record (one strict-JSON line) to a .jsonl file."""
    if self.primary:
      self._append_line(name, dumps(record, sort_keys=True))

  def read(self, name: str) -> list[dict[str, Any]]:
    return read_jsonl(self.path / name)

  def truncate_after(self, epoch: int, step: int) -> None:
    """Drops records past a checkpoint (written after it by a run that then died)."""
    if not self.primary:
      return
    for name, key, last in (("metrics.jsonl", "epoch", epoch), ("train_log.jsonl", "step", step)):
      kept = [r for r in self.read(name) if r[key] <= last]
      write_text(self.path / name, "".join(dumps(r, sort_keys=True) + "\n" for r in kept))

  def write_json(self, name: str, obj: Any) -> None:
    if self.primary:
      write_json(self.path / name, obj)

  def write_text(self, name: str, text: str) -> None:
    if self.primary:
      write_text(self.path / name, text)

  def write_bytes(self, name: str, payload: bytes) -> None:
    if self.primary:
      write_bytes(self.path / name, payload)

  def saved_config(self) -> dict[str, Any]:
    """config.json as the run before this one wrote it ({} where there is none)."""
    try:
      return json.loads((self.path / "config.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
      return {}

  def write_config(self, config: Config, model, **extra) -> None:
    """config.json: every setting, the model's resolved fields, and facts about the run."""
    model_fields = {f.name: getattr(model, f.name) for f in dataclasses.fields(model)
                    if f.name not in ("parent", "name")}
    self.write_json("config.json", {
        "config": config.to_dict(), "model": model_fields, **extra,
        "jax_version": jax.__version__, "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()], "argv": sys.argv})
