"""Sweep throughput: K members in one program against K sequential single runs.

  python benchmarks/sweep.py [--model=lenet] [--dropout=0.25] [--batch_size=64]

Prints model-images per second (K x batch / seconds per step) for K = 1, 4, 8 in both
formulations of a sweep: lock-step (`sweep.lock_step`: every member takes each step, vmapped
on accelerators, a loop over members on CPU) and windowed (`sweep.window_step`: member after
member over a window of sweep.WINDOW_STEPS batches, what a run on CPU runs), each with its
ratio against K single-model steps (`step.train_step` jitted alone, a batch per call: how a
plain run trained before every run became a sweep of one member) measured in the same process
on the same batches. K = 1 windowed is what a plain run now runs on CPU. Steady
state: each program is compiled and warmed up before it is timed, and the programs are timed
in interleaved rounds (the median of each is reported), so that a change in the machine's
speed during the run does not favour one of them.
"""

from __future__ import annotations

import functools
import time

import jax
import numpy as np
from absl import app, flags

from mnistjax import config as config_lib
from mnistjax import machine, models, optim, step, sweep

flags.DEFINE_string("model", "lenet", "model to time")
flags.DEFINE_float("dropout", 0.25, "dropout rate of every member (0 = off)")
flags.DEFINE_integer("batch_size", 64, "batch size")
flags.DEFINE_integer("window", 0, "batches per window (0: sweep.WINDOW_STEPS, what runs use)")
flags.DEFINE_integer("windows", 2, "windows per measurement")
flags.DEFINE_multi_integer("members", [1, 4, 8], "sweep sizes")
flags.DEFINE_integer("rounds", 3, "interleaved measurement rounds (median reported)")
FLAGS = flags.FLAGS


def _runner(program, state, keys, units):
  """A closure that times a compiled, warmed-up program over `units` (its inputs, one call
  each: a batch, or a window of batches), returning seconds per batch."""
  box = {"state": program(state, units[0], keys)[0]}  # compile
  per_unit = units[0]["label"].shape[0] if units[0]["label"].ndim == 2 else 1

  def run() -> float:
    jax.block_until_ready(box["state"])
    start = time.perf_counter()
    for _ in range(FLAGS.windows):
      for unit in units:
        box["state"] = program(box["state"], unit, keys)[0]
    jax.block_until_ready(box["state"])
    return (time.perf_counter() - start) / (FLAGS.windows * len(units) * per_unit)
  return run


def main(_):
  cfg = config_lib.Config(model=FLAGS.model, dropout=FLAGS.dropout)
  model = models.build(cfg.model, **cfg.model_settings())
  tx = optim.make(cfg.optimizer, **cfg.optimizer_hparams())
  norm = (0.1307, 0.3081)
  rng = np.random.default_rng(0)
  w, b = FLAGS.window or sweep.WINDOW_STEPS, FLAGS.batch_size
  batches = [{"image": rng.integers(0, 256, (b, 28, 28), dtype=np.uint8),
              "label": rng.integers(0, 10, b).astype(np.int32), "mask": np.ones(b, bool)}
             for _ in range(w)]
  window, _ = next(sweep.windows(batches, w))
  single = jax.jit(functools.partial(step.train_step, model=model, tx=tx, norm=norm),
                   donate_argnums=0)
  runners = {("single", 1): _runner(single, step.create_state(model, tx, jax.random.key(0)),
                                    jax.random.key(1), batches)}
  for k in FLAGS.members:
    group = sweep.members(cfg, {"seed": tuple(range(k))})

    def states(group=group):
      return sweep.init(model, group, num_train=60000)
    runners[("lock-step", k)] = _runner(sweep.make_lock_step(model, tx, norm), *states(),
                                        batches)
    runners[("windowed", k)] = _runner(sweep.make_window_step(model, tx, norm), *states(),
                                       [window])
  # Interleaved rounds, median per program: a drift of the machine's speed hits all alike.
  times = {key: [] for key in runners}
  for _ in range(FLAGS.rounds):
    for key, run in runners.items():
      times[key].append(run())
  t = {key: float(np.median(v)) for key, v in times.items()}
  t0 = t[("single", 1)]
  print(f"{machine.line()}; {FLAGS.model}, batch {b}, "
        f"dropout {FLAGS.dropout}, windows of {w}; median of {FLAGS.rounds} interleaved rounds "
        f"of {FLAGS.windows * w} steps")
  print(f"single model: {t0 * 1e3:.2f} ms/step, {b / t0:.0f} img/s; sequential runs give "
        f"that per model")
  print(f"{'K':>3} {'lock-step ms':>13} {'model-img/s':>12} {'ratio':>6} {'windowed ms':>12} "
        f"{'model-img/s':>12} {'ratio':>6}")
  for k in FLAGS.members:
    lock, win = t[("lock-step", k)], t[("windowed", k)]
    print(f"{k:>3} {lock * 1e3:13.2f} {k * b / lock:12.0f} {k * t0 / lock:6.2f} "
          f"{win * 1e3:12.2f} {k * b / win:12.0f} {k * t0 / win:6.2f}")


if __name__ == "__main__":
  app.run(main)
