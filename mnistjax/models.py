"""The networks of the studies as functional Flax linen modules, and one registry of them by name.

Every model maps normalised images (B x H x W x C, float) to logits (B x classes):
`model.apply(variables, x, train=False)`, as Flax's own modules do. In training,
pass `train=True`, `rngs={"dropout": key}` and `mutable=["batch_stats"]` where
the model has BatchNorm. `mask` (B,), optional, marks the real examples of a
padded batch: BatchNorm takes its statistics over those only (the others are
ignored by the loss; see mnistjax.parallel).

Any other flax.linen.Module trains too (`mnistjax.train(config, model=...)`, or
`--model=package.module:Name`): `check` says in one line what it lacks.

`python -m mnistjax.models` prints every model with its parameter count.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import inspect
import math
import os
import sys
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mnistjax import layers
from mnistjax.errors import ConfigError


class ConvNet(nn.Module):
  """Two conv blocks, one hidden dense layer, dense output: LeNet (S0), CNN and CNN2 (S1).

  Each conv is followed by activation, [BatchNorm], [dropout], max-pool 2; the hidden
  dense layer by activation, [BatchNorm], [dropout] (the S0 notebook's order).
  """
  features: tuple[int, ...] = (20, 50)
  kernel_sizes: tuple[int, ...] = (5, 5)
  padding: tuple[int, ...] = (0, 0)
  hidden: int = 500
  activation: str = "relu"
  dropout: float = 0.0  # drop probability after each hidden layer
  batchnorm: bool = False
  init_scheme: str = "torch_default"  # kernel initialiser; biases keep PyTorch's default
  linear_output_gain: bool = False  # kaiming schemes: gain 1 on the output layer
  prelu_init: float = 0.25  # with activation "prelu": one slope shared by all hidden layers
  num_classes: int = 10

  @nn.compact
  def __call__(self, x_BxHxWx1: jax.Array, train: bool = False,
               mask: jax.Array | None = None) -> jax.Array:
    act = layers.activation(self.activation, self.prelu_init)
    kinit = layers.kernel_init(self.init_scheme)

    def post(x, i):
      x = act(x)
      if self.batchnorm:
        x = layers.batch_norm(train, name=f"bn{i}")(x, mask=layers.example_mask(mask, x))
      return layers.Dropout(self.dropout)(x, train)

    # pool(act(x)) = act(pool(x)) when the block is just a non-decreasing activation: pooling
    # first gives the same numbers with a quarter of the activation work (and its gradient).
    plain = (self.activation in layers.MONOTONE_ACTIVATIONS and not self.batchnorm
             and isinstance(self.dropout, (int, float)) and self.dropout == 0)
    pool = functools.partial(layers.max_pool, window=2)
    x = x_BxHxWx1
    for i, (f, k, p) in enumerate(zip(self.features, self.kernel_sizes, self.padding), 1):
      x = layers.Conv2d(f, k, p, kinit, name=f"conv{i}")(x, train)
      x = post(pool(x), i) if plain else pool(post(x, i))
    x = x.reshape(x.shape[0], -1)
    x = post(layers.Dense(self.hidden, kinit, name="fc1")(x), len(self.features) + 1)
    out_init = layers.kernel_init(self.init_scheme, linear=self.linear_output_gain)
    return layers.Dense(self.num_classes, out_init, name="fc2")(x)


class CNN3(nn.Module):
  """S1's CNN3: conv 5x5 (pad 2) + BatchNorm + activation blocks, pooled after blocks 3 and 4,
  then dropout and one dense layer."""
  features: tuple[int, ...] = (16, 32, 64, 128)
  pools: tuple[tuple[int, int] | None, ...] = (None, None, (2, 2), (3, 1))  # (window, stride)
  activation: str = "relu"
  dropout: float = 0.05
  batchnorm: bool = True
  init_scheme: str = "torch_default"
  prelu_init: float = 0.25
  num_classes: int = 10

  @nn.compact
  def __call__(self, x_BxHxWx1: jax.Array, train: bool = False,
               mask: jax.Array | None = None) -> jax.Array:
    act = layers.activation(self.activation, self.prelu_init)
    kinit = layers.kernel_init(self.init_scheme)
    x = x_BxHxWx1
    for i, (f, pool) in enumerate(zip(self.features, self.pools), 1):
      x = layers.Conv2d(f, 5, 2, kinit, name=f"conv{i}")(x, train)
      if self.batchnorm:
        x = layers.batch_norm(train, name=f"bn{i}")(x, mask=layers.example_mask(mask, x))
      x = act(x)
      if pool:
        x = layers.max_pool(x, *pool)
    x = layers.Dropout(self.dropout)(x.reshape(x.shape[0], -1), train)
    return layers.Dense(self.num_classes, kinit, name="fc")(x)


class MLP(nn.Module):
  """Fully connected net on flattened images: mlp_small (S2) and mlp_deep (S4).

  Dropout rates are drop probabilities; the S2 notebook's keep probabilities 0.8 (input)
  and 0.7 (hidden) are input_dropout=0.2, dropout=0.3.
  """
  hidden: tuple[int, ...] = (500, 250, 100)
  activation: str = "relu"
  bias: str = "zeros"  # "zeros", "torch" or "none"
  init_scheme: str = "xavier_uniform"
  input_dropout: float = 0.0
  dropout: float = 0.0  # after each hidden layer
  prelu_init: float = -0.1  # with activation "prelu": one slope shared by all hidden layers
  num_classes: int = 10

  @nn.compact
  def __call__(self, x_BxHxWx1: jax.Array, train: bool = False,
               mask: jax.Array | None = None) -> jax.Array:
    del mask  # no BatchNorm: nothing here depends on the other examples of the batch
    act = layers.activation(self.activation, self.prelu_init)
    kinit = layers.kernel_init(self.init_scheme)
    x = layers.Dropout(self.input_dropout)(x_BxHxWx1.reshape(x_BxHxWx1.shape[0], -1), train)
    for i, h in enumerate(self.hidden, 1):
      x = act(layers.Dense(h, kinit, self.bias, name=f"fc{i}")(x))
      x = layers.Dropout(self.dropout)(x, train)
    out = layers.Dense(self.num_classes, kinit, self.bias, name=f"fc{len(self.hidden) + 1}")
    return out(x)


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  module: type[nn.Module]
  defaults: dict[str, Any]
  description: str


# The one list of models: name -> module and the settings that make it the notebook's net.
MODELS: dict[str, ModelSpec] = {
    "lenet": ModelSpec(ConvNet, {}, "S0 LeNet: conv 20@5, conv 50@5, dense 500"),
    "cnn": ModelSpec(ConvNet, dict(
        features=(16, 32), kernel_sizes=(5, 3), hidden=128, init_scheme="kaiming_normal",
        linear_output_gain=True), "S1 CNN: conv 16@5, conv 32@3, dense 128"),
    "cnn2": ModelSpec(ConvNet, dict(
        features=(32, 64), kernel_sizes=(5, 5), padding=(2, 2), hidden=256,
        init_scheme="kaiming_normal", linear_output_gain=True),
        "S1 CNN2: conv 32@5 pad 2, conv 64@5 pad 2, dense 256"),
    "cnn3": ModelSpec(CNN3, {}, "S1 CNN3: 4 x (conv 5 pad 2, BN, relu), dropout 0.05"),
    "mlp_small": ModelSpec(MLP, dict(hidden=(50, 50), bias="none", init_scheme="xavier_normal"),
                           "S2 MLP 784-50-50-10, no biases"),
    "mlp_deep": ModelSpec(MLP, {}, "S4 MLP 784-500-250-100-10"),
}


def options(name: str) -> tuple[str, ...]:
  """The settings a model accepts (its module's dataclass fields)."""
  return tuple(f.name for f in dataclasses.fields(_lookup(name))
               if f.name not in ("parent", "name"))


def is_path(name: str) -> bool:
  """Whether a --model names an import path ("package.module:Name"), not a registered model."""
  return ":" in name


def _lookup(name: str):
  """The module class (or factory) registered under name or found at an import path."""
  if is_path(name):
    return load_object(name)
  if name not in MODELS:
    raise ConfigError(f"unknown model {name!r}; choose one of: {', '.join(MODELS)}, or give "
                      "an import path: --model=package.module:Name")
  return MODELS[name].module


def load_object(path: str, flag: str = "--model"):
  """The object at "package.module:Name", imported as `python -m` would: from the current
  folder first."""
  module_name, _, attr = path.partition(":")
  added = os.getcwd() not in sys.path
  if added:
    sys.path.insert(0, os.getcwd())
  try:
    module = importlib.import_module(module_name)
  except ImportError as e:
    raise ConfigError(f"{flag}={path}: can't import {module_name} ({e}); give a module "
                      "importable from the current folder or installed") from None
  finally:
    if added:
      sys.path.remove(os.getcwd())
  try:
    return functools.reduce(getattr, attr.split("."), module)
  except AttributeError:
    raise ConfigError(f"{flag}={path}: {module_name} has no {attr}") from None


def build(name: str, num_classes: int = 10, **settings) -> nn.Module:
  """The model registered under name, or the flax module (a class, a factory or an instance)
  at an import path; settings that are None keep the model's defaults."""
  target = _lookup(name)
  settings = {k: v for k, v in settings.items() if v is not None}
  if isinstance(target, nn.Module):  # an instance: its own settings
    model = target.clone(**settings) if settings else target
  else:
    fields = ([f.name for f in dataclasses.fields(target)]
              if isinstance(target, type) and dataclasses.is_dataclass(target) else None)
    if fields is not None and "num_classes" in fields:
      settings.setdefault("num_classes", num_classes)
    unknown = sorted(set(settings) - set(fields)) if fields is not None else []
    if unknown:
      raise ConfigError(f"model {name!r} has no setting {', '.join(unknown)}; its settings "
                        f"are: {', '.join(f for f in fields if f not in ('parent', 'name'))}")
    defaults = {} if is_path(name) else MODELS[name].defaults
    model = target(**{**defaults, **settings})
  if not isinstance(model, nn.Module):
    raise ConfigError(f"--model={name} gives a {type(model).__name__}, not a "
                      "flax.linen.Module")
  return model


def settings(model: nn.Module) -> dict[str, Any]:
  """A module's fields as JSON holds them (config.json, checkpoint records): numbers, strings
  and lists as they are, any other object by its repr."""
  def plain(value):
    if value is None or isinstance(value, (bool, int, str)):
      return value
    if isinstance(value, float):
      return value if math.isfinite(value) else str(value)
    if isinstance(value, (tuple, list)):
      return [plain(v) for v in value]
    return repr(value)
  return {f.name: plain(getattr(model, f.name)) for f in dataclasses.fields(model)
          if f.name not in ("parent", "name")}


def takes_mask(model: nn.Module) -> bool:
  """Whether the model's __call__ takes `mask`: the examples of a padded batch (the built-ins'
  BatchNorm keeps its statistics to them)."""
  return "mask" in inspect.signature(type(model).__call__).parameters


def traced_dropout(model: nn.Module) -> bool:
  """Whether the model's dropout rate may be a traced value (mnistjax.layers.Dropout): a
  sweep of it then trains every member in one program; flax's nn.Dropout needs a rate known
  when it compiles, one program per rate."""
  return type(model) in {spec.module for spec in MODELS.values()}


def mode(model: nn.Module, train: bool) -> dict[str, bool]:
  """The keyword that tells a module whether it trains, by the name its __call__ takes:
  `train` (mnistjax's and Flax's guides), `deterministic` (its opposite), or none (a module
  that computes the same in both, as the CNN of Flax's quick start)."""
  params = inspect.signature(type(model).__call__).parameters
  if "train" in params:
    return {"train": train}
  if "deterministic" in params:
    return {"deterministic": not train}
  return {}


def check(model: nn.Module, image_shape: tuple[int, ...], num_classes: int) -> None:
  """A model's contract, checked before anything trains: a flax.linen.Module whose
  `__call__(x, train)` (or `deterministic`, or neither) maps B x H x W x C images to
  B x num_classes logits. Raises ConfigError, one line naming what to change."""
  if not isinstance(model, nn.Module):
    raise ConfigError(f"model={model!r}: give a flax.linen.Module instance, e.g. "
                      "model=MyNet()")
  name = type(model).__name__
  try:  # traced, not run: a module that fails on the data's images fails here, in one line
    variables = jax.eval_shape(lambda: init(model, jax.random.key(0), image_shape))
    out = jax.eval_shape(lambda v: model.apply(v, jnp.zeros((2, *image_shape)),
                                               **mode(model, False)), variables)
  except Exception as e:  # pylint: disable=broad-except  # the module's own, whatever it is
    first = str(e).strip().splitlines()[0] if str(e).strip() else ""
    raise ConfigError(f"{name} fails on a batch of images {image_shape} (B x H x W x C) "
                      f"({type(e).__name__}: {first}); it must take them as "
                      "__call__(x, train) and give logits") from None
  others = sorted(set(variables) - {"params", "batch_stats"})
  if others:
    raise ConfigError(f"{name} keeps variables in {', '.join(others)}: a run trains and "
                      "checkpoints `params` and `batch_stats` only")
  if not hasattr(out, "shape") or tuple(out.shape) != (2, num_classes):
    shape = tuple(out.shape) if hasattr(out, "shape") else type(out).__name__
    raise ConfigError(f"{name} maps a batch of 2 images {image_shape} to {shape}; it must "
                      f"give logits of shape (2, {num_classes}): one per class")


def convolves(model: nn.Module, image_shape: tuple[int, ...]) -> bool:
  """Whether the model runs a lax.conv (flax's nn.Conv does): traced, not run."""
  variables = jax.eval_shape(lambda: init(model, jax.random.key(0), image_shape))
  jaxpr = jax.make_jaxpr(lambda v, x: model.apply(v, x, **mode(model, False)))(
      variables, jax.ShapeDtypeStruct((1, *image_shape), jnp.result_type(float)))
  return "conv_general_dilated" in str(jaxpr)


def init(model: nn.Module, key: jax.Array, image_shape: tuple[int, ...] = (28, 28, 1),
         batch_size: int = 1) -> dict:
  """Initial variables ({"params": ..., and "batch_stats" where the model has BatchNorm}).

  One compiled program: run op by op, flax's init compiles a small program for each
  parameter shape's random draw, which dominates a small run's start (README, Performance).
  Values equal flax's op-by-op `model.init`: bit for bit for uniform initialisers, to
  float32 rounding for normal ones. A model that cannot be hashed (a setting given as a
  list) is initialised op by op.
  """
  image_shape = tuple(image_shape)
  try:
    hash(model)
  except TypeError:
    return _init(model, key, image_shape, batch_size)
  return _compiled_init(model, key, image_shape, batch_size)


def _init(model: nn.Module, key: jax.Array, image_shape: tuple[int, ...], batch_size: int
          ) -> dict:
  dtype = jnp.result_type(float)  # float32; float64 under x64
  x = jnp.zeros((batch_size, *image_shape), dtype)
  variables = model.init({"params": key, "dropout": key}, x, **mode(model, False))
  # Flax keeps BatchNorm's statistics and some parameters in float32 whatever the mode: one
  # dtype for them, so that a run under x64 is float64 throughout (a module's own bfloat16
  # parameters stay so).
  return jax.tree.map(lambda a: a.astype(dtype) if a.dtype == jnp.float32 else a, variables)


_compiled_init = jax.jit(_init, static_argnums=(0, 2, 3))


def count_params(params) -> int:
  return sum(int(p.size) for p in jax.tree.leaves(params))


def summary() -> str:
  """One line per registered model: name, parameter count, BatchNorm state, output shape for a
  batch of 64 MNIST images, description."""
  lines = [f"{'model':<11}{'parameters':>11}{'+ state':>9}  {'output':<9}  description"]
  for name in MODELS:
    model = build(name)
    x = jax.ShapeDtypeStruct((64, 28, 28, 1), jnp.float32)
    variables = jax.eval_shape(lambda x, m=model: init(m, jax.random.key(0)), x)
    out = jax.eval_shape(lambda v, x, m=model: m.apply(v, x), variables, x)
    state = count_params(variables.get("batch_stats", {}))
    lines.append(f"{name:<11}{count_params(variables['params']):>11,}{state:>9,}  "
                 f"{str(tuple(out.shape)):<9}  {MODELS[name].description}")
  return "\n".join(lines)


if __name__ == "__main__":
  print(summary())
