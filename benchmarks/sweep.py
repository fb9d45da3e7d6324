"""Sweep throughput: K members in one vmapped program against K sequential single runs.

  python benchmarks/sweep.py [--model=lenet] [--dropout=0.25] [--steps=30]

Prints model-images per second (K x batch x steps / seconds) for K = 1, 4, 8, and
the ratio against K single-model steps measured in the same process. Steady state:
each program is compiled and warmed up before it is timed, and the programs are timed
in interleaved rounds (the median of each is reported), so that a change in the
machine's speed during the run does not favour one of them.
"""

from __future__ import annotations

import functools
import time

import jax
import numpy as np
from absl import app, flags

from mnistjax import config as config_lib
from mnistjax import models, optim, sweep, train

flags.DEFINE_string("model", "lenet", "model to time")
flags.DEFINE_float("dropout", 0.25, "dropout rate of every member (0 = off)")
flags.DEFINE_integer("batch_size", 64, "batch size")
flags.DEFINE_integer("steps", 30, "timed steps per measurement")
flags.DEFINE_multi_integer("members", [1, 4, 8], "sweep sizes")
flags.DEFINE_integer("rounds", 3, "interleaved measurement rounds (median reported)")
FLAGS = flags.FLAGS


def _runner(step, state, batch, keys):
  """A closure that times `steps` steps of a compiled, warmed-up program."""
  box = {"state": step(state, batch, keys)[0]}  # compile
  box["state"] = step(box["state"], batch, keys)[0]

  def run(steps: int) -> float:
    jax.block_until_ready(box["state"])
    start = time.perf_counter()
    for _ in range(steps):
      box["state"] = step(box["state"], batch, keys)[0]
    jax.block_until_ready(box["state"])
    return (time.perf_counter() - start) / steps
  return run


def main(_):
  cfg = config_lib.Config(model=FLAGS.model, dropout=FLAGS.dropout)
  model = models.build(cfg.model, **cfg.model_settings())
  tx = optim.make(cfg.optimizer, **cfg.optimizer_hparams())
  norm = (0.1307, 0.3081)
  rng = np.random.default_rng(0)
  batch = {"image": rng.integers(0, 256, (FLAGS.batch_size, 28, 28), dtype=np.uint8),
           "label": rng.integers(0, 10, FLAGS.batch_size).astype(np.int32)}
  single = jax.jit(functools.partial(train.train_step, model=model, tx=tx, norm=norm),
                   donate_argnums=0)
  runners = {0: _runner(single, train.create_state(model, tx, jax.random.key(0)), batch,
                        jax.random.key(1))}
  for k in FLAGS.members:
    group = sweep.members(cfg, {"seed": tuple(range(k))})
    state, keys = sweep.create_states(model, group, sweep_dropout=FLAGS.dropout > 0,
                                      num_train=60000)
    runners[k] = _runner(sweep.make_sweep_step(model, tx, norm), state, batch, keys)
  # Interleaved rounds, median per program: a drift of the machine's speed hits all alike.
  times = {k: [] for k in runners}
  for _ in range(FLAGS.rounds):
    for k, run in runners.items():
      times[k].append(run(FLAGS.steps))
  t = {k: float(np.median(v)) for k, v in times.items()}
  print(f"{jax.devices()[0].device_kind} ({jax.default_backend()}), {FLAGS.model}, batch "
        f"{FLAGS.batch_size}, dropout {FLAGS.dropout}; median of {FLAGS.rounds} interleaved "
        f"rounds of {FLAGS.steps} steps")
  print(f"single model: {t[0] * 1e3:.2f} ms/step, {FLAGS.batch_size / t[0]:.0f} img/s")
  print(f"{'K':>3} {'ms/step':>9} {'model-img/s':>12} {'sequential':>12} {'ratio':>6}")
  for k in FLAGS.members:
    images = k * FLAGS.batch_size
    print(f"{k:>3} {t[k] * 1e3:9.2f} {images / t[k]:12.0f} "
          f"{images / (k * t[0]):12.0f} {k * t[0] / t[k]:6.2f}")


if __name__ == "__main__":
  app.run(main)
