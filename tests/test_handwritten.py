"""The hand-written S4 MLP: its backpropagation equals jax.grad, its forward the Flax model."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mnistjax import handwritten as hw
from mnistjax import models


@pytest.fixture(scope="module")
def problem():
  params = hw.init(jax.random.key(0))
  x = jax.random.normal(jax.random.key(1), (32, 784))
  labels = jax.random.randint(jax.random.key(2), (32,), 0, 10)
  return params, x, labels


@pytest.mark.parametrize("activation", ["sigmoid", "tanh", "relu"])
@pytest.mark.parametrize("l2", [0.0, 0.8])
def test_hand_written_gradients_equal_jax_grad(problem, activation, l2):
  params, x, labels = problem
  value, grads = hw.loss_and_grad(params, x, labels, activation, l2)
  auto_value, auto_grads = jax.value_and_grad(hw.loss)(params, x, labels, activation, l2)
  np.testing.assert_allclose(value, auto_value, rtol=1e-6)
  for mine, auto in zip(jax.tree.leaves(grads), jax.tree.leaves(auto_grads)):
    assert mine.shape == auto.shape
    np.testing.assert_allclose(mine, auto, atol=1e-5, rtol=1e-5)


def test_l2_term_is_lambda_over_2m_sum_of_squared_weights(problem):
  params, x, labels = problem
  penalty = hw.loss(params, x, labels, "relu", 0.8) - hw.loss(params, x, labels, "relu", 0.0)
  expected = 0.8 / (2 * 32) * sum(float(jnp.sum(w ** 2)) for w, _ in params)
  np.testing.assert_allclose(penalty, expected, rtol=1e-5)


@pytest.mark.parametrize("activation", ["sigmoid", "tanh", "relu"])
def test_forward_equals_the_flax_mlp_deep(problem, activation):
  params, x, _ = problem
  logits, _ = hw.forward(params, x, activation)
  flax_logits = models.build("mlp_deep", activation=activation).apply(
      hw.to_flax(params), x.reshape(-1, 28, 28, 1))
  np.testing.assert_allclose(flax_logits, logits, atol=1e-5)


def test_sgd_with_hand_written_gradients_learns(problem):
  params, x, labels = problem
  first = float(hw.loss(params, x, labels))
  for _ in range(50):
    params, value = hw.sgd_step(params, x, labels, 0.1)
  assert float(value) < 0.2 * first
