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

import jax
import matplotlib.image
import numpy as np
import pytest

from conftest import write_dataset
from mnistjax import data, files, models, step, studies

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
  assert_one_line_error(run(f"--data_dir={tmp_path}", "--verify_data=false"), str(path),
                        "magic number 00000807")


def test_a_two_epoch_run_writes_every_artefact_and_each_parses(mnist, tmp_path):
  result = run("--epochs=2", "--train_limit=640", "--test_limit=300", "--activation=tanh",
               "--log_every=4", f"--workdir={tmp_path}")
  assert result.returncode == 0, result.stderr
  records = files.read_jsonl(tmp_path / "metrics.jsonl")
  assert [r["epoch"] for r in records] == [0, 1, 2]  # 0: the untrained model
  for r in records:
    assert {"epoch", "train_loss", "train_accuracy", "test_loss", "test_accuracy"} <= set(r)
    assert 0 <= r["test_accuracy"] <= 100
  assert all("seconds" in r for r in records[1:])
  steps = files.read_jsonl(tmp_path / "train_log.jsonl")
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
  assert [r["epoch"] for r in files.read_jsonl(tmp_path / "metrics.jsonl")] == [0]


def test_ctrl_c_leaves_a_resumable_workdir(mnist, tmp_path):
  args = [sys.executable, str(ROOT / "experiments" / "run.py"), "--epochs=200",
          "--train_limit=640", "--test_limit=100", "--eval_train=false", f"--workdir={tmp_path}"]
  proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          cwd=ROOT)
  deadline = time.time() + 120
  while time.time() < deadline and len(files.read_jsonl(tmp_path / "metrics.jsonl")) < 3:
    time.sleep(0.2)
  proc.send_signal(signal.SIGINT)
  _, stderr = proc.communicate(timeout=120)
  assert proc.returncode == 130, stderr
  assert "interrupted" in stderr and "--resume" in stderr
  done = files.read_jsonl(tmp_path / "metrics.jsonl")[-1]["epoch"]
  result = run(f"--epochs={done + 1}", "--train_limit=640", "--test_limit=100",
               "--eval_train=false", f"--workdir={tmp_path}", "--resume")
  assert result.returncode == 0, result.stderr
  assert f"resumed from the checkpoint of epoch {done}" in result.stdout
  epochs = [r["epoch"] for r in files.read_jsonl(tmp_path / "metrics.jsonl")]
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
  for name in [*models.MODELS, *step.OPTIMIZERS, *studies.STUDIES]:
    assert f"  {name} " in result.stdout


# ----------------------------------------------------------------------------
# The run's folder (README, What survives what)

SMALL = ("--train_limit=320", "--test_limit=100", "--eval_train=false", "--log_every=2")


def _mount_tmpfs(path: pathlib.Path, options: str) -> bool:
  """Mounts a tmpfs at path (root in a sandbox can; elsewhere the test skips)."""
  path.mkdir(parents=True, exist_ok=True)
  return subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
                        capture_output=True).returncode == 0


def _umount(path: pathlib.Path) -> None:
  subprocess.run(["umount", str(path)], capture_output=True)


def test_a_bad_workdir_is_one_line_before_any_data_is_read(tmp_path):
  afile = tmp_path / "afile"
  afile.write_text("")
  started = time.perf_counter()
  assert_one_line_error(run(f"--workdir={afile}", "--data_dir=/nowhere"),
                        f"--workdir={afile} is a file, not a folder")
  assert_one_line_error(run("--workdir=/proc/mnistjax", "--data_dir=/nowhere"),
                        "/proc/mnistjax: No such file or directory", "choose another --workdir")
  assert time.perf_counter() - started < 60  # no data loaded, nothing compiled
  readonly = tmp_path / "readonly"
  if not _mount_tmpfs(readonly, "ro,size=1m"):
    pytest.skip("cannot mount a read-only tmpfs here")
  try:
    assert_one_line_error(run(f"--workdir={readonly / 'run'}", "--data_dir=/nowhere"),
                          "Read-only file system", "choose a --workdir on a writable disk")
  finally:
    _umount(readonly)


@pytest.mark.parametrize("flags,fragments", [
    (["--seed=9223372036854775808"], ["--seed=9223372036854775808: must be in [0, 2^63)"]),
    (["--prelu_init=0.3"], ["--prelu_init=0.3", "needs --activation=prelu"]),
    (["--batch_size=1000", "--train_limit=500"],
     ["--batch_size=1000 is larger than the training set (500 examples)"]),
    (["--resume", "--overwrite", "--workdir=/tmp/x"], ["give one of them"]),
])
def test_settings_that_cannot_run_are_one_line(mnist, flags, fragments):
  assert_one_line_error(run(*flags), *fragments)


def test_reruns_and_resumes_that_would_mix_runs_are_one_line(mnist, tmp_path):
  plain, swept = tmp_path / "plain", tmp_path / "swept"
  assert run(*SMALL, "--epochs=1", f"--workdir={plain}").returncode == 0
  assert run(*SMALL, "--epochs=1", "--sweep=lr=0.01,0.02", f"--workdir={swept}").returncode == 0
  assert_one_line_error(run(*SMALL, "--epochs=1", f"--workdir={plain}"),
                        "holds an earlier run; continue it with --resume, or replace it with "
                        "--overwrite")
  for extra, fragment in [
      (["--model=cnn"], "model lenet -> cnn"),
      (["--dataset=fashion_mnist", "--activation=sigmoid"],
       "activation (the model's default) -> sigmoid, dataset mnist -> fashion_mnist"),
      (["--sweep=lr=0.1,0.2"], "sweep none -> {'lr': [0.1, 0.2]}"),
      (["--checkpoint=false"], "--resume continues from a checkpoint: drop --checkpoint=false")]:
    assert_one_line_error(run(*SMALL, "--epochs=2", f"--workdir={plain}", "--resume", *extra),
                          fragment)
  assert_one_line_error(run(*SMALL, "--epochs=2", f"--workdir={swept}", "--resume"),
                        "sweep {'lr': [0.01, 0.02]} -> none")
  rows = files.read_jsonl(plain / "metrics.jsonl")
  assert [r["epoch"] for r in rows] == [0, 1] and all("member" not in r for r in rows)


RETIRED_NOTE = "--autotune is gone: every layer uses its fixed rule; the flag is ignored"


def test_the_retired_autotune_flag_and_setting_are_ignored(mnist, tmp_path):
  """Command lines and workdirs of the versions that had --autotune still run and resume."""
  first = run(*SMALL, "--epochs=1", f"--workdir={tmp_path}", "--autotune")
  assert first.returncode == 0, first.stderr
  assert first.stdout.splitlines().count(RETIRED_NOTE) == 1 and "epoch   1 |" in first.stdout
  saved = json.loads((tmp_path / "config.json").read_text())
  assert "autotune" not in saved["config"]
  saved["config"]["autotune"] = True  # as those versions wrote it
  (tmp_path / "config.json").write_text(json.dumps(saved))
  import mnistjax  # pylint: disable=g-import-not-at-top
  loaded = mnistjax.load(tmp_path)
  assert loaded.config.epochs == 1 and [r["epoch"] for r in loaded.history] == [0, 1]
  again = run(*SMALL, "--epochs=2", f"--workdir={tmp_path}", "--resume", "--autotune=false")
  assert again.returncode == 0, again.stderr
  assert RETIRED_NOTE in again.stdout.splitlines()
  assert "resumed from the checkpoint of epoch 1" in again.stdout
  assert [r["epoch"] for r in files.read_jsonl(tmp_path / "metrics.jsonl")] == [0, 1, 2]
  listed = run("--noautotune", "--list")
  assert listed.returncode == 0 and listed.stdout.splitlines()[0] == RETIRED_NOTE


def test_the_retired_data_source_flag_notes_auto_and_refuses_tfds():
  """--data_source=auto asked for what the program still does; tfds for a source that is
  gone."""
  noted = run("--data_source=auto", "--list")
  assert noted.returncode == 0, noted.stderr
  assert noted.stdout.splitlines()[0].startswith("--data_source is gone: the IDX files are "
                                                 "read directly")
  assert_one_line_error(run("--data_source=tfds", "--list"),
                        "--data_source=tfds is gone: the IDX files are read directly",
                        "drop the flag")


def test_two_runs_started_together_on_one_workdir(mnist, tmp_path):
  args = [sys.executable, str(ROOT / "experiments" / "run.py"), *SMALL, "--epochs=2",
          f"--workdir={tmp_path}"]
  procs = [subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=ROOT) for _ in range(2)]
  results = [proc.communicate(timeout=600) + (proc.returncode,) for proc in procs]
  codes = sorted(code for _, _, code in results)
  assert codes == [0, 2], results
  _, stderr, _ = next(r for r in results if r[2] == 2)
  assert stderr.count("\n") == 1 and "is in use by run" in stderr
  assert [r["epoch"] for r in files.read_jsonl(tmp_path / "metrics.jsonl")] == [0, 1, 2]


def test_ctrl_c_while_compiling_is_one_line(mnist, tmp_path):
  args = [sys.executable, str(ROOT / "experiments" / "run.py"), *SMALL, "--epochs=1",
          f"--workdir={tmp_path}"]
  proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          cwd=ROOT)
  deadline = time.time() + 120
  while time.time() < deadline and not (tmp_path / "log.txt").exists():
    time.sleep(0.05)  # the first line is written just before the first compile
  proc.send_signal(signal.SIGINT)
  _, stderr = proc.communicate(timeout=120)
  assert proc.returncode == 130, stderr
  assert stderr.count("\n") == 1
  assert "interrupted before any epoch was saved; start again with --overwrite" in stderr


@pytest.mark.slow
def test_a_run_killed_inside_a_checkpoint_save_resumes_bit_for_bit(mnist, tmp_path):
  common = (*SMALL, "--epochs=3", "--dropout=0.25", "--batchnorm")
  assert run(*common, f"--workdir={tmp_path / 'straight'}").returncode == 0
  killed = subprocess.run([sys.executable, str(ROOT / "tests" / "kill_in_save_worker.py"),
                           *common, f"--workdir={tmp_path / 'killed'}"], capture_output=True,
                          text=True, timeout=600, cwd=ROOT, env={**os.environ, "KILL_EPOCH": "2"})
  assert killed.returncode == -signal.SIGKILL, killed.stderr
  resumed = run(*common, f"--workdir={tmp_path / 'killed'}", "--resume")
  assert resumed.returncode == 0, resumed.stderr
  import mnistjax  # pylint: disable=g-import-not-at-top
  straight, again = (mnistjax.load(tmp_path / name) for name in ("straight", "killed"))
  for a, b in zip(jax.tree.leaves(straight.state), jax.tree.leaves(again.state)):
    np.testing.assert_array_equal(a, b)
  assert again.history == [{**r, "seconds": s["seconds"], "train_seconds": s["train_seconds"]}
                           if "seconds" in r else r for r, s in zip(straight.history,
                                                                   again.history)]


def test_overwrite_keeps_the_earlier_checkpoints_through_a_failed_move_and_a_kill(
    mnist, tmp_path, monkeypatch):
  assert run(*SMALL, "--epochs=1", "--lr=0.02", f"--workdir={tmp_path}").returncode == 0

  def earlier_checkpoints() -> list[pathlib.Path]:
    return [p for p in tmp_path.rglob("checkpoints/1") if json.loads(
        (p / "record" / "metadata").read_text())["config"]["lr"] == 0.02]  # orbax's record

  # A first --overwrite fails while moving the earlier run aside (permission denied; patched,
  # since tests may run as root, whom no permission stops).
  from conftest import quiet, synthetic  # pylint: disable=g-import-not-at-top
  from mnistjax import config as config_lib, driver  # pylint: disable=g-import-not-at-top
  from mnistjax.errors import WorkdirError  # pylint: disable=g-import-not-at-top
  real_replace = os.replace

  def denied(src, dst):
    if pathlib.Path(src).name == "checkpoints":
      raise PermissionError(13, "Permission denied")
    real_replace(src, dst)

  monkeypatch.setattr(os, "replace", denied)
  with pytest.raises(WorkdirError, match="Permission denied while moving the earlier run aside"):
    driver.train(config_lib.Config(epochs=1), None, str(tmp_path), synthetic(), overwrite=True,
                 **quiet())
  monkeypatch.setattr(os, "replace", real_replace)
  assert len(earlier_checkpoints()) == 1
  # A second --overwrite, killed with kill -9 before its first checkpoint.
  proc = subprocess.Popen([sys.executable, str(ROOT / "experiments" / "run.py"),
                           "--train_limit=60000", "--test_limit=100", "--eval_train=false",
                           "--epochs=1", f"--workdir={tmp_path}", "--overwrite"],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
  deadline = time.time() + 120
  while time.time() < deadline and not ((tmp_path / ".replaced").exists() and
                                        (tmp_path / "metrics.jsonl").exists()):
    time.sleep(0.05)  # the new run's epoch 0, once the earlier run is aside
  proc.kill()
  proc.wait(timeout=60)
  assert not (tmp_path / "checkpoints" / "1").exists(), "the new run had its checkpoint first"
  assert len(earlier_checkpoints()) == 1
  again = run(*SMALL, "--epochs=1", f"--workdir={tmp_path}", "--overwrite")
  assert again.returncode == 0, again.stderr
  assert not earlier_checkpoints() and (tmp_path / "checkpoints" / "1").is_dir()


def test_a_full_disk_is_one_line_and_leaves_every_record_readable(mnist, tmp_path):
  disk = tmp_path / "disk"
  if not _mount_tmpfs(disk, "size=3m"):  # LeNet's first checkpoint (~5 MB) does not fit
    pytest.skip("cannot mount a tmpfs here (the injected-ENOSPC tests in test_workdir.py run)")
  try:
    result = run(*SMALL, "--epochs=2", f"--workdir={disk / 'run'}")
    assert_one_line_error(result, "no room for the checkpoint of epoch 1", "free space on that "
                          "disk; stopped before any epoch was saved; start again with "
                          "--overwrite")
    for name in ("metrics.jsonl", "train_log.jsonl"):
      files.read_jsonl(disk / "run" / name)  # every line parses (a torn last one is skipped)
    subprocess.run(["mount", "-o", "remount,size=64m", str(disk)], check=True)
    again = run(*SMALL, "--epochs=2", f"--workdir={disk / 'run'}", "--overwrite")
    assert again.returncode == 0, again.stderr
    assert [r["epoch"] for r in files.read_jsonl(disk / "run" / "metrics.jsonl")] == [0, 1, 2]
  finally:
    _umount(disk)


def test_a_disk_that_fills_inside_a_checkpoint_save_is_one_line(mnist, tmp_path):
  disk = tmp_path / "disk"
  if not _mount_tmpfs(disk, "size=4m"):  # room for the first checkpoint, not the second
    pytest.skip("cannot mount a tmpfs here (the injected-ENOSPC tests in test_workdir.py run)")
  try:
    result = subprocess.run([sys.executable, str(ROOT / "tests" / "full_disk_worker.py"),
                             *SMALL, "--epochs=3", f"--workdir={disk / 'run'}"],
                            capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr, result.stderr
    assert ("No space left on device while saving the checkpoint of epoch 2" in result.stderr
            and "the checkpoint of epoch 1 and the metrics up to it are in" in result.stderr)
  finally:
    _umount(disk)


@pytest.fixture(scope="module")
def idx_folder(tmp_path_factory) -> pathlib.Path:
  """Random IDX files of MNIST's sizes (runs use --train_limit and --verify_data=false)."""
  return write_dataset(tmp_path_factory.mktemp("idx"), gz=False)


@pytest.mark.parametrize("signum,status,name", [(signal.SIGTERM, 143, "SIGTERM"),
                                                (signal.SIGHUP, 129, "SIGHUP")])
def test_sigterm_and_sighup_stop_like_ctrl_c_and_the_run_resumes(idx_folder, tmp_path, signum,
                                                                 status, name):
  """What a scheduler sends before it takes the machine back: the run stops at the next step,
  keeps its last finished epoch, says so in one line (and in log.txt), and resumes."""
  flags = ["--train_limit=640", "--test_limit=100", "--eval_train=false", "--verify_data=false",
           f"--data_dir={idx_folder}", f"--workdir={tmp_path}"]
  proc = subprocess.Popen([sys.executable, str(ROOT / "experiments" / "run.py"), "--epochs=200",
                           *flags], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          cwd=ROOT)
  deadline = time.time() + 300
  while time.time() < deadline and len(files.read_jsonl(tmp_path / "metrics.jsonl")) < 2:
    time.sleep(0.1)  # the first epoch's line is written
  proc.send_signal(signum)
  _, stderr = proc.communicate(timeout=120)
  assert proc.returncode == status, stderr
  lines = stderr.strip().splitlines()
  assert len(lines) == 1 and "Traceback" not in stderr, stderr
  assert lines[0].startswith(f"run.py: error: stopped by {name}; the checkpoint of epoch ")
  assert lines[0].endswith(f"are in {tmp_path}: continue with --resume")
  log = (tmp_path / "log.txt").read_text().splitlines()
  assert log[-1] == "error: " + lines[0].removeprefix("run.py: error: ")
  done = files.read_jsonl(tmp_path / "metrics.jsonl")[-1]["epoch"]
  assert f"the checkpoint of epoch {done} " in lines[0]
  result = run(f"--epochs={done + 1}", *flags, "--resume")
  assert result.returncode == 0, result.stderr
  assert f"resumed from the checkpoint of epoch {done}" in result.stdout
  assert [r["epoch"] for r in files.read_jsonl(tmp_path / "metrics.jsonl")] == list(
      range(done + 2))


def _program_with(setup: str, *args: str) -> subprocess.CompletedProcess:
  """The run program started as experiments/run.py starts it, after the lines of `setup`."""
  code = (f"import atexit, os, signal, sys, threading, time\n{setup}\n"
          "from mnistjax import programs\n"
          f"sys.argv = ['run.py', *{list(args)!r}]\n"
          "programs.start('run', 'run.py')\n")
  return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                        timeout=600, cwd=ROOT)


def test_ctrl_c_in_the_programs_last_moments_ends_it_at_once_without_a_traceback(mnist,
                                                                                 tmp_path):
  # Ctrl-C pressed twice: the first stops the run, the second often landed in jax's clean-up
  # at exit, a traceback. Here a clean-up of the program's own gets it.
  result = _program_with("def clean_up():\n"
                         "  os.kill(os.getpid(), signal.SIGINT)\n"
                         "  time.sleep(5)\n"
                         "  print('the clean-up went on', file=sys.stderr)\n"
                         "atexit.register(clean_up)",
                         *SMALL, "--epochs=1", f"--workdir={tmp_path}")
  assert result.returncode == 130 and result.stderr == "", result.stderr
  assert [r["epoch"] for r in files.read_jsonl(tmp_path / "metrics.jsonl")] == [0, 1]
  assert result.stdout.rstrip().endswith(f"{tmp_path}"), result.stdout[-300:]  # all printed


def test_a_program_stopped_by_a_signal_ends_without_the_interpreters_clean_up(mnist, tmp_path):
  # After two Ctrl-C while a run started (the second raised inside jax's compiling), jax's
  # clean-up at exit crashed with a segmentation fault (docs/workdir.md, Signals).
  result = _program_with("atexit.register(lambda: print('the clean-up ran', file=sys.stderr))\n"
                         "threading.Timer(3, os.kill, (os.getpid(), signal.SIGTERM)).start()",
                         *SMALL, "--epochs=200", f"--workdir={tmp_path}")
  assert result.returncode == 143, result.stderr
  assert result.stderr.startswith("run.py: error: stopped by SIGTERM")
  assert result.stderr.count("\n") == 1, result.stderr


def test_a_second_sigterm_stops_at_once_without_a_traceback(idx_folder, tmp_path):
  proc = subprocess.Popen([sys.executable, str(ROOT / "experiments" / "run.py"), "--epochs=200",
                           "--train_limit=640", "--test_limit=100", "--verify_data=false",
                           f"--data_dir={idx_folder}", f"--workdir={tmp_path}"],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
  deadline = time.time() + 300
  while time.time() < deadline and len(files.read_jsonl(tmp_path / "metrics.jsonl")) < 2:
    time.sleep(0.1)
  proc.send_signal(signal.SIGTERM)
  proc.send_signal(signal.SIGTERM)
  _, stderr = proc.communicate(timeout=120)
  assert proc.returncode == 143, stderr
  assert len(stderr.strip().splitlines()) == 1 and "Traceback" not in stderr, stderr
  assert "stopped by SIGTERM" in stderr and "--resume" in stderr
