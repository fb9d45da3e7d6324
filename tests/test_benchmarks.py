"""The benchmark scripts still run (their numbers are measured by hand, never asserted here)."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def worker(*args: str) -> dict:
  proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run.py"), *args],
                        capture_output=True, text=True, timeout=600, cwd=ROOT, env=os.environ)
  assert proc.returncode == 0, proc.stderr[-2000:]
  return json.loads(proc.stdout.strip().splitlines()[-1])


def test_the_jax_measurement_reports_every_column(mnist):
  r = worker("--worker=jax", "--model=mlp_deep", "--steps=2", "--epoch")
  assert r["batch_size"] == 64 and r["seconds_per_step"] > 0 and r["compile_seconds"] > 0
  # The matmuls: forward and weight gradient of every layer, input gradient of all but the
  # first (the pixels need none): 2 flops per multiply-add, 64 images.
  macs = [784 * 500, 500 * 250, 250 * 100, 100 * 10]
  matmul_flops = 2 * 64 * (3 * sum(macs) - macs[0])
  assert matmul_flops <= r["flops_per_step"] <= 1.2 * matmul_flops
  assert r["epoch_test_accuracy"] > 80 and r["peak_rss_mb"] > 0


def test_the_flop_count_covers_every_slice_of_a_sliced_convolution(mnist):
  # CNN3 at batch 64 builds its patches in slices of the batch: a loop, whose body XLA's cost
  # analysis would count once. Multiply-adds per image of its 4 convolutions and dense layer:
  macs = [784 * 25 * 16, 784 * 400 * 32, 784 * 800 * 64, 196 * 1600 * 128, 18432 * 10]
  matmul_flops = 2 * 64 * (3 * sum(macs) - macs[0])
  r = worker("--worker=jax", "--model=cnn3", "--steps=1")
  assert matmul_flops <= r["flops_per_step"] <= 1.2 * matmul_flops


def test_the_pytorch_baseline_has_our_networks_parameter_counts():
  pytest.importorskip("torch")  # the `bench` extra
  sys.path.insert(0, str(ROOT / "benchmarks"))
  import jax  # pylint: disable=g-import-not-at-top
  import torch_baseline  # pylint: disable=g-import-not-at-top

  from mnistjax import models  # pylint: disable=g-import-not-at-top
  for name, net in torch_baseline.NETS.items():
    ours = models.count_params(models.init(models.build(name), jax.random.key(0))["params"])
    assert sum(p.numel() for p in net().parameters()) == ours, name


def test_ratios_pair_the_rounds_before_taking_the_median():
  sys.path.insert(0, str(ROOT / "benchmarks"))
  import run  # pylint: disable=g-import-not-at-top
  # Rounds 1 and 3 say 2x; round 2 was disturbed. The medians of the two columns (4 and 4)
  # would say 1x; paired, one disturbed round does not move the result.
  ratio, ratios = run.paired_ratio([2.0, 4.0, 8.0], [1.0, 8.0, 4.0])
  assert ratios == [2.0, 0.5, 2.0] and ratio == 2.0
  with pytest.raises(ValueError):
    run.paired_ratio([1.0, 2.0], [1.0])


def script(name: str, *args: str) -> list[str]:
  proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / name), *args],
                        capture_output=True, text=True, timeout=600, cwd=ROOT, env=os.environ)
  assert proc.returncode == 0, proc.stderr[-2000:]
  return proc.stdout.strip().splitlines()


def test_eval_batch_times_every_batch_size_against_the_default():
  lines = script("eval_batch.py", "--batch_sizes=250,500", "--images=600", "--rounds=1")
  assert "cores" in lines[0]  # the machine
  rows = {line.split()[0]: line.split() for line in lines[2:]}
  assert set(rows) == {"250", "500"} and rows["500"][-1] == "1.00x"
  assert all(float(r[1]) > 0 for r in rows.values())


def test_conv_parts_times_each_part_of_every_convolution_of_the_model():
  lines = script("conv_parts.py", "--model=lenet", "--impls=patches", "--repeats=1")
  rows = [line.split() for line in lines[2:]]
  # conv1 on 64 MNIST images, conv2 on its pooled 12 x 12 maps; 4 times and a rate each.
  assert [(r[0], r[1], r[3]) for r in rows] == [("conv1", "64x28x28x1", "patches"),
                                                ("conv2", "64x12x12x20", "patches")]
  assert all(len(r) == 9 and all(float(v) > 0 for v in r[4:]) for r in rows)


def test_sweep_times_both_ways_of_stepping_members_against_single_steps():
  lines = script("sweep.py", "--members=1", "--members=2", "--steps=2", "--rounds=1")
  assert "cores" in lines[0] and lines[1].startswith("single model:")
  rows = [line.split() for line in lines[3:]]
  assert [r[0] for r in rows] == ["1", "2"] and all(float(v) > 0 for r in rows for v in r[1:])


def test_own_model_times_the_engine_against_a_plain_jit_loop(mnist):
  lines = script("own_model.py", "--rounds=1", "--epochs=2", "--train_examples=256",
                 "--models=mlp")
  assert "cores" in lines[0] and lines[1].startswith("mlp ")
  plain, engine = (float(lines[1].split(label)[1].split()[0])
                   for label in ("plain jit loop", "mnistjax.train"))
  assert plain > 0 and engine > 0 and "ratio" in lines[1]
