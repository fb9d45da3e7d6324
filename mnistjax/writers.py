"""Writers: what `mnistjax.train(..., writers=[...])` calls with every record a run writes.

A writer is any function `writer(stream, record)`: stream is "train_log" (the mean training
loss of a log interval; a sweep's "loss" is a list, one per member, named by "members") or
"metrics" (one member's evaluation of an epoch), record the dict its JSONL file gets. If it
has `flush()`, the run calls it at the end of its loop.

`TensorBoardWriter(logdir)` writes them as TensorBoard scalars (tensorboardX, no TensorFlow:
`pip install "mnistjax[tensorboard]"`); look at them with `tensorboard --logdir LOGDIR`. A
sweep's members each get a run of their own, LOGDIR/<member>.
"""

from __future__ import annotations

import math
import pathlib
from typing import Any

from mnistjax.errors import ConfigError

class TensorBoardWriter:
  """Every record as scalars at its global step: train/loss, the mean training loss of each
  log interval; per epoch test/accuracy, test/loss, ... and train_set/accuracy, ... (the
  evaluation of the training set), time/seconds."""

  def __init__(self, logdir: str | pathlib.Path):
    try:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
    except ImportError:
      raise ConfigError('TensorBoardWriter needs tensorboardX: python -m pip install '
                        '"mnistjax[tensorboard]" (or tensorboardX)') from None
    self._make = SummaryWriter
    self.logdir = pathlib.Path(logdir).expanduser().absolute()
    self._writers: dict[str, Any] = {}

  def _writer(self, member: str):
    if member not in self._writers:
      folder = self.logdir / member if member else self.logdir
      self._writers[member] = self._make(logdir=str(folder))
    return self._writers[member]

  def __call__(self, stream: str, record: dict[str, Any]) -> None:
    step = record.get("step", 0)
    if stream == "train_log":
      losses = record["loss"]
      members = record.get("members", [""])
      for member, loss in zip(members, losses if isinstance(losses, list) else [losses]):
        self._scalar(member, "train/loss", loss, step)
      return
    member = record.get("member", "")  # a sweep's records also carry its swept values
    for key, value in record.items():
      split, _, name = key.partition("_")
      if key in ("seconds", "train_seconds"):
        self._scalar(member, f"time/{key}", value, step)
      elif split in ("train", "test") and name and isinstance(value, (int, float)):
        self._scalar(member, f"{'train_set' if split == 'train' else 'test'}/{name}", value,
                     step)

  def _scalar(self, member: str, tag: str, value, step: int) -> None:
    if value is not None and math.isfinite(value):
      self._writer(member).add_scalar(tag, value, step)

  def flush(self) -> None:
    for writer in self._writers.values():
      writer.flush()

  def close(self) -> None:
    for writer in self._writers.values():
      writer.close()
    self._writers.clear()

