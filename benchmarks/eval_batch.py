"""Evaluation time by batch size: is the CPU default (`--eval_batch_size=0`: 500) right here?

  python benchmarks/eval_batch.py [--model=lenet] [--batch_sizes=100,250,500,1000,2000]
      [--images=60000] [--rounds=3]

Scores --images synthetic images (the time does not depend on the pixels) with the
evaluation step a run uses (`step.eval_step`, batches of `data.eval_batches`, the last one
padded), once per batch size and round, in interleaved rounds in one process (each program
compiled and warmed up first), and prints each batch size's best and median seconds, and its
speed against the default batch's in the same rounds (the median of the rounds' ratios; above
1: faster than the default). The first line names the machine.
"""

from __future__ import annotations

import functools
import statistics
import time

import jax
import numpy as np
from absl import app, flags

from mnistjax import config as config_lib, data, machine, models, step

flags.DEFINE_string("model", "lenet", "model to evaluate")
flags.DEFINE_list("batch_sizes", ["100", "250", "500", "1000", "2000"], "batch sizes to time")
flags.DEFINE_integer("images", 60000, "images scored per measurement (MNIST's train set: 60000)")
flags.DEFINE_integer("rounds", 3, "interleaved rounds (best and median reported)")
FLAGS = flags.FLAGS


def main(_):
  sizes = [int(b) for b in FLAGS.batch_sizes]
  default = config_lib.Config().eval_batch("cpu")
  cfg = config_lib.Config(model=FLAGS.model)
  model = models.build(cfg.model, **cfg.model_settings())
  state = step.create_state(model, step.make_optimizer(cfg, steps_per_epoch=1),
                            jax.random.key(0))
  rng = np.random.default_rng(0)
  split = data.Split(rng.integers(0, 256, (FLAGS.images, 28, 28), dtype=np.uint8),
                     rng.integers(0, 10, FLAGS.images, dtype=np.uint8))
  print(f"{machine.line()}; {FLAGS.model}, {FLAGS.images} images", flush=True)

  runs = {}
  for b in sizes:
    evaluate = jax.jit(functools.partial(step.eval_step, model=step.Model(model, (0.1307, 0.3081))))
    evaluate(state, next(data.eval_batches(split, b)))["correct"].block_until_ready()

    def run(b=b, evaluate=evaluate) -> float:
      start = time.perf_counter()
      sums = [evaluate(state, batch)["correct"] for batch in data.eval_batches(split, b)]
      jax.block_until_ready(sums)
      return time.perf_counter() - start
    runs[b] = run

  seconds = {b: [] for b in sizes}
  for _ in range(FLAGS.rounds):  # interleaved: a drift of the machine hits every size alike
    for b in sizes:
      seconds[b].append(runs[b]())
  print(f"{'batch':>6} {'best s':>7} {'median s':>9} {'vs ' + str(default):>8}")
  for b in sizes:
    ratio = (statistics.median(d / s for d, s in zip(seconds[default], seconds[b]))
             if default in seconds else float("nan"))
    print(f"{b:>6} {min(seconds[b]):7.2f} {statistics.median(seconds[b]):9.2f} {ratio:8.2f}x")


if __name__ == "__main__":
  app.run(main)
