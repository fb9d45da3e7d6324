"""Patch convolution in slices of the batch against whole-batch patches, side by side.

  python benchmarks/patches.py [--cases=lenet:64,lenet:128,cnn2:64,cnn3:64] [--rounds=3]

For each model and batch size, the CPU train step twice: with mnistjax's default (a patch
tensor larger than layers.PATCH_WHOLE_BYTES is built PATCH_CHUNK_BYTES at a time) and with
whole-batch patches (the limit set out of reach). Both are compiled and warmed up, then timed
in interleaved rounds (median reported), so that a drift of the machine's speed hits both
alike. Prints ms/step, images/s and the speed-up of slicing. The largest convolution working
set (patches + output) of each case is printed beside it: slicing starts above
PATCH_WHOLE_BYTES.
"""

from __future__ import annotations

import functools
import time

import jax
import numpy as np
from absl import app, flags

from mnistjax import config as config_lib
from mnistjax import layers, models, optim
from mnistjax import step as step_lib

flags.DEFINE_list("cases", ["lenet:64", "lenet:128", "cnn2:64", "cnn3:64"], "MODEL:BATCH")
flags.DEFINE_integer("rounds", 3, "interleaved measurement rounds (median reported)")
flags.DEFINE_float("seconds", 1.0, "time per measurement (at least 3 steps)")
FLAGS = flags.FLAGS


def _largest_patches(model, batch_size: int) -> int:
  """The case's largest convolution working set (patches + output of the whole batch), in
  bytes, from the traced convolutions."""
  sizes = []
  conv2d = layers.conv2d

  def spy(x, kernel, impl="lax", chunk_bytes=None):
    kh, kw, ci, co = kernel.shape
    sizes.append(batch_size * (x.shape[1] - kh + 1) * (x.shape[2] - kw + 1) * (kh * kw * ci + co)
                 * 4)
    return conv2d(x, kernel, impl, chunk_bytes)

  layers.conv2d = spy
  try:
    jax.eval_shape(lambda: model.init(jax.random.key(0), np.zeros((batch_size, 28, 28, 1),
                                                                  np.float32)))
  finally:
    layers.conv2d = conv2d
  return max(sizes, default=0)


def _runner(model, tx, batch, whole_bytes: int):
  """A closure timing the compiled, warmed-up train step, traced with the given limit."""
  norm = (0.1307, 0.3081)
  step = jax.jit(functools.partial(step_lib.train_step, model=model, tx=tx, norm=norm),
                 donate_argnums=0)
  saved, layers.PATCH_WHOLE_BYTES = layers.PATCH_WHOLE_BYTES, whole_bytes
  try:  # the limit is read while tracing: compile now
    box = {"state": step(step_lib.create_state(model, tx, jax.random.key(0)), batch,
                         jax.random.key(1))[0]}
  finally:
    layers.PATCH_WHOLE_BYTES = saved
  jax.block_until_ready(box["state"])
  start = time.perf_counter()
  box["state"] = step(box["state"], batch, jax.random.key(1))[0]
  jax.block_until_ready(box["state"])
  steps = max(3, int(FLAGS.seconds / (time.perf_counter() - start)))

  def run() -> float:
    jax.block_until_ready(box["state"])
    start = time.perf_counter()
    for _ in range(steps):
      box["state"] = step(box["state"], batch, jax.random.key(1))[0]
    jax.block_until_ready(box["state"])
    return (time.perf_counter() - start) / steps
  return run


def main(_):
  rng = np.random.default_rng(0)
  print(f"{jax.devices()[0].device_kind} ({jax.default_backend()}); slices of "
        f"{layers.PATCH_CHUNK_BYTES >> 20} MB above {layers.PATCH_WHOLE_BYTES >> 20} MB; median "
        f"of {FLAGS.rounds} interleaved rounds")
  print(f"{'case':<11}{'largest':>9}{'whole ms':>10}{'sliced ms':>11}{'whole img/s':>13}"
        f"{'sliced img/s':>14}{'speed-up':>10}")
  for case in FLAGS.cases:
    name, batch_size = case.split(":")
    batch_size = int(batch_size)
    cfg = config_lib.Config(model=name, batch_size=batch_size)
    model = models.build(name, **cfg.model_settings())
    tx = optim.make(cfg.optimizer, **cfg.optimizer_hparams())
    batch = {"image": rng.integers(0, 256, (batch_size, 28, 28), dtype=np.uint8),
             "label": rng.integers(0, 10, batch_size).astype(np.int32)}
    runners = {"whole": _runner(model, tx, batch, 1 << 62),
               "sliced": _runner(model, tx, batch, layers.PATCH_WHOLE_BYTES)}
    times = {k: [] for k in runners}
    for _ in range(FLAGS.rounds):
      for k, run in runners.items():
        times[k].append(run())
    t = {k: float(np.median(v)) for k, v in times.items()}
    print(f"{case:<11}{_largest_patches(model, batch_size) / 2**20:>7.1f}MB"
          f"{t['whole'] * 1e3:>10.2f}{t['sliced'] * 1e3:>11.2f}"
          f"{batch_size / t['whole']:>13.0f}{batch_size / t['sliced']:>14.0f}"
          f"{t['whole'] / t['sliced']:>9.2f}x", flush=True)


if __name__ == "__main__":
  app.run(main)
