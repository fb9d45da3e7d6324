"""The studies of the notebooks (docs/studies.md) as named configs: each notebook's protocol and
the variants it compared.

This module is data: the studies and their variants. `mnistjax.runner` runs them:
`python experiments/run.py --study=NAME` runs every variant; a flag overrides
the protocol for all of them, and a flag that sets the varied setting itself
leaves one variant (`--study=s4_activation --activation=relu`).
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any

from mnistjax.config import Config
from mnistjax.errors import ConfigError
from mnistjax.config import SWEEPABLE


@dataclasses.dataclass(frozen=True)
class Study:
  description: str
  config: Config  # the notebook's protocol
  variants: tuple[dict[str, Any], ...] = ({},)  # settings each variant changes
  notebook: str = ""  # what the notebook reported, to put beside ours
  target: float | None = None  # a mean test accuracy (%) the runs must reach (speedrun)


def _grid(**axes) -> tuple[dict[str, Any], ...]:
  keys = list(axes)
  return tuple(dict(zip(keys, values)) for values in itertools.product(*axes.values()))


# S0 (seed 000): LeNet, SGD lr 0.01 momentum 0.5, batch 64, 5 epochs, Normalize(0.1307, 0.3081),
# PyTorch's default init; train and test sets evaluated after every epoch. Config's defaults.
_S0 = Config(model="lenet")
# S1 (seed 001): Fashion-MNIST normalised with its own train-set statistics, SGD momentum 0.9
# with coupled weight decay, batch 64, 1 epoch; the training loss logged every 20 batches.
_S1 = Config(dataset="fashion_mnist", normalization="estimate", lr=0.001, momentum=0.9,
             weight_decay=0.04, epochs=1, log_every=20)
# S2 (seed 002): 784-50-50-10 without biases, Normalize(0.5, 0.5), batch 100, the notebook's
# RMSprop (alpha 0.9, eps after the square root), 100 epochs ("put this into a training loop
# over 100 epochs"). Dropout keep probabilities 0.8 (input) / 0.7 (hidden) are drop rates
# 0.2 / 0.3 here.
_S2 = Config(model="mlp_small", normalization="half", batch_size=100, optimizer="rmsprop",
             lr=1e-3, alpha=0.9, eps=1e-8, epochs=100, eval_train=False, log_every=200)
# S4 (seed 004): 784-500-250-100-10, Glorot uniform, zero biases, pixels in [0, 1] (no
# normalisation), plain SGD lr 0.01, batch 64 with the partial batch dropped, 15 epochs.
_S4 = Config(model="mlp_deep", normalization="none", lr=0.01, momentum=0.0, epochs=15,
             drop_remainder=True, log_every=200)

# Speedrun (not a notebook): S1's small CNN (conv 16@5, conv 32@3, dense 128: a third of
# LeNet's FLOPs) with BatchNorm, Nesterov momentum and a learning rate that warms up and
# decays to zero; one epoch, only the test set evaluated. The alternatives tried (LeNet,
# no BatchNorm, other learning rates and batch sizes) and their times: README, Performance.
_SPEEDRUN = Config(model="cnn", batchnorm=True, batch_size=64, lr=0.1, momentum=0.9,
                   nesterov=True, schedule="linear", warmup_epochs=0.2, epochs=1,
                   eval_train=False, log_every=200)

# The one list of studies.
STUDIES: dict[str, Study] = {
    "s0_activation": Study(
        "S0a: LeNet relu vs sigmoid", _S0,
        _grid(activation=["relu", "sigmoid"]),
        "test acc after epochs 1-5: relu 96.70 98.35 98.51 98.79 98.67; "
        "sigmoid 10.28 9.89 56.15 79.74 85.29"),
    "s0_dropout": Study(
        "S0b: LeNet relu with dropout after every hidden layer", _S0,
        _grid(dropout=[0.25, 0.5, 0.75, 1.0]),
        "final test acc 99.14 / 98.95 / 98.69 / 11.28"),
    "s0_batchnorm": Study(
        "S0c: LeNet relu with BatchNorm after every hidden activation", _S0.replace(batchnorm=True),
        ({"dropout": 0.25}, {"dropout": 0.0}),
        "final test acc: BN + dropout 0.25 99.15; BN only 99.12 (train 99.68)"),
    "s0_init": Study(
        "S0d: LeNet relu, initialisation with and without BatchNorm", _S0,
        ({"batchnorm": True, "init": "xavier_normal"},
         {"batchnorm": True, "init": "kaiming_normal"},
         {"batchnorm": False, "init": "xavier_normal"}),
        "final test acc: BN + xavier 98.91, BN + kaiming 98.97, xavier no BN 98.17"),
    "s1_fashion_cnn3": Study(
        "S1: CNN3 on Fashion-MNIST, 1 epoch", _S1.replace(model="cnn3"),
        notebook="test acc 87.11% after 1 epoch (untrained: ~11%)"),
    "s1_lr_wd": Study(
        "S1: learning rate x weight decay grid, CNN on Fashion-MNIST, 1 epoch",
        _S1.replace(model="cnn"),
        _grid(lr=[0.1, 0.01, 0.001, 0.0001], weight_decay=[0.4, 0.04, 0.004]),
        "the notebook's choice lr 0.001, weight decay 0.04"),
    "s2_rmsprop": Study(
        "S2: MLP 784-50-50-10 with the notebook's RMSprop", _S2,
        notebook="training loss at the end of epoch 1 ~0.3-0.5"),
    "s2_dropout": Study(
        "S2: with dropout (keep 0.8 input, 0.7 hidden)", _S2.replace(input_dropout=0.2,
                                                                     dropout=0.3),
        notebook="training loss at the end of epoch 1 ~1.5"),
    "s2_prelu": Study(
        "S2: PReLU (one slope, from -0.1) and dropout", _S2.replace(
            activation="prelu", prelu_init=-0.1, input_dropout=0.2, dropout=0.3),
        notebook="training loss at the end of epoch 1 ~1.2"),
    "s4_activation": Study(
        "S4: deep MLP, sigmoid vs tanh vs relu, plain SGD", _S4,
        _grid(activation=["sigmoid", "tanh", "relu"]),
        "test acc sigmoid 79.66 (train 79.02), tanh 95.47, relu 96.94 (the notebook's backprop "
        "had bugs; ours is correct, so ours may be higher)"),
    "s4_l2": Study(
        "S4: relu with the L2 penalty lambda/(2m) sum W^2", _S4.replace(activation="relu"),
        _grid(l2=[0.0, 0.8]),
        "test acc 96.94 without L2, 94.28 with lambda 0.8"),
    "speedrun": Study(
        "Speedrun: >= 99.0% mean test accuracy over 5 seeds (one sweep) in the least time",
        _SPEEDRUN, _grid(seed=[0, 1, 2, 3, 4]),
        "public single-GPU record: 0.76 s on a GTX 1660 Ti (tuomaso/train_mnist_fast)",
        target=99.0),
    "s4_adam": Study(
        "S4: relu with Adam lr 0.01", _S4.replace(activation="relu", optimizer="adam"),
        notebook="test acc 97.4"),
}


def lookup(name: str) -> Study:
  if name not in STUDIES:
    raise ConfigError(f"unknown study {name!r}; choose one of: {', '.join(STUDIES)}")
  return STUDIES[name]


def variant_name(changes: dict[str, Any]) -> str:
  """A folder-safe name for a variant: "activation=relu,dropout=0.25" (or "base")."""
  return ",".join(f"{k}={v}" for k, v in sorted(changes.items())) or "base"


def expand(name: str, overrides: dict[str, Any] | None = None) -> list[tuple[str, Config]]:
  """The study's runs as (variant name, config), flags applied after the variant's changes.

  A flag that sets a varied setting makes the variants that differ only in it one run.
  """
  study, overrides = lookup(name), overrides or {}
  runs: dict[str, Config] = {}
  for changes in study.variants:
    effective = {k: v for k, v in changes.items() if k not in overrides}
    runs.setdefault(variant_name(effective),
                    study.config.replace(**changes).replace(**overrides).validate())
  return list(runs.items())


def as_sweep(name: str, overrides: dict[str, Any] | None = None) -> dict[str, tuple] | None:
  """The study's variants as sweep axes, when they differ only in sweepable values that form a
  grid and no flag sets them; else None (the variants run one after the other)."""
  variants = lookup(name).variants
  keys = list(dict.fromkeys(k for v in variants for k in v))
  if (len(variants) < 2 or not keys or not set(keys) <= set(SWEEPABLE)
      or set(keys) & set(overrides or {}) or any(set(v) != set(keys) for v in variants)):
    return None
  axes = {k: tuple(dict.fromkeys(v[k] for v in variants)) for k in keys}
  grid = [dict(zip(axes, values)) for values in itertools.product(*axes.values())]
  return axes if grid == list(variants) else None
