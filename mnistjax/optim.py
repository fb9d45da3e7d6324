"""Optimisers by name, as optax chains with PyTorch's update semantics.

Weight decay is PyTorch's coupled form for every optimiser: `wd * param` is
added to the gradient before the optimiser sees it. The S4 notebook's L2
penalty lives in the loss instead (`l2_penalty`).

Hyperparameters are injected (`optax.inject_hyperparams`): they live in the
optimiser state as arrays, so a sweep can give each member its own value
without recompiling.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

from mnistjax.errors import ConfigError


def _sgd(learning_rate, momentum, weight_decay, nesterov=False):
  # PyTorch SGD: buf = momentum * buf + g (buf = g at the first step), p -= lr * buf;
  # optax.trace starts from zeros, which gives the same first step.
  return optax.chain(optax.add_decayed_weights(weight_decay),
                     optax.sgd(learning_rate, momentum, nesterov=nesterov))


def _rmsprop(learning_rate, alpha, eps, weight_decay):
  # PyTorch RMSprop (and the S2 notebook): v = alpha v + (1 - alpha) g^2,
  # p -= lr g / (sqrt(v) + eps), v starting at zero.
  return optax.chain(optax.add_decayed_weights(weight_decay),
                     optax.rmsprop(learning_rate, decay=alpha, eps=eps, eps_in_sqrt=False))


def _adam(learning_rate, beta1, beta2, eps, weight_decay):
  # PyTorch Adam: bias-corrected moments, eps outside the square root, coupled decay.
  return optax.chain(optax.add_decayed_weights(weight_decay),
                     optax.adam(learning_rate, b1=beta1, b2=beta2, eps=eps))


@dataclasses.dataclass(frozen=True)
class Optimizer:
  build: Callable[..., optax.GradientTransformation]
  hparams: tuple[str, ...]  # the Config fields it reads, by the names `build` takes
  static: tuple[str, ...] = ()  # hyperparameters that change the program, not a value


# The one list of optimisers.
OPTIMIZERS: dict[str, Optimizer] = {
    "sgd": Optimizer(_sgd, ("learning_rate", "momentum", "weight_decay", "nesterov"),
                     ("nesterov",)),
    "rmsprop": Optimizer(_rmsprop, ("learning_rate", "alpha", "eps", "weight_decay")),
    "adam": Optimizer(_adam, ("learning_rate", "beta1", "beta2", "eps", "weight_decay")),
}


SCHEDULES = ("constant", "linear", "cosine")


def lr_multiplier(schedule: str, total_steps: int, warmup_steps: int = 0) -> optax.Schedule:
  """The factor on the learning rate at each step: a linear warm-up from 0 over warmup_steps,
  then 1 ("constant") or a decay to 0 at total_steps ("linear", "cosine")."""
  if schedule not in SCHEDULES:
    raise ConfigError(f"unknown schedule {schedule!r}; choose one of: {', '.join(SCHEDULES)}")
  decay_steps = max(total_steps - warmup_steps, 1)
  after = {"constant": lambda: optax.constant_schedule(1.0),
           "linear": lambda: optax.linear_schedule(1.0, 0.0, decay_steps),
           "cosine": lambda: optax.cosine_decay_schedule(1.0, decay_steps)}[schedule]()
  if warmup_steps <= 0:
    return after
  return optax.join_schedules([optax.linear_schedule(0.0, 1.0, warmup_steps), after],
                              [warmup_steps])


def running_sum() -> optax.GradientTransformation:
  """The sum of every gradient so far: what PyTorch's .grad holds when a loop never calls
  zero_grad() (the S2 notebook), and so what its optimiser sees."""
  def init(params):
    return jax.tree.map(jnp.zeros_like, params)

  def update(updates, total, params=None):
    del params
    total = jax.tree.map(jnp.add, total, updates)
    return total, total
  return optax.GradientTransformation(init, update)


def make(name: str, schedule: optax.Schedule | None = None, zero_grad: bool = True, **hparams
         ) -> optax.GradientTransformation:
  """The optimiser registered under name, built from the hyperparameters it uses; with
  schedule, its updates are scaled by schedule(step) (PyTorch's LR schedulers: the momentum
  buffer holds unscaled gradients, the step is lr * factor * buffer). zero_grad=False feeds
  it the running sum of the gradients (`running_sum`), weight decay added after the sum as
  PyTorch does."""
  if name not in OPTIMIZERS:
    raise ConfigError(f"unknown optimizer {name!r}; choose one of: {', '.join(OPTIMIZERS)}")
  spec = OPTIMIZERS[name]
  missing = [k for k in spec.hparams if k not in hparams]
  if missing:
    raise ConfigError(f"optimizer {name!r} needs {', '.join(missing)}")
  build = spec.build
  if not zero_grad:
    @functools.wraps(spec.build)  # inject_hyperparams reads the build's parameters
    def build(**kwargs):  # the sum first, inside: the injected state keeps its structure
      return optax.chain(running_sum(), spec.build(**kwargs))
  tx = optax.inject_hyperparams(build, static_args=spec.static)(
      **{k: hparams[k] for k in spec.hparams})
  return tx if schedule is None else optax.chain(tx, optax.scale_by_schedule(schedule))


def injected(opt_state):
  """The state of the injected hyperparameters (`.hyperparams`) inside an optimiser state of
  `make`, with or without a schedule."""
  return opt_state if hasattr(opt_state, "hyperparams") else opt_state[0]


def l2_penalty(params, l2: float | jax.Array, batch_size: int | jax.Array) -> jax.Array:
  """The S4 notebook's L2 term, l2 / (2 m) * sum of squared weights (kernels, not biases)."""
  kernels = [leaf for path, leaf in jax.tree_util.tree_leaves_with_path(params)
             if "kernel" in jax.tree_util.keystr(path)]
  return l2 / (2 * batch_size) * sum(jnp.sum(jnp.square(k)) for k in kernels)
