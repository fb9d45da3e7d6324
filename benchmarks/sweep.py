"""Sweep throughput: K members trained together against K sequential single runs.

  python benchmarks/sweep.py [--model=lenet] [--dropout=0.25] [--batch_size=64]

Prints model-images per second (K x batch / seconds per step) for K = 1, 4, 8 in both
ways a run can step its members: one by one (`driver.Trainer` on CPU: every member through
the one compiled single-member step, driver.WINDOW_STEPS batches a call, what a run on CPU
runs) and in one program (the members
in one jitted step: vmapped on GPU/TPU, a loop over members on CPU, what `--epoch_loop=scan`
runs), each with its ratio against K single-model steps (`step.train_step` jitted alone, a
batch per call) measured in the same process on the same batches. Steady state: each
program is compiled and warmed up before it is timed, and the programs are timed in
interleaved rounds (the median of each is reported), so that a change in the machine's
speed during the run does not favour one of them.
"""

from __future__ import annotations

import functools
import time

import jax
import numpy as np
from absl import app, flags

from mnistjax import config as config_lib
from mnistjax import data, driver, machine, step

flags.DEFINE_string("model", "lenet", "model to time")
flags.DEFINE_float("dropout", 0.25, "dropout rate of every member (0 = off)")
flags.DEFINE_integer("batch_size", 64, "batch size")
flags.DEFINE_integer("steps", 16, "steps per measurement")
flags.DEFINE_multi_integer("members", [1, 4, 8], "sweep sizes")
flags.DEFINE_integer("rounds", 3, "interleaved measurement rounds (median reported)")
FLAGS = flags.FLAGS


def _timer(take_step, units, batches_per_unit=1):
  """A closure that times take_step (compiled and warmed up here) over units (a batch, or a
  window of batches, each), returning seconds per batch."""
  jax.block_until_ready(take_step(units[0]))

  def run() -> float:
    start = time.perf_counter()
    for unit in units:
      out = take_step(unit)
    jax.block_until_ready(out)
    return (time.perf_counter() - start) / (len(units) * batches_per_unit)
  return run


def main(_):
  b = FLAGS.batch_size
  cfg = config_lib.Config(model=FLAGS.model, dropout=FLAGS.dropout, batch_size=b,
                          epoch_loop="python")
  rng = np.random.default_rng(0)
  n = b * FLAGS.steps
  images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
  labels = rng.integers(0, 10, n).astype(np.uint8)
  split = data.Split(images, labels)
  dataset = data.Dataset("mnist", split, split, "random")
  batches = [[{"image": images[i:i + b], "label": labels[i:i + b].astype(np.int32),
               "mask": np.ones(b, bool)}] for i in range(0, n, b)]
  run1 = driver.setup(cfg, dataset)
  tx = step.make_optimizer(cfg, run1.steps_per_epoch)
  single = jax.jit(functools.partial(step.train_step, model=run1.net, tx=tx),
                   donate_argnums=0)
  box = {"state": step.create_state(run1.model, tx, jax.random.key(0))}

  def single_step(batch):
    box["state"], metrics = single(box["state"], batch[0], jax.random.key(1))
    return metrics["loss"]
  timers = {("single", 1): _timer(single_step, batches)}
  for k in FLAGS.members:
    run = driver.setup(cfg.replace(seed=0), dataset, {"dropout": (FLAGS.dropout,) * k})
    members, keys = step.init_members(run.model, run.group, run.steps_per_epoch)
    trainer = driver.Trainer(run, members, keys, 0)
    timers[("one by one", k)] = _timer(trainer.take_step,
                                       [unit for unit, _ in trainer.units(1)], trainer.window)
    one = functools.partial(driver._member_step, model=run.net, tx=tx)  # pylint: disable=protected-access
    together = jax.jit(driver._vmapped(one, per_member=False), donate_argnums=0)  # pylint: disable=protected-access
    box[k] = step.init_members(run.model, run.group, run.steps_per_epoch)

    def together_step(batch, k=k, together=together):
      members, keys = box[k]
      members, losses, _ = together(members, batch[0], keys)
      box[k] = members, keys
      return losses
    timers[("one program", k)] = _timer(together_step, batches)
  # Interleaved rounds, median per program: a drift of the machine's speed hits all alike.
  times = {key: [] for key in timers}
  for _ in range(FLAGS.rounds):
    for key, run in timers.items():
      times[key].append(run())
  t = {key: float(np.median(v)) for key, v in times.items()}
  t0 = t[("single", 1)]
  print(f"{machine.line()}; {FLAGS.model}, batch {b}, dropout {FLAGS.dropout}; median of "
        f"{FLAGS.rounds} interleaved rounds of {FLAGS.steps} steps")
  print(f"single model: {t0 * 1e3:.2f} ms/step, {b / t0:.0f} img/s; sequential runs give "
        f"that per model")
  print(f"{'K':>3} {'one by one ms':>14} {'model-img/s':>12} {'ratio':>6} {'one program ms':>15} "
        f"{'model-img/s':>12} {'ratio':>6}")
  for k in FLAGS.members:
    seq, together = t[("one by one", k)], t[("one program", k)]
    print(f"{k:>3} {seq * 1e3:14.2f} {k * b / seq:12.0f} {k * t0 / seq:6.2f} "
          f"{together * 1e3:15.2f} {k * b / together:12.0f} {k * t0 / together:6.2f}")


if __name__ == "__main__":
  app.run(main)
