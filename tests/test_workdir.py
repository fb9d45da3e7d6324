"""A run's folder: no run loses, mixes or fakes results, and every failure is one line.

Library-level tests on the synthetic data; the command-line ones (one line on stderr, the
exit status) are in test_cli.py."""

from __future__ import annotations

import errno
import json
import os
import signal
import stat
import threading

import jax
import numpy as np
import pytest

from conftest import quiet, synthetic
from mnistjax import checkpoint, config as config_lib, data, driver, files, step, workdir
from mnistjax.errors import ConfigError, Interrupted, NonFiniteLoss, WorkdirError

CFG = config_lib.Config(epochs=1, batch_size=32, eval_train=False, log_every=2)


def _run(folder, config=CFG, **kwargs):
  return driver.train(config, kwargs.pop("sweep", None), str(folder), synthetic(),
                      **quiet(), **kwargs)


def _epochs(folder) -> list[int]:
  return [r["epoch"] for r in files.read_jsonl(folder / "metrics.jsonl")]


# 1. A second run into the same folder: refused, or replaces the first only once it has a
#    checkpoint of its own.


def test_a_second_run_into_a_folder_that_holds_one_is_refused_and_changes_nothing(tmp_path):
  _run(tmp_path)

  def stamps():  # .lock: each run writes its PID there
    return {p.name: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.name != ".lock"}

  before = stamps()
  with pytest.raises(WorkdirError, match=r"holds an earlier run; continue it with --resume, or "
                     r"replace it with --overwrite"):
    _run(tmp_path)
  assert stamps() == before


def test_overwrite_keeps_the_old_run_aside_until_the_new_one_has_a_checkpoint(tmp_path,
                                                                              monkeypatch):
  _run(tmp_path, CFG.replace(lr=0.02))
  evaluate = driver._evaluate  # pylint: disable=protected-access

  def interrupt_in_epoch_1(run, eval_step, trainer, epoch, *rest, **kwargs):
    if epoch == 1:
      raise KeyboardInterrupt
    return evaluate(run, eval_step, trainer, epoch, *rest, **kwargs)

  monkeypatch.setattr(driver, "_evaluate", interrupt_in_epoch_1)
  with pytest.raises(Interrupted, match="before any epoch was saved; start again with "
                     "--overwrite"):
    _run(tmp_path, overwrite=True)
  old = tmp_path / workdir.REPLACED
  assert sorted(p.name for p in (old / "checkpoints").iterdir()) == ["1"]  # still there
  assert json.loads((old / "config.json").read_text())["config"]["lr"] == 0.02
  monkeypatch.setattr(driver, "_evaluate", evaluate)
  _run(tmp_path, overwrite=True)
  assert not old.exists()
  assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["1"]
  assert json.loads((tmp_path / "config.json").read_text())["config"]["lr"] == 0.01
  assert _epochs(tmp_path) == [0, 1]


def test_a_move_aside_cut_short_by_a_kill_is_finished_by_the_next_overwrite(tmp_path,
                                                                           monkeypatch):
  _run(tmp_path, CFG.replace(lr=0.02))
  replacing = tmp_path / workdir.REPLACING  # as a kill -9 inside the move leaves it
  replacing.mkdir()
  for name in ("config.json", "metrics.jsonl"):
    os.replace(tmp_path / name, replacing / name)
  with pytest.raises(WorkdirError, match="holds an earlier run"):
    _run(tmp_path)
  monkeypatch.setattr(driver, "_evaluate", lambda *a, **k: (_ for _ in ()).throw(
      KeyboardInterrupt))
  with pytest.raises(Interrupted):
    _run(tmp_path, overwrite=True)
  old = tmp_path / workdir.REPLACED
  assert not replacing.exists() and (old / "checkpoints" / "1").is_dir()
  assert json.loads((old / "config.json").read_text())["config"]["lr"] == 0.02
  assert _epochs(old) == [0, 1]


# 2. --resume never deletes anything, and says when there is nothing to resume.


def test_resume_needs_checkpoints_and_a_checkpoint_to_resume(tmp_path):
  _run(tmp_path, CFG.replace(checkpoint=False))
  names = sorted(p.name for p in tmp_path.iterdir())
  with pytest.raises(ConfigError, match="--resume continues from a checkpoint: drop "
                     "--checkpoint=false"):
    _run(tmp_path, CFG.replace(checkpoint=False), resume=True)
  with pytest.raises(WorkdirError, match="nothing to resume: .* holds no checkpoint .*without "
                     "--resume and with --overwrite"):
    _run(tmp_path, resume=True)
  assert sorted(p.name for p in tmp_path.iterdir()) == names
  with pytest.raises(WorkdirError, match="nothing to resume: .* holds no run; start the run "
                     "without --resume$"):
    _run(tmp_path / "empty", resume=True)


# 3. Divergence keeps the last finite checkpoint, and says which epoch that is.


def test_divergence_keeps_a_finite_checkpoint_and_strict_json(tmp_path):
  cfg = CFG.replace(epochs=4, log_every=1)
  with pytest.raises(NonFiniteLoss) as e:
    _run(tmp_path, cfg.replace(lr=1e6))
  kept = checkpoint.latest_epoch(tmp_path / "checkpoints")
  message = str(e.value)
  if kept is None:
    assert "before any epoch was saved" in message
  else:
    assert f"the checkpoint of epoch {kept} " in message
    ckpt = checkpoint.Checkpoints(tmp_path / "checkpoints")
    template = step.init_members(*_members_of(cfg))[0]
    restored, _ = ckpt.restore(kept, template)
    ckpt.close()
    assert all(np.all(np.isfinite(a)) for a in jax.tree.leaves(restored.state))
  for name in ("metrics.jsonl", "train_log.jsonl"):
    text = (tmp_path / name).read_text()
    assert "NaN" not in text and "Infinity" not in text
    for line in text.splitlines():
      json.loads(line)  # strict: json.loads would take NaN, the text check above would not


def _members_of(config):
  run = driver.setup(config, synthetic())
  return run.model, run.group, run.steps_per_epoch


def test_a_member_whose_evaluation_is_not_finite_is_frozen_the_others_go_on(monkeypatch):
  evaluate = driver._evaluate  # pylint: disable=protected-access

  def member_1_overflows(run, eval_step, trainer, epoch, *rest, **kwargs):
    records = evaluate(run, eval_step, trainer, epoch, *rest, **kwargs)
    if epoch == 1:
      records[1]["test_loss"] = float("inf")
    return records

  monkeypatch.setattr(driver, "_evaluate", member_1_overflows)
  lines = []
  result = driver.train(CFG.replace(epochs=2), {"lr": (0.05, 0.01)}, dataset=synthetic(),
                        log=lines.append)
  assert "member lr=0.01: the evaluation loss became inf after epoch 1; frozen, the other " \
      "members go on" in lines
  np.testing.assert_array_equal(result.alive, [True, False])
  steps = np.asarray(result.state.step)
  assert steps[1] < steps[0]  # the frozen member took no step in epoch 2


def test_a_plain_run_whose_evaluation_is_not_finite_stops_before_saving_it(tmp_path,
                                                                           monkeypatch):
  evaluate = driver._evaluate  # pylint: disable=protected-access

  def overflow_in_epoch_2(run, eval_step, trainer, epoch, *rest, **kwargs):
    records = evaluate(run, eval_step, trainer, epoch, *rest, **kwargs)
    if epoch == 2:
      records[0]["test_loss"] = float("nan")
    return records

  monkeypatch.setattr(driver, "_evaluate", overflow_in_epoch_2)
  with pytest.raises(NonFiniteLoss, match=r"the evaluation loss became nan after epoch 2; .*"
                     r"the checkpoint of epoch 1 and the metrics up to it"):
    _run(tmp_path, CFG.replace(epochs=3))
  assert checkpoint.latest_epoch(tmp_path / "checkpoints") == 1
  assert _epochs(tmp_path) == [0, 1]


def test_every_member_diverging_names_the_step_the_member_lines_name(tmp_path):
  lines = []
  with pytest.raises(NonFiniteLoss) as e:
    driver.train(CFG.replace(log_every=1), {"lr": (1e30, 1e31)}, dataset=synthetic(),
                 log=lines.append)
  steps = {int(line.split(" at step ")[1].split()[0]) for line in lines if " at step " in line}
  assert len(steps) >= 1 and f"diverged by step {max(steps)} " in str(e.value)


# 4. Two runs on one folder: the second is refused while the first holds it.


def test_a_folder_in_use_is_refused_with_its_holder(tmp_path):
  first = workdir.Workdir(tmp_path).open("new")
  try:
    with pytest.raises(WorkdirError, match=rf"{tmp_path} is in use by run {os.getpid()} on .*; "
                       r"wait for it to end, or give another --workdir"):
      _run(tmp_path)
  finally:
    first.close()
  _run(tmp_path)  # the lock went with its holder


# 5. --resume refuses a change that would mix two runs, and logs the changes it allows.


@pytest.mark.parametrize("change,message", [
    (dict(activation="sigmoid"), r"activation \(the model's default\) -> sigmoid"),
    (dict(model="cnn"), r"model lenet -> cnn"),
    (dict(dataset="fashion_mnist"), r"dataset mnist -> fashion_mnist"),
    (dict(batch_size=16), r"batch_size 32 -> 16"),
])
def test_resume_refuses_another_model_or_data(tmp_path, change, message):
  _run(tmp_path)
  with pytest.raises(WorkdirError, match=r"--resume: .* holds a run with other settings \("
                     + message + r"\); those can't change when a run continues"):
    _run(tmp_path, CFG.replace(epochs=2, **change), resume=True)
  assert _epochs(tmp_path) == [0, 1]


def test_resume_refuses_other_sweep_members_and_logs_allowed_changes(tmp_path):
  _run(tmp_path, sweep={"lr": (0.01, 0.02)})
  with pytest.raises(WorkdirError, match=r"sweep \{'lr': \[0.01, 0.02\]\} -> \{'lr': \[0.01\]\}"):
    _run(tmp_path, CFG.replace(epochs=2), sweep={"lr": (0.01,)}, resume=True)
  with pytest.raises(WorkdirError, match=r"sweep \{'lr': \[0.01, 0.02\]\} -> none"):
    _run(tmp_path, CFG.replace(epochs=2), resume=True)
  lines = []
  driver.train(CFG.replace(epochs=2, momentum=0.9), {"lr": (0.01, 0.02)}, str(tmp_path),
               synthetic(), resume=True, log=lines.append)
  assert any(line.startswith("resumed from the checkpoint of epoch 1") and
             "changed since: epochs 1 -> 2, momentum 0.5 -> 0.9" in line for line in lines)


def test_resume_refuses_the_same_sweep_axes_in_another_order(tmp_path):
  # The axes' order places the members (seed-major or lr-major): resumed in another order,
  # each member would continue from another member's state.
  _run(tmp_path, sweep={"seed": (1, 2), "lr": (0.01, 0.02)})
  with pytest.raises(WorkdirError, match=r"holds a sweep over seed, lr in that order, .*give "
                     r"it in that order: --sweep=seed=1,2 --sweep=lr=0.01,0.02$"):
    _run(tmp_path, CFG.replace(epochs=2), sweep={"lr": (0.01, 0.02), "seed": (1, 2)},
         resume=True)
  assert _epochs(tmp_path) == [0] * 4 + [1] * 4
  _run(tmp_path, CFG.replace(epochs=2), sweep={"seed": (1, 2), "lr": (0.01, 0.02)}, resume=True)
  assert _epochs(tmp_path) == [0] * 4 + [1] * 4 + [2] * 4


@pytest.mark.parametrize("damage", ["deleted", "invalid", "a list", "seed edited"])
@pytest.mark.parametrize("change,message", [(dict(seed=7), r"seed 1 -> 7"),
                                            (dict(batch_size=16), r"batch_size 32 -> 16")])
def test_resume_checks_the_checkpoints_own_record_not_only_config_json(tmp_path, damage,
                                                                       change, message):
  _run(tmp_path)
  saved = tmp_path / "config.json"
  if damage == "deleted":
    saved.unlink()
  elif damage == "invalid":
    saved.write_bytes(b"{\xff not json")
  elif damage == "a list":
    saved.write_text("[]")
  else:  # edited to agree with the resumed run's flags
    edited = json.loads(saved.read_text())
    edited["config"].update(change)
    saved.write_text(json.dumps(edited))
  with pytest.raises(WorkdirError, match=r"--resume: .* holds a run with other settings \("
                     + message + r"\)"):
    _run(tmp_path, CFG.replace(epochs=2, **change), resume=True)
  assert _epochs(tmp_path) == [0, 1]
  _run(tmp_path, CFG.replace(epochs=2), resume=True)  # its own settings continue it
  assert _epochs(tmp_path) == [0, 1, 2]


def _other_data():
  ds = synthetic()
  images = ds.train.images.copy()
  images[0, 0, 0] ^= 1  # one pixel
  return data.Dataset(ds.name, data.Split(images, ds.train.labels), ds.test, "elsewhere")


def test_resume_refuses_other_training_data(tmp_path):
  _run(tmp_path)
  assert json.loads((tmp_path / "config.json").read_text())["train_data_sha256"] == \
      data.fingerprint(synthetic().train)
  with pytest.raises(WorkdirError, match=r"--resume: .* was trained on other data than the "
                     r"files in elsewhere \(the sha256 of the training images and labels "
                     r"differs\); resume on the files it was trained on \(--data_dir\), or "
                     r"start again with --overwrite"):
    driver.train(CFG.replace(epochs=2), None, str(tmp_path), _other_data(), resume=True,
                 **quiet())
  (tmp_path / "config.json").unlink()  # the checkpoint's record holds it too
  with pytest.raises(WorkdirError, match=r"was trained on other data"):
    driver.train(CFG.replace(epochs=2), None, str(tmp_path), _other_data(), resume=True,
                 **quiet())
  assert _epochs(tmp_path) == [0, 1]


def test_a_run_from_before_data_fingerprints_resumes_on_its_files(tmp_path, monkeypatch):
  record = driver._run_record  # pylint: disable=protected-access
  monkeypatch.setattr(driver, "_run_record", lambda run: {
      k: v for k, v in record(run).items() if k != "train_data_sha256"})
  _run(tmp_path)
  monkeypatch.setattr(driver, "_run_record", record)
  # config.json holds the same record as the checkpoints: neither has a fingerprint.
  assert "train_data_sha256" not in json.loads((tmp_path / "config.json").read_text())
  driver.train(CFG.replace(epochs=2), None, str(tmp_path), _other_data(), resume=True,
               **quiet())  # trusted: nothing to compare with
  assert _epochs(tmp_path) == [0, 1, 2]


def test_a_workdir_whose_name_is_not_utf8_is_one_line(tmp_path):
  # As Python takes in --workdir=$'/tmp/x\xff' (surrogateescape): every line that printed it
  # would fail.
  with pytest.raises(WorkdirError, match=r"--workdir=.*/x\\xff: the name is not valid UTF-8; "
                     r"give a folder name in UTF-8$"):
    _run(tmp_path / os.fsdecode(b"x\xff"))
  assert not list(tmp_path.iterdir())


def test_a_second_ctrl_c_lost_in_a_gc_callback_during_the_figures_still_stops(
    tmp_path, monkeypatch, capfd):
  # Python runs a signal's handler wherever the main thread is; inside a garbage-collection
  # or weakref callback (matplotlib makes many) the raised exception is "ignored": printed
  # as a traceback, and the run went on as if the second Ctrl-C had not come.
  from mnistjax import errors, plots  # pylint: disable=g-import-not-at-top
  error_curves = plots.error_curves

  class Callback:
    def __del__(self):
      raise errors.Signal(signal.SIGINT)

  def figure_hit_by_ctrl_c(*args, **kwargs):
    Callback()  # collected at once: its exception can't propagate
    return error_curves(*args, **kwargs)

  monkeypatch.setattr(plots, "error_curves", figure_hit_by_ctrl_c)
  with pytest.raises(Interrupted, match=r"^interrupted; the checkpoint of epoch 1 and the "
                     r"metrics up to it are in .*: continue with --resume$"):
    _run(tmp_path)
  assert "Exception ignored" not in capfd.readouterr().err


def test_a_second_sigterm_inside_a_checkpoints_save_stops_once_the_save_is_done(
    tmp_path, monkeypatch, capfd):
  # Raised inside orbax's event loop, the second signal cut the save short and asyncio
  # printed it as a task's traceback (seen in CI: two SIGTERMs sent back to back).
  assert threading.current_thread() is threading.main_thread()  # where handlers are set
  save = checkpoint.Checkpoints.save

  def save_hit_by_two_signals(self, epoch, state, record):
    manager_save = self.manager.save

    def hit(*args, **kwargs):
      os.kill(os.getpid(), signal.SIGTERM)  # the first: a request, honoured between steps
      os.kill(os.getpid(), signal.SIGTERM)  # the second: at once, unless a save is under way
      return manager_save(*args, **kwargs)

    self.manager.save = hit
    return save(self, epoch, state, record)

  monkeypatch.setattr(checkpoint.Checkpoints, "save", save_hit_by_two_signals)
  with pytest.raises(Interrupted, match=r"^stopped by SIGTERM; the checkpoint of epoch 1 and "
                     r"the metrics up to it are in .*: continue with --resume$") as e:
    _run(tmp_path, CFG.replace(epochs=3))
  assert e.value.signum == signal.SIGTERM
  assert "Traceback" not in capfd.readouterr().err
  monkeypatch.undo()
  result = _run(tmp_path, CFG.replace(epochs=2), resume=True)
  assert _epochs(tmp_path) == [0, 1, 2] and result.history[-1]["epoch"] == 2


def test_fifos_in_place_of_a_runs_records_never_block_a_resume(tmp_path):
  _run(tmp_path)
  for name in ("config.json", "metrics.jsonl"):
    (tmp_path / name).unlink()
    os.mkfifo(tmp_path / name)  # reading one would wait for a writer forever
  done = []

  def resume():
    with pytest.raises(WorkdirError) as e:
      _run(tmp_path, CFG.replace(epochs=2), resume=True)
    done.append(str(e.value))

  thread = threading.Thread(target=resume, daemon=True)
  thread.start()
  thread.join(timeout=120)
  assert done and done[0].startswith(f"{tmp_path / 'metrics.jsonl'} is not a regular file; "
                                     "remove it, or start the run again with --overwrite")


# 7. Disk full, torn lines.


def test_a_torn_last_line_is_skipped_by_readers_and_cut_before_the_next_append(tmp_path):
  path = tmp_path / "metrics.jsonl"
  path.write_text('{"epoch": 0}\n{"epoch": 1}\n{"epo')  # a write cut short
  assert files.read_jsonl(path) == [{"epoch": 0}, {"epoch": 1}]
  files.append_jsonl(path, {"epoch": 2, "loss": float("nan")})
  assert path.read_text() == '{"epoch": 0}\n{"epoch": 1}\n{"epoch": 2, "loss": null}\n'
  path.write_text('{"epoch": 0}\n{"epo\n{"epoch": 2}\n')
  with pytest.raises(WorkdirError, match=r"line 2 is not JSON; .*--overwrite"):
    files.read_jsonl(path)


def test_a_full_disk_is_one_line_naming_the_file_and_the_fix(tmp_path, monkeypatch):
  real_open = open

  def full(path, mode="r", *args, **kwargs):
    if "metrics.jsonl" in str(path) and "a" in mode:
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return real_open(path, mode, *args, **kwargs)

  monkeypatch.setattr("builtins.open", full)
  with pytest.raises(WorkdirError, match=r"metrics.jsonl: No space left on device while appending "
                     r"to it; free space on that disk; stopped before any epoch was saved"):
    _run(tmp_path)
  assert "error: " in (tmp_path / "log.txt").read_text().splitlines()[-1]


def test_a_full_disk_inside_a_checkpoint_save_is_one_line(tmp_path, monkeypatch):
  def no_space(self, *args, **kwargs):
    raise RuntimeError("orbax wraps it") from OSError(errno.ENOSPC, "No space left on device")

  monkeypatch.setattr(checkpoint.ocp.CheckpointManager, "save", no_space)
  with pytest.raises(WorkdirError, match=r"checkpoints: No space left on device while saving the "
                     r"checkpoint of epoch 1; free space on that disk .*; stopped before any "
                     r"epoch was saved; start again with --overwrite$"):
    _run(tmp_path)


# Smaller things.


def test_files_get_the_usual_permissions(tmp_path):
  _run(tmp_path)
  mode = 0o666 & ~files._umask()  # pylint: disable=protected-access
  for name in ("config.json", "summary.json", "classification_report.txt", "metrics.jsonl",
               "loss.png"):
    assert stat.S_IMODE((tmp_path / name).stat().st_mode) == mode, name


def test_log_txt_ends_with_the_error_a_run_stopped_on(tmp_path):
  with pytest.raises(NonFiniteLoss) as e:
    _run(tmp_path, CFG.replace(lr=1e30))
  assert (tmp_path / "log.txt").read_text().splitlines()[-1] == f"error: {e.value}"
