"""Overlapping max pooling: rows-then-columns (layers.max_pool) against one chain of maxima.

  python benchmarks/pooling.py [--model=cnn3] [--batch_size=64] [--rounds=3]

CNN3 pools 3 x 3 with stride 1 after its last convolution. layers.max_pool takes the
maximum along rows, then along columns (4 maxima); the baseline takes the maximum of all 9
strided views (8 maxima), as mnistjax did before. Times the model's CPU train step with each,
compiled and warmed up, in interleaved rounds (median reported).
"""

from __future__ import annotations

import functools
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from mnistjax import config as config_lib
from mnistjax import layers, models, optim
from mnistjax import step as step_lib

flags.DEFINE_string("model", "cnn3", "model to time (one with overlapping pooling)")
flags.DEFINE_integer("batch_size", 64, "batch size")
flags.DEFINE_integer("steps", 4, "timed steps per round")
flags.DEFINE_integer("rounds", 3, "interleaved measurement rounds (median reported)")
FLAGS = flags.FLAGS


MAX_POOL = layers.max_pool  # mnistjax's, before _runner swaps it


def chain_max_pool(x, window, stride=None):
  """The baseline: every window position's view, reduced by one chain of maxima."""
  stride = stride or window
  b, h, w, c = x.shape
  if stride == window and h % window == 0 and w % window == 0:
    return MAX_POOL(x, window, stride)
  ho, wo = (h - window) // stride + 1, (w - window) // stride + 1
  return functools.reduce(jnp.maximum, [
      x[:, i:i + stride * (ho - 1) + 1:stride, j:j + stride * (wo - 1) + 1:stride]
      for i in range(window) for j in range(window)])


def _runner(model, tx, batch, pool):
  step = jax.jit(functools.partial(step_lib.train_step, model=model, tx=tx, norm=(0.1307, 0.3081)),
                 donate_argnums=0)
  saved, layers.max_pool = layers.max_pool, pool
  try:  # read while tracing: compile now
    box = {"state": step(step_lib.create_state(model, tx, jax.random.key(0)), batch,
                         jax.random.key(1))[0]}
  finally:
    layers.max_pool = saved

  def run() -> float:
    jax.block_until_ready(box["state"])
    start = time.perf_counter()
    for _ in range(FLAGS.steps):
      box["state"] = step(box["state"], batch, jax.random.key(1))[0]
    jax.block_until_ready(box["state"])
    return (time.perf_counter() - start) / FLAGS.steps
  return run


def main(_):
  cfg = config_lib.Config(model=FLAGS.model, batch_size=FLAGS.batch_size)
  model = models.build(cfg.model, **cfg.model_settings())
  tx = optim.make(cfg.optimizer, **cfg.optimizer_hparams())
  rng = np.random.default_rng(0)
  b = FLAGS.batch_size
  batch = {"image": rng.integers(0, 256, (b, 28, 28), dtype=np.uint8),
           "label": rng.integers(0, 10, b).astype(np.int32)}
  runners = {"one chain (9 views)": _runner(model, tx, batch, chain_max_pool),
             "rows, then columns": _runner(model, tx, batch, MAX_POOL)}
  times = {k: [] for k in runners}
  for _ in range(FLAGS.rounds):
    for k, run in runners.items():
      times[k].append(run())
  t = {k: float(np.median(v)) for k, v in times.items()}
  base = t["one chain (9 views)"]
  print(f"{jax.devices()[0].device_kind} ({jax.default_backend()}), {FLAGS.model} train step, "
        f"batch {b}; median of {FLAGS.rounds} interleaved rounds")
  for k, v in t.items():
    print(f"{k:<20} {v * 1e3:8.1f} ms  {base / v:5.2f}x")


if __name__ == "__main__":
  app.run(main)
