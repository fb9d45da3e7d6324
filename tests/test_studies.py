"""Every study's defaults are its notebook's protocol (docs/studies.md); flags override them."""

from __future__ import annotations

import json

import pytest

import mnistjax
from conftest import write_dataset
from mnistjax import driver, files, studies
from mnistjax.errors import ConfigError, Interrupted

# docs/studies.md, study by study: the settings that make each protocol.
PROTOCOLS = {
    "s0": dict(model="lenet", dataset="mnist", optimizer="sgd", lr=0.01, momentum=0.5,
               batch_size=64, epochs=5, normalization="auto", eval_train=True),
    "s1": dict(dataset="fashion_mnist", normalization="estimate", optimizer="sgd", lr=0.001,
               momentum=0.9, weight_decay=0.04, epochs=1, batch_size=64),
    "s2": dict(model="mlp_small", normalization="half", batch_size=100, optimizer="rmsprop",
               lr=1e-3, alpha=0.9, eps=1e-8, epochs=100),
    "s4": dict(model="mlp_deep", normalization="none", optimizer="sgd", lr=0.01, momentum=0.0,
               batch_size=64, epochs=15),
    "sp": dict(dataset="mnist", eval_train=False),  # the speedrun: any network and schedule
}

# What a study changes on purpose (checked in test_variants_are_the_notebook_rows).
CHANGED = {"s1_lr_wd": ("lr", "weight_decay"), "s4_adam": ("optimizer",)}


@pytest.mark.parametrize("name", sorted(studies.STUDIES))
def test_study_defaults_are_the_notebook_protocol(name):
  protocol = PROTOCOLS[name[:2]]
  for _, config in studies.expand(name):
    for key, value in protocol.items():
      if key not in CHANGED.get(name, ()):
        assert getattr(config, key) == value, (name, key)


def test_variants_are_the_notebook_rows():
  assert [c.dropout for _, c in studies.expand("s0_dropout")] == [0.25, 0.5, 0.75, 1.0]
  assert [c.activation for _, c in studies.expand("s4_activation")] == ["sigmoid", "tanh", "relu"]
  init = [(c.batchnorm, c.init) for _, c in studies.expand("s0_init")]
  assert init == [(True, "xavier_normal"), (True, "kaiming_normal"), (False, "xavier_normal")]
  grid = {(c.lr, c.weight_decay) for _, c in studies.expand("s1_lr_wd")}
  assert (0.001, 0.04) in grid and len(grid) == 12
  s2 = dict(studies.expand("s2_prelu"))["base"]
  assert (s2.activation, s2.prelu_init, s2.input_dropout, s2.dropout) == ("prelu", -0.1, 0.2, 0.3)
  assert dict(studies.expand("s1_fashion_cnn3"))["base"].model == "cnn3"
  assert dict(studies.expand("s4_adam"))["base"].optimizer == "adam"
  assert dict(studies.expand("s4_l2"))["l2=0.8"].l2 == 0.8


def test_studies_that_vary_only_sweepable_values_run_as_one_sweep():
  assert studies.as_sweep("s0_dropout") == {"dropout": (0.25, 0.5, 0.75, 1.0)}
  assert studies.as_sweep("s4_l2") == {"l2": (0.0, 0.8)}
  grid = studies.as_sweep("s1_lr_wd")
  assert len(grid["lr"]) * len(grid["weight_decay"]) == len(studies.STUDIES["s1_lr_wd"].variants)
  assert studies.as_sweep("s0_activation") is None  # an activation is not a value
  assert studies.as_sweep("s0_init") is None
  assert studies.as_sweep("s0_dropout", {"dropout": 0.5}) is None  # the flag picks one


def test_flags_override_every_variant_and_setting_the_varied_value_leaves_one():
  runs = studies.expand("s0_activation", {"epochs": 1})
  assert [name for name, _ in runs] == ["activation=relu", "activation=sigmoid"]
  assert all(c.epochs == 1 for _, c in runs)
  (name, config), = studies.expand("s4_activation", {"activation": "relu"})
  assert name == "base" and config.activation == "relu" and config.epochs == 15


def test_bad_study_or_override_is_a_config_error():
  with pytest.raises(ConfigError, match="unknown study"):
    studies.expand("s3")
  with pytest.raises(ConfigError, match="--lr=-1"):
    studies.expand("s0_activation", {"lr": -1})


def test_the_speedrun_trains_five_seeds_as_one_sweep_and_checks_its_target():
  assert studies.as_sweep("speedrun") == {"seed": (0, 1, 2, 3, 4)}
  study = studies.STUDIES["speedrun"]
  rows = [{"test_accuracy": a, "wall_seconds": 50.0, "compile_seconds": 2.0, "run": "sweep"}
          for a in (99.1, 99.0, 98.9, 99.2, 99.05)]
  outcome = studies.target_outcome(study, rows)
  assert outcome["reached"] and outcome["mean"] == pytest.approx(99.05)
  assert outcome["wall_seconds"] == 50.0 and outcome["compile_seconds"] == 2.0
  assert "reached" in outcome["line"] and "48.0 s without" in outcome["line"]
  rows[0]["test_accuracy"] = 98.0
  assert not studies.target_outcome(study, rows)["reached"]


def test_run_study_trains_each_variant_in_its_folder_or_all_as_one_sweep(mnist, tmp_path):
  """mnistjax.run_study, as --study runs a study: variants that can't form a sweep one after
  another, each in workdir/<variant>; a study whose variants can, as one run in the workdir."""
  del mnist  # the data must be there
  small, lines = {"epochs": 1, "train_limit": 640, "test_limit": 100}, []
  rows = mnistjax.run_study("s4_activation", small, str(tmp_path / "act"), log=lines.append)
  assert [r["variant"] for r in rows] == [name for name, _ in studies.expand("s4_activation")]
  assert all((tmp_path / "act" / r["variant"] / "summary.json").exists() for r in rows)
  assert "notebook: test acc sigmoid 79.66" in lines[-1]

  rows = mnistjax.run_study("s4_l2", small, str(tmp_path / "l2"), sweep={"seed": (0, 1)},
                            log=lines.append)
  assert [(r["variant"], r["run"]) for r in rows] == [
      ("l2=0.0,seed=0", "sweep"), ("l2=0.0,seed=1", "sweep"), ("l2=0.8,seed=0", "sweep"),
      ("l2=0.8,seed=1", "sweep")]
  assert any(line.startswith("study s4_l2: ") and line.endswith("one sweep over l2, seed")
             for line in lines)
  assert (tmp_path / "l2" / "summary.json").exists()
  assert json.loads((tmp_path / "l2" / "study.json").read_text())["runs"] == rows


def test_evaluation_batch_is_the_flag_or_the_backend_default():
  from mnistjax.config import Config  # pylint: disable=g-import-not-at-top
  assert Config().eval_batch("cpu") == 500 and Config().eval_batch("gpu") == 10000
  assert Config(eval_batch_size=64).eval_batch("gpu") == 64
  with pytest.raises(ConfigError, match="--eval_batch_size=-1"):
    Config(eval_batch_size=-1).validate()


def test_a_study_interrupted_in_its_second_run_resumes_where_it_stopped(tmp_path, monkeypatch):
  """--resume of a study of several runs: the finished run is kept (not trained again), the
  interrupted one continues from its checkpoint, the one not started starts; the numbers are
  those of an uninterrupted study."""
  small = {"epochs": 2, "train_limit": 256, "test_limit": 100, "verify_data": False,
           "data_dir": str(write_dataset(tmp_path / "data", gz=False))}
  straight = mnistjax.run_study("s4_activation", small, str(tmp_path / "a"), log=lambda _: None)

  evaluate = driver._evaluate  # pylint: disable=protected-access

  def interrupt_tanh_in_epoch_2(run, eval_step, trainer, epoch, *rest, **kwargs):
    if run.config.activation == "tanh" and epoch == 2:
      raise KeyboardInterrupt
    return evaluate(run, eval_step, trainer, epoch, *rest, **kwargs)

  monkeypatch.setattr(driver, "_evaluate", interrupt_tanh_in_epoch_2)
  with pytest.raises(Interrupted, match="checkpoint of epoch 1"):
    mnistjax.run_study("s4_activation", small, str(tmp_path / "b"), log=lambda _: None)
  monkeypatch.setattr(driver, "_evaluate", evaluate)
  assert not (tmp_path / "b" / "activation=relu").exists()

  trained, train = [], driver.train

  def recording_train(config, *args, **kwargs):
    trained.append((config.activation, kwargs["resume"]))
    return train(config, *args, **kwargs)

  monkeypatch.setattr(driver, "train", recording_train)
  lines = []
  resumed = mnistjax.run_study("s4_activation", small, str(tmp_path / "b"), resume=True,
                               log=lines.append)
  assert trained == [("tanh", True), ("relu", False)]  # sigmoid kept, tanh continued
  assert any("finished earlier" in line for line in lines)
  assert any("resumed from the checkpoint of epoch 1" in line for line in lines)
  numbers = ("variant", "test_accuracy", "test_loss", "train_accuracy", "run")
  assert [{k: r[k] for k in numbers} for r in resumed] == [
      {k: r[k] for k in numbers} for r in straight]
  tanh = files.read_jsonl(tmp_path / "b" / "activation=tanh" / "metrics.jsonl")
  assert [r["epoch"] for r in tanh] == [0, 1, 2]


def test_a_finished_study_run_saved_with_a_retired_setting_is_kept_on_resume(tmp_path):
  small = {"epochs": 1, "train_limit": 256, "test_limit": 100, "verify_data": False,
           "data_dir": str(write_dataset(tmp_path / "data", gz=False))}
  mnistjax.run_study("s4_adam", small, str(tmp_path / "s"), log=lambda _: None)
  saved = json.loads((tmp_path / "s" / "config.json").read_text())
  saved["config"]["data_source"] = "auto"  # as versions with --data_source wrote it
  (tmp_path / "s" / "config.json").write_text(json.dumps(saved))
  lines = []
  mnistjax.run_study("s4_adam", small, str(tmp_path / "s"), resume=True, log=lines.append)
  assert any("finished earlier" in line for line in lines), lines
