"""The S4 network written by hand: forward and backward passes spelled out with jnp.

The point of seed 004 is a network whose backpropagation is written, not derived.
This one is correct where the notebook's was not (it took the derivative of the
activation's output, summed its softmax over the batch and used binary
cross-entropy): softmax cross-entropy, derivatives of the pre-activations, and an
optional L2 term lambda/(2m) * sum(W^2) over the weights (not the biases).
tests/test_handwritten.py checks `loss_and_grad` against `jax.grad` of `loss`.

Parameters are a list of (W in x out, b out) pairs; `to_flax` turns them into
the variables of `models.build("mlp_deep")`, which computes the same function.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from mnistjax.errors import ConfigError

Params = list[tuple[jax.Array, jax.Array]]
SIZES = (784, 500, 250, 100, 10)


def _sigmoid_grad(z):
  s = jax.nn.sigmoid(z)
  return s * (1.0 - s)


# activation -> (f, f') with f' taken at the pre-activation z.
ACTIVATIONS = {
    "sigmoid": (jax.nn.sigmoid, _sigmoid_grad),
    "tanh": (jnp.tanh, lambda z: 1.0 - jnp.tanh(z) ** 2),
    "relu": (jax.nn.relu, lambda z: (z > 0).astype(z.dtype)),
}


def _activation(name: str):
  if name not in ACTIVATIONS:
    raise ConfigError(f"unknown activation {name!r} for the hand-written MLP; "
                      f"choose one of: {', '.join(ACTIVATIONS)}")
  return ACTIVATIONS[name]


def init(key: jax.Array, sizes: tuple[int, ...] = SIZES) -> Params:
  """Glorot-uniform weights and zero biases, as the notebook."""
  keys = jax.random.split(key, len(sizes) - 1)
  glorot = jax.nn.initializers.glorot_uniform()
  return [(glorot(k, (m, n)), jnp.zeros(n)) for k, m, n in zip(keys, sizes[:-1], sizes[1:])]


def forward(params: Params, x_BxD: jax.Array, activation: str = "relu"):
  """Logits, and the cache backward needs: each layer's input and pre-activation."""
  f, _ = _activation(activation)
  cache, a = [], x_BxD
  for i, (w, b) in enumerate(params):
    z = a @ w + b
    cache.append((a, z))
    a = z if i == len(params) - 1 else f(z)
  return a, cache


def loss(params: Params, x_BxD: jax.Array, labels_B: jax.Array, activation: str = "relu",
         l2: float = 0.0) -> jax.Array:
  """Mean softmax cross-entropy plus l2/(2m) * sum of squared weights (m = batch size)."""
  logits, _ = forward(params, x_BxD, activation)
  m = x_BxD.shape[0]
  ce = -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), labels_B[:, None], -1))
  return ce + l2 / (2 * m) * sum(jnp.sum(w * w) for w, _ in params)


def loss_and_grad(params: Params, x_BxD: jax.Array, labels_B: jax.Array,
                  activation: str = "relu", l2: float = 0.0) -> tuple[jax.Array, Params]:
  """The loss and its gradient by hand-written backpropagation."""
  _, f_grad = _activation(activation)
  logits, cache = forward(params, x_BxD, activation)
  m = x_BxD.shape[0]
  log_p = jax.nn.log_softmax(logits)
  onehot = jax.nn.one_hot(labels_B, logits.shape[-1], dtype=logits.dtype)
  value = (-jnp.mean(jnp.sum(onehot * log_p, -1))
           + l2 / (2 * m) * sum(jnp.sum(w * w) for w, _ in params))
  dz = (jnp.exp(log_p) - onehot) / m  # d loss / d logits
  grads = []
  for i in reversed(range(len(params))):
    w, _ = params[i]
    a_prev, _ = cache[i]
    grads.append((a_prev.T @ dz + (l2 / m) * w, dz.sum(0)))
    if i:
      dz = (dz @ w.T) * f_grad(cache[i - 1][1])
  return value, grads[::-1]


@functools.partial(jax.jit, static_argnames="activation")
def sgd_step(params: Params, x_BxD: jax.Array, labels_B: jax.Array, lr: float,
             activation: str = "relu", l2: float = 0.0) -> tuple[Params, jax.Array]:
  """One plain-SGD step with the hand-written gradient; returns new params and the loss."""
  value, grads = loss_and_grad(params, x_BxD, labels_B, activation, l2)
  return [(w - lr * gw, b - lr * gb) for (w, b), (gw, gb) in zip(params, grads)], value


def to_flax(params: Params) -> dict:
  """The variables of models.build("mlp_deep") (layers fc1..fcN) holding these parameters."""
  return {"params": {f"fc{i}": {"kernel": w, "bias": b} for i, (w, b) in enumerate(params, 1)}}
