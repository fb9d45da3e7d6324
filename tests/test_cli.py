"""experiments/run.py end to end, in a subprocess as a user runs it."""

from __future__ import annotations

import csv
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import matplotlib.image
import numpy as np
import pytest

from conftest import write_dataset
from mnistjax import data, models, optim, studies, workdir

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
    ("--study=s9", ["unknown study 's9'", "s0_activation"]),
    ("--optimizer=lamb", ["choose one of: sgd, rmsprop, adam"]),
    ("--resume", ["--resume needs the --workdir"]),
    ("--sweep=width=1,2", ["'width' can't be swept", "dropout, lr"]),
    ("--lr=0", ["--lr=0.0", "must be > 0"]),
    ("--epochs=0", ["--epochs=0", ">= 1"]),
    ("--dataset=cifar10", ["choose one of: mnist, fashion_mnist"]),
    ("--activation=swish", ["choose one of: relu, sigmoid, tanh, prelu"]),
    ("--epochs=two", ["--epochs=two"]),
    ("--no_such_flag=1", ["no_such_flag"]),
    ("--devices=64", ["--devices=64: only 1 local cpu device(s)", "--devices=1 or fewer",
                      "xla_force_host_platform_device_count"]),
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


def test_a_two_epoch_run_writes_every_artefact_and_each_parses(mnist, tmp_path):
  result = run("--epochs=2", "--train_limit=640", "--test_limit=300", "--activation=tanh",
               "--log_every=4", f"--workdir={tmp_path}")
  assert result.returncode == 0, result.stderr
  records = workdir.read_jsonl(tmp_path / "metrics.jsonl")
  assert [r["epoch"] for r in records] == [0, 1, 2]  # 0: the untrained model
  for r in records:
    assert {"epoch", "train_loss", "train_accuracy", "test_loss", "test_accuracy"} <= set(r)
    assert 0 <= r["test_accuracy"] <= 100
  assert all("seconds" in r for r in records[1:])
  steps = workdir.read_jsonl(tmp_path / "train_log.jsonl")
  assert [r["step"] for r in steps] == [4, 8, 10, 14, 18, 20]  # every 4 steps and epoch ends
  assert steps[-1]["examples_seen"] == 1280
  saved = json.loads((tmp_path / "config.json").read_text())
  assert saved["config"]["activation"] == "tanh" and saved["config"]["lr"] == 0.01
  assert saved["model"]["activation"] == "tanh" and saved["num_params"] == 431_080
  summary = json.loads((tmp_path / "summary.json").read_text())
  member, = summary["members"]
  assert member["final"] == records[-1] and member["member"] == "" and not member["diverged"]
  assert summary["compile_seconds"] > 0 and summary["train_images_per_second"] > 0
  report = member["classification_report"]
  assert sum(row["support"] for row in report["classes"].values()) == 300
  assert abs(100 * report["accuracy"] - records[-1]["test_accuracy"]) < 1e-9
  text = (tmp_path / "classification_report.txt").read_text()
  assert "precision" in text and "weighted avg" in text
  with open(tmp_path / "confusion_matrix.csv") as f:
    rows = list(csv.reader(f))
  counts = np.array([[int(c) for c in row[1:]] for row in rows[1:]])
  assert counts.shape == (10, 10) and counts.sum() == 300
  assert np.trace(counts) == round(3 * records[-1]["test_accuracy"])
  for name in ("loss.png", "error.png", "predictions.png", "confusion_matrix.png"):
    image = matplotlib.image.imread(tmp_path / name)
    assert image.ndim == 3 and image.shape[0] > 100, name
  assert "epoch   2 |" in (tmp_path / "log.txt").read_text()
  assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["1", "2"]
  assert "epoch   2 |" in result.stdout and "test loss" in result.stdout


def test_a_diverging_run_exits_3_with_one_line(mnist, tmp_path):
  result = run("--epochs=1", "--train_limit=640", "--test_limit=100", "--lr=1e30",
               f"--workdir={tmp_path}")
  assert result.returncode == 3, result.stderr
  assert result.stderr.count("\n") == 1 and "training loss became" in result.stderr
  assert [r["epoch"] for r in workdir.read_jsonl(tmp_path / "metrics.jsonl")] == [0]


def test_ctrl_c_leaves_a_resumable_workdir(mnist, tmp_path):
  args = [sys.executable, str(ROOT / "experiments" / "run.py"), "--epochs=200",
          "--train_limit=640", "--test_limit=100", "--eval_train=false", f"--workdir={tmp_path}"]
  proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          cwd=ROOT)
  deadline = time.time() + 120
  while time.time() < deadline and len(workdir.read_jsonl(tmp_path / "metrics.jsonl")) < 3:
    time.sleep(0.2)
  proc.send_signal(signal.SIGINT)
  _, stderr = proc.communicate(timeout=120)
  assert proc.returncode == 130, stderr
  assert "interrupted" in stderr and "--resume" in stderr
  done = workdir.read_jsonl(tmp_path / "metrics.jsonl")[-1]["epoch"]
  result = run(f"--epochs={done + 1}", "--train_limit=640", "--test_limit=100",
               "--eval_train=false", f"--workdir={tmp_path}", "--resume")
  assert result.returncode == 0, result.stderr
  assert f"resumed from the checkpoint of epoch {done}" in result.stdout
  epochs = [r["epoch"] for r in workdir.read_jsonl(tmp_path / "metrics.jsonl")]
  assert epochs == list(range(done + 2))


def test_study_flag_runs_the_named_study(mnist, tmp_path):
  result = run("--study=s4_activation", "--activation=relu", "--epochs=1",
               "--train_limit=640", "--test_limit=100", f"--workdir={tmp_path}")
  assert result.returncode == 0, result.stderr
  study = json.loads((tmp_path / "study.json").read_text())
  assert [r["variant"] for r in study["runs"]] == ["base"]
  saved = json.loads((tmp_path / "config.json").read_text())["config"]
  assert (saved["model"], saved["optimizer"], saved["momentum"], saved["normalization"]) == (
      "mlp_deep", "sgd", 0.0, "none")
  assert "notebook: test acc sigmoid 79.66" in result.stdout


def test_list_names_every_model_optimizer_and_study():
  result = run("--list")
  assert result.returncode == 0
  for name in [*models.MODELS, *optim.OPTIMIZERS, *studies.STUDIES]:
    assert f"  {name} " in result.stdout
