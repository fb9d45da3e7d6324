"""Checkpoints of a run, one per finished epoch, with orbax (absolute paths, atomic saves).

A checkpoint holds the members' train states and alive flags, and a JSON record: the epoch,
the examples seen and the run's config. orbax writes each into a temporary folder and
renames it when complete, so a run killed inside a save leaves the previous checkpoint as
the latest; `save` waits for the write to finish, so that an epoch's line is printed only
once its checkpoint is on disk, and a full disk is reported at the epoch it hit.

The record also holds a sha256 of the arrays and the record (`checksum`), saved in the same
atomic rename and checked on every restore: a flipped bit or an edited record is found
rather than trained on. A run resumes from the newest intact checkpoint (`restore_latest`),
naming the damaged ones past it and setting them aside (EPOCH.damaged).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import pathlib
import re
import shutil
import sys
from collections.abc import Callable, Iterator
from typing import Any

import flax.serialization
import jax
import numpy as np
import orbax.checkpoint as ocp

from mnistjax.errors import WorkdirError

_DISK_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES)


def _os_error(e: BaseException) -> OSError | None:
  """The disk error behind e, however deep orbax wrapped it. tensorstore, which writes
  orbax's arrays, reports it as a ValueError naming the errno ([os_error_code='28'])."""
  seen = set()
  while e is not None and id(e) not in seen:
    seen.add(id(e))
    if isinstance(e, OSError) and e.errno in _DISK_ERRORS:
      return e
    code = re.search(r"os_error_code='(\d+)'", str(e))
    if code and int(code.group(1)) in _DISK_ERRORS:
      return OSError(int(code.group(1)), os.strerror(int(code.group(1))))
    e = e.__cause__ or e.__context__
  return None


@contextlib.contextmanager
def _orbax_quiet() -> Iterator[None]:
  """orbax logs a failed save with its traceback before it raises (a second Ctrl-C or SIGTERM
  inside the save, a full disk); the exception reaches the user as one line, so the log is
  held back while orbax saves."""
  logger = logging.getLogger("absl")
  level = logger.level
  logger.setLevel(logging.CRITICAL)
  try:
    yield
  finally:
    logger.setLevel(level)


def _drop_late_completions() -> None:
  """Where a save fails (a full disk), tensorstore goes on completing the writes orbax gave
  up on, each into orbax's closed event loop, during the save and after it: Python would
  print every one as an unraisable traceback (dozens) around the run's one line. Those, and
  only those, are dropped, from the first save on."""
  previous = sys.unraisablehook
  if getattr(previous, "drops_late_completions", False):
    return

  def hook(unraisable):
    error = unraisable.exc_value
    if not (isinstance(error, RuntimeError) and str(error) == "Event loop is closed"):
      previous(unraisable)

  hook.drops_late_completions = True
  sys.unraisablehook = hook


@contextlib.contextmanager
def _disk_errors(directory: pathlib.Path, doing: str) -> Iterator[None]:
  _drop_late_completions()
  try:
    yield
  except Exception as e:  # orbax raises its own types around the OSError
    error = _os_error(e)
    if error is None:
      raise
    raise WorkdirError(f"{directory}: {error.strerror} while {doing}; free space on that "
                       "disk (or make the folder writable)") from None


def epochs(directory: str | os.PathLike) -> list[int]:
  """The epochs of the checkpoints in directory, newest first, without opening orbax: its
  folders named by a number (a save in progress, or one a kill cut short, is a temporary
  folder, not counted; an empty folder is no checkpoint)."""
  folder = pathlib.Path(directory)
  if not folder.is_dir():
    return []
  return sorted((int(p.name) for p in folder.iterdir()
                 if p.name.isdigit() and p.is_dir() and any(p.iterdir())), reverse=True)


def latest_epoch(directory: str | os.PathLike) -> int | None:
  """The last checkpoint's epoch in directory (see `epochs`), or None."""
  return next(iter(epochs(directory)), None)


class DamagedCheckpoint(WorkdirError):
  """A checkpoint whose contents are not those saved."""


class OtherStructure(WorkdirError):
  """An intact checkpoint of another state's structure: another model or optimiser."""


def structure(state_dict: Any) -> str:
  """sha256 of a state's tree: each array's path, dtype and shape (not its values)."""
  return hashlib.sha256("".join(
      f"{jax.tree_util.keystr(path)}:{np.dtype(leaf.dtype)}:{tuple(np.shape(leaf))};"
      for path, leaf in jax.tree_util.tree_leaves_with_path(state_dict)).encode()).hexdigest()


def _reason(e: BaseException) -> str:
  """Why a checkpoint could not be restored, as a short phrase (orbax's messages run to many
  lines)."""
  if isinstance(e, DamagedCheckpoint):
    return "its contents do not match its checksum"
  text = str(e).strip().splitlines()[0][:160] if str(e).strip() else ""
  return f"{type(e).__name__}: {text}" if text else type(e).__name__


def checksum(state_dict: Any, record: dict[str, Any]) -> str | None:
  """sha256 over every array of a checkpoint (its path, dtype, shape and bytes) and its record
  (as JSON, "checksum" left out): what `restore` checks, so that a flipped bit or an edited
  record is found rather than trained on. None where the arrays span several hosts (no host
  holds them all)."""
  digest = hashlib.sha256()
  for path, leaf in jax.tree_util.tree_leaves_with_path(state_dict):
    if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
      return None
    array = np.ascontiguousarray(np.asarray(leaf))
    digest.update(f"{jax.tree_util.keystr(path)}:{array.dtype}:{array.shape};".encode())
    digest.update(array.tobytes())
  digest.update(json.dumps({k: v for k, v in record.items() if k != "checksum"},
                           sort_keys=True).encode())
  return digest.hexdigest()


class Checkpoints:
  """The checkpoints folder of a workdir."""

  def __init__(self, directory: str | os.PathLike, keep: int = 2):
    self.directory = pathlib.Path(directory).expanduser().absolute()  # orbax wants absolute
    with _disk_errors(self.directory, "creating the checkpoints folder"):
      self.manager = ocp.CheckpointManager(
          self.directory, options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True))

  def latest_epoch(self) -> int | None:
    return self.manager.latest_step()

  def save(self, epoch: int, state: Any, record: dict[str, Any]) -> None:
    """Saves and waits until the checkpoint is complete on disk. A disk without room for it is
    reported before the save starts (orbax's writer threads would log their failures)."""
    needed = sum(getattr(x, "nbytes", 0) for x in jax.tree.leaves(state)) + (1 << 20)
    free = shutil.disk_usage(self.directory).free
    if free < needed:
      raise WorkdirError(f"{self.directory}: no room for the checkpoint of epoch {epoch} "
                         f"({needed / 1e6:.1f} MB, {free / 1e6:.1f} MB free); free space on "
                         "that disk")
    state_dict = flax.serialization.to_state_dict(state)
    record = {**record, "structure": structure(state_dict)}
    digest = checksum(state_dict, record)
    if digest is not None:  # in the record: saved with the arrays, in the same atomic rename
      record = {**record, "checksum": digest}
    with _disk_errors(self.directory, f"saving the checkpoint of epoch {epoch}"), _orbax_quiet():
      self.manager.save(epoch, args=ocp.args.Composite(
          state=ocp.args.StandardSave(state_dict), record=ocp.args.JsonSave(record)))
      self.manager.wait_until_finished()

  def restore(self, epoch: int, target: Any) -> tuple[Any, dict[str, Any]]:
    """The state saved at epoch (with target's structure, in buffers of its own) and its
    record. Raises DamagedCheckpoint where its contents are not those saved (a checkpoint
    written before checksums were kept is trusted), ValueError/KeyError/TypeError where it
    can't be read into target's structure."""
    target_dict = flax.serialization.to_state_dict(target)
    try:  # the record alone first: a state of another structure is not a damaged one
      saved = self.manager.restore(epoch, args=ocp.args.Composite(
          record=ocp.args.JsonRestore()))["record"]
    except Exception:  # pylint: disable=broad-except  # read again below, and named there
      saved = None
    if isinstance(saved, dict) and saved.get("structure") not in (None, structure(target_dict)):
      raise OtherStructure(
          f"{self.directory}: its checkpoints hold the state of another model or optimiser "
          "(other parameters or optimiser state than this run's); give the model and "
          "optimizer the run was trained with, or start it again with --overwrite")
    restored = self.manager.restore(epoch, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(target_dict), record=ocp.args.JsonRestore()))
    record = restored["record"]
    if not isinstance(record, dict):
      raise DamagedCheckpoint(f"the checkpoint of epoch {epoch} has no record")
    if "checksum" in record:
      digest = checksum(restored["state"], record)
      if digest is not None and digest != record["checksum"]:
        raise DamagedCheckpoint(f"the checkpoint of epoch {epoch} does not match its checksum")
    state = flax.serialization.from_state_dict(target, restored["state"])
    # Copied: a run donates its state to every step, and orbax's restored arrays may still
    # share host memory with its reader on CPU (orbax 0.8 / jax 0.5.3: a run resumed in a
    # process that had trained before computed on overwritten parameters).
    return jax.tree.map(lambda a: a.copy() if isinstance(a, jax.Array) else a, state), \
        restored["record"]

  def latest_record(self) -> dict[str, Any] | None:
    """The record of the newest checkpoint whose record reads, without its arrays and before
    any checksum is checked: what a resume compares its settings with before restoring."""
    for epoch in epochs(self.directory):
      try:
        with _orbax_quiet():
          record = self.manager.restore(epoch, args=ocp.args.Composite(
              record=ocp.args.JsonRestore()))["record"]
      except Exception:  # pylint: disable=broad-except  # damaged: restore_latest names it
        continue
      if isinstance(record, dict):
        return record
    return None

  def restore_latest(self, target: Any, log: Callable[[str], None] | None = None
                     ) -> tuple[int, Any, dict[str, Any]]:
    """The newest intact checkpoint: (epoch, state, record), as `restore`. With log, the
    checkpoints past it (damaged, or cut short) are each named in one line and set aside
    (renamed EPOCH.damaged, so that this run saves its own epochs again) and empty folders
    named by a number are removed; without, the latest must be intact (mnistjax.load).
    Raises WorkdirError (one line, with the fix) where none is."""
    found = epochs(self.directory)
    if log is not None:
      self._drop_empty_folders()
    failures = []
    for epoch in found:
      try:
        state, record = self.restore(epoch, target)
      except OtherStructure:
        raise
      except Exception as e:  # pylint: disable=broad-except  # orbax's, tensorstore's, ours
        failures.append((epoch, e))
        if log is None:  # read only: nothing is set aside, so the latest must do
          break
        continue
      for bad, error in failures:
        aside = self._set_aside(bad)
        log(f"the checkpoint of epoch {bad} in {self.directory} is damaged "
            f"({_reason(error)}); moved to {aside.name}, continuing from the checkpoint of "
            f"epoch {epoch}")
      if failures:
        self.manager.reload()
      return epoch, state, record
    if not failures:
      raise WorkdirError(f"{self.directory} holds no checkpoint; start the run again with "
                         "--overwrite")
    reasons = "; ".join(f"epoch {epoch}: {_reason(e)}" for epoch, e in failures)
    if log is None:
      raise WorkdirError(f"{self.directory}: the latest checkpoint can't be used ({reasons});"
                         " continue the run with --resume, which goes on from the newest "
                         "intact one") from None
    raise WorkdirError(f"{self.directory}: no checkpoint there can be restored for this run "
                       f"({reasons}); start it again with --overwrite, or give another "
                       "--workdir") from None

  def _drop_empty_folders(self) -> None:
    """Removes empty folders named by a number: no checkpoints, but orbax would count them
    as its latest step and skip this run's saves up to it."""
    for path in self.directory.iterdir():
      if path.name.isdigit() and path.is_dir() and not any(path.iterdir()):
        path.rmdir()
    self.manager.reload()

  def _set_aside(self, epoch: int) -> pathlib.Path:
    target = self.directory / f"{epoch}.damaged"
    n = 1
    while target.exists():
      n += 1
      target = self.directory / f"{epoch}.damaged{n}"
    os.replace(self.directory / str(epoch), target)
    return target

  def close(self) -> None:
    with _disk_errors(self.directory, "finishing the last checkpoint"), _orbax_quiet():
      self.manager.wait_until_finished()
      self.manager.close()
