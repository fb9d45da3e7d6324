"""Sweeps: K members in one program equal K single runs; divergence freezes one member only."""

from __future__ import annotations

import re

import jax
import numpy as np
import pytest

from mnistjax import config as config_lib
from mnistjax import data, reporting, sweep, train
from mnistjax.errors import ConfigError
from conftest import F64_ATOL, F64_RTOL, quiet, synthetic


BASE = config_lib.Config(epochs=1, batch_size=32, eval_train=False, checkpoint=False)


@pytest.mark.parametrize("axes", [{"dropout": (0.25, 0.5)}, {"lr": (0.05, 0.01)}])
def test_member_k_equals_a_single_run_with_its_settings(x64, axes):
  ds = synthetic()
  result = train.train_and_evaluate(BASE, dataset=ds, sweep=axes, **quiet())
  (key, values), = axes.items()
  for k, value in enumerate(values):
    single = train.train_and_evaluate(BASE.replace(**{key: value}), dataset=ds, **quiet())
    member = sweep.unstack(result["state"], k)
    for a, b in zip(jax.tree.leaves(member.params), jax.tree.leaves(single["state"].params)):
      np.testing.assert_allclose(a, b, rtol=F64_RTOL, atol=F64_ATOL)
    assert result["members"][k]["test_accuracy"] == single["final"]["test_accuracy"]


def test_equal_settings_and_seed_are_identical_other_seeds_differ():
  result = train.train_and_evaluate(BASE, dataset=synthetic(), sweep={"seed": (3, 3, 4)},
                                    **quiet())
  a, b, c = (sweep.unstack(result["state"], k).params for k in range(3))
  assert all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
  assert not any(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(c)))
  groups = {g["setting"]: g for g in result["by_setting"]}
  assert groups["all"]["seeds"] == 3


def test_a_diverging_member_is_frozen_and_the_others_go_on(tmp_path):
  lines = []
  result = train.train_and_evaluate(BASE.replace(epochs=2, log_every=2), str(tmp_path),
                                    dataset=synthetic(), sweep={"lr": (0.05, 1e30)},
                                    log=lines.append)
  reports = [line for line in lines if line.startswith("member lr=1e+30")]
  assert len(reports) == 1 and re.fullmatch(
      r"member lr=1e\+30: the training loss became -?(nan|inf) at step [12] \(epoch 1\); "
      r"frozen, the other members go on", reports[0])
  good, bad = result["members"]
  assert not good["diverged"] and good["test_accuracy"] > 50
  assert bad["diverged"]
  frozen = sweep.unstack(result["state"], 1)
  assert all(np.all(np.isfinite(p)) for p in jax.tree.leaves(frozen.params))
  rows = reporting.read_jsonl(tmp_path / "metrics.jsonl")
  assert {r["member"] for r in rows} == {"lr=0.05", "lr=1e+30"}
  assert all("lr" in r for r in rows)
  assert (tmp_path / "sweep_accuracy.png").exists() and (tmp_path / "sweep_curves.png").exists()


def _lock_step_and_window(axes, n_batches, window):
  """A sweep's states after n_batches taken by sweep_step one by one, and by window_step in
  windows of `window` (the last one padded), with the losses of each."""
  ds = synthetic()
  _, model, tx, norm = train.setup(BASE, ds)
  group = sweep.members(BASE, axes)
  batches = list(data.train_batches(ds.train, BASE.batch_size, jax.random.key(0), 1, False,
                                    masked=True))[:n_batches]
  state, keys = sweep.create_states(model, group, "dropout" in axes, len(ds.train))
  step, lock_losses = sweep.make_sweep_step(model, tx, norm), []
  for batch in batches:
    state, metrics = step(state, batch, keys)
    lock_losses.append(metrics["loss"])
  lock = (state, np.stack(lock_losses, axis=1))
  state, keys = sweep.create_states(model, group, "dropout" in axes, len(ds.train))
  step, window_losses = sweep.make_window_step(model, tx, norm), []
  for stacked, real in sweep.windows(batches, window):
    state, metrics = step(state, stacked, keys)
    window_losses.append(np.asarray(metrics["loss"])[:, :real])
  return lock, (state, np.concatenate(window_losses, axis=1))


@pytest.mark.parametrize("axes", [{"dropout": (0.0, 0.5)}, {"lr": (0.05, 0.01), "seed": (0, 1)}])
def test_window_step_takes_sweep_steps_and_skips_its_padding(x64, axes):
  (lock, lock_losses), (windowed, window_losses) = _lock_step_and_window(axes, 5, 3)
  assert window_losses.shape == lock_losses.shape == (len(sweep.members(BASE, axes)), 5)
  np.testing.assert_allclose(window_losses, lock_losses, rtol=F64_RTOL)
  np.testing.assert_array_equal(windowed.step, lock.step)  # 5: the padding took no step
  for a, b in zip(jax.tree.leaves(windowed), jax.tree.leaves(lock)):
    np.testing.assert_allclose(a, b, rtol=F64_RTOL, atol=F64_ATOL)


def test_a_diverging_member_is_frozen_also_on_a_batch_without_mask():
  ds = synthetic()
  _, model, tx, norm = train.setup(BASE, ds)
  state, keys = sweep.create_states(model, sweep.members(BASE, {"lr": (0.05, 1e30)}), False,
                                    len(ds.train))
  batch = {"image": ds.train.images[:32], "label": ds.train.labels[:32].astype(np.int32)}
  step = sweep.make_sweep_step(model, tx, norm)
  for _ in range(3):
    state, metrics = step(state, batch, keys)
  assert state.hparams["alive"].dtype == bool
  np.testing.assert_array_equal(state.hparams["alive"], [True, False])
  np.testing.assert_array_equal(state.step, [3, 1])  # the frozen member stopped
  assert np.isfinite(metrics["loss"][0])


def test_windows_stack_batches_and_pad_the_last_with_empty_ones():
  batches = [{"image": np.full((4, 2), i), "mask": np.ones(4, bool)} for i in range(5)]
  windows = list(sweep.windows(iter(batches), 2))
  assert [real for _, real in windows] == [2, 2, 1]
  last = windows[-1][0]
  assert last["image"].shape == (2, 4, 2) and last["image"][0, 0, 0] == 4
  np.testing.assert_array_equal(last["mask"], [[True] * 4, [False] * 4])


def test_every_member_diverging_stops_the_run():
  with pytest.raises(train.NonFiniteLoss, match="every member of the sweep diverged"):
    train.train_and_evaluate(BASE.replace(log_every=2), dataset=synthetic(),
                             sweep={"lr": (1e30, 1e31)}, **quiet())


def test_sweep_resumes_per_member(tmp_path):
  ds, axes = synthetic(), {"dropout": (0.0, 0.5)}
  cfg = BASE.replace(epochs=2, checkpoint=True)
  straight = train.train_and_evaluate(cfg, str(tmp_path / "a"), ds, sweep=axes, **quiet())
  train.train_and_evaluate(cfg.replace(epochs=1), str(tmp_path / "b"), ds, sweep=axes,
                           **quiet())
  resumed = train.train_and_evaluate(cfg, str(tmp_path / "b"), ds, resume=True, sweep=axes,
                                     **quiet())
  for a, b in zip(jax.tree.leaves(straight["state"]), jax.tree.leaves(resumed["state"])):
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
