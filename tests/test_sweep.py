"""Sweeps: K members in one program equal K single runs; divergence freezes one member only."""

from __future__ import annotations

import re

import jax
import numpy as np
import pytest

from mnistjax import config as config_lib
from mnistjax import data, driver, errors, files, sweep
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
    member = sweep.unstack(result.state, k)
    alone = sweep.unstack(single.state, 0)  # a plain run: one member
    for a, b in zip(jax.tree.leaves(member.params), jax.tree.leaves(alone.params)):
      np.testing.assert_allclose(a, b, rtol=F64_RTOL, atol=F64_ATOL)
    assert result.final[k]["test_accuracy"] == single.final[0]["test_accuracy"]


def test_equal_settings_and_seed_are_identical_other_seeds_differ():
  result = driver.train(BASE, {"seed": (3, 3, 4)}, dataset=synthetic(), **quiet())
  a, b, c = (sweep.unstack(result.state, k).params for k in range(3))
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
  frozen = sweep.unstack(result.state, 1)
  assert all(np.all(np.isfinite(p)) for p in jax.tree.leaves(frozen.params))
  rows = files.read_jsonl(tmp_path / "metrics.jsonl")
  assert {r["member"] for r in rows} == {"lr=0.05", "lr=1e+30"}
  assert all("lr" in r for r in rows)
  assert (tmp_path / "sweep_accuracy.png").exists() and (tmp_path / "sweep_curves.png").exists()


def _lock_step_and_window(axes, n_batches, window):
  """A sweep's members after n_batches taken by lock_step one by one, and by window_step in
  windows of `window` (the last one padded), with the losses of each. Where the seeds differ,
  each member gets its own batches (a member axis first), as a run gives them."""
  plan = driver.setup(BASE, synthetic(), axes)
  per_member = plan.per_member_data
  streams = [list(data.train_batches(plan.dataset.train, BASE.batch_size, key, 1, False,
                                     masked=True))[:n_batches]
             for key in (plan.shuffle_keys if per_member else plan.shuffle_keys[:1])]
  batches = ([{k: np.stack([b[k] for b in group]) for k in group[0]} for group in zip(*streams)]
             if per_member else streams[0])
  members, keys = sweep.init(plan.model, plan.group, len(plan.dataset.train))
  step = sweep.make_lock_step(plan.model, plan.tx, plan.norm, per_member=per_member)
  lock_losses = []
  for batch in batches:
    members, metrics = step(members, batch, keys)
    lock_losses.append(metrics["loss"])
  lock = (members, np.stack(lock_losses, axis=1))
  members, keys = sweep.init(plan.model, plan.group, len(plan.dataset.train))
  step = sweep.make_window_step(plan.model, plan.tx, plan.norm, per_member=per_member)
  window_losses = []
  for stacked, real in sweep.windows(batches, window):
    members, metrics = step(members, stacked, keys)
    window_losses.append(np.asarray(metrics["loss"])[:, :real])
  return lock, (members, np.concatenate(window_losses, axis=1))


@pytest.mark.parametrize("axes", [{"dropout": (0.0, 0.5)}, {"lr": (0.05, 0.01), "seed": (0, 1)}])
def test_window_step_takes_lock_steps_and_skips_its_padding(x64, axes):
  (lock, lock_losses), (windowed, window_losses) = _lock_step_and_window(axes, 5, 3)
  assert window_losses.shape == lock_losses.shape == (len(sweep.members(BASE, axes)), 5)
  np.testing.assert_allclose(window_losses, lock_losses, rtol=F64_RTOL)
  np.testing.assert_array_equal(windowed.state.step, lock.state.step)  # 5: padding took none
  for a, b in zip(jax.tree.leaves(windowed), jax.tree.leaves(lock)):
    np.testing.assert_allclose(a, b, rtol=F64_RTOL, atol=F64_ATOL)


def test_a_diverging_member_is_frozen_also_on_a_batch_without_mask():
  plan = driver.setup(BASE, synthetic(), {"lr": (0.05, 1e30)})
  members, keys = sweep.init(plan.model, plan.group, len(plan.dataset.train))
  ds = plan.dataset
  batch = {"image": ds.train.images[:32], "label": ds.train.labels[:32].astype(np.int32)}
  step = sweep.make_lock_step(plan.model, plan.tx, plan.norm)
  for _ in range(3):
    members, metrics = step(members, batch, keys)
  assert members.alive.dtype == bool
  np.testing.assert_array_equal(members.alive, [True, False])
  np.testing.assert_array_equal(members.state.step, [3, 1])  # the frozen member stopped
  assert np.isfinite(metrics["loss"][0])
  assert all(np.all(np.isfinite(p)) for p in jax.tree.leaves(members.state.params))


def test_windows_stack_batches_and_pad_the_last_with_empty_ones():
  batches = [{"image": np.full((4, 2), i), "mask": np.ones(4, bool)} for i in range(5)]
  windows = list(sweep.windows(iter(batches), 2))
  assert [real for _, real in windows] == [2, 2, 1]
  last = windows[-1][0]
  assert last["image"].shape == (2, 4, 2) and last["image"][0, 0, 0] == 4
  np.testing.assert_array_equal(last["mask"], [[True] * 4, [False] * 4])


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
    sweep.parse(spec)


def test_sweep_values_are_validated():
  with pytest.raises(ConfigError, match="--lr=-0.1"):
    sweep.members(BASE, sweep.parse(["lr=0.1,-0.1"]))
  assert [m.name for m in sweep.members(BASE, sweep.parse(["dropout=0.25,0.5", "seed=0,1"]))] == [
      "dropout=0.25,seed=0", "dropout=0.25,seed=1", "dropout=0.5,seed=0", "dropout=0.5,seed=1"]
