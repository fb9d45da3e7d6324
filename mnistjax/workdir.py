"""A run's folder and its lifecycle: one run at a time, and no run loses or mixes another's.

- One run at a time: a run holds an exclusive lock (`files.Lock`) on DIR/.lock for its whole
  life; a second run gets one line naming the holder.
- A fresh run refuses a folder that holds an earlier run (continue it with --resume, or
  replace it with --overwrite). --overwrite moves the earlier run's files into DIR/.replaced/
  and deletes them only once the new run has a checkpoint of its own, or has finished.
- Every file a run writes is written crash-safe (`mnistjax.files`), and only by process 0 of
  a multi-host run (`Workdir.primary`).
- Every error a user can cause here (a file where the folder should be, no permission, a
  read-only or full disk, a folder in use) is a WorkdirError: one line that names the fix.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
from collections.abc import Callable
from typing import Any

import jax

from mnistjax import files
from mnistjax.errors import WorkdirError

# What a run writes, besides checkpoints/ (orbax's).
RESULTS = ("config.json", "metrics.jsonl", "train_log.jsonl", "log.txt", "summary.json",
           "predictions.npy", "classification_report.txt", "confusion_matrix.csv", "loss.png",
           "error.png", "predictions.png", "confusion_matrix.png", "sweep_accuracy.png",
           "sweep_curves.png", "study.json")
CHECKPOINTS = "checkpoints"
REPLACED = ".replaced"
REPLACING = ".replacing"  # an earlier run's files while they move into .replaced/
LOCK = ".lock"


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
    self.mode = "new"  # how open() settled it: "new", "overwrite" or "resume"
    self._lock = None

  # -- lifecycle

  def open(self, mode: str = "new") -> Workdir:
    """Creates and locks the folder, and settles it for a run of `mode`: "new", "overwrite"
    or "resume". Raises WorkdirError (one line) where it cannot."""
    self.mode = mode
    files.make_folder(self.path)
    if not self.primary:
      return self
    lock = files.Lock(self.path / LOCK, "run")
    if not lock.acquire(wait=False):
      raise WorkdirError(f"{self.path} is in use by {lock.holder()}; wait for it to end, or "
                         "give another --workdir")
    self._lock = lock
    try:
      self._settle(mode)
    except BaseException:
      self.close()
      raise
    return self

  def close(self) -> None:
    """Releases the folder's lock (the kernel also does when the process dies)."""
    if self._lock is not None:
      self._lock.release()
      self._lock = None

  def __enter__(self) -> Workdir:
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  def holds_run(self) -> bool:
    """Whether the folder holds files of a run (some maybe in a move aside cut short)."""
    return any((self.path / name).exists() for name in (*RESULTS, CHECKPOINTS, REPLACING))

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
    checkpoint of its own (`replaced_done`). They go into .replacing/ first, which becomes
    .replaced/ in one rename once all are there: a move cut short by an error is undone, and
    one cut short by a kill is finished by the next --overwrite, never taken for a run
    without checkpoints."""
    replaced, replacing = self.path / REPLACED, self.path / REPLACING
    with files.os_errors(self.path, "moving the earlier run aside"):
      if replaced.exists() and not replacing.exists():
        if not self.has_checkpoint():  # beside it: a run that never got a checkpoint
          for name in (*RESULTS, CHECKPOINTS):
            target = self.path / name
            shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
          return
        # A checkpoint beside it: a later run's, whose replaced_done was cut short.
        shutil.rmtree(replaced)
      if not self.holds_run():
        return
      replacing.mkdir(exist_ok=True)
      try:
        for name in (*RESULTS, CHECKPOINTS):
          if (self.path / name).exists():
            os.replace(self.path / name, replacing / name)
      except OSError:
        self._move_back(replacing)
        raise
      os.replace(replacing, replaced)

  def _move_back(self, replacing: pathlib.Path) -> None:
    """Undoes a move aside that failed part way, as far as it can (what stays in .replacing/
    is moved on by the next --overwrite)."""
    for path in replacing.iterdir():
      try:
        os.replace(path, self.path / path.name)
      except OSError:
        return
    replacing.rmdir()

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
      files.append_line(self.path / "log.txt", line)

  def truncate_after(self, epoch: int, step: int) -> None:
    """Drops records past a checkpoint (written after it by a run that then died)."""
    if not self.primary:
      return
    for name, key, last in (("metrics.jsonl", "epoch", epoch), ("train_log.jsonl", "step", step)):
      kept = [r for r in files.read_jsonl(self.path / name) if r[key] <= last]
      files.write_jsonl(self.path / name, kept)

  def saved_config(self) -> dict[str, Any]:
    """config.json as the run before this one wrote it ({} where there is none)."""
    path = self.path / "config.json"
    try:  # not a regular file (a FIFO would block the read): none (each checkpoint has its own)
      saved = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):  # gone, unreadable, not JSON or not UTF-8
      return {}
    return saved if isinstance(saved, dict) else {}
