"""The networks of the studies as functional Flax linen modules, and one registry of them by name.

Every model maps normalised images (B x 28 x 28 x 1, float) to log-probabilities
(B x 10): `model.apply(variables, x, train=False)`. In training, pass
`train=True`, `rngs={"dropout": key}` and `mutable=["batch_stats"]` where the
model has BatchNorm.

`python -m mnistjax.models` prints every model with its parameter count.
"""

from __future__ import annotations

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from mnistjax import layers
from mnistjax.errors import ConfigError


class LeNet(nn.Module):
  """S0: conv 20@5x5, pool, conv 50@5x5, pool, dense 500, dense 10.

  Each hidden layer is followed by activation, [BatchNorm], [dropout], as in the notebook.
  """
  activation: str = "relu"
  dropout: float = 0.0  # drop probability after each hidden layer
  batchnorm: bool = False
  init_scheme: str = "torch_default"  # kernel initialiser; biases keep PyTorch's default
  num_classes: int = 10

  @nn.compact
  def __call__(self, x_BxHxWx1: jax.Array, train: bool = False) -> jax.Array:
    kinit = layers.kernel_init(self.init_scheme)
    conv = functools.partial(layers.Conv2d, kernel_init=kinit, impl=layers.conv_impl(train))

    def post(x, i):
      x = layers.activation(self.activation, f"act{i}")(x)
      if self.batchnorm:
        x = layers.batch_norm(train, name=f"bn{i}")(x)
      return layers.Dropout(self.dropout)(x, train)

    x = post(conv(20, 5, name="conv1")(x_BxHxWx1), 1)
    x = layers.max_pool(x, 2)
    x = post(conv(50, 5, name="conv2")(x), 2)
    x = layers.max_pool(x, 2)
    x = x.reshape(x.shape[0], -1)
    x = post(layers.Dense(500, kernel_init=kinit, name="fc1")(x), 3)
    logits_BxK = layers.Dense(self.num_classes, kernel_init=kinit, name="fc2")(x)
    return jax.nn.log_softmax(logits_BxK)


# The one list of models: name -> module class.
MODELS: dict[str, type[nn.Module]] = {
    "lenet": LeNet,
}


def options(name: str) -> tuple[str, ...]:
  """The settings a model accepts (its dataclass fields)."""
  return tuple(f.name for f in dataclasses.fields(_lookup(name))
               if f.name not in ("parent", "name"))


def _lookup(name: str) -> type[nn.Module]:
  if name not in MODELS:
    raise ConfigError(f"unknown model {name!r}; choose one of: {', '.join(MODELS)}")
  return MODELS[name]


def build(name: str, **settings) -> nn.Module:
  """The model registered under name; settings that are None keep the model's defaults."""
  cls = _lookup(name)
  settings = {k: v for k, v in settings.items() if v is not None}
  unknown = sorted(set(settings) - set(options(name)))
  if unknown:
    raise ConfigError(f"model {name!r} has no setting {', '.join(unknown)}; "
                      f"its settings are: {', '.join(options(name))}")
  return cls(**settings)


def init(model: nn.Module, key: jax.Array, batch_size: int = 1) -> dict:
  """Initial variables ({"params": ..., and "batch_stats" where the model has BatchNorm})."""
  x = jnp.zeros((batch_size, 28, 28, 1), jnp.float32)
  return model.init({"params": key, "dropout": key}, x, train=False)


def count_params(params) -> int:
  return sum(int(p.size) for p in jax.tree.leaves(params))


def summary() -> str:
  """One line per registered model: name, parameter count, output shape for an MNIST batch."""
  lines = [f"{'model':<12}{'parameters':>12}  {'+ state':>8}  output for (64, 28, 28, 1)"]
  for name in MODELS:
    model = build(name)
    x = jax.ShapeDtypeStruct((64, 28, 28, 1), jnp.float32)
    variables = jax.eval_shape(lambda x, m=model: init(m, jax.random.key(0)), x)
    out = jax.eval_shape(lambda v, x, m=model: m.apply(v, x), variables, x)
    state = count_params(variables.get("batch_stats", {}))
    lines.append(f"{name:<12}{count_params(variables['params']):>12,}  {state:>8,}  "
                 f"{tuple(out.shape)}")
  return "\n".join(lines)


if __name__ == "__main__":
  print(summary())
