"""Checkpoints of a run, one per finished epoch, with orbax (absolute paths, async saves).

A checkpoint holds the train state (step, params, BatchNorm statistics, optimiser state)
and a JSON record: the epoch, the run's config and its dropout key data.
"""

from __future__ import annotations

import os
import pathlib
from typing import Any

import flax.serialization
import orbax.checkpoint as ocp


class Checkpoints:
  """The checkpoints folder of a workdir."""

  def __init__(self, directory: str | os.PathLike, keep: int = 2):
    self.directory = pathlib.Path(directory).expanduser().absolute()  # orbax wants absolute
    self.manager = ocp.CheckpointManager(
        self.directory, options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True))

  def latest_epoch(self) -> int | None:
    return self.manager.latest_step()

  def save(self, epoch: int, state: Any, record: dict[str, Any]) -> None:
    """Starts an asynchronous save; `wait` (or the next save) finishes it."""
    self.manager.save(epoch, args=ocp.args.Composite(
        state=ocp.args.StandardSave(flax.serialization.to_state_dict(state)),
        record=ocp.args.JsonSave(record)))

  def restore(self, epoch: int, target: Any) -> tuple[Any, dict[str, Any]]:
    """The state saved at epoch (with target's structure) and its record."""
    restored = self.manager.restore(epoch, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(flax.serialization.to_state_dict(target)),
        record=ocp.args.JsonRestore()))
    return flax.serialization.from_state_dict(target, restored["state"]), restored["record"]

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()
