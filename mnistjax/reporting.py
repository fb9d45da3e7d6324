"""What a run writes: printed lines, a progress bar, and the files of its workdir.

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
import tqdm

from mnistjax.config import Config

# Files a fresh run replaces; checkpoints/ is managed by orbax.
_RESULTS = ("metrics.jsonl", "train_log.jsonl", "log.txt", "summary.json",
            "classification_report.txt", "confusion_matrix.csv", "loss.png", "error.png",
            "predictions.png", "confusion_matrix.png")


def write_text(path: pathlib.Path, text: str) -> None:
  """Writes atomically: readers see the old file or the new one, never half of one."""
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
  try:
    with os.fdopen(fd, "w") as f:
      f.write(text)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  finally:
    pathlib.Path(tmp).unlink(missing_ok=True)


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
    for name in _RESULTS:
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

  def write_config(self, config: Config, model, **extra) -> None:
    """config.json: every setting, the model's resolved fields, and facts about the run."""
    model_fields = {f.name: getattr(model, f.name) for f in dataclasses.fields(model)
                    if f.name not in ("parent", "name")}
    self.write_json("config.json", {
        "config": config.to_dict(), "model": model_fields, **extra,
        "jax_version": jax.__version__, "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()], "argv": sys.argv})


def progress(total: int, desc: str) -> tqdm.tqdm:
  """A progress bar on a terminal; nothing when output is redirected."""
  return tqdm.tqdm(total=total, desc=desc, leave=False, disable=None, dynamic_ncols=True,
                   unit="step")


def epoch_line(record: dict[str, Any]) -> str:
  """One printed line per epoch."""
  parts = [f"epoch {record['epoch']:>3}"]
  if "train_loss" in record:
    parts.append(f"train loss {record['train_loss']:.4f} acc {record['train_accuracy']:6.2f}%")
  parts.append(f"test loss {record['test_loss']:.4f} acc {record['test_accuracy']:6.2f}%")
  if "seconds" in record:
    parts.append(f"{record['seconds']:.1f}s")
  return " | ".join(parts)
