"""experiments/run.py end to end, in a subprocess as a user runs it."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest

from conftest import write_dataset
from mnistjax import data

ROOT = pathlib.Path(__file__).resolve().parents[1]


def run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, str(ROOT / "experiments" / "run.py"), *args],
                        capture_output=True, text=True, timeout=600, cwd=ROOT,
                        env={**os.environ, **(env or {})})


def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
  assert result.returncode == 2, result.stderr
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("run.py: error: "), result.stderr
  assert "Traceback" not in result.stderr
  for fragment in fragments:
    assert fragment in lines[0]


@pytest.mark.parametrize("flag,fragments", [
    ("--model=resnet", ["--model=resnet", "choose one of: lenet"]),
    ("--lr=0", ["--lr=0.0", "must be > 0"]),
    ("--epochs=0", ["--epochs=0", ">= 1"]),
    ("--dataset=cifar10", ["choose one of: mnist, fashion_mnist"]),
    ("--activation=swish", ["choose one of: relu, sigmoid, tanh, prelu"]),
    ("--epochs=two", ["--epochs=two"]),
    ("--no_such_flag=1", ["no_such_flag"]),
])
def test_bad_flags_get_one_line_naming_the_choices(flag, fragments):
  assert_one_line_error(run(flag), *fragments)


def test_missing_data_directory(tmp_path):
  assert_one_line_error(run(f"--data_dir={tmp_path / 'nowhere'}"), "does not exist",
                        data.ENV_DATA_DIR)


def test_truncated_gzip(tmp_path):
  write_dataset(tmp_path, n_train=60, n_test=10)
  path = tmp_path / "train-images-idx3-ubyte.gz"
  path.write_bytes(path.read_bytes()[:-100])
  assert_one_line_error(run(f"--data_dir={tmp_path}"), str(path), "truncated or corrupt gzip")


def test_wrong_magic_number(tmp_path):
  write_dataset(tmp_path, n_train=60, n_test=10, gz=False)
  path = tmp_path / "train-labels-idx1-ubyte"
  raw = bytearray(path.read_bytes())
  raw[3] = 7
  path.write_bytes(bytes(raw))
  assert_one_line_error(run(f"--data_dir={tmp_path}"), str(path), "magic number 00000807")


def test_a_short_run_writes_its_metrics_and_config(mnist, tmp_path):
  result = run("--epochs=2", "--train_limit=640", "--test_limit=300", "--activation=tanh",
               f"--workdir={tmp_path}")
  assert result.returncode == 0, result.stderr
  records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert [r["epoch"] for r in records] == [1, 2]
  for r in records:
    assert {"epoch", "train_loss", "train_accuracy", "test_loss", "test_accuracy",
            "seconds"} <= set(r)
    assert 0 <= r["test_accuracy"] <= 100
  saved = json.loads((tmp_path / "config.json").read_text())
  assert saved["config"]["activation"] == "tanh" and saved["config"]["lr"] == 0.01
  assert saved["model"]["activation"] == "tanh"
  assert saved["num_params"] == 431_080
  assert "epoch   2 |" in result.stdout and "test loss" in result.stdout
