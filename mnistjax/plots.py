"""The figures of a run: each function returns its matplotlib Figure (a notebook shows it
inline, as a PNG) and, given a path, also saves it as PNG (no display needed). `title` names
the run a figure shows (`run_title`); the driver gives every figure it writes one.

matplotlib is imported on the first figure, not with this module: a run without a workdir
draws nothing and starts sooner. Figures are matplotlib's object API, not pyplot, so
drawing them changes no backend or pyplot state in the caller's notebook; without pyplot,
Jupyter's inline display never switches on, so each figure draws itself for IPython
(`_repr_png_`): it shows in Jupyter and Colab with no `%matplotlib` magic.
"""

from __future__ import annotations

import functools
import io
import pathlib
import textwrap

import numpy as np

from mnistjax.config import Config, settings_name
from mnistjax.files import write_bytes

_DPI = 110

# The settings a study's variants change, named in a figure's title where not the default.
_TITLE_SETTINGS = ("activation", "dropout", "batchnorm", "init", "input_dropout", "prelu_init",
                   "normalization", "optimizer", "lr", "momentum", "weight_decay", "l2")


def run_title(config: Config, axes: dict[str, tuple] | None = None) -> str:
  """Which run a figure shows: "lenet on mnist: activation=relu, dropout=0.25", then the swept
  settings of a sweep."""
  default = Config()
  changed = {k: _short(getattr(config, k)) for k in _TITLE_SETTINGS
             if getattr(config, k) != getattr(default, k) and k not in (axes or {})}
  title = f"{_short(config.model)} on {config.dataset}"
  if changed:
    title += ": " + settings_name(changed, ", ")
  if axes:
    title += "; a sweep of " + " x ".join(axes)
  return title


def _short(value):
  """A model or optimiser of yours by its own name ("my_models:Net" -> "Net")."""
  return value.rpartition(":")[2] if isinstance(value, str) else value


def _png(fig) -> bytes:
  buffer = io.BytesIO()
  fig.savefig(buffer, format="png", dpi=_DPI)
  return buffer.getvalue()


@functools.cache
def _figure_class():
  """matplotlib's Figure, shown as a PNG by IPython (Jupyter, Colab) wherever it is a cell's
  value. Where pyplot's inline backend is on, its own display of Figures comes first."""
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top

  class RunFigure(Figure):

    def _repr_png_(self) -> bytes:
      return _png(self)

  return RunFigure


def _subplots(*args, **kwargs):
  """(figure, axes) as pyplot.subplots gives them, for a figure drawn without pyplot."""
  fig = _figure_class()(figsize=kwargs.pop("figsize", None))
  return fig, fig.subplots(*args, **kwargs)


def _finish(fig, path: pathlib.Path | str | None, title: str | None):
  """The figure titled and laid out, and written to path (atomically: the old file or the new
  one, never half of one) where one is given."""
  if title:
    fig.suptitle(textwrap.fill(title, 80), fontsize=10)
  fig.tight_layout()
  if path is not None:
    write_bytes(pathlib.Path(path), _png(fig))
  return fig


def _integer_ticks(ax) -> None:
  """Epochs are whole: no 0.5 ticks on a short run's axis."""
  from matplotlib.ticker import MaxNLocator  # pylint: disable=g-import-not-at-top
  ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def loss_curves(train_log: list[dict], epochs: list[dict], path=None, title=None):
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
  return _finish(fig, path, title)


def error_curves(epochs: list[dict], path=None, title=None):
  """Train and test error % per epoch."""
  fig, ax = _subplots(figsize=(6, 4))
  x = [r["epoch"] for r in epochs]
  ax.plot(x, [100 - r["test_accuracy"] for r in epochs], "o-", label="test error")
  if epochs and "train_accuracy" in epochs[0]:
    ax.plot(x, [100 - r["train_accuracy"] for r in epochs], "s--", label="train error")
  ax.set_xlabel("epoch")
  ax.set_ylabel("error %")
  _integer_ticks(ax)
  ax.legend()
  return _finish(fig, path, title)


def prediction_grid(images: np.ndarray, labels: np.ndarray, predictions: np.ndarray,
                    class_names, path=None, n: int = 36, title=None,
                    value_range: tuple[float, float] = (0.0, 255.0)):
  """Test images (H x W, or H x W x C with 1 or 3 channels, pixels in value_range) with
  predicted labels; mistakes in red with the true label."""
  n = min(n, len(images))
  cols = 6
  rows = max(1, -(-n // cols))
  fig, axes = _subplots(rows, cols, figsize=(cols * 1.6, rows * 1.8))
  low, high = value_range
  for ax, image, label, pred in zip(np.ravel(axes), images[:n], labels[:n], predictions[:n]):
    image = (np.asarray(image, np.float32) - low) / (high - low)  # [0, 1], as imshow wants
    if image.ndim == 3 and image.shape[-1] != 3:  # one channel (or several): the first, grey
      image = image[..., 0]
    ax.imshow(np.clip(image, 0, 1), cmap="gray", vmin=0, vmax=1)
    wrong = pred != label
    caption = f"{class_names[pred]}" + (f"\n(true {class_names[label]})" if wrong else "")
    ax.set_title(caption, color="red" if wrong else "black", fontsize=8)
  for ax in np.ravel(axes):
    ax.set_axis_off()
  return _finish(fig, path, title)


def confusion(counts: np.ndarray, class_names, path=None, title=None):
  """The confusion matrix, counts written in the cells."""
  fig, ax = _subplots(figsize=(7, 6))
  im = ax.imshow(counts, cmap="Blues")
  short = all(len(str(name)) <= 2 for name in class_names)  # digits stand upright
  ax.set_xticks(range(len(class_names)), class_names, rotation=0 if short else 45,
                ha="center" if short else "right")
  ax.set_yticks(range(len(class_names)), class_names)
  ax.set_xlabel("predicted")
  ax.set_ylabel("true")
  threshold = counts.max() / 2
  for (i, j), c in np.ndenumerate(counts):
    ax.text(j, i, str(c), ha="center", va="center", fontsize=7,
            color="white" if c > threshold else "black")
  fig.colorbar(im, ax=ax)
  return _finish(fig, path, title)


def sweep_accuracy(records: list[dict], axes: dict[str, tuple], path=None, title=None):
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
    ax.legend(fontsize=8, title=", ".join(others), title_fontsize=8)
  return _finish(fig, path, title)


def sweep_curves(records: list[dict], path=None, title=None):
  """Every member's test accuracy per epoch."""
  fig, ax = _subplots(figsize=(7, 4))
  for member in dict.fromkeys(r["member"] for r in records):
    rows = [r for r in records if r["member"] == member]
    ax.plot([r["epoch"] for r in rows], [r["test_accuracy"] for r in rows], marker=".",
            label=member)
  ax.set_xlabel("epoch")
  ax.set_ylabel("test accuracy %")
  _integer_ticks(ax)
  # Beside the axes, where it hides no curve; a second column past 12 members.
  ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1), borderaxespad=0,
            ncol=1 if len(set(r["member"] for r in records)) <= 12 else 2)
  return _finish(fig, path, title)
