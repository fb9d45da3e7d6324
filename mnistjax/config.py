"""The settings of a run: one typed dataclass, validated at one point, saved beside its results;
and the members of a sweep, each a Config of its own.

The command-line flags of `experiments/run.py` are generated from these fields
(`define_flags`, `from_flags`), so the two can't drift apart.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
from collections.abc import Mapping
from typing import Any

from absl import flags

from mnistjax import data, layers, models, step
from mnistjax.errors import ConfigError


# The sections of `--help`, in order.
SECTIONS = ("model", "data", "optimisation", "evaluation and running")
_MODEL, _DATA, _OPT, _RUN = SECTIONS


def _field(default, help_text: str, section: str):
  return dataclasses.field(default=default, metadata={"help": help_text, "section": section})


@dataclasses.dataclass(frozen=True)
class Config:
  """Defaults are study S0's protocol (LeNet, SGD lr 0.01 momentum 0.5, batch 64, 5 epochs)."""
  # Model. None keeps the model's own default.
  model: str = _field("lenet", "network: " + ", ".join(models.MODELS) + ", or a flax module "
                      "of yours: package.module:Name", _MODEL)
  activation: str | None = _field(None, "hidden activation: " + ", ".join(layers.ACTIVATIONS),
                                  _MODEL)
  dropout: float | None = _field(None, "drop probability after hidden layers (0 = off)", _MODEL)
  batchnorm: bool | None = _field(None, "BatchNorm after hidden activations", _MODEL)
  init: str | None = _field(None, "kernel initialiser: " + ", ".join(layers.KERNEL_INITS), _MODEL)
  input_dropout: float | None = _field(None, "drop probability on the input pixels (MLPs)", _MODEL)
  prelu_init: float | None = _field(None, "initial PReLU slope (one slope shared by the layers)",
                                    _MODEL)
  # Data.
  dataset: str = _field("mnist", "mnist or fashion_mnist", _DATA)
  data_dir: str | None = _field(None, f"folder with the IDX files (default ${data.ENV_DATA_DIR})",
                                _DATA)
  normalization: str = _field("auto", "auto (the dataset's preset), estimate, or a preset: "
                              + ", ".join(data.NORMALIZATIONS), _DATA)
  train_limit: int = _field(0, "use only the first N training images (0 = all)", _DATA)
  test_limit: int = _field(0, "use only the first N test images (0 = all)", _DATA)
  verify_data: bool = _field(True, "check the files' contents against the published dataset's "
                             "(false: train on your own IDX files)", _DATA)
  # Optimisation.
  optimizer: str = _field("sgd", "optimiser: " + ", ".join(step.OPTIMIZERS) + ", or a function "
                          "of yours (package.module:function) of learning_rate returning an "
                          "optax transformation", _OPT)
  lr: float = _field(0.01, "learning rate", _OPT)
  momentum: float = _field(0.5, "SGD momentum (PyTorch semantics)", _OPT)
  nesterov: bool = _field(False, "Nesterov momentum", _OPT)
  zero_grad: bool = _field(True, "false: the optimiser sees the running sum of every gradient "
                           "so far, as PyTorch without zero_grad() (the S2 notebook's bug, "
                           "to reproduce it)", _OPT)
  weight_decay: float = _field(0.0, "coupled weight decay, added to the gradient (PyTorch)", _OPT)
  alpha: float = _field(0.99, "RMSprop smoothing constant (PyTorch's alpha)", _OPT)
  eps: float = _field(1e-8, "RMSprop / Adam epsilon, added after the square root", _OPT)
  beta1: float = _field(0.9, "Adam first-moment decay", _OPT)
  beta2: float = _field(0.999, "Adam second-moment decay", _OPT)
  l2: float = _field(0.0, "L2 penalty in the loss: l2 / (2 m) * sum of squared weights (S4)",
                     _OPT)
  schedule: str = _field("constant", "learning-rate schedule after the warm-up: "
                         + ", ".join(step.SCHEDULES) + " (decays reach 0 at the last step)", _OPT)
  warmup_epochs: float = _field(0.0, "linear learning-rate warm-up from 0, in epochs", _OPT)
  epochs: int = _field(5, "training epochs", _OPT)
  batch_size: int = _field(64, "training batch size", _OPT)
  drop_remainder: bool = _field(False, "drop the last partial training batch of each epoch", _OPT)
  seed: int = _field(1, "seed of initialisation, dropout and shuffling", _OPT)
  # Evaluation and running.
  eval_batch_size: int = _field(0, "evaluation batch size (0 = auto: 500 on CPU, 10000 on "
                                "GPU/TPU)", _RUN)
  eval_train: bool = _field(True, "evaluate the full training set after each epoch (as S0)", _RUN)
  log_every: int = _field(100, "log the training loss every N steps", _RUN)
  epoch_loop: str = _field("auto", "python (a jitted step per batch), scan (the dataset on the "
                           "device, each epoch one lax.scan program), auto (scan on GPU/TPU)",
                           _RUN)
  devices: int = _field(0, "data-parallel over this many local devices (0 = all of them)", _RUN)
  checkpoint: bool = _field(True, "checkpoint every epoch in the workdir (for --resume)", _RUN)

  @classmethod
  def from_dict(cls, saved: dict[str, Any]) -> Config:
    """The Config of a config.json's "config" (Config.to_dict()), RETIRED settings dropped."""
    return cls(**{k: v for k, v in saved.items() if k not in RETIRED})

  def replace(self, **changes) -> Config:
    return dataclasses.replace(self, **changes)

  def model_settings(self) -> dict[str, Any]:
    return {"activation": self.activation, "dropout": self.dropout,
            "batchnorm": self.batchnorm, "init_scheme": self.init,
            "input_dropout": self.input_dropout, "prelu_init": self.prelu_init}

  def validate(self) -> Config:
    """Raises ConfigError (one line naming the valid choices) for any invalid setting."""
    for field in fields():  # types first: the checks below compare values
      _check_type(field, getattr(self, field.name))

    def choose(name, value, choices):
      if value not in choices:
        raise ConfigError(f"--{name}={value}: choose one of: {', '.join(map(str, choices))}")

    def check(name, ok, requirement):
      value = getattr(self, name)
      if not ok(value) or (isinstance(value, float) and not math.isfinite(value)):
        raise ConfigError(f"--{name}={value}: must be {requirement}")

    if not models.is_path(self.model):  # an import path is imported where the run builds it
      choose("model", self.model, models.MODELS)
    # A dataset given as arrays keeps its own name (train checks a name it must load).
    if self.dataset not in data.DATASETS and not data.plain_name(self.dataset):
      choose("dataset", self.dataset, data.DATASETS)
    choose("normalization", self.normalization, data.NORMALIZATION_CHOICES)
    if not models.is_path(self.optimizer):
      choose("optimizer", self.optimizer, step.OPTIMIZERS)
    choose("schedule", self.schedule, step.SCHEDULES)
    choose("epoch_loop", self.epoch_loop, ("auto", "python", "scan"))
    if self.activation is not None:
      choose("activation", self.activation, layers.ACTIVATIONS)
    if self.init is not None:
      choose("init", self.init, layers.KERNEL_INITS)
    check("lr", lambda v: v > 0, "> 0")
    check("momentum", lambda v: 0 <= v < 1, "in [0, 1)")
    check("weight_decay", lambda v: v >= 0, ">= 0")
    check("l2", lambda v: v >= 0, ">= 0")
    check("alpha", lambda v: 0 <= v < 1, "in [0, 1)")
    check("beta1", lambda v: 0 <= v < 1, "in [0, 1)")
    check("beta2", lambda v: 0 <= v < 1, "in [0, 1)")
    check("eps", lambda v: v > 0, "> 0")
    check("warmup_epochs", lambda v: 0 <= v <= self.epochs, "in [0, --epochs]")
    check("epochs", lambda v: v >= 1, ">= 1")
    check("batch_size", lambda v: v >= 1, ">= 1")
    check("devices", lambda v: v >= 0, ">= 0 (0 = every local device)")
    check("eval_batch_size", lambda v: v >= 0, ">= 0 (0 = auto)")
    check("log_every", lambda v: v >= 1, ">= 1")
    check("train_limit", lambda v: v >= 0, ">= 0 (0 = all)")
    check("test_limit", lambda v: v >= 0, ">= 0 (0 = all)")
    check("seed", lambda v: 0 <= v < 2**63, "in [0, 2^63)")
    for name in ("dropout", "input_dropout"):
      if getattr(self, name) is not None:
        check(name, lambda v: 0 <= v <= 1, "a drop probability in [0, 1]")
    if models.is_path(self.model):
      return self
    model = models.build(self.model, **self.model_settings())  # a setting the model lacks
    if self.prelu_init is not None and model.activation != "prelu":
      raise ConfigError(f"--prelu_init={self.prelu_init}: the slope of a PReLU; it needs "
                        "--activation=prelu")
    return self

  def resume_changes(self, saved: dict[str, Any]) -> tuple[dict[str, tuple], dict[str, tuple]]:
    """The settings that differ from `saved` (a checkpointed run's Config.to_dict()), as
    {name: (saved, now)}: (those a resumed run may change, those it may not)."""
    now = self.to_dict()
    changed = {k: (saved[k], now[k]) for k in saved.keys() & now.keys() if saved[k] != now[k]}
    allowed = {k: v for k, v in changed.items() if k in RESUME_MAY_CHANGE}
    return allowed, {k: v for k, v in changed.items() if k not in allowed}

  def eval_batch(self, backend: str) -> int:
    """The evaluation batch size: the flag's, or the backend's default (CPU: a batch whose
    activations stay in cache, README, Performance; accelerators: large batches)."""
    return self.eval_batch_size or (500 if backend == "cpu" else 10000)

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


# What a resumed run may change: how long and how fast it trains from here on, and how it is
# evaluated, logged and run. Any other change (the model, the data, the batches' order, the
# optimiser's kind) would continue one run with another's state and mix the two.
RESUME_MAY_CHANGE = ("epochs", "lr", "momentum", "nesterov", "weight_decay", "alpha", "eps",
                     "beta1", "beta2", "l2", "schedule", "warmup_epochs", "eval_batch_size",
                     "eval_train", "log_every", "epoch_loop", "devices", "checkpoint",
                     "data_dir", "verify_data")

# Settings that earlier versions had, and why they are gone: a config.json that holds one still
# loads and resumes, and its flag is accepted and ignored, so old runs and scripts keep working.
RETIRED = {"autotune": "every layer uses its fixed rule",
           "data_source": "the IDX files are read directly and checked against the published "
                          "files' sha256 (tensorflow-datasets read the same files)"}
# The retired flags that took a string, with the values that asked for what the program still
# does (noted and ignored); any other value asked for something gone, and is refused.
RETIRED_STRINGS = {"data_source": ("auto",)}


def fields() -> tuple[dataclasses.Field, ...]:
  return dataclasses.fields(Config)


def _field_type(field: dataclasses.Field) -> tuple[str, bool]:
  """A field's type as ("bool" | "int" | "float" | "str", whether None is allowed)."""
  parts = [p.strip() for p in (field.type if isinstance(field.type, str)
                               else field.type.__name__).split("|")]
  return parts[0], "None" in parts


# What each type accepts. bool is an int to Python, and "false" is truthy: the API would
# train with a setting that config.json records otherwise, so each type is checked exactly.
_TYPES = {"bool": ((bool,), "a bool (True or False)"),
          "int": ((int,), "an int"),
          "float": ((int, float), "a real number"),
          "str": ((str,), "a str")}


def _is(value: Any, kind: str) -> bool:
  types, _ = _TYPES[kind]
  return isinstance(value, types) and (kind == "bool" or not isinstance(value, bool))


def _check_type(field: dataclasses.Field, value: Any) -> None:
  kind, optional = _field_type(field)
  if _is(value, kind) or (optional and value is None):
    return
  what = _TYPES[kind][1] + (" or None" if optional else "")
  if field.name in ("model", "optimizer"):  # an object of yours goes to train, not the config
    what += (f" (a name); give your own to train: mnistjax.train(config, {field.name}=...)")
  raise ConfigError(f"{field.name}={value!r}: must be {what}, not {type(value).__name__}")


def _refuse_unknown_fields(init):
  """Config(bogus=1), Config.replace(bogus=1): one line naming the valid fields, not a
  TypeError."""
  @functools.wraps(init)
  def checked(self, *args, **kwargs):
    unknown = [k for k in kwargs if k not in _FIELD_NAMES]
    if unknown:
      raise ConfigError(f"Config has no setting {', '.join(map(repr, unknown))}; the settings "
                        f"are: {', '.join(_FIELD_NAMES)}")
    if len(args) > len(_FIELD_NAMES):
      raise ConfigError(f"Config takes at most {len(_FIELD_NAMES)} settings; give them by "
                        "name (Config(lr=0.1))")
    init(self, *args, **kwargs)
  return checked


_FIELD_NAMES = tuple(f.name for f in fields())
Config.__init__ = _refuse_unknown_fields(Config.__init__)


# The command line: one flag per field (experiments/run.py), so flags and fields can't drift.
_DEFINE = {"bool": flags.DEFINE_bool, "int": flags.DEFINE_integer,
           "float": flags.DEFINE_float, "str": flags.DEFINE_string}


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """One flag per Config field, with the field's default and help; and the flags of RETIRED
  settings, accepted and ignored (cli.parse_flags notes it)."""
  for field in fields():
    _DEFINE[_field_type(field)[0]](field.name, field.default, field.metadata["help"],
                                   flag_values=flag_values)
  for name, why in RETIRED.items():
    define = flags.DEFINE_string if name in RETIRED_STRINGS else flags.DEFINE_bool
    define(name, None, f"gone ({why}); ignored", flag_values=flag_values)


def flag_overrides(flag_values: flags.FlagValues = flags.FLAGS) -> dict[str, Any]:
  """The Config fields given on the command line, by name."""
  return {f.name: flag_values[f.name].value for f in fields() if flag_values[f.name].present}


def from_flags(flag_values: flags.FlagValues = flags.FLAGS) -> Config:
  """Config() with the flags given on the command line applied, validated."""
  return Config().replace(**flag_overrides(flag_values)).validate()


# What a sweep may vary, with each value's type: values that live in the train state as
# arrays (step.py), so that one compiled program trains every member.
SWEEPABLE = {"dropout": float, "lr": float, "weight_decay": float, "momentum": float,
             "l2": float, "seed": int}


@dataclasses.dataclass(frozen=True)
class Member:
  """One of the K >= 1 variants of a config that a run trains together."""
  name: str  # "dropout=0.25,seed=0"; "" for a plain run's one member
  settings: dict[str, Any]  # the swept values
  config: Config


def parse_sweep(specs: list[str]) -> dict[str, tuple]:
  """["dropout=0.25,0.5", "seed=0,1"] -> {"dropout": (0.25, 0.5), "seed": (0, 1)}."""
  axes: dict[str, tuple] = {}
  for spec in specs:
    key, sep, values = spec.partition("=")
    if not sep or not values:
      raise ConfigError(f"--sweep={spec}: write --sweep=SETTING=V1,V2,... "
                        f"(settings: {', '.join(SWEEPABLE)})")
    if key not in SWEEPABLE:
      raise ConfigError(f"--sweep={spec}: {key!r} can't be swept; choose one of: "
                        f"{', '.join(SWEEPABLE)}")
    if key in axes:
      raise ConfigError(f"--sweep={spec}: {key} is swept twice")
    try:
      axes[key] = tuple(SWEEPABLE[key](v) for v in values.split(","))
    except ValueError:
      raise ConfigError(f"--sweep={spec}: values of {key} must be "
                        f"{SWEEPABLE[key].__name__}s") from None
  return check_sweep(axes)


def check_sweep(axes: Any) -> dict[str, tuple]:
  """The sweep axes of the flags (parse_sweep) or of the API (driver.train), checked: a dict
  of SWEEPABLE settings, each with a non-empty sequence of values of its type (a value may
  repeat: equal members train identically, which tests rely on).
  Raises ConfigError (one line) otherwise; None is no sweep ({})."""
  if axes is None:
    return {}
  if not isinstance(axes, Mapping):
    raise ConfigError(f"sweep={axes!r}: give a dict of settings and their values, e.g. "
                      '{"dropout": (0.25, 0.5)}')
  checked = {}
  for key, values in axes.items():
    if key not in SWEEPABLE:
      raise ConfigError(f"sweep: {key!r} can't be swept; choose one of: {', '.join(SWEEPABLE)}"
                        " (to compare other settings, train one run per value)")
    kind = SWEEPABLE[key].__name__
    if isinstance(values, (str, bytes, Mapping)) or not hasattr(values, "__iter__"):
      raise ConfigError(f"sweep: {key}={values!r}: give a sequence of values (a tuple or "
                        "a list)")
    values = tuple(values)
    if not values:
      raise ConfigError(f"sweep: {key}=(): give at least one value")
    for value in values:
      if not _is(value, kind):
        raise ConfigError(f"sweep: {key}={value!r}: each value of {key} must be "
                          f"{_TYPES[kind][1]}, not {type(value).__name__}")
    checked[key] = values
  return checked


def members(config: Config, axes: dict[str, tuple] | None = None) -> list[Member]:
  """The product of the axes, each member's config validated; without axes, the config's
  one member."""
  if not axes:
    return [Member("", {}, config.validate())]
  out = []
  for values in itertools.product(*axes.values()):
    settings = dict(zip(axes, values))
    out.append(Member(settings_name(settings), settings, config.replace(**settings).validate()))
  return out


def settings_name(settings: dict[str, Any], sep: str = ",") -> str:
  """Settings as "key=value" pairs in their order: the name of a sweep member or a study's
  variant (a folder's name too, hence no spaces by default), or a figure's label."""
  return sep.join(f"{k}={v}" for k, v in settings.items())
