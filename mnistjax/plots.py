"""The figures of a run: each function returns its matplotlib Figure (a notebook shows it
inline) and, given a path, also saves it as PNG (no display needed).

matplotlib is imported on the first figure, not with this module: a run without a workdir
draws nothing and starts sooner. Figures are matplotlib's object API, not pyplot, so
drawing them changes no backend or pyplot state in the caller's notebook.
"""

from __future__ import annotations

import io
import pathlib

import numpy as np

from mnistjax.config import settings_name
from mnistjax.files import write_bytes


def _subplots(*args, **kwargs):
  """(figure, axes) as pyplot.subplots gives them, for a figure that only saves to files."""
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  fig = Figure(figsize=kwargs.pop("figsize", None))
  return fig, fig.subplots(*args, **kwargs)


def _finish(fig, path: pathlib.Path | str | None):
  """The figure laid out, and written to path (atomically: the old file or the new one, never
  half of one) where one is given."""
  fig.tight_layout()
  if path is not None:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    write_bytes(pathlib.Path(path), buffer.getvalue())
  return fig


def loss_curves(train_log: list[dict], epochs: list[dict], path=None):
  """Training loss per log interval and test (and train-set) loss per epoch, against examples
  seen, as the S1 notebook drew them."""
  fig, ax = _subplots(figsize=(7, 4))
  if train_log:
    ax.plot([r["examples_seen"] for r in train_log], [r["loss"] for r in train_log],
            color="tab:blue", lw=1, label="train loss (running, training mode)")
  seen = [r["examples_seen"] for r in epochs]
  ax.plot(seen, [r["test_loss"] for r in epochs], "o-", color="tab:red", label="test loss")
  if epochs and "train_loss" in epochs[0]:
    ax.plot(seen, [r["train_loss"] for r in epochs], "s--", color="tab:green",
            label="train-set loss (evaluation mode)")
  ax.set_xlabel("training examples seen")
  ax.set_ylabel("negative log-likelihood")
  ax.set_yscale("log")
  ax.legend()
  return _finish(fig, path)


def error_curves(epochs: list[dict], path=None):
  """Train and test error % per epoch."""
  fig, ax = _subplots(figsize=(6, 4))
  x = [r["epoch"] for r in epochs]
  ax.plot(x, [100 - r["test_accuracy"] for r in epochs], "o-", label="test error")
  if epochs and "train_accuracy" in epochs[0]:
    ax.plot(x, [100 - r["train_accuracy"] for r in epochs], "s--", label="train error")
  ax.set_xlabel("epoch")
  ax.set_ylabel("error %")
  ax.set_xticks(x)
  ax.legend()
  return _finish(fig, path)


def prediction_grid(images: np.ndarray, labels: np.ndarray, predictions: np.ndarray,
                    class_names, path=None, n: int = 36):
  """Test images with predicted labels; mistakes in red with the true label."""
  n = min(n, len(images))
  cols = 6
  rows = max(1, -(-n // cols))
  fig, axes = _subplots(rows, cols, figsize=(cols * 1.6, rows * 1.8))
  for ax, image, label, pred in zip(np.ravel(axes), images[:n], labels[:n], predictions[:n]):
    ax.imshow(image, cmap="gray")
    wrong = pred != label
    title = f"{class_names[pred]}" + (f"\n(true {class_names[label]})" if wrong else "")
    ax.set_title(title, color="red" if wrong else "black", fontsize=8)
  for ax in np.ravel(axes):
    ax.set_axis_off()
  return _finish(fig, path)


def confusion(counts: np.ndarray, class_names, path=None):
  """The confusion matrix, counts written in the cells."""
  fig, ax = _subplots(figsize=(7, 6))
  im = ax.imshow(counts, cmap="Blues")
  ax.set_xticks(range(len(class_names)), class_names, rotation=45, ha="right")
  ax.set_yticks(range(len(class_names)), class_names)
  ax.set_xlabel("predicted")
  ax.set_ylabel("true")
  threshold = counts.max() / 2
  for (i, j), c in np.ndenumerate(counts):
    ax.text(j, i, str(c), ha="center", va="center", fontsize=7,
            color="white" if c > threshold else "black")
  fig.colorbar(im, ax=ax)
  return _finish(fig, path)


def sweep_accuracy(records: list[dict], axes: dict[str, tuple], path=None):
  """Final test accuracy against the first non-seed swept value (error bars over seeds), a
  line per setting of the other swept values."""
  last = max(r["epoch"] for r in records)
  finals = [r for r in records if r["epoch"] == last]
  x_axis = next((k for k in axes if k != "seed"), "seed")
  others = [k for k in axes if k not in (x_axis, "seed")]
  fig, ax = _subplots(figsize=(6, 4))
  for label in sorted({tuple(r[k] for k in others) for r in finals}):
    xs = sorted({r[x_axis] for r in finals})
    accs = [[r["test_accuracy"] for r in finals if r[x_axis] == x
             and tuple(r[k] for k in others) == label] for x in xs]
    ax.errorbar(xs, [np.mean(a) for a in accs],
                yerr=[np.std(a, ddof=1) if len(a) > 1 else 0 for a in accs], marker="o",
                capsize=3, label=settings_name(dict(zip(others, label)), ", ") or None)
  if x_axis in ("lr", "weight_decay", "l2") and min(r[x_axis] for r in finals) > 0:
    ax.set_xscale("log")
  ax.set_xlabel(x_axis)
  ax.set_ylabel(f"test accuracy % after epoch {last}")
  if others:
    ax.legend(fontsize=7)
  return _finish(fig, path)


def sweep_curves(records: list[dict], path=None):
  """Every member's test accuracy per epoch."""
  fig, ax = _subplots(figsize=(7, 4))
  for member in dict.fromkeys(r["member"] for r in records):
    rows = [r for r in records if r["member"] == member]
    ax.plot([r["epoch"] for r in rows], [r["test_accuracy"] for r in rows], marker=".",
            label=member)
  ax.set_xlabel("epoch")
  ax.set_ylabel("test accuracy %")
  ax.legend(fontsize=6, ncol=2)
  return _finish(fig, path)
