"""Dropout masks on CPU: jax.random.bernoulli(key, keep, shape) against layers.keep_mask,
in a LeNet train step (dropout 0.25 after every hidden layer, batch 64), side by side.

  python benchmarks/dropout.py
"""

from __future__ import annotations

import functools
import time
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np

from mnistjax import layers, machine, models
from mnistjax import step as step_lib


def bernoulli_mask(key, keep, shape):
  keep = jnp.asarray(keep, jnp.float32)
  return jax.random.bernoulli(key, keep, shape), jnp.where(keep > 0, 1 / keep, 0.0)


def step_ms(model, tx, batch, steps=40) -> float:
  step = jax.jit(functools.partial(step_lib.train_step, model=step_lib.Model(model, (0.1307, 0.3081)), tx=tx),
                 donate_argnums=0)
  state = step_lib.create_state(model, tx, jax.random.key(0))
  state, _ = step(state, batch, jax.random.key(1))
  jax.block_until_ready(state)
  start = time.perf_counter()
  for _ in range(steps):
    state, _ = step(state, batch, jax.random.key(1))
  jax.block_until_ready(state)
  return (time.perf_counter() - start) / steps * 1e3


def main():
  tx = step_lib.make("sgd", learning_rate=0.01, momentum=0.5, weight_decay=0.0, nesterov=False)
  rng = np.random.default_rng(0)
  batch = {"image": rng.integers(0, 256, (64, 28, 28), dtype=np.uint8),
           "label": rng.integers(0, 10, 64).astype(np.int32)}
  none = step_ms(models.build("lenet"), tx, batch)
  ours = step_ms(models.build("lenet", dropout=0.25), tx, batch)
  with mock.patch.object(layers, "keep_mask", bernoulli_mask):
    bern = step_ms(models.build("lenet", dropout=0.25), tx, batch)
  print(f"{machine.line()}: LeNet train step, batch 64")
  print(f"  no dropout                 {none:7.2f} ms")
  print(f"  dropout 0.25, bernoulli    {bern:7.2f} ms")
  print(f"  dropout 0.25, keep_mask    {ours:7.2f} ms   ({bern / ours:.2f}x faster)")


if __name__ == "__main__":
  main()
