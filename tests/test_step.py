"""The pure train and eval steps: purity, learning, L2, padded batches, evaluation."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from conftest import F64_ATOL, F64_RTOL, fake_split, synthetic
from mnistjax import config as config_lib
from mnistjax import driver, models, step

NORM = (0.1307, 0.3081)


def _parts(**overrides):
  cfg = config_lib.Config(**overrides)
  model = models.build(cfg.model, **cfg.model_settings())
  tx = step.make_optimizer(cfg, steps_per_epoch=1)
  return cfg, model, tx


def _jitted(model, tx, norm=NORM):
  return jax.jit(functools.partial(step.train_step, model=step.Model(model, norm), tx=tx))


def _batch(n=16, seed=0):
  images, labels = fake_split(n, seed)
  return {"image": images, "label": labels.astype(np.int32)}


def test_train_step_is_pure_and_reduces_the_loss():
  cfg, model, tx = _parts(lr=0.05, momentum=0.9)
  train_fn = _jitted(model, tx)
  batch, key = _batch(), jax.random.key(0)
  s1, m1 = train_fn(step.create_state(model, tx, key), batch, key)
  s1b, m1b = train_fn(step.create_state(model, tx, key), batch, key)
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
  state0 = step.create_state(model, tx, jax.random.key(0), l2=0.8)
  plain = step.create_state(model, tx, jax.random.key(0), l2=0.0)
  train_fn = _jitted(model, tx, (0.0, 1.0))
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


def test_a_padded_masked_batch_trains_exactly_as_the_unpadded_one(x64):
  # BatchNorm (statistics over the real examples only) and L2 (divided by the real count).
  cfg, model, tx = _parts(batchnorm=True, l2=0.5)
  images, labels = fake_split(20)
  plain = {"image": images, "label": labels.astype(np.int32)}
  padded = {"image": np.concatenate([images, np.zeros((12, 28, 28), np.uint8)]),
            "label": np.concatenate([labels, np.zeros(12, np.uint8)]).astype(np.int32),
            "mask": np.arange(32) < 20}
  train_fn = _jitted(model, tx)
  results = [train_fn(step.create_state(model, tx, jax.random.key(0), 0.5), b,
                      jax.random.key(1)) for b in (plain, padded)]
  (a, ma), (b, mb) = results
  for x, y in zip(jax.tree.leaves((a.params, a.batch_stats)),
                  jax.tree.leaves((b.params, b.batch_stats))):
    np.testing.assert_allclose(x, y, rtol=F64_RTOL, atol=F64_ATOL)
  np.testing.assert_allclose(ma["loss"], mb["loss"], rtol=F64_RTOL)
  assert float(ma["accuracy"]) == float(mb["accuracy"])


def test_evaluation_scores_a_partial_last_batch(x64):
  ds = synthetic(n_test=103)
  scores = {}
  for batch_size in (103, 10):
    _, model, tx = _parts()
    eval_step = jax.jit(functools.partial(step.eval_step, model=step.Model(model, NORM)))
    scores[batch_size] = driver.evaluate_split(
        eval_step, step.create_state(model, tx, jax.random.key(0)), ds.test, batch_size,
        predictions=True)
  whole, parts = scores[103], scores[10]
  assert len(parts["predictions"]) == 103
  np.testing.assert_array_equal(whole["predictions"], parts["predictions"])
  np.testing.assert_allclose(whole["loss"], parts["loss"], rtol=F64_RTOL)
  assert whole["accuracy"] == parts["accuracy"]


def test_resumed_runs_take_their_hyperparameters_from_the_config():
  cfg, model, tx = _parts(lr=0.1, momentum=0.9)
  saved = step.create_state(model, tx, jax.random.key(0), l2=0.0)
  _, _, new_tx = _parts(lr=0.5, momentum=0.9)
  fresh = step.create_state(model, new_tx, jax.random.key(1), l2=0.3)
  resumed = step.with_hyperparameters(saved, fresh)
  assert float(step.injected(resumed.opt_state).hyperparams["learning_rate"]) == 0.5
  assert float(resumed.l2) == np.float32(0.3)
  assert all(jax.tree.leaves(jax.tree.map(jnp.array_equal, resumed.params, saved.params)))
