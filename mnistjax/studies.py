"""The studies of the notebooks (docs/studies.md) as named configs: each notebook's protocol and
the variants it compared.

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
# decays to zero; one epoch, only the test set evaluated. On a 2-core CPU: 99.08 +- 0.02 over
# seeds 0-4 in 31.9-32.4 s, where LeNet (batch 128, lr 0.15) took 48.8-53.3 s for 99.09 +- 0.10
# (interleaved runs; README, Performance). Without BatchNorm the CNN reached 98.76; with it,
# lr 0.05 / 0.2 gave 98.95 / 99.00 and batch 128 / 256 were slower or missed.
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
  from mnistjax.sweep import SWEEPABLE  # pylint: disable=g-import-not-at-top

  variants = lookup(name).variants
  keys = list(dict.fromkeys(k for v in variants for k in v))
  if (len(variants) < 2 or not keys or not set(keys) <= set(SWEEPABLE)
      or set(keys) & set(overrides or {}) or any(set(v) != set(keys) for v in variants)):
    return None
  axes = {k: tuple(dict.fromkeys(v[k] for v in variants)) for k in keys}
  grid = [dict(zip(axes, values)) for values in itertools.product(*axes.values())]
  return axes if grid == list(variants) else None


def run(name: str, overrides: dict[str, Any] | None = None, workdir: str | None = None,
        resume: bool = False, log=print, sweep: dict[str, tuple] | None = None
        ) -> list[dict[str, Any]]:
  """Runs a study: as one sweep where its variants allow it, else variant after variant (each
  in workdir/<variant>/). `sweep` adds axes (e.g. seeds) to every run.

  Returns one row per run or member: its name and final numbers.
  """
  from mnistjax import data, reporting, train  # pylint: disable=g-import-not-at-top

  study, overrides = lookup(name), overrides or {}
  axes = as_sweep(name, overrides)
  if axes is not None:
    runs = [("sweep", study.config.replace(**overrides).validate())]
    axes = {**axes, **(sweep or {})}
  else:
    runs, axes = expand(name, overrides), sweep or None
  log(f"study {name}: {study.description}; "
      + (f"one sweep over {', '.join(axes)}" if axes else f"{len(runs)} run(s)"))
  first = runs[0][1]
  dataset = data.load(first.dataset, first.data_dir, first.data_source)
  rows = []
  for variant, config in runs:
    log(f"--- {name} / {variant}")
    sub = None if workdir is None else (workdir if len(runs) == 1 else f"{workdir}/{variant}")
    result = train.train_and_evaluate(config, workdir=sub, dataset=dataset, resume=resume,
                                      log=log, sweep=axes)
    for member in result.get("members") or [{**result["final"], "member": variant}]:
      rows.append({"variant": member["member"], "test_accuracy": member["test_accuracy"],
                   "test_loss": member["test_loss"],
                   "train_accuracy": member.get("train_accuracy"),
                   "wall_seconds": result["wall_seconds"],
                   "compile_seconds": result["compile_seconds"], "run": variant})
  log(format_table(name, rows))
  outcome = target_outcome(study, rows) if study.target is not None else None
  if outcome:
    log(outcome["line"])
  if workdir is not None:
    reporting.write_json(reporting.Workdir(workdir, log).path / "study.json",
                         {"study": name, "description": study.description,
                          "notebook": study.notebook, "runs": rows, "target": outcome})
  return rows


def target_outcome(study: Study, rows: list[dict[str, Any]]) -> dict[str, Any]:
  """Whether the mean final test accuracy reached the study's target, and in what time (the
  runs' wall time, with and without compiling)."""
  accuracies = [r["test_accuracy"] for r in rows]
  mean = sum(accuracies) / len(accuracies)
  std = (sum((a - mean) ** 2 for a in accuracies) / max(len(accuracies) - 1, 1)) ** 0.5
  runs = {r["run"]: r for r in rows}.values()  # a sweep's members share one run
  wall = sum(r["wall_seconds"] for r in runs)
  compile_seconds = sum(r["compile_seconds"] for r in runs)
  reached = mean >= study.target
  line = (f"target {study.target:.2f}% mean test accuracy: {'reached' if reached else 'MISSED'}"
          f" ({mean:.2f} +- {std:.2f} over {len(rows)} runs) in {wall:.1f} s including "
          f"compile, {wall - compile_seconds:.1f} s without")
  return {"reached": reached, "mean": mean, "std": std, "wall_seconds": wall,
          "compile_seconds": compile_seconds, "line": line}


def format_table(name: str, rows: list[dict[str, Any]]) -> str:
  """The study's results beside what the notebook reported."""
  width = max(len(r["variant"]) for r in rows)
  lines = [f"{name}: {'variant':<{width}}  test acc  train acc  wall s"]
  for r in rows:
    train_acc = f"{r['train_accuracy']:9.2f}" if r["train_accuracy"] is not None else f"{'':>9}"
    lines.append(f"{'':>{len(name) + 2}}{r['variant']:<{width}}  {r['test_accuracy']:8.2f}"
                 f"  {train_acc}  {r['wall_seconds']:6.1f}")
  if STUDIES[name].notebook:
    lines.append(f"notebook: {STUDIES[name].notebook}")
  return "\n".join(lines)
