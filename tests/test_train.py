"""The train step and the epoch loop: purity, learning, L2, resume, divergence."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import F64_ATOL, F64_RTOL, fake_split, quiet, synthetic
from mnistjax import config as config_lib
from mnistjax import models, optim, reporting, train

NORM = (0.1307, 0.3081)


def _parts(**overrides):
  cfg = config_lib.Config(**overrides)
  model = models.build(cfg.model, **cfg.model_settings())
  tx = optim.make(cfg.optimizer, **cfg.optimizer_hparams())
  return cfg, model, tx


def _batch(n=16, seed=0):
  images, labels = fake_split(n, seed)
  return {"image": images, "label": labels.astype(np.int32)}


def test_train_step_is_pure_and_reduces_the_loss():
  cfg, model, tx = _parts(lr=0.05, momentum=0.9)
  train_fn, _ = train.make_steps(model, tx, NORM)
  batch, key = _batch(), jax.random.key(0)
  s1, m1 = train_fn(train.create_state(model, tx, key), batch, key)
  s1b, m1b = train_fn(train.create_state(model, tx, key), batch, key)
  assert float(m1["loss"]) == float(m1b["loss"])  # same inputs, same result
  assert all(jax.tree.leaves(jax.tree.map(jnp.array_equal, s1.params, s1b.params)))
  state = s1
  for _ in range(20):
    state, metrics = train_fn(state, batch, key)
  assert int(state.step) == 21
  assert float(metrics["loss"]) < 0.5 * float(m1["loss"])
  assert train_fn._cache_size() == 1  # pylint: disable=protected-access


def test_l2_term_enters_the_loss_and_the_gradient():
  cfg, model, tx = _parts(model="mlp_deep", normalization="none", momentum=0.0)
  state0 = train.create_state(model, tx, jax.random.key(0), l2=0.8)
  plain = train.create_state(model, tx, jax.random.key(0), l2=0.0)
  train_fn, _ = train.make_steps(model, tx, (0.0, 1.0))
  batch = _batch(8)
  s_l2, m_l2 = train_fn(state0, batch, jax.random.key(1))
  s_0, m_0 = train_fn(plain, batch, jax.random.key(1))
  penalty = 0.8 / (2 * 8) * sum(float(jnp.sum(p["kernel"] ** 2))
                                for p in models.init(model, jax.random.key(0))["params"].values())
  np.testing.assert_allclose(m_l2["loss"] - m_0["loss"], penalty, rtol=1e-4)
  kernel0 = models.init(model, jax.random.key(0))["params"]["fc2"]["kernel"]
  # The L2 gradient (l2/m) W adds lr * (l2/m) * W of extra shrinkage; biases are untouched.
  np.testing.assert_allclose(s_0.params["fc2"]["kernel"] - s_l2.params["fc2"]["kernel"],
                             0.01 * 0.8 / 8 * kernel0, atol=1e-6)
  np.testing.assert_allclose(s_0.params["fc2"]["bias"], s_l2.params["fc2"]["bias"], atol=1e-7)


def test_evaluate_scores_a_partial_last_batch(x64):
  cfg, model, tx = _parts()
  state = train.create_state(model, tx, jax.random.key(0))
  _, eval_fn = train.make_steps(model, tx, NORM)
  split = synthetic(n_test=103).test
  whole = train.evaluate(eval_fn, state, split, 103, return_predictions=True)
  parts = train.evaluate(eval_fn, state, split, 10, return_predictions=True)
  assert len(parts["predictions"]) == 103
  np.testing.assert_array_equal(whole["predictions"], parts["predictions"])
  np.testing.assert_allclose(whole["loss"], parts["loss"], rtol=F64_RTOL)
  assert whole["accuracy"] == parts["accuracy"]


def test_two_epochs_equal_one_epoch_resumed_for_one_more(tmp_path):
  # Dropout and BatchNorm so that the RNG stream and the running statistics must resume too.
  cfg = config_lib.Config(epochs=2, dropout=0.25, batchnorm=True, batch_size=32)
  ds = synthetic()
  straight = train.train_and_evaluate(cfg, str(tmp_path / "a"), ds, **quiet())
  train.train_and_evaluate(cfg.replace(epochs=1), str(tmp_path / "b"), ds, **quiet())
  resumed = train.train_and_evaluate(cfg, str(tmp_path / "b"), ds, resume=True, **quiet())
  for a, b in zip(jax.tree.leaves(straight["state"]), jax.tree.leaves(resumed["state"])):
    np.testing.assert_array_equal(a, b)
  epochs = [r["epoch"] for r in
            reporting.read_jsonl(tmp_path / "b" / "metrics.jsonl")]
  assert epochs == [0, 1, 2]


def test_divergence_stops_and_keeps_the_last_good_epoch(tmp_path):
  ds = synthetic()
  cfg = config_lib.Config(epochs=1, log_every=2)
  train.train_and_evaluate(cfg, str(tmp_path), ds, **quiet())
  with pytest.raises(train.NonFiniteLoss, match=r"became (nan|inf) at step \d+ \(epoch 2\).*"
                     r"checkpoint of epoch 1 .*--resume"):
    train.train_and_evaluate(cfg.replace(epochs=3, lr=1e30), str(tmp_path), ds, resume=True,
                             **quiet())
  records = [r["epoch"] for r in
             reporting.read_jsonl(tmp_path / "metrics.jsonl")]
  assert records == [0, 1]
  resumed = train.train_and_evaluate(cfg.replace(epochs=2), str(tmp_path), ds, resume=True,
                                     **quiet())
  assert resumed["final"]["epoch"] == 2 and np.isfinite(resumed["final"]["test_loss"])


@pytest.mark.slow
def test_one_epoch_of_lenet_relu_reaches_97_percent(mnist):
  # Momentum 0.9 rather than the notebook's 0.5, which ends epoch 1 at ~96.7% (docs/studies.md, S0).
  cfg = config_lib.Config(activation="relu", epochs=1, momentum=0.9, eval_train=False, seed=0)
  result = train.train_and_evaluate(cfg, dataset=mnist, **quiet())
  assert result["final"]["step"] == 938  # 937 full batches and the last 32 examples
  assert result["final"]["test_accuracy"] >= 97.0


def test_a_run_with_a_schedule_interrupted_in_epoch_2_resumes_bit_for_bit(tmp_path, monkeypatch):
  cfg = config_lib.Config(epochs=2, batch_size=32, schedule="cosine", warmup_epochs=0.5)
  ds = synthetic()
  straight = train.train_and_evaluate(cfg, str(tmp_path / "a"), ds, **quiet())
  evaluate = train._evaluate_members  # pylint: disable=protected-access

  def interrupt_in_epoch_2(config, eval_fn, state, group, dataset, epoch, *rest):
    if epoch == 2:
      raise KeyboardInterrupt
    return evaluate(config, eval_fn, state, group, dataset, epoch, *rest)

  monkeypatch.setattr(train, "_evaluate_members", interrupt_in_epoch_2)
  with pytest.raises(train.Interrupted, match="checkpoint of epoch 1"):
    train.train_and_evaluate(cfg, str(tmp_path / "b"), ds, **quiet())
  monkeypatch.setattr(train, "_evaluate_members", evaluate)
  resumed = train.train_and_evaluate(cfg, str(tmp_path / "b"), ds, resume=True, **quiet())
  for a, b in zip(jax.tree.leaves(straight["state"]), jax.tree.leaves(resumed["state"])):
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("sweep_axes", [None, {"dropout": (0.25, 0.5)}])
def test_a_scanned_epoch_trains_exactly_as_the_python_loop(x64, tmp_path, sweep_axes):
  # The accelerator path (dataset on the device, shuffled there, lax.scan over the steps) must
  # see the same batches in the same order with the same dropout keys, padding included.
  cfg = config_lib.Config(epochs=2, batch_size=32, eval_train=False, checkpoint=False,
                          dropout=0.25, batchnorm=True, log_every=3)
  ds = synthetic(250, 100)  # 7 full batches and one of 26
  runs = {loop: train.train_and_evaluate(cfg.replace(epoch_loop=loop), str(tmp_path / loop), ds,
                                         sweep=sweep_axes, **quiet())
          for loop in ("python", "scan")}
  for a, b in zip(jax.tree.leaves(runs["python"]["state"]), jax.tree.leaves(runs["scan"]["state"])):
    np.testing.assert_allclose(a, b, rtol=F64_RTOL, atol=F64_ATOL)
  logs = {loop: reporting.read_jsonl(tmp_path / loop / "train_log.jsonl") for loop in runs}
  assert [(r["step"], r["examples_seen"], r["interval"]) for r in logs["python"]] == \
      [(r["step"], r["examples_seen"], r["interval"]) for r in logs["scan"]]
  np.testing.assert_allclose([r["loss"] for r in logs["python"]],
                             [r["loss"] for r in logs["scan"]], rtol=F64_RTOL)
  assert runs["scan"]["compile_seconds"] > 0
