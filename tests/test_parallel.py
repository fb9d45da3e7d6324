"""Data parallelism: four fake CPU devices compute what one device computes.

JAX fixes its device count when it starts, so the four-device runs happen in one
subprocess (tests/parallel_worker.py) started with
XLA_FLAGS=--xla_force_host_platform_device_count=4; the tests check its report.
The runs are in float64 (JAX_ENABLE_X64), where the same sums taken in another order
(per-device partial sums, then an all-reduce) agree on any CPU: relative F64_RTOL of
(1 + |value|) (conftest.py). BatchNorm's running variance is E[x^2] - E[x]^2, whose
cancellation magnifies rounding by E[x^2] / Var[x]: BN_TOL allows that factor up to 1000.
A BatchNorm that counted the padded examples is off by ~0.75; per-device statistics by ~1e-2.
"""

from __future__ import annotations

import json
import os
import pathlib
import socket
import subprocess
import sys

import numpy as np
import pytest

from conftest import F64_RTOL, require_float64_jaxlib
from mnistjax import parallel
from mnistjax.errors import ConfigError

HERE = pathlib.Path(__file__).parent
TOL = F64_RTOL
BN_TOL = 1000 * F64_RTOL


@pytest.fixture(scope="module")
def report() -> dict:
  require_float64_jaxlib()
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
         "JAX_PLATFORMS": "cpu", "JAX_ENABLE_X64": "1", "PYTHONPATH": str(HERE)}
  proc = subprocess.run([sys.executable, str(HERE / "parallel_worker.py")], env=env,
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return json.loads(proc.stdout.strip().splitlines()[-1])


def test_the_worker_sees_four_devices(report):
  assert report["device_count"] == 4


@pytest.mark.parametrize("case", ["lenet_dropout", "cnn3_batchnorm", "uneven_batchnorm",
                                  "sweep_x_data"])
def test_four_devices_train_the_same_model_as_one(report, case):
  r = report[case]
  assert r["devices"] == [1, 4]
  assert r["sharding"] == "P()"  # parameters stay replicated
  assert r["params"] < TOL
  # BatchNorm statistics are global (SyncBN): per-device statistics would differ here.
  assert r["batch_stats"] < BN_TOL
  assert r["accuracy"][0] == r["accuracy"][1]


def test_each_device_gets_its_slice_of_the_batch(report):
  assert report["shards_32"] == {"image": [[8, 28, 28]] * 4, "label": [[8]] * 4}


def test_an_uneven_batch_is_padded_with_masked_examples(report):
  assert report["shards_30"]["image"] == [[8, 28, 28]] * 4
  assert report["mask_30"] == [True] * 30 + [False] * 2


def test_more_devices_than_present_is_a_one_line_error(report):
  message = report["too_many"]
  assert "--devices=8" in message and "--devices=4 or fewer" in message
  assert "\n" not in message


def test_one_device_runs_the_plain_program():
  assert parallel.make(1) is None
  with pytest.raises(ConfigError, match="must be >= 0"):
    parallel.make(-1)


def test_distributed_initialisation_only_when_a_launcher_asks_for_it():
  assert parallel.initialize_distributed({}) is False
  assert parallel.initialize_distributed({"SLURM_NTASKS": "1"}) is False
  with pytest.raises(ConfigError, match="JAX_PROCESS_ID"):
    parallel.initialize_distributed({"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234",
                                     "JAX_NUM_PROCESSES": "2"})
  with pytest.raises(ConfigError, match=r"must be in \[0"):
    parallel.initialize_distributed({"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234",
                                     "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "2"})


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_train_what_one_process_does(tmp_path):
  """A two-host job on one machine (2 processes x 2 fake CPU devices, gloo collectives)
  against a single process with one device."""
  require_float64_jaxlib()
  base = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(HERE),
          "JAX_CPU_COLLECTIVES_IMPLEMENTATION": "gloo", "JAX_ENABLE_X64": "1"}
  for var in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID", "XLA_FLAGS"):
    base.pop(var, None)
  worker = [sys.executable, str(HERE / "multihost_worker.py")]
  single = subprocess.run([*worker, str(tmp_path / "single")], env=base, capture_output=True,
                          text=True, timeout=600)
  assert single.returncode == 0, single.stderr[-3000:]
  job = {**base, "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
         "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{_free_port()}", "JAX_NUM_PROCESSES": "2"}
  procs = [subprocess.Popen([*worker, str(tmp_path / "job")], env={**job, "JAX_PROCESS_ID": str(i)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for i in range(2)]
  for proc in procs:
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
  one = np.load(tmp_path / "single" / "process_0.npz")
  assert int(one["processes"]) == 1
  for i in range(2):
    got = np.load(tmp_path / "job" / f"process_{i}.npz")
    assert int(got["processes"]) == 2 and int(got["devices"]) == 4
    assert float(got["accuracy"]) == float(one["accuracy"])
    for name in one.files:
      if name.startswith("arr_"):
        np.testing.assert_allclose(got[name], one[name], rtol=TOL, atol=TOL)
  # Only process 0 writes the results; both took part in the checkpoint.
  lines = (tmp_path / "job" / "workdir" / "metrics.jsonl").read_text().splitlines()
  assert len(lines) == 2  # epoch 0 and epoch 1, written once
  assert (tmp_path / "job" / "workdir" / "checkpoints" / "1").is_dir()
