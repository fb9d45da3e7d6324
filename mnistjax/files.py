"""Files that survive a crash: nothing written is lost or half-written, whatever fails next.

- `write_bytes`, `write_text` and `write_json` write atomically (a temp file, fsynced, then
  a rename): a reader sees the old file or the new one, never half of one.
- `append_jsonl` and `append_line` append one flushed, fsynced line at a time; a last line
  cut short (a crash, a full disk) is dropped by `read_jsonl` and cut off before the next
  append. Records are strict JSON (`dumps`): NaN and infinities are written as null.
- `Lock`: an exclusive lock on a file, held by one open file at a time, that names its
  holder; the kernel drops it when the holder dies, so a killed process leaves none behind
  (flock(2) on POSIX, msvcrt's byte-range lock on Windows, where there is no fcntl).
- An OSError a user can fix (a full disk, no permission, a read-only mount) is a
  WorkdirError: one line that names the fix.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import pathlib
import socket
import tempfile
import time
from collections.abc import Iterator
from typing import Any

from mnistjax.errors import WorkdirError

try:
  import fcntl  # pylint: disable=g-import-not-at-top
except ImportError:  # Windows: `import mnistjax` must work there too
  fcntl = None
  import msvcrt  # pylint: disable=g-import-not-at-top


def _umask() -> int:
  mask = os.umask(0)
  os.umask(mask)
  return mask


_FILE_MODE = 0o666 & ~_umask()  # what open() would give a new file


@contextlib.contextmanager
def os_errors(path: pathlib.Path, doing: str) -> Iterator[None]:
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


def make_folder(path: str | os.PathLike) -> pathlib.Path:
  """The folder at path, created if need be; a WorkdirError (one line) where it can't be."""
  path = pathlib.Path(path).expanduser().absolute()
  try:  # a name Python took in with surrogateescape would fail in every line that prints it
    str(path).encode("utf-8")
  except UnicodeEncodeError:
    raise WorkdirError(f"--workdir={repr(os.fsencode(path))[2:-1]}: the name is not valid "
                       "UTF-8; give a folder name in UTF-8") from None
  if path.exists() and not path.is_dir():
    raise WorkdirError(f"--workdir={path} is a file, not a folder; give a folder")
  with os_errors(path, "creating the run's folder"):
    path.mkdir(parents=True, exist_ok=True)
    if not os.access(path, os.W_OK):
      raise OSError(errno.EACCES, os.strerror(errno.EACCES))
  return path


# -- whole files, written atomically


def write_bytes(path: pathlib.Path, payload: bytes) -> None:
  """Writes atomically: readers see the old file or the new one, never half of one."""
  with os_errors(path, "writing it"):
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
      with os.fdopen(fd, "wb") as f:
        f.write(payload)
        f.flush()
        os.fsync(f.fileno())
      os.chmod(tmp, _FILE_MODE)  # mkstemp's files are 0600; a run's others are not
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


# -- .jsonl records, one appended line at a time


def read_jsonl(path: pathlib.Path) -> list[dict[str, Any]]:
  """The records of a .jsonl file; a last line cut short (a crash, a full disk) is dropped."""
  if not path.exists():
    return []
  if not path.is_file():  # a FIFO or a device would block the read forever
    raise WorkdirError(f"{path} is not a regular file; remove it, or start the run again "
                       "with --overwrite")
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


def write_jsonl(path: pathlib.Path, records: list[dict[str, Any]]) -> None:
  """Replaces a .jsonl file's records, atomically."""
  write_text(path, "".join(dumps(r, sort_keys=True) + "\n" for r in records))


def append_line(path: pathlib.Path, line: str) -> None:
  """Appends a line, flushed to the disk; a last line cut short before it is cut off."""
  with os_errors(path, "appending to it"):
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


def append_jsonl(path: pathlib.Path, record: dict[str, Any]) -> None:
  """Appends a record to a .jsonl file: one strict-JSON line."""
  append_line(path, dumps(record, sort_keys=True))


# -- one holder at a time


def _lock(handle, wait: bool) -> bool:
  """Locks the open file handle: True, or False where another holds it and not wait."""
  if fcntl is not None:
    try:
      fcntl.flock(handle, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
      return True
    except BlockingIOError:
      return False
  # Windows: a lock on the file's first byte, held by this handle (a second open() of the file
  # is refused too) and dropped with the process. msvcrt.LK_LOCK gives up after 10 s, so a
  # waiting acquire polls. Others cannot read a locked byte: holder() then says "another".
  while True:
    handle.seek(0)
    try:
      msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)
      return True
    except OSError as e:
      if e.errno not in (errno.EACCES, errno.EDEADLK):  # not "held by another"
        raise
      if not wait:
        return False
      time.sleep(0.1)


class Lock:
  """An exclusive lock on the file at path (created if need be), which names its holder.

  flock(2) locks an open file, so a second holder is refused whether it is another process
  or another open() of the file in this one; the kernel drops the lock when its holder's
  process dies, so a killed holder leaves no stale lock. The lock lasts while this object
  keeps its file open: until release(), or until the object is garbage-collected. The holder
  writes `who`, its process and host into the file, for the message of whoever is refused.
  """

  def __init__(self, path: pathlib.Path, who: str = "process"):
    self.path = pathlib.Path(path)
    self._who = who
    self._file = None

  def acquire(self, wait: bool = True) -> bool:
    """Takes the lock, waiting for its holder to release it where wait; without wait,
    False where another holds it."""
    with os_errors(self.path, "locking it"):
      handle = open(self.path, "a+")  # pylint: disable=consider-using-with
      try:
        if not _lock(handle, wait):  # held by another
          handle.close()
          return False
        handle.seek(0)
        handle.truncate()
        handle.write(f"{self._who} {os.getpid()} on {socket.gethostname()} since "
                     f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        handle.flush()
      except BaseException:  # Ctrl-C while waiting, a full disk: the lock goes with the file
        handle.close()
        raise
    self._file = handle
    return True

  def holder(self) -> str:
    """Who holds (or last held) the lock, as its holder wrote it."""
    try:
      return self.path.read_text().strip() or f"another {self._who}"
    except OSError:
      return f"another {self._who}"

  def release(self) -> None:
    if self._file is not None:
      if fcntl is None:  # Windows may keep a closed file's lock a while: unlock first
        with contextlib.suppress(OSError):
          self._file.seek(0)
          msvcrt.locking(self._file.fileno(), msvcrt.LK_UNLCK, 1)
      self._file.close()
      self._file = None

  def __enter__(self) -> Lock:
    self.acquire(wait=True)
    return self

  def __exit__(self, *exc) -> None:
    self.release()
