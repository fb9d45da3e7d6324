"""The figures: each names its run, shows itself in a notebook, and reads right (whole epochs,
upright digits, legends that can be read)."""

from __future__ import annotations

import numpy as np
import pytest

from mnistjax import plots
from mnistjax.config import Config

TITLE = "lenet on mnist: activation=relu"
CLASSES = [str(d) for d in range(10)]
FASHION = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
           "Bag", "Ankle boot"]


def _epochs(n=3, members=({"member": ""},)):
  """n epochs (and the untrained epoch 0) of every member, as metrics.jsonl holds them."""
  rng = np.random.default_rng(0)
  return [{"epoch": e, "examples_seen": 640 * e, "test_loss": 1 / (e + 1),
           "train_loss": 1 / (e + 2), "test_accuracy": 90 + e + rng.random(),
           "train_accuracy": 91 + e, **member} for e in range(n + 1) for member in members]


SWEEP = {"dropout": (0.0, 0.25), "lr": (0.01, 0.1)}
MEMBERS = [{"member": f"dropout={d},lr={lr}", "dropout": d, "lr": lr}
           for d in SWEEP["dropout"] for lr in SWEEP["lr"]]


def _figures(title):
  swept = _epochs(3, MEMBERS)
  images = np.zeros((12, 28, 28), np.uint8)
  labels = np.arange(12) % 10
  return {
      "loss_curves": plots.loss_curves([{"examples_seen": 64 * i, "loss": 1 / i}
                                        for i in range(1, 30)], _epochs(), title=title),
      "error_curves": plots.error_curves(_epochs(), title=title),
      "prediction_grid": plots.prediction_grid(images, labels, (labels + 1) % 10, CLASSES,
                                               title=title),
      "confusion": plots.confusion(np.arange(100).reshape(10, 10), CLASSES, title=title),
      "sweep_accuracy": plots.sweep_accuracy(swept, SWEEP, title=title),
      "sweep_curves": plots.sweep_curves(swept, title=title),
  }


@pytest.mark.parametrize("name", ["loss_curves", "error_curves", "prediction_grid", "confusion",
                                  "sweep_accuracy", "sweep_curves"])
def test_every_figure_names_its_run_and_shows_as_a_png_in_a_notebook(name):
  fig = _figures(TITLE)[name]
  assert fig._suptitle is not None and fig._suptitle.get_text() == TITLE  # pylint: disable=protected-access
  png = fig._repr_png_()  # what IPython (Jupyter, Colab) shows for a cell's value
  assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 5000


def test_the_title_names_the_model_the_dataset_and_the_variant():
  assert plots.run_title(Config()) == "lenet on mnist"
  assert plots.run_title(Config(model="cnn3", dataset="fashion_mnist", dropout=0.25,
                                optimizer="adam", lr=0.001)) == (
      "cnn3 on fashion_mnist: dropout=0.25, optimizer=adam, lr=0.001")
  assert plots.run_title(Config(activation="relu", dropout=0.5),
                         {"dropout": (0.25, 0.5), "seed": (0, 1)}) == (
      "lenet on mnist: activation=relu; a sweep of dropout x seed")
  # A model and optimiser of yours by their own names, not their modules'.
  assert plots.run_title(Config(model="__main__:Net", optimizer="my_opts:adamw")) == (
      "Net on mnist: optimizer=adamw")


@pytest.mark.parametrize("name", ["error_curves", "sweep_curves"])
def test_epoch_axes_have_whole_ticks(name):
  fig = _figures(TITLE)[name]
  ticks = fig.axes[0].get_xticks()
  assert len(ticks) >= 2 and all(float(t).is_integer() for t in ticks), ticks


def test_digits_stand_upright_and_long_class_names_lean():
  upright = plots.confusion(np.eye(10, dtype=int), CLASSES)
  assert {label.get_rotation() for label in upright.axes[0].get_xticklabels()} == {0.0}
  leaning = plots.confusion(np.eye(10, dtype=int), FASHION)
  assert {label.get_rotation() for label in leaning.axes[0].get_xticklabels()} == {45.0}


def test_sweep_legends_are_readable_and_beside_the_curves():
  figures = _figures(TITLE)
  for name in ("sweep_accuracy", "sweep_curves"):
    legend = figures[name].axes[0].get_legend()
    assert all(text.get_fontsize() >= 8 for text in legend.get_texts()), name
  curves = figures["sweep_curves"]
  curves.draw_without_rendering()  # the layout as a PNG gets it
  renderer = curves._get_renderer()  # pylint: disable=protected-access
  legend_box = curves.axes[0].get_legend().get_window_extent(renderer)
  assert legend_box.x0 >= curves.axes[0].get_window_extent(renderer).x1  # hides no curve
  assert legend_box.x1 <= curves.bbox.x1 + 1  # and fits in the figure
