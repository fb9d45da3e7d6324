"""What a run writes: printed lines, a progress bar, and the files of its workdir.

Files are written so that nothing already written is lost if the run dies:
JSON files atomically (temp file, then rename), metrics.jsonl by appending
one flushed line per record.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import sys
import tempfile
from typing import Any

import jax
import tqdm

from mnistjax.config import Config


def write_json(path: pathlib.Path, obj: Any) -> None:
  """Writes JSON atomically: readers see the old file or the new one, never half of one."""
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
  try:
    with os.fdopen(fd, "w") as f:
      json.dump(obj, f, indent=2, sort_keys=True, default=str)
      f.write("\n")
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  finally:
    pathlib.Path(tmp).unlink(missing_ok=True)


class Workdir:
  """The files of one run: config.json and metrics.jsonl."""

  def __init__(self, path: str | os.PathLike):
    self.path = pathlib.Path(path).expanduser().absolute()
    self.path.mkdir(parents=True, exist_ok=True)

  def write_config(self, config: Config, model, **extra) -> None:
    """config.json: every setting, the model's resolved fields, and facts about the run."""
    model_fields = {f.name: getattr(model, f.name) for f in dataclasses.fields(model)
                    if f.name not in ("parent", "name")}
    write_json(self.path / "config.json", {
        "config": config.to_dict(), "model": model_fields, **extra,
        "jax_version": jax.__version__, "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()], "argv": sys.argv})

  def append_metrics(self, record: dict[str, Any]) -> None:
    with open(self.path / "metrics.jsonl", "a") as f:
      f.write(json.dumps(record, sort_keys=True) + "\n")
      f.flush()
      os.fsync(f.fileno())


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
  parts.append(f"{record['seconds']:.1f}s")
  return " | ".join(parts)
