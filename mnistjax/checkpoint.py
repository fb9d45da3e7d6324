"""Checkpoints of a run, one per finished epoch, with orbax (absolute paths, atomic saves).

A checkpoint holds the members' train states and alive flags, and a JSON record: the epoch,
the examples seen and the run's config. orbax writes each into a temporary folder and
renames it when complete, so a run killed inside a save leaves the previous checkpoint as
the latest; `save` waits for the write to finish, so that an epoch's line is printed only
once its checkpoint is on disk, and a full disk is reported at the epoch it hit.
"""

from __future__ import annotations

import contextlib
import errno
import os
import pathlib
import re
import shutil
from collections.abc import Iterator
from typing import Any

import flax.serialization
import jax
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
def _disk_errors(directory: pathlib.Path, doing: str) -> Iterator[None]:
  try:
    yield
  except Exception as e:  # orbax raises its own types around the OSError
    error = _os_error(e)
    if error is None:
      raise
    raise WorkdirError(f"{directory}: {error.strerror} while {doing}; free space on that "
                       "disk (or make the folder writable)") from None


def latest_epoch(directory: str | os.PathLike) -> int | None:
  """The last complete checkpoint's epoch in directory, without opening orbax (a save in
  progress, or one a kill cut short, is a temporary folder, not counted)."""
  folder = pathlib.Path(directory)
  epochs = [int(p.name) for p in folder.iterdir() if p.name.isdigit()] if folder.is_dir() else []
  return max(epochs, default=None)


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
    with _disk_errors(self.directory, f"saving the checkpoint of epoch {epoch}"):
      self.manager.save(epoch, args=ocp.args.Composite(
          state=ocp.args.StandardSave(flax.serialization.to_state_dict(state)),
          record=ocp.args.JsonSave(record)))
      self.manager.wait_until_finished()

  def restore(self, epoch: int, target: Any) -> tuple[Any, dict[str, Any]]:
    """The state saved at epoch (with target's structure, in buffers of its own) and its
    record."""
    restored = self.manager.restore(epoch, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(flax.serialization.to_state_dict(target)),
        record=ocp.args.JsonRestore()))
    state = flax.serialization.from_state_dict(target, restored["state"])
    # Copied: a run donates its state to every step, and orbax's restored arrays may still
    # share host memory with its reader on CPU (orbax 0.8 / jax 0.5.3: a run resumed in a
    # process that had trained before computed on overwritten parameters).
    return jax.tree.map(lambda a: a.copy() if isinstance(a, jax.Array) else a, state), \
        restored["record"]

  def close(self) -> None:
    with _disk_errors(self.directory, "finishing the last checkpoint"):
      self.manager.wait_until_finished()
      self.manager.close()
