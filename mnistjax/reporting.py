"""What a run reports: printed lines, a progress bar, the interval and divergence logs, and
the result files of its workdir."""

from __future__ import annotations

import io
import sys
from collections.abc import Callable
from typing import Any

import numpy as np
import tqdm
import tqdm.auto

from mnistjax import data, metrics, plots, sweep
from mnistjax.epochs import Interval
from mnistjax.errors import NonFiniteLoss
from mnistjax.workdir import Workdir

def _in_notebook() -> bool:
  """Whether this runs in a Jupyter (or Colab) kernel, whose output stream is no terminal."""
  return "ipykernel" in sys.modules


def progress(total: int, desc: str) -> tqdm.std.tqdm:
  """A progress bar on a terminal or in a notebook (tqdm.auto: a widget where ipywidgets is
  installed, else text); nothing when output goes to a file (disable=None: only on a TTY)."""
  return tqdm.auto.tqdm(total=total, desc=desc, leave=False, unit="step",
                        disable=False if _in_notebook() else None, dynamic_ncols=True)


def epoch_line(record: dict[str, Any]) -> str:
  """One printed line per epoch."""
  parts = [f"epoch {record['epoch']:>3}"]
  if "train_loss" in record:
    parts.append(f"train loss {record['train_loss']:.4f} acc {record['train_accuracy']:6.2f}%")
  parts.append(f"test loss {record['test_loss']:.4f} acc {record['test_accuracy']:6.2f}%")
  if "seconds" in record:
    parts.append(f"{record['seconds']:.1f}s")
  return " | ".join(parts)


class Reporter:
  """The printed lines and the workdir records of a run of K >= 1 members. A plain run (one
  member, nothing swept) prints and writes its records untagged; a sweep tags each with its
  member's name and settings."""

  def __init__(self, group: list[sweep.Member], out: Workdir | None,
               log: Callable[[str], None] = print):
    self.group, self.out = group, out
    self.log = out.log if out else log
    self.plain = len(group) == 1 and not group[0].settings
    self.frozen: dict[int, int] = {}  # member -> the step at which it stopped
    self.train_log: list[dict[str, Any]] = []  # the interval rows (train_log.jsonl)

  def tag(self, k: int, record: dict[str, Any]) -> dict[str, Any]:
    """A record as the history keeps it: a sweep's tagged with its member."""
    if self.plain:
      return dict(record)
    member = self.group[k]
    return {"member": member.name, **member.settings, **record}

  def epoch(self, records: list[dict[str, Any]], suffix: str = "") -> list[dict[str, Any]]:
    """Prints and appends (metrics.jsonl) one epoch's records; returns them tagged."""
    rows = []
    for k, record in enumerate(records):
      row = self.tag(k, {key: v for key, v in record.items() if key != "predictions"})
      prefix = "" if self.plain else f"[{row['member']}] "
      self.log(prefix + epoch_line(row) + suffix)
      if self.out:
        self.out.append("metrics.jsonl", row)
      rows.append(row)
    return rows

  def interval(self, interval: Interval, bar) -> None:
    """One log interval: divergence reports, the bar's loss, a train_log.jsonl row."""
    losses, alive, rows = interval.losses, interval.alive, interval.rows
    for k in np.flatnonzero(~alive.all(axis=0)):
      if k in self.frozen:
        continue
      j = int(np.argmin(alive[:, k]))  # the member's first step not taken
      self.frozen[k] = rows[j]["step"]
      what = (f"the training loss became {losses[j, k]}" if not np.isfinite(losses[j, k])
              else "the parameters became NaN or infinite")
      where = f"at step {rows[j]['step']} (epoch {rows[j]['epoch']})"
      if self.plain:
        raise NonFiniteLoss(f"{what} {where}; lower --lr or check the data")
      self.log(f"member {self.group[k].name}: {what} {where}; frozen, the other members go on")
    if len(self.frozen) == len(self.group):
      raise NonFiniteLoss(f"every member of the sweep diverged by step "
                          f"{max(self.frozen.values())} (epoch {rows[-1]['epoch']}); lower --lr")
    count = alive.sum(axis=0)
    mean = np.where(count > 0, np.where(alive, losses, 0.0).sum(axis=0) / np.maximum(count, 1),
                    np.nan)  # per member, over the steps it took
    bar.set_postfix(loss=f"{np.nanmean(mean):.4f}")
    row = {**rows[-1], "interval": len(rows),
           "loss": float(mean[0]) if self.plain else mean.tolist()}
    self.train_log.append(row)
    if self.out:
      self.out.append("train_log.jsonl", row)

  def evaluation(self, records: list[dict[str, Any]]) -> np.ndarray:
    """Which members' evaluation (test, or train-set, loss) is not finite, newly: they are
    frozen from here on, reported; a plain run stops. Returns that mask (K,)."""
    bad = np.zeros(len(records), bool)
    for k, record in enumerate(records):
      losses = [record[key] for key in ("train_loss", "test_loss") if key in record]
      if k in self.frozen or all(np.isfinite(losses)):
        continue
      what = f"the evaluation loss became {next(v for v in losses if not np.isfinite(v))}"
      where = f"after epoch {record['epoch']}"
      if self.plain:
        raise NonFiniteLoss(f"{what} {where}; lower --lr or check the data")
      self.frozen[k] = record["step"]
      bad[k] = True
      self.log(f"member {self.group[k].name}: {what} {where}; frozen, the other members go on")
    if len(self.frozen) == len(self.group):
      raise NonFiniteLoss(f"every member of the sweep diverged by step "
                          f"{max(self.frozen.values())} (epoch {records[0]['epoch']}); lower --lr")
    return bad


def write_results(out: Workdir, dataset: data.Dataset, summary: dict[str, Any],
                  history: list[dict[str, Any]], predictions: np.ndarray,
                  axes: dict[str, tuple] | None) -> None:
  """summary.json and predictions.npy; a plain run's classification report, confusion matrix
  and figures, a sweep's figures."""
  buffer = io.BytesIO()
  np.save(buffer, predictions)
  out.write_bytes("predictions.npy", buffer.getvalue())
  out.write_json("summary.json", summary)
  if axes:
    plots.sweep_accuracy(history, axes, out.path / "sweep_accuracy.png")
    plots.sweep_curves(history, out.path / "sweep_curves.png")
    return
  names = dataset.class_names
  confusion = metrics.confusion_matrix(dataset.test.labels, predictions[0])
  out.write_text("classification_report.txt",
                 metrics.format_report(summary["members"][0]["classification_report"]))
  out.write_text("confusion_matrix.csv", "true\\predicted," + ",".join(names) + "\n" + "\n".join(
      f"{name}," + ",".join(map(str, row)) for name, row in zip(names, confusion)) + "\n")
  plots.loss_curves(out.read("train_log.jsonl"), history, out.path / "loss.png")
  plots.error_curves(history, out.path / "error.png")
  plots.prediction_grid(dataset.test.images, dataset.test.labels, predictions[0], names,
                        out.path / "predictions.png")
  plots.confusion(confusion, names, out.path / "confusion_matrix.png")
