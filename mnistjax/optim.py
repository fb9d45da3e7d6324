"""Optimisers by name, as optax chains with PyTorch's update semantics.

Hyperparameters are injected (`optax.inject_hyperparams`): they live in the
optimiser state as arrays, so a sweep can give each member its own value
without recompiling.
"""

from __future__ import annotations

import optax

from mnistjax.errors import ConfigError


def _sgd(learning_rate, momentum, weight_decay, nesterov=False):
  # PyTorch SGD(momentum, weight_decay): the decay is added to the gradient before momentum
  # (coupled L2), buf = momentum * buf + g, p -= lr * buf; optax.trace matches from step one.
  return optax.chain(optax.add_decayed_weights(weight_decay),
                     optax.sgd(learning_rate, momentum, nesterov=nesterov))


# name -> (constructor, the hyperparameters it takes from the config)
OPTIMIZERS = {
    "sgd": (optax.inject_hyperparams(_sgd, static_args=("nesterov",)),
            ("learning_rate", "momentum", "weight_decay", "nesterov")),
}


def make(name: str, **hparams) -> optax.GradientTransformation:
  """The optimiser registered under name, built from the hyperparameters it uses."""
  if name not in OPTIMIZERS:
    raise ConfigError(f"unknown optimizer {name!r}; choose one of: {', '.join(OPTIMIZERS)}")
  build, keys = OPTIMIZERS[name]
  return build(**{k: hparams[k] for k in keys})
