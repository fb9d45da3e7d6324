"""The studies of the notebooks (docs/studies.md): each one's protocol, the variants it compared
and the numbers it printed, as data; `runs` turns a study into runs, `run_study` trains them.

`python experiments/run.py --study=NAME` (or `mnistjax.run_study(NAME)`) trains every variant;
a flag overrides the protocol for all of them, and a flag that sets the varied setting itself
leaves one variant (`--study=s4_activation --activation=relu`). `mnistjax.reproduction` runs
the same runs over seeds and compares them with the notebooks' numbers.

A study's `numbers` hold, per variant (named by `variant_name`), what its notebook printed.
Accuracies are in %; where a notebook printed counts (S0, S1) the value is correct / N, more
exact than its rounded printout. Fields:

  test_accuracy, train_accuracy: after the last epoch (train: the full training set).
  test_accuracy_by_epoch, train_accuracy_by_epoch: after each epoch (S0; S4's Adam run).
  untrained_test_accuracy: before training (S1).
  train_loss_epoch1, train_loss_epoch1_sem: S2's training loss near the end of its one pass
    (the mean of the last block of per-step losses the notebook's text shows, and that mean's
    standard error: the block is a sample of single-batch losses).
  f1_by_class: S4's per-class F1 on the test set (scikit-learn's report, two decimals).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import pathlib
from typing import Any

from mnistjax import data, driver
from mnistjax.config import RETIRED, SWEEPABLE, Config, settings_name
from mnistjax.errors import ConfigError
from mnistjax.files import make_folder, write_json
from mnistjax.workdir import Workdir


@dataclasses.dataclass(frozen=True)
class Study:
  description: str
  config: Config  # the notebook's protocol
  variants: tuple[dict[str, Any], ...] = ({},)  # settings each variant changes
  notebook: str = ""  # what the notebook reported, in words, printed beside our results
  target: float | None = None  # a mean test accuracy (%) the runs must reach (speedrun)
  # What the notebook printed, per variant (see the module's docstring); None: no notebook's.
  numbers: dict[str, dict[str, Any]] | None = None
  notes: str = ""  # where the protocol knowingly differs from the notebook's
  # variant -> why ours differs from the notebook by design.
  expected: dict[str, str] = dataclasses.field(default_factory=dict)
  # The notebook's own quirks as config changes: run over the same seeds when a variant
  # differs, to show whether our departure from the notebook explains the difference.
  quirks: dict[str, Any] = dataclasses.field(default_factory=dict)
  # What the notebook ran where it stopped short of its protocol, for the comparison.
  notebook_ran: dict[str, Any] = dataclasses.field(default_factory=dict)


def _grid(**axes) -> tuple[dict[str, Any], ...]:
  keys = list(axes)
  return tuple(dict(zip(keys, values)) for values in itertools.product(*axes.values()))


# S0 (seed 000): LeNet, SGD lr 0.01 momentum 0.5, batch 64, 5 epochs, Normalize(0.1307, 0.3081),
# PyTorch's default init; train and test sets evaluated after every epoch. Config's defaults.
_S0 = Config(model="lenet")
_S0_NOTE = ("PyTorch LeNet; every number is an evaluation of the whole test (10,000) and "
            "train (60,000) set after each epoch.")
# S1 (seed 001): Fashion-MNIST normalised with its own train-set statistics, SGD momentum 0.9
# with coupled weight decay, batch 64, 1 epoch; the training loss logged every 20 batches.
_S1 = Config(dataset="fashion_mnist", normalization="estimate", lr=0.001, momentum=0.9,
             weight_decay=0.04, epochs=1, log_every=20)
# S2 (seed 002): 784-50-50-10 without biases, Normalize(0.5, 0.5), batch 100, the notebook's
# RMSprop (alpha 0.9, eps after the square root), 100 epochs ("put this into a training loop
# over 100 epochs"). Dropout keep probabilities 0.8 (input) / 0.7 (hidden) are drop rates
# 0.2 / 0.3 here. The notebook ran one pass of its loader (its 100 epochs are a TODO), and its
# loop never zeroes the gradients.
_S2 = Config(model="mlp_small", normalization="half", batch_size=100, optimizer="rmsprop",
             lr=1e-3, alpha=0.9, eps=1e-8, epochs=100, eval_train=False, log_every=200)
_S2_RAN, _S2_QUIRKS = {"epochs": 1}, {"zero_grad": False}
# S4 (seed 004): 784-500-250-100-10, Glorot uniform, zero biases, pixels in [0, 1] (no
# normalisation), plain SGD lr 0.01, batch 64 with the partial batch dropped, 15 epochs.
_S4 = Config(model="mlp_deep", normalization="none", lr=0.01, momentum=0.0, epochs=15,
             drop_remainder=True, log_every=200)
_S4_RELU = {"test_accuracy": 96.94, "train_accuracy": 97.8867,
            "f1_by_class": [0.98, 0.98, 0.97, 0.97, 0.97, 0.96, 0.97, 0.97, 0.96, 0.96]}

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
        "sigmoid 10.28 9.89 56.15 79.74 85.29",
        numbers={
            "activation=relu": {
                "test_accuracy": 98.67, "train_accuracy": 98.8583,
                "test_accuracy_by_epoch": [96.70, 98.35, 98.51, 98.79, 98.67],
                "train_accuracy_by_epoch": [96.6133, 98.0733, 98.4017, 98.915, 98.8583]},
            "activation=sigmoid": {
                "test_accuracy": 85.29, "train_accuracy": 84.975,
                "test_accuracy_by_epoch": [10.28, 9.89, 56.15, 79.74, 85.29],
                "train_accuracy_by_epoch": [10.4417, 9.9567, 55.4267, 79.3067, 84.975]},
        },
        notes=_S0_NOTE),
    "s0_dropout": Study(
        "S0b: LeNet relu with dropout after every hidden layer", _S0,
        _grid(dropout=[0.25, 0.5, 0.75, 1.0]),
        "final test acc 99.14 / 98.95 / 98.69 / 11.28",
        numbers={
            "dropout=0.25": {
                "test_accuracy": 99.14, "train_accuracy": 99.0883,
                "test_accuracy_by_epoch": [97.64, 98.17, 98.75, 98.81, 99.14],
                "train_accuracy_by_epoch": [97.3233, 98.17, 98.6, 98.785, 99.0883]},
            "dropout=0.5": {
                "test_accuracy": 98.95, "train_accuracy": 99.0467,
                "test_accuracy_by_epoch": [97.52, 98.37, 98.72, 98.88, 98.95],
                "train_accuracy_by_epoch": [97.4517, 98.2967, 98.6, 98.7967, 99.0467]},
            "dropout=0.75": {
                "test_accuracy": 98.69, "train_accuracy": 98.5033,
                "test_accuracy_by_epoch": [96.77, 97.73, 98.24, 98.50, 98.69],
                "train_accuracy_by_epoch": [96.4583, 97.47, 98.04, 98.355, 98.5033]},
            "dropout=1.0": {
                "test_accuracy": 11.28, "train_accuracy": 11.1017,
                "test_accuracy_by_epoch": [12.34, 13.63, 12.80, 13.28, 11.28],
                "train_accuracy_by_epoch": [12.215, 13.4183, 12.7117, 13.17, 11.1017]},
        },
        notes=_S0_NOTE + " With dropout 1.0 every hidden unit is dropped in training, so the "
              "evaluated network is the random initial one with a trained output bias: any "
              "accuracy near chance is the same result."),
    "s0_batchnorm": Study(
        "S0c: LeNet relu with BatchNorm after every hidden activation", _S0.replace(batchnorm=True),
        ({"dropout": 0.25}, {"dropout": 0.0}),
        "final test acc: BN + dropout 0.25 99.15; BN only 99.12 (train 99.68)",
        numbers={
            "dropout=0.25": {
                "test_accuracy": 99.15, "train_accuracy": 99.33,
                "test_accuracy_by_epoch": [98.09, 98.90, 98.94, 98.98, 99.15],
                "train_accuracy_by_epoch": [98.165, 98.885, 99.0717, 99.1533, 99.33]},
            "dropout=0.0": {
                "test_accuracy": 99.12, "train_accuracy": 99.6767,
                "test_accuracy_by_epoch": [98.59, 98.97, 98.99, 99.17, 99.12],
                "train_accuracy_by_epoch": [98.6917, 99.2733, 99.4683, 99.6217, 99.6767]},
        },
        notes=_S0_NOTE + " BatchNorm after each hidden activation."),
    "s0_init": Study(
        "S0d: LeNet relu, initialisation with and without BatchNorm", _S0,
        ({"batchnorm": True, "init": "xavier_normal"},
         {"batchnorm": True, "init": "kaiming_normal"},
         {"batchnorm": False, "init": "xavier_normal"}),
        "final test acc: BN + xavier 98.91, BN + kaiming 98.97, xavier no BN 98.17",
        numbers={
            "batchnorm=True,init=xavier_normal": {
                "test_accuracy": 98.91, "train_accuracy": 99.4433,
                "test_accuracy_by_epoch": [98.54, 98.81, 98.98, 99.01, 98.91],
                "train_accuracy_by_epoch": [98.605, 99.1133, 99.37, 99.465, 99.4433]},
            "batchnorm=True,init=kaiming_normal": {
                "test_accuracy": 98.97, "train_accuracy": 99.36,
                "test_accuracy_by_epoch": [97.83, 98.35, 98.65, 98.87, 98.97],
                "train_accuracy_by_epoch": [97.8, 98.6083, 98.9383, 99.1967, 99.36]},
            "batchnorm=False,init=xavier_normal": {
                "test_accuracy": 98.17, "train_accuracy": 98.7483,
                "test_accuracy_by_epoch": [96.07, 98.15, 98.45, 98.84, 98.17],
                "train_accuracy_by_epoch": [95.915, 98.1983, 98.735, 98.975, 98.7483]},
        },
        notes=_S0_NOTE + " The initialiser sets the weights of all four layers; biases keep "
              "PyTorch's default."),
    "s1_fashion_cnn3": Study(
        "S1: CNN3 on Fashion-MNIST, 1 epoch", _S1.replace(model="cnn3"),
        notebook="test acc 87.11% after 1 epoch (untrained: ~11%)",
        numbers={"base": {"test_accuracy": 87.11, "test_accuracy_by_epoch": [87.11],
                          "untrained_test_accuracy": 10.96}},
        notes="The notebook normalised Fashion-MNIST with MNIST's mean and std (0.1307, "
              "0.3081); the study uses Fashion-MNIST's own (0.2860, 0.3530), as its text "
              "intended. The untrained row is the evaluation before training.",
        quirks={"normalization": "mnist"}),
    "s1_lr_wd": Study(
        "S1: learning rate x weight decay grid, CNN on Fashion-MNIST, 1 epoch",
        _S1.replace(model="cnn"),
        _grid(lr=[0.1, 0.01, 0.001, 0.0001], weight_decay=[0.4, 0.04, 0.004]),
        "the notebook's choice lr 0.001, weight decay 0.04",
        # The notebook printed no grid result; its choice is marked on the heatmap.
        numbers={},
        notes="No number in the notebook: it answered the question in prose and chose lr "
              "0.001 with weight decay 0.04. Ours is the grid it asked about."),
    "s2_rmsprop": Study(
        "S2: MLP 784-50-50-10 with the notebook's RMSprop", _S2,
        notebook="training loss at the end of epoch 1 ~0.3-0.5",
        numbers={"base": {"train_loss_epoch1": 0.4476, "train_loss_epoch1_sem": 0.0233}},
        notes="The notebook ran one pass over its loader (its 100 epochs are a TODO) and "
              "printed every step's single-batch loss, of which its text shows excerpts; its "
              "number is the mean of the last excerpt, ours the mean training loss over the "
              "last third of epoch 1 (steps 401-600). Its loop never zeroes the gradients, so "
              "its RMSprop sees their running sum; ours the gradient.",
        quirks=_S2_QUIRKS, notebook_ran=_S2_RAN),
    "s2_dropout": Study(
        "S2: with dropout (keep 0.8 input, 0.7 hidden)", _S2.replace(input_dropout=0.2,
                                                                     dropout=0.3),
        notebook="training loss at the end of epoch 1 ~1.5",
        numbers={"base": {"train_loss_epoch1": 1.5505, "train_loss_epoch1_sem": 0.0151}},
        notes="As s2_rmsprop; dropout keeps 0.8 of the inputs and 0.7 of the hidden units, "
              "and the loss is measured with dropout on.",
        quirks=_S2_QUIRKS, notebook_ran=_S2_RAN),
    "s2_prelu": Study(
        "S2: PReLU (one slope, from -0.1) and dropout", _S2.replace(
            activation="prelu", prelu_init=-0.1, input_dropout=0.2, dropout=0.3),
        notebook="training loss at the end of epoch 1 ~1.2",
        numbers={"base": {"train_loss_epoch1": 1.2638, "train_loss_epoch1_sem": 0.0193}},
        notes="As s2_dropout, with one PReLU slope shared by the layers, from -0.1.",
        quirks=_S2_QUIRKS, notebook_ran=_S2_RAN),
    "s4_activation": Study(
        "S4: deep MLP, sigmoid vs tanh vs relu, plain SGD", _S4,
        _grid(activation=["sigmoid", "tanh", "relu"]),
        "test acc sigmoid 79.66 (train 79.02), tanh 95.47, relu 96.94 (the notebook's backprop "
        "had bugs; ours is correct, so ours may be higher)",
        numbers={
            "activation=sigmoid": {
                "test_accuracy": 79.66, "train_accuracy": 79.0167,
                "f1_by_class": [0.92, 0.95, 0.74, 0.79, 0.74, 0.66, 0.87, 0.85, 0.70, 0.69]},
            "activation=tanh": {
                "test_accuracy": 95.47, "train_accuracy": 95.925,
                "f1_by_class": [0.97, 0.98, 0.95, 0.95, 0.95, 0.95, 0.96, 0.95, 0.94, 0.94]},
            "activation=relu": _S4_RELU,
        },
        notes="The notebook's hand-written backpropagation multiplied by the derivative taken "
              "at the activation's output instead of its input. That is exact for relu (1 "
              "where the output is > 0) and wrong for sigmoid and tanh; ours is correct. It "
              "printed binary cross-entropy but its gradients are those of softmax "
              "cross-entropy, which we train.",
        expected={
            "activation=sigmoid": "the notebook's backpropagation took sigmoid's derivative "
                                  "at its output (a(1 - a) of a = sigmoid(z) becomes "
                                  "s(a)(1 - s(a))), which slowed its training; ours is correct",
            "activation=tanh": "the notebook's backpropagation took tanh's derivative at its "
                               "output (1 - tanh(a)^2 with a = tanh(z)); ours is correct",
        }),
    "s4_l2": Study(
        "S4: relu with the L2 penalty lambda/(2m) sum W^2", _S4.replace(activation="relu"),
        _grid(l2=[0.0, 0.8]),
        "test acc 96.94 without L2, 94.28 with lambda 0.8",
        numbers={
            # l2=0 is not a run of its own in the notebook: it compares with the relu run.
            "l2=0.0": _S4_RELU,
            "l2=0.8": {
                "test_accuracy": 94.28, "train_accuracy": 94.2717,
                "f1_by_class": [0.96, 0.98, 0.94, 0.94, 0.94, 0.93, 0.95, 0.94, 0.92, 0.92]},
        },
        notes="relu, so the notebook's derivative bug has no effect; the penalty is "
              "lambda / (2 m) * sum W^2 over the weights."),
    "speedrun": Study(
        "Speedrun: >= 99.0% mean test accuracy over 5 seeds (one sweep) in the least time",
        _SPEEDRUN, _grid(seed=[0, 1, 2, 3, 4]),
        "public single-GPU record: 0.76 s on a GTX 1660 Ti (tuomaso/train_mnist_fast)",
        target=99.0),
    "s4_adam": Study(
        "S4: relu with Adam lr 0.01", _S4.replace(activation="relu", optimizer="adam"),
        notebook="test acc 97.4",
        # Printed with one decimal: the true value lies within +-0.05.
        numbers={"base": {"test_accuracy": 97.4,
                          "test_accuracy_by_epoch": [95.2, 92.5, 95.5, 95.6, 96.0, 95.6, 95.7,
                                                     96.6, 97.3, 96.3, 97.0, 96.4, 97.0, 97.2,
                                                     97.4]}},
        notes="PyTorch's Adam in the notebook; its loader was not shuffled and kept the last "
              "partial batch, ours is shuffled and drops it (as S4's other runs)."),
}


def lookup(name: str) -> Study:
  if name not in STUDIES:
    raise ConfigError(f"unknown study {name!r}; choose one of: {', '.join(STUDIES)}")
  return STUDIES[name]


def variant_name(changes: dict[str, Any]) -> str:
  """A folder-safe name for a variant: "activation=relu,dropout=0.25" (or "base")."""
  return settings_name(dict(sorted(changes.items()))) or "base"


def expand(name: str, overrides: dict[str, Any] | None = None) -> list[tuple[str, Config]]:
  """The study's variants as (variant name, config), flags applied after the variant's changes.

  A flag that sets a varied setting makes the variants that differ only in it one run.
  """
  study, overrides = lookup(name), overrides or {}
  variants: dict[str, Config] = {}
  for changes in study.variants:
    effective = {k: v for k, v in changes.items() if k not in overrides}
    variants.setdefault(variant_name(effective),
                        study.config.replace(**changes).replace(**overrides).validate())
  return list(variants.items())


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


@dataclasses.dataclass(frozen=True)
class Run:
  """One training run of a study: its name (a variant's, or "sweep" where the variants train
  as one sweep), which is also its folder under the study's workdir, its config and its sweep
  axes (None: one member)."""
  name: str
  config: Config
  axes: dict[str, tuple] | None


def runs(name: str, overrides: dict[str, Any] | None = None,
         sweep: dict[str, tuple] | None = None) -> list[Run]:
  """The runs a study consists of: its variants as one sweep where they allow it, else one run
  per variant; `overrides` change the protocol of every run, `sweep` adds axes (e.g. seeds)
  to every run."""
  study, overrides = lookup(name), overrides or {}
  axes = as_sweep(name, overrides)
  if axes is not None:
    return [Run("sweep", study.config.replace(**overrides).validate(), {**axes, **(sweep or {})})]
  return [Run(variant, config, sweep or None) for variant, config in expand(name, overrides)]


def run_study(name: str, overrides: dict[str, Any] | None = None, workdir: str | None = None,
              resume: bool = False, log=print, sweep: dict[str, tuple] | None = None,
              overwrite: bool = False) -> list[dict[str, Any]]:
  """Trains a study's runs (`runs`), each in workdir/<run name>/, or in the workdir itself where
  there is one; `sweep` adds axes (e.g. seeds) to every run; resume and overwrite apply to
  each run's folder (see driver.train).

  Returns one row per member of every run: its name and final numbers.
  """
  study = lookup(name)
  if resume and workdir is None:
    raise ConfigError("--resume needs the --workdir of the study to continue")
  study_runs = runs(name, overrides, sweep)
  axes = study_runs[0].axes
  log(f"study {name}: {study.description}; "
      + (f"one sweep over {', '.join(axes)}" if axes else f"{len(study_runs)} run(s)"))
  folder = make_folder(workdir) if workdir is not None else None  # before the data
  first = study_runs[0].config
  dataset = data.load(first.dataset, first.data_dir, verify=first.verify_data)
  rows = []
  for run in study_runs:
    log(f"--- {name} / {run.name}")
    sub = None if workdir is None else (workdir if len(study_runs) == 1
                                        else f"{workdir}/{run.name}")
    summary = _finished(sub, run) if resume else None
    if summary is not None:
      log(f"finished earlier with these settings: its results in {sub} are kept")
    else:
      # --resume continues each run where it stopped: the interrupted one from its checkpoint,
      # one that holds no run yet from the start (with nothing to resume from, "resume"
      # would refuse it), one stopped before its first checkpoint again (--overwrite keeps
      # its files aside until the new run has a checkpoint).
      how = _resume_mode(sub) if resume else ("overwrite" if overwrite else "new")
      summary = driver.train(run.config, run.axes, sub, dataset, resume=how == "resume",
                             overwrite=how == "overwrite", log=log).summary
    for member in summary["members"]:
      rows.append({"variant": ",".join(n for n in (run.name if len(study_runs) > 1 else "",
                                                   member["member"]) if n) or run.name,
                   "test_accuracy": member["final"]["test_accuracy"],
                   "test_loss": member["final"]["test_loss"],
                   "train_accuracy": member["final"].get("train_accuracy"),
                   "wall_seconds": summary["wall_seconds"],
                   "compile_seconds": summary["compile_seconds"], "run": run.name})
  log(format_table(name, rows))
  outcome = target_outcome(study, rows) if study.target is not None else None
  if outcome:
    log(outcome["line"])
  if folder is not None:
    write_json(folder / "study.json",
               {"study": name, "description": study.description, "notebook": study.notebook,
                "runs": rows, "target": outcome})
  return rows


def _finished(folder: str, run: Run) -> dict[str, Any] | None:
  """The summary of the run in folder where it finished (its summary.json is written last)
  with run's settings and sweep; else None (it continues, or starts)."""
  path = pathlib.Path(folder)
  try:
    saved = json.loads((path / "config.json").read_text())
    summary = json.loads((path / "summary.json").read_text())
  except (OSError, ValueError):
    return None
  if not isinstance(saved, dict) or not isinstance(summary, dict):
    return None
  axes = {k: list(v) for k, v in (run.axes or {}).items()}
  settings = saved.get("config")  # a retired setting (data_source) changed nothing
  settings = {k: v for k, v in settings.items() if k not in RETIRED} if isinstance(
      settings, dict) else settings
  same = (settings == run.config.to_dict() and saved.get("sweep") == axes
          and saved.get("sweep_order", list(axes)) == list(axes))
  return summary if same else None


def _resume_mode(folder: str) -> str:
  """How a study continued with --resume trains one of its runs: "resume" from its
  checkpoint, "new" where the folder holds no run yet, "overwrite" where its run stopped
  before its first checkpoint."""
  out = Workdir(folder)
  return "resume" if out.has_checkpoint() else "overwrite" if out.holds_run() else "new"


def target_outcome(study: Study, rows: list[dict[str, Any]]) -> dict[str, Any]:
  """Whether the mean final test accuracy reached the study's target, and in what time (the
  runs' wall time, with and without compiling)."""
  accuracies = [r["test_accuracy"] for r in rows]
  mean = sum(accuracies) / len(accuracies)
  std = (sum((a - mean) ** 2 for a in accuracies) / max(len(accuracies) - 1, 1)) ** 0.5
  run_rows = {r["run"]: r for r in rows}.values()  # a sweep's members share one run
  wall = sum(r["wall_seconds"] for r in run_rows)
  compile_seconds = sum(r["compile_seconds"] for r in run_rows)
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
