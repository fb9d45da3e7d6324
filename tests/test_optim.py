"""Each optimiser against PyTorch's update formulas written out in numpy, over several steps."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mnistjax import step
from mnistjax.errors import ConfigError


def torch_sgd(p, grads, lr, momentum, weight_decay, nesterov=False, **_):
  """torch/optim/sgd.py, dampening 0."""
  buf = None
  for g in grads:
    g = g + weight_decay * p
    buf = g.copy() if buf is None else momentum * buf + g
    p = p - lr * (g + momentum * buf if nesterov else buf)
  return p


def torch_rmsprop(p, grads, lr, alpha, eps, weight_decay, **_):
  """torch/optim/rmsprop.py (centered=False, momentum=0); the S2 notebook's RMSprop too."""
  v = np.zeros_like(p)
  for g in grads:
    g = g + weight_decay * p
    v = alpha * v + (1 - alpha) * g * g
    p = p - lr * g / (np.sqrt(v) + eps)
  return p


def torch_adam(p, grads, lr, beta1, beta2, eps, weight_decay, **_):
  """torch/optim/adam.py (amsgrad=False)."""
  m, v = np.zeros_like(p), np.zeros_like(p)
  for t, g in enumerate(grads, 1):
    g = g + weight_decay * p
    m = beta1 * m + (1 - beta1) * g
    v = beta2 * v + (1 - beta2) * g * g
    m_hat, v_hat = m / (1 - beta1**t), v / (1 - beta2**t)
    p = p - lr * m_hat / (np.sqrt(v_hat) + eps)
  return p


def torch_adamw(p, grads, lr, beta1, beta2, eps, weight_decay, **_):
  """torch/optim/adamw.py (amsgrad=False): decoupled decay, p *= 1 - lr * wd first."""
  m, v = np.zeros_like(p), np.zeros_like(p)
  for t, g in enumerate(grads, 1):
    p = p * (1 - lr * weight_decay)
    m = beta1 * m + (1 - beta1) * g
    v = beta2 * v + (1 - beta2) * g * g
    m_hat, v_hat = m / (1 - beta1**t), v / (1 - beta2**t)
    p = p - lr * m_hat / (np.sqrt(v_hat) + eps)
  return p


REFERENCE = {"sgd": torch_sgd, "rmsprop": torch_rmsprop, "adam": torch_adam,
             "adamw": torch_adamw}
CASES = [
    ("sgd", dict(learning_rate=0.1, momentum=0.0, weight_decay=0.0, nesterov=False)),
    ("sgd", dict(learning_rate=0.01, momentum=0.5, weight_decay=0.0, nesterov=False)),
    ("sgd", dict(learning_rate=0.001, momentum=0.9, weight_decay=0.04, nesterov=False)),
    ("sgd", dict(learning_rate=0.05, momentum=0.9, weight_decay=0.01, nesterov=True)),
    ("rmsprop", dict(learning_rate=1e-3, alpha=0.9, eps=1e-8, weight_decay=0.0)),
    ("rmsprop", dict(learning_rate=1e-2, alpha=0.99, eps=1e-3, weight_decay=0.1)),
    ("adam", dict(learning_rate=0.01, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0)),
    ("adam", dict(learning_rate=0.001, beta1=0.8, beta2=0.99, eps=1e-4, weight_decay=0.05)),
    ("adamw", dict(learning_rate=0.01, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.01)),
    ("adamw", dict(learning_rate=0.001, beta1=0.8, beta2=0.99, eps=1e-4, weight_decay=0.5)),
]


def test_every_optimizer_has_a_reference():
  assert set(REFERENCE) == set(step.OPTIMIZERS)


@pytest.mark.parametrize("name,hparams", CASES)
def test_matches_pytorch_over_six_steps(name, hparams):
  rng = np.random.default_rng(0)
  p0 = rng.normal(size=7)
  grads = [rng.normal(size=7) * 10 ** rng.uniform(-3, 1) for _ in range(6)]
  tx = step.make(name, **hparams)
  p = jnp.asarray(p0, jnp.float32)
  state = tx.init(p)
  for g in grads:
    updates, state = tx.update(jnp.asarray(g, jnp.float32), state, p)
    p = optax.apply_updates(p, updates)
  expected = REFERENCE[name](p0, grads, lr=hparams["learning_rate"],
                             **{k: v for k, v in hparams.items() if k != "learning_rate"})
  np.testing.assert_allclose(p, expected, rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize("name,hparams", [CASES[2], CASES[5], CASES[7]])
def test_without_zero_grad_the_optimizer_sees_the_running_sum(name, hparams):
  """PyTorch without zero_grad(): .grad accumulates, the optimiser steps on the sum (the
  S2 notebook); weight decay is added to that sum, not summed itself."""
  rng = np.random.default_rng(1)
  p0 = rng.normal(size=5)
  grads = [rng.normal(size=5) for _ in range(5)]
  tx = step.make(name, zero_grad=False, **hparams)
  p = jnp.asarray(p0, jnp.float32)
  state = tx.init(p)
  assert step.injected(state).hyperparams["learning_rate"] == hparams["learning_rate"]
  for g in grads:
    updates, state = tx.update(jnp.asarray(g, jnp.float32), state, p)
    p = optax.apply_updates(p, updates)
  expected = REFERENCE[name](p0, list(np.cumsum(grads, axis=0)), lr=hparams["learning_rate"],
                             **{k: v for k, v in hparams.items() if k != "learning_rate"})
  np.testing.assert_allclose(p, expected, rtol=2e-5, atol=2e-6)


def test_hyperparameters_are_state_and_can_change_without_recompiling():
  tx = step.make("sgd", learning_rate=0.1, momentum=0.0, weight_decay=0.0, nesterov=False)
  p = jnp.ones(3)
  state = tx.init(p)
  update = jax.jit(tx.update)
  u1, _ = update(jnp.ones(3), state, p)
  state.hyperparams["learning_rate"] = jnp.full_like(state.hyperparams["learning_rate"], 0.5)
  u2, _ = update(jnp.ones(3), state, p)
  np.testing.assert_allclose(u1, -0.1)
  np.testing.assert_allclose(u2, -0.5)
  assert update._cache_size() == 1  # pylint: disable=protected-access


def test_l2_penalty_counts_kernels_only():
  params = {"fc1": {"kernel": jnp.full((2, 3), 2.0), "bias": jnp.full(3, 5.0)}}
  np.testing.assert_allclose(step.l2_penalty(params, 0.8, 4), 0.8 / 8 * 24.0)


def test_unknown_optimizer_lists_the_choices():
  with pytest.raises(ConfigError, match="choose one of: sgd, rmsprop, adam"):
    step.make("lamb", learning_rate=0.1)


def test_schedules_warm_up_linearly_then_hold_or_decay_to_zero():
  total, warmup = 100, 10
  for name in step.SCHEDULES:
    f = step.lr_multiplier(name, total, warmup)
    np.testing.assert_allclose([f(0), f(5), f(10)], [0.0, 0.5, 1.0], atol=1e-6)
    np.testing.assert_allclose(f(total), 1.0 if name == "constant" else 0.0, atol=1e-6)
    values = np.array([f(t) for t in range(warmup, total + 1)])
    assert np.all(np.diff(values) <= 1e-7)  # never rises after the warm-up
  np.testing.assert_allclose(step.lr_multiplier("cosine", 100)(50), 0.5, atol=1e-6)
  with pytest.raises(ConfigError, match="choose one of: constant, linear, cosine"):
    step.lr_multiplier("step", 10)


def test_a_schedule_scales_the_sgd_step_as_a_pytorch_scheduler_does():
  # PyTorch: buf = m * buf + g; p -= lr_t * buf, with lr_t = lr * factor(t).
  f = step.lr_multiplier("linear", 4)
  tx = step.make("sgd", schedule=f, learning_rate=0.1, momentum=0.5, weight_decay=0.0,
                  nesterov=False)
  p, state, buf, expected = jnp.zeros(2), None, 0.0, 0.0
  state = tx.init(p)
  for t in range(4):
    updates, state = tx.update(jnp.ones(2), state, p)
    p = optax.apply_updates(p, updates)
    buf = 0.5 * buf + 1.0
    expected -= 0.1 * float(f(t)) * buf
  np.testing.assert_allclose(p, expected, rtol=1e-6)
  assert step.injected(state).hyperparams["learning_rate"] == pytest.approx(0.1)
