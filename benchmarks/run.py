"""mnistjax against the notebooks' PyTorch code, side by side on this machine.

  python -m pip install -e ".[bench]"      # PyTorch's CPU build (torch==2.13.0)
  MNISTJAX_DATA_DIR=../shared/data python benchmarks/run.py [--models=lenet,cnn3,mlp_deep]
      [--steps=50] [--rounds=3] [--epoch_models=lenet,mlp_deep] [--s0a] [--out=bench.json]
  git worktree add /tmp/before COMMIT      # this tree's training step against another commit's
  MNISTJAX_DATA_DIR=../shared/data python benchmarks/run.py --torch=false --baseline=/tmp/before

The header names the CPU, its vector extensions and caches. For each model at its
notebook's batch size and optimiser it prints, for JAX and for PyTorch eager (NCHW as
the notebooks, and channels-last for the conv nets):
steady-state training images/s, the ratio against the faster PyTorch layout, the
compile time (JAX) or first step (PyTorch), the wall time of a whole epoch including
the evaluation of the train and test sets, the peak resident memory of the process,
and the fraction of this machine's fp32 matmul peak that the JAX step reaches
(the FLOPs XLA counts in the step / step time / the peak of a large jnp matmul
measured in the same run). With --s0a it also times the whole S0a relu run (5 epochs,
train and test evaluated after each), start of the process to its end:
`experiments/run.py` against the same protocol in PyTorch.

Every measurement runs in its own child process, one after another, so that peak
memory belongs to one framework and one model and neither framework competes with
the other for the cores. The machine's speed drifts over minutes, so the
implementations are measured in interleaved rounds (--rounds: jax, torch,
torch_cl, jax, ...; the whole runs likewise) and the median of each is reported.
A ratio is the median of the rounds' own ratios (against that round's faster PyTorch
layout), not a ratio of medians: each round's figures were taken a minute or so apart.
The epoch, compile and memory figures come from the first round.
"""

from __future__ import annotations

import functools
import itertools
import json
import os
import pathlib
import resource
import statistics
import subprocess
import sys
import time

from absl import app, flags

from mnistjax import machine

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

flags.DEFINE_list("models", ["lenet", "cnn3", "mlp_deep"], "models to measure")
flags.DEFINE_list("epoch_models", ["lenet", "mlp_deep"], "models whose whole epoch is timed "
                  "(CNN3's takes minutes on a 2-core CPU in either framework)")
flags.DEFINE_integer("steps", 50, "timed steps per repeat (3 repeats, median)")
flags.DEFINE_integer("rounds", 3, "interleaved rounds of every measurement (median reported)")
flags.DEFINE_bool("s0a", False, "also time the whole S0a relu run in both frameworks")
flags.DEFINE_string("out", None, "also write the results as JSON here")
flags.DEFINE_bool("torch", True, "measure PyTorch too (false: mnistjax alone, e.g. against "
                  "--baseline)")
flags.DEFINE_string("baseline", None, "a checkout of another commit (git worktree add DIR "
                    "COMMIT): its jax worker runs in every round beside this tree's, and "
                    "'jax / baseline' is their paired ratio")
flags.DEFINE_string("baseline_worker", "jax", "the baseline's worker (jax_rules: the fixed "
                    "rules of a commit that still had the autotuner)")
flags.DEFINE_string("worker", None, "internal: the measurement a child process makes")
flags.DEFINE_string("model", None, "internal: the child's model")
flags.DEFINE_bool("epoch", False, "internal: the child also times a whole epoch")
FLAGS = flags.FLAGS

# Each model with its notebook's protocol: mnistjax study and variant.
PROTOCOLS = {"lenet": ("s0_activation", {"activation": "relu"}),
             "cnn3": ("s1_fashion_cnn3", {}),
             "mlp_deep": ("s4_activation", {"activation": "relu"})}


def protocol(model: str):
  from mnistjax import studies  # pylint: disable=g-import-not-at-top
  name, variant = PROTOCOLS[model]
  return studies.STUDIES[name].config.replace(**variant).validate()


def peak_rss_mb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kB


def paired_ratio(baseline_rounds: list[float], rounds: list[float]) -> tuple[float, list[float]]:
  """baseline time / time, round by round, and its median: each round's two figures were taken
  minutes apart at most, so the machine's drift between rounds cancels out of the ratio."""
  ratios = [b / t for b, t in zip(baseline_rounds, rounds, strict=True)]
  return statistics.median(ratios), ratios


def load(config):
  from mnistjax import data  # pylint: disable=g-import-not-at-top
  dataset = data.load(config.dataset, config.data_dir)
  return dataset, data.normalization(config.normalization, dataset)


# ----------------------------------------------------------------------------- children

def worker_peak() -> dict:
  """fp32 matmul peak: a 4096 x 4096 jnp matmul, best of 5."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  n = 4096
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
  matmul = jax.jit(lambda x, y: x @ y)
  matmul(a, a).block_until_ready()
  best = float("inf")
  for _ in range(5):
    start = time.perf_counter()
    matmul(a, a).block_until_ready()
    best = min(best, time.perf_counter() - start)
  return {"gflops": 2 * n ** 3 / best / 1e9, "device": str(jax.devices()[0].device_kind),
          "backend": jax.default_backend(), "machine": machine.describe()}


def step_flops(model, tx, norm, state, batch, key) -> float:
  """The FLOPs XLA counts in a train step, traced with whole-batch patches (the fixed rule,
  its limit out of reach): its cost analysis counts a loop's body once, so sliced
  convolutions would be undercounted; the arithmetic is the same."""
  import jax  # pylint: disable=g-import-not-at-top

  from mnistjax import layers, step  # pylint: disable=g-import-not-at-top
  saved, layers.PATCH_WHOLE_BYTES = layers.PATCH_WHOLE_BYTES, 1 << 62
  try:
    train_step = jax.jit(functools.partial(step.train_step, model=step.Model(model, norm), tx=tx))
    return float((train_step.lower(state, batch, key).cost_analysis() or {}).get("flops", 0.0))
  finally:
    layers.PATCH_WHOLE_BYTES = saved


def worker_jax(model_name: str, steps: int, epoch: bool) -> dict:
  """What a run trains with (driver.Trainer): on CPU one member's compiled step over a window
  of driver.WINDOW_STEPS batches per call, the window transferred with it; seconds per step
  are per batch."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  from mnistjax import driver, step  # pylint: disable=g-import-not-at-top
  config = protocol(model_name).replace(devices=1, epoch_loop="python")
  dataset, _ = load(config)
  run = driver.setup(config, dataset)
  members, keys = step.init_members(run.model, run.group, run.steps_per_epoch)
  tx = step.make_optimizer(config, run.steps_per_epoch)
  trainer = driver.Trainer(run, members, keys, 0)
  units = list(itertools.islice(trainer.units(1), max(1, steps // trainer.window)))
  one_batch = {k: v[0] if trainer.window > 1 else v for k, v in units[0][0][0].items()}
  flops = step_flops(run.model, tx, run.norm, step.unstack(members.state, 0), one_batch,
                     keys[0])  # before the Trainer steps: it may donate the members' buffers
  start = time.perf_counter()
  jax.block_until_ready(trainer.take_step(units[0][0]))
  compile_seconds = time.perf_counter() - start
  times = []
  for _ in range(3):
    start = time.perf_counter()
    for unit, _ in units:
      losses = trainer.take_step(unit)
    jax.block_until_ready(losses)
    times.append((time.perf_counter() - start) / (len(units) * trainer.window))
  result = {"compile_seconds": compile_seconds, "seconds_per_step": float(np.median(times)),
            "flops_per_step": flops, "batch_size": config.batch_size}

  if epoch:  # a fresh run's epoch, compile included, then the train and test sets evaluated
    members, keys = step.init_members(run.model, run.group, run.steps_per_epoch)
    start = time.perf_counter()
    trainer = driver.Trainer(run, members, keys, 0)
    for _ in trainer.epoch(1):
      pass
    eval_step = jax.jit(functools.partial(step.eval_step, model=run.net))
    state = step.unstack(trainer.members.state, 0)
    size = config.eval_batch(jax.default_backend())
    train = driver.evaluate_split(eval_step, state, dataset.train, size)
    test = driver.evaluate_split(eval_step, state, dataset.test, size)
    result.update(epoch_seconds=time.perf_counter() - start,
                  epoch_train_accuracy=train["accuracy"], epoch_test_accuracy=test["accuracy"])
  return {**result, "peak_rss_mb": peak_rss_mb()}


def worker_torch(model_name: str, steps: int, epoch: bool, channels_last: bool) -> dict:
  import torch  # pylint: disable=g-import-not-at-top

  import torch_baseline as tb  # pylint: disable=g-import-not-at-top
  config = protocol(model_name)
  dataset, norm = load(config)
  runner = tb.Runner(model_name, config.lr, config.momentum, config.weight_decay, norm,
                     channels_last=channels_last)
  images, labels = tb.tensors(dataset.train.images, dataset.train.labels)
  b = config.batch_size
  result = tb.time_steps(runner, images[:b], labels[:b], steps)
  result.update(batch_size=b, threads=torch.get_num_threads())
  if epoch:
    runner = tb.Runner(model_name, config.lr, config.momentum, config.weight_decay, norm,
                       channels_last=channels_last)
    test_images, test_labels = tb.tensors(dataset.test.images, dataset.test.labels)
    start = time.perf_counter()
    runner.epoch(images, labels, b, torch.Generator().manual_seed(0))
    _, train_accuracy = runner.evaluate(images, labels)
    _, test_accuracy = runner.evaluate(test_images, test_labels)
    result.update(epoch_seconds=time.perf_counter() - start,
                  epoch_train_accuracy=train_accuracy, epoch_test_accuracy=test_accuracy)
  return {**result, "peak_rss_mb": peak_rss_mb()}


def worker_torch_s0a() -> dict:
  """The S0a relu protocol in PyTorch: 5 epochs, train and test sets evaluated after each."""
  import torch  # pylint: disable=g-import-not-at-top

  import torch_baseline as tb  # pylint: disable=g-import-not-at-top
  config = protocol("lenet")
  dataset, norm = load(config)
  runner = tb.Runner("lenet", config.lr, config.momentum, 0.0, norm)
  images, labels = tb.tensors(dataset.train.images, dataset.train.labels)
  test_images, test_labels = tb.tensors(dataset.test.images, dataset.test.labels)
  generator = torch.Generator().manual_seed(1)
  accuracies = []
  for _ in range(config.epochs):
    runner.epoch(images, labels, config.batch_size, generator)
    runner.evaluate(images, labels)
    accuracies.append(runner.evaluate(test_images, test_labels)[1])
  return {"test_accuracy": accuracies, "peak_rss_mb": peak_rss_mb()}


# ----------------------------------------------------------------------------- parent

def child(*args: str, tree: pathlib.Path = ROOT) -> tuple[dict, float]:
  """Runs one measurement in a fresh process, with the mnistjax of `tree` (this checkout, or
  --baseline's); returns its JSON and its wall time."""
  start = time.perf_counter()
  env = {**os.environ, "PYTHONPATH": os.pathsep.join(
      [str(tree), *filter(None, [os.environ.get("PYTHONPATH")])])}
  proc = subprocess.run([sys.executable, str(tree / "benchmarks" / "run.py"), *args],
                        capture_output=True, text=True, cwd=tree, env=env)
  wall = time.perf_counter() - start
  if proc.returncode != 0:
    sys.exit(f"benchmarks/run.py: error: {' '.join(args)} failed:\n{proc.stderr[-2000:]}")
  return json.loads(proc.stdout.strip().splitlines()[-1]), wall


def whole_run(args: list[str]) -> tuple[dict, float]:
  start = time.perf_counter()
  proc = subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=ROOT,
                        env=os.environ)
  if proc.returncode != 0:
    sys.exit(f"benchmarks/run.py: error: {' '.join(args)} failed:\n{proc.stderr[-2000:]}")
  return {"output": proc.stdout.strip().splitlines()[-1]}, time.perf_counter() - start


def main(argv):
  del argv
  if FLAGS.worker:
    result = {"peak": worker_peak,
              "jax": lambda: worker_jax(FLAGS.model, FLAGS.steps, FLAGS.epoch),
              "torch": lambda: worker_torch(FLAGS.model, FLAGS.steps, FLAGS.epoch, False),
              "torch_cl": lambda: worker_torch(FLAGS.model, FLAGS.steps, FLAGS.epoch, True),
              "torch_s0a": worker_torch_s0a}[FLAGS.worker]()
    print(json.dumps(result))
    return
  if FLAGS.torch:
    try:
      import torch  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
    except ImportError:
      sys.exit("benchmarks/run.py: error: PyTorch is not installed; run "
               "python -m pip install -e \".[bench]\" (or give --torch=false)")
  baseline = pathlib.Path(FLAGS.baseline).resolve() if FLAGS.baseline else None
  if baseline and not (baseline / "benchmarks" / "run.py").exists():
    sys.exit(f"benchmarks/run.py: error: --baseline={FLAGS.baseline} holds no "
             "benchmarks/run.py; give a checkout (git worktree add DIR COMMIT)")
  peak, _ = child("--worker=peak")
  caches = ", ".join(f"{k} {v >> 10} KiB" for k, v in peak["machine"]["caches"].items())
  print(f"{machine.line(peak['machine'])}; caches {caches or 'not reported'}; fp32 matmul "
        f"peak (jnp 4096^3): {peak['gflops']:.1f} GFLOP/s (figures on another CPU differ)")
  results = {"machine": peak["machine"], "peak": peak, "models": {}}
  header = (f"{'model':<9} {'impl':<12} {'batch':>5} {'img/s':>8} {'ratio':>6} {'compile/1st':>11} "
            f"{'epoch s':>8} {'test %':>7} {'RSS MB':>7} {'of peak':>7}")
  print(header)
  for model in FLAGS.models:
    impls = ["jax"] + (["baseline"] if baseline else [])
    if FLAGS.torch:
      impls += ["torch"] + (["torch_cl"] if model != "mlp_deep" else [])
    rounds = {impl: [] for impl in impls}
    for r in range(FLAGS.rounds):  # interleaved: a drift of the machine hits every impl alike
      for impl in impls:
        epoch = ["--epoch"] if r == 0 and model in FLAGS.epoch_models else []
        worker, tree = ((FLAGS.baseline_worker, baseline) if impl == "baseline"
                        else (impl, ROOT))
        rounds[impl].append(child(f"--worker={worker}", f"--model={model}",
                                  f"--steps={FLAGS.steps}", *epoch, tree=tree)[0])
    rows = {}
    for impl, runs in rounds.items():
      per_round = [x["seconds_per_step"] for x in runs]
      rows[impl] = {**runs[0], "seconds_per_step": statistics.median(per_round),
                    "rounds_seconds_per_step": per_round}
    # Each round's faster PyTorch layout (else the baseline); ratios are paired within rounds
    # (paired_ratio).
    reference = [k for k in rows if k.startswith("torch")] or ["baseline"] * bool(baseline)
    best_torch = [min(rows[k]["rounds_seconds_per_step"][i] for k in reference)
                  for i in range(FLAGS.rounds)] if reference else [float("nan")] * FLAGS.rounds
    for impl, r in rows.items():
      r["images_per_second"] = r["batch_size"] / r["seconds_per_step"]
      r["ratio_vs_best_torch"], r["rounds_ratio_vs_best_torch"] = paired_ratio(
          best_torch, r["rounds_seconds_per_step"])
      if "flops_per_step" in r:
        r["fraction_of_peak"] = r["flops_per_step"] / r["seconds_per_step"] / 1e9 / peak["gflops"]
      first = r.get("compile_seconds", r.get("first_step_seconds"))
      print(f"{model:<9} {impl:<12} {r['batch_size']:>5} {r['images_per_second']:8.0f} "
            f"{r['ratio_vs_best_torch']:6.2f} {first:11.2f} "
            f"{r.get('epoch_seconds', float('nan')):8.1f} "
            f"{r.get('epoch_test_accuracy', float('nan')):7.2f} {r['peak_rss_mb']:7.0f} "
            + (f"{r['fraction_of_peak']:7.1%}" if "fraction_of_peak" in r else f"{'':>7}"),
            flush=True)
    if baseline:
      rows["jax_vs_baseline"], ratios = paired_ratio(rows["baseline"]["rounds_seconds_per_step"],
                                                     rows["jax"]["rounds_seconds_per_step"])
      print(f"{'':<9} jax / baseline ({FLAGS.baseline_worker} of {baseline}): "
            f"{rows['jax_vs_baseline']:.3f}x (rounds: {', '.join(f'{x:.3f}' for x in ratios)})",
            flush=True)
    results["models"][model] = rows
  if FLAGS.s0a:
    walls = {"jax": [], "torch": []}
    s0a = ["experiments/run.py", "--model=lenet", "--activation=relu", "--checkpoint=false"]
    for _ in range(FLAGS.rounds):
      jax_run, wall = whole_run(s0a)
      walls["jax"].append(wall)
      torch_run, wall = child("--worker=torch_s0a")
      walls["torch"].append(wall)
    medians = {k: statistics.median(v) for k, v in walls.items()}
    ratio, ratios = paired_ratio(walls["torch"], walls["jax"])
    results["s0a"] = {"jax_seconds": medians["jax"], "torch_seconds": medians["torch"],
                      "ratio": ratio, "rounds_ratio": ratios, "rounds_seconds": walls,
                      "jax_final": jax_run["output"],
                      "torch_test_accuracy": torch_run["test_accuracy"],
                      "torch_peak_rss_mb": torch_run["peak_rss_mb"]}
    print(f"S0a relu, whole run (5 epochs + train/test evaluation each, process start to end), "
          f"median of {FLAGS.rounds}: mnistjax {medians['jax']:.1f} s, PyTorch "
          f"{medians['torch']:.1f} s, ratio {ratio:.2f} (median of the rounds' ratios); PyTorch "
          f"final test accuracy {torch_run['test_accuracy'][-1]:.2f}%; mnistjax: "
          f"{jax_run['output']}")
  if FLAGS.out:
    pathlib.Path(FLAGS.out).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
  app.run(main)
