"""A run's directory: every file a run writes goes through here.

Nothing already written is lost if the run dies: JSON and text files are
written atomically (temp file, then rename), the .jsonl logs by appending one
flushed line per record.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import shutil
import sys
import tempfile
from collections.abc import Callable
from typing import Any

import jax

from mnistjax.config import Config

# Files a fresh run replaces; checkpoints/ is managed by orbax.
RESULTS = ("metrics.jsonl", "train_log.jsonl", "log.txt", "summary.json", "predictions.npy",
           "classification_report.txt", "confusion_matrix.csv", "loss.png", "error.png",
           "predictions.png", "confusion_matrix.png", "sweep_accuracy.png", "sweep_curves.png")


def write_bytes(path: pathlib.Path, payload: bytes) -> None:
  """Writes atomically: readers see the old file or the new one, never half of one."""
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
  try:
    with os.fdopen(fd, "wb") as f:
      f.write(payload)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  finally:
    pathlib.Path(tmp).unlink(missing_ok=True)


def write_text(path: pathlib.Path, text: str) -> None:
  write_bytes(path, text.encode())


def write_json(path: pathlib.Path, obj: Any) -> None:
  write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def read_jsonl(path: pathlib.Path) -> list[dict[str, Any]]:
  if not path.exists():
    return []
  return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class Workdir:
  """The files of one run. In a multi-host run only process 0 prints and writes them (the
  others only take part in the checkpoints, which orbax writes together)."""

  def __init__(self, path: str | os.PathLike, echo: Callable[[str], None] = print):
    self.path = pathlib.Path(path).expanduser().absolute()
    self.primary = jax.process_index() == 0
    self.path.mkdir(parents=True, exist_ok=True)
    self._echo = echo

  def log(self, line: str) -> None:
    """Prints a line and appends it to log.txt."""
    if not self.primary:
      return
    self._echo(line)
    with open(self.path / "log.txt", "a") as f:
      f.write(line + "\n")

  def reset(self) -> None:
    """Removes the results of an earlier run in this folder (a fresh run starts over)."""
    if not self.primary:
      return
    for name in RESULTS:
      (self.path / name).unlink(missing_ok=True)
    checkpoints = self.path / "checkpoints"
    if checkpoints.exists():
      shutil.rmtree(checkpoints)

  def truncate_after(self, epoch: int, step: int) -> None:
    """Drops records past a checkpoint (written after it by a run that then died)."""
    if not self.primary:
      return
    for name, key, last in (("metrics.jsonl", "epoch", epoch), ("train_log.jsonl", "step", step)):
      kept = [r for r in self.read(name) if r[key] <= last]
      write_text(self.path / name, "".join(json.dumps(r, sort_keys=True) + "\n" for r in kept))

  def append(self, name: str, record: dict[str, Any]) -> None:
    if not self.primary:
      return
    with open(self.path / name, "a") as f:
      f.write(json.dumps(record, sort_keys=True) + "\n")
      f.flush()
      os.fsync(f.fileno())

  def read(self, name: str) -> list[dict[str, Any]]:
    return read_jsonl(self.path / name)

  def write_json(self, name: str, obj: Any) -> None:
    if self.primary:
      write_json(self.path / name, obj)

  def write_text(self, name: str, text: str) -> None:
    if self.primary:
      write_text(self.path / name, text)

  def write_bytes(self, name: str, payload: bytes) -> None:
    if self.primary:
      write_bytes(self.path / name, payload)

  def write_config(self, config: Config, model, **extra) -> None:
    """config.json: every setting, the model's resolved fields, and facts about the run."""
    model_fields = {f.name: getattr(model, f.name) for f in dataclasses.fields(model)
                    if f.name not in ("parent", "name")}
    self.write_json("config.json", {
        "config": config.to_dict(), "model": model_fields, **extra,
        "jax_version": jax.__version__, "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()], "argv": sys.argv})
