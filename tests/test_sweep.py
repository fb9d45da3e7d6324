"""Sweeps: K members in one program equal K single runs; divergence freezes one member only."""

from __future__ import annotations

import functools
import re

import jax
import numpy as np
import pytest

from mnistjax import config as config_lib
from mnistjax import driver, errors, files, step
from mnistjax.errors import ConfigError
from conftest import F64_ATOL, F64_RTOL, quiet, synthetic


BASE = config_lib.Config(epochs=1, batch_size=32, eval_train=False, checkpoint=False)


@pytest.mark.parametrize("axes", [{"dropout": (0.25, 0.5)}, {"lr": (0.05, 0.01)},
                                  {"seed": (1, 2)}])
def test_member_k_equals_a_single_run_with_its_settings(x64, axes):
  # A seed sets initialisation, dropout and the data order: member k of a seed sweep is the
  # run with that seed, its own batches included.
  ds = synthetic()
  result = driver.train(BASE, axes, dataset=ds, **quiet())
  (key, values), = axes.items()
  for k, value in enumerate(values):
    single = driver.train(BASE.replace(**{key: value}), dataset=ds, **quiet())
    member = step.unstack(result.state, k)
    alone = step.unstack(single.state, 0)  # a plain run: one member
    for a, b in zip(jax.tree.leaves(member.params), jax.tree.leaves(alone.params)):
      np.testing.assert_allclose(a, b, rtol=F64_RTOL, atol=F64_ATOL)
    assert result.final[k]["test_accuracy"] == single.final[0]["test_accuracy"]


def test_equal_settings_and_seed_are_identical_other_seeds_differ():
  result = driver.train(BASE, {"seed": (3, 3, 4)}, dataset=synthetic(), **quiet())
  a, b, c = (step.unstack(result.state, k).params for k in range(3))
  assert all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
  assert not any(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(c)))
  groups = {g["setting"]: g for g in result.summary["by_setting"]}
  assert groups["all"]["seeds"] == 3


def test_a_diverging_member_is_frozen_and_the_others_go_on(tmp_path):
  lines = []
  result = driver.train(BASE.replace(epochs=2, log_every=2), {"lr": (0.05, 1e30)},
                        str(tmp_path), synthetic(), log=lines.append)
  reports = [line for line in lines if line.startswith("member lr=1e+30")]
  assert len(reports) == 1 and re.fullmatch(
      r"member lr=1e\+30: the training loss became -?(nan|inf) at step [12] \(epoch 1\); "
      r"frozen, the other members go on", reports[0])
  good, bad = result.summary["members"]
  assert not good["diverged"] and good["final"]["test_accuracy"] > 50
  assert bad["diverged"]
  frozen = step.unstack(result.state, 1)
  assert all(np.all(np.isfinite(p)) for p in jax.tree.leaves(frozen.params))
  rows = files.read_jsonl(tmp_path / "metrics.jsonl")
  assert {r["member"] for r in rows} == {"lr=0.05", "lr=1e+30"}
  assert all("lr" in r for r in rows)
  assert (tmp_path / "sweep_accuracy.png").exists() and (tmp_path / "sweep_curves.png").exists()


def _trained_members(run, backend, monkeypatch):
  """A run's members after one epoch of driver.Trainer as it steps them on `backend` ("cpu":
  one member after another; else vmapped, all in one program), and their interval losses."""
  members, keys = step.init_members(run.model, run.group, run.steps_per_epoch)
  with monkeypatch.context() as patch:
    patch.setattr(jax, "default_backend", lambda: backend)
    trainer = driver.Trainer(run, members, keys, 0)
    assert trainer.vmapped == (backend != "cpu")
    losses = [interval.losses for _, interval in trainer.epoch(1) if interval]
    return trainer.members, np.concatenate(losses)


@pytest.mark.parametrize("axes", [{"dropout": (0.0, 0.5)}, {"lr": (0.05, 0.01), "seed": (0, 1)}])
def test_vmapped_members_take_the_steps_of_members_stepped_one_by_one(x64, axes, monkeypatch):
  # The accelerators' python loop (vmapped members) against the CPU's, on the same batches;
  # with seeds, each member its own batches.
  run = driver.setup(BASE.replace(log_every=3), synthetic(250, 50), axes)
  one_by_one, losses = _trained_members(run, "cpu", monkeypatch)
  vmapped, vmapped_losses = _trained_members(run, "gpu", monkeypatch)
  assert losses.shape == (8, len(run.group))  # 7 full batches and one of 26
  np.testing.assert_allclose(vmapped_losses, losses, rtol=F64_RTOL)
  np.testing.assert_array_equal(vmapped.state.step, one_by_one.state.step)
  for a, b in zip(jax.tree.leaves(vmapped), jax.tree.leaves(one_by_one)):
    np.testing.assert_allclose(a, b, rtol=F64_RTOL, atol=F64_ATOL)


def test_a_diverging_member_is_frozen_also_on_a_batch_without_mask():
  run = driver.setup(BASE, synthetic(), {"lr": (0.05, 1e30)})
  members, keys = step.init_members(run.model, run.group, run.steps_per_epoch)
  tx = step.make_optimizer(run.group[0].config, run.steps_per_epoch)
  member_step = jax.jit(functools.partial(step.member_step, model=run.net, tx=tx))
  ds = run.dataset
  batch = {"image": ds.train.images[:32], "label": ds.train.labels[:32].astype(np.int32)}
  for k, (alive_after, steps_after) in enumerate([(True, 3), (False, 1)]):
    state, alive = step.unstack(members.state, k), members.alive[k]
    for _ in range(3):
      state, alive, metrics = member_step(state, alive, batch, keys[k])
    assert alive.dtype == bool and bool(alive) == alive_after
    assert int(state.step) == steps_after  # the frozen member stopped
    assert all(np.all(np.isfinite(p)) for p in jax.tree.leaves(state.params))
    if alive_after:
      assert np.isfinite(metrics["loss"])


def test_every_member_diverging_stops_the_run():
  with pytest.raises(errors.NonFiniteLoss, match="every member of the sweep diverged"):
    driver.train(BASE.replace(log_every=2), {"lr": (1e30, 1e31)}, dataset=synthetic(),
                 **quiet())


def test_sweep_resumes_per_member(tmp_path):
  ds, axes = synthetic(), {"dropout": (0.0, 0.5)}
  cfg = BASE.replace(epochs=2, checkpoint=True)
  straight = driver.train(cfg, axes, str(tmp_path / "a"), ds, **quiet())
  driver.train(cfg.replace(epochs=1), axes, str(tmp_path / "b"), ds, **quiet())
  resumed = driver.train(cfg, axes, str(tmp_path / "b"), ds, resume=True, **quiet())
  for a, b in zip(jax.tree.leaves(straight.state), jax.tree.leaves(resumed.state)):
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("spec,message", [
    (["dropout"], "write --sweep=SETTING=V1,V2"),
    (["width=1,2"], "'width' can't be swept"),
    (["seed=a,b"], "values of seed must be ints"),
    (["lr=0.1", "lr=0.2"], "swept twice"),
])
def test_bad_sweep_specs_name_the_fix(spec, message):
  with pytest.raises(ConfigError, match=message):
    config_lib.parse_sweep(spec)


def test_sweep_values_are_validated():
  with pytest.raises(ConfigError, match="--lr=-0.1"):
    config_lib.members(BASE, config_lib.parse_sweep(["lr=0.1,-0.1"]))
  assert [m.name for m in config_lib.members(BASE, config_lib.parse_sweep(["dropout=0.25,0.5", "seed=0,1"]))] == [
      "dropout=0.25,seed=0", "dropout=0.25,seed=1", "dropout=0.5,seed=0", "dropout=0.5,seed=1"]
