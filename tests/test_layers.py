"""Dropout, BatchNorm, PReLU, convolution and pooling invariants."""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import F64_ATOL, F64_RTOL
from mnistjax import layers, models


def dropout(x, rate, train=True, key=0):
  return layers.Dropout(rate).apply({}, x, train, rngs={"dropout": jax.random.key(key)})


def test_dropout_is_the_identity_in_evaluation():
  x = jax.random.normal(jax.random.key(0), (64, 100))
  np.testing.assert_array_equal(dropout(x, 0.5, train=False), x)


@pytest.mark.parametrize("rate", [0.05, 0.25, 0.5, 0.75])
def test_dropout_drops_the_rate_and_rescales_the_rest(rate):
  x = jnp.ones((200, 1000))
  y = np.asarray(dropout(x, rate))
  assert abs((y == 0).mean() - rate) < 0.005  # 200k draws: std of the fraction < 0.0012
  # keep is rounded to a multiple of 2^-16 (layers.keep_mask): a relative 1e-4 at most here.
  np.testing.assert_allclose(y[y != 0], 1 / (1 - rate), rtol=1e-4)


def test_dropped_units_get_zero_gradient():
  x = jax.random.normal(jax.random.key(0), (16, 50)) + 3.0  # no exact zeros in x
  y = dropout(x, 0.5)
  grad = jax.grad(lambda x: dropout(x, 0.5).sum())(x)
  dropped = np.asarray(y == 0)
  assert dropped.any() and (~dropped).any()
  assert np.all(np.asarray(grad)[dropped] == 0)
  np.testing.assert_allclose(np.asarray(grad)[~dropped], 2.0)


def test_rate_one_gives_zeros_and_finite_gradients():
  x = jax.random.normal(jax.random.key(0), (4, 8))
  np.testing.assert_array_equal(dropout(x, 1.0), 0.0)
  grad = jax.grad(lambda x, r: dropout(x, r).sum())(x, 1.0)
  assert np.all(np.isfinite(grad)) and np.all(np.asarray(grad) == 0)
  model = models.build("lenet", dropout=1.0)
  variables = models.init(model, jax.random.key(0))
  logits = model.apply(variables, jnp.ones((2, 28, 28, 1)), train=True,
                     rngs={"dropout": jax.random.key(1)})
  assert np.all(np.isfinite(logits))


def test_keep_mask_is_unbiased_and_exact_for_quarters():
  for keep in (0.0, 0.25, 0.5, 0.75, 1.0):
    mask, scale = layers.keep_mask(jax.random.key(0), keep, (100, 1000))
    assert float(scale) == pytest.approx(1 / keep if keep else 0.0, rel=1e-7)
    assert abs(float(np.mean(mask)) - keep) < 0.005
  mask, scale = layers.keep_mask(jax.random.key(0), 0.95, (7,))
  assert mask.shape == (7,) and abs(float(scale) * 0.95 - 1) < 1e-4


def test_traced_rate_equals_static_rate():
  x = jax.random.normal(jax.random.key(0), (32, 64))
  traced = jax.jit(lambda x, r: dropout(x, r))(x, 0.3)
  np.testing.assert_allclose(traced, dropout(x, 0.3), rtol=1e-6)


# ----------------------------------------------------------------------------
# BatchNorm (cnn3 has it by default)


@pytest.fixture(scope="module")
def cnn3():
  model = models.build("cnn3")
  return model, models.init(model, jax.random.key(0))


def test_batchnorm_running_stats_change_in_training_only(cnn3):
  model, variables = cnn3
  x = jax.random.normal(jax.random.key(1), (8, 28, 28, 1)) * 2 + 1
  _, updated = model.apply(variables, x, train=True, rngs={"dropout": jax.random.key(2)},
                           mutable=["batch_stats"])
  changed = jax.tree.map(lambda a, b: not bool(jnp.allclose(a, b)),
                         variables["batch_stats"], updated["batch_stats"])
  assert all(jax.tree.leaves(changed))
  _, unchanged = model.apply(variables, x, train=False, mutable=["batch_stats"])
  assert all(jax.tree.leaves(jax.tree.map(jnp.array_equal, variables["batch_stats"],
                                          unchanged["batch_stats"])))


def test_batchnorm_momentum_is_pytorchs_point_one():
  bn = layers.batch_norm(train=True)
  x = jax.random.normal(jax.random.key(0), (1000, 3)) * 2 + 5
  variables = bn.init(jax.random.key(1), x)
  _, updated = bn.apply(variables, x, mutable=["batch_stats"])
  np.testing.assert_allclose(updated["batch_stats"]["mean"], 0.1 * x.mean(0), rtol=1e-5)


def test_evaluation_output_of_an_example_does_not_depend_on_the_batch(x64):
  model = models.build("cnn3")
  variables = models.init(model, jax.random.key(0))
  x = jax.random.normal(jax.random.key(1), (8, 28, 28, 1))
  apply = jax.jit(functools.partial(model.apply, train=False))
  alone = apply(variables, x[:1])
  together = apply(variables, x)[:1]
  np.testing.assert_allclose(alone, together, rtol=F64_RTOL, atol=F64_ATOL)
  in_training, _ = model.apply(variables, x, train=True, rngs={"dropout": jax.random.key(0)},
                               mutable=["batch_stats"])
  assert not np.allclose(in_training[:1], alone, atol=1e-3)  # training does depend on it


# ----------------------------------------------------------------------------
# PReLU


@pytest.mark.parametrize("name", ["mlp_small", "lenet"])
def test_prelu_slope_gets_a_gradient(name):
  model = models.build(name, activation="prelu")
  variables = models.init(model, jax.random.key(0))
  x = jax.random.normal(jax.random.key(1), (16, 28, 28, 1))
  labels = jnp.arange(16) % 10

  def loss(params):
    logits = model.apply({"params": params}, x)
    return -jnp.mean(jnp.take_along_axis(logits, labels[:, None], -1))

  grad = jax.grad(loss)(variables["params"])["prelu"]["slope"]
  assert np.isfinite(grad) and abs(float(grad)) > 1e-6


def test_mlp_small_prelu_starts_at_minus_point_one():
  params = models.init(models.build("mlp_small", activation="prelu"), jax.random.key(0))
  assert float(params["params"]["prelu"]["slope"]) == pytest.approx(-0.1)
  y = layers.PReLU(-0.1).apply({"params": {"slope": jnp.array(-0.1)}}, jnp.array([-2.0, 3.0]))
  np.testing.assert_allclose(y, [0.2, 3.0])


# ----------------------------------------------------------------------------
# Convolution and pooling


@pytest.mark.parametrize("padding", [0, 2])
def test_patches_convolution_equals_lax_convolution(x64, padding):
  x = jax.random.normal(jax.random.key(0), (3, 12, 12, 4))
  conv = layers.Conv2d(6, 5, padding, impl="lax")
  variables = conv.init(jax.random.key(1), x)
  fast = layers.Conv2d(6, 5, padding, impl="patches").apply(variables, x)
  assert layers.Conv2d(6, 5, padding).impl is None  # in a model: conv_rule's choice
  assert fast.dtype == jnp.float64
  np.testing.assert_allclose(fast, conv.apply(variables, x), rtol=F64_RTOL, atol=F64_ATOL)
  assert fast.shape == (3, 8 + 2 * padding, 8 + 2 * padding, 6)


@pytest.mark.parametrize("slices", [1, 3, 4])
def test_sliced_patch_convolution_equals_lax_convolution_with_gradients(x64, slices):
  # 12 examples of 8x8 outputs, 5x5x3 patches + 6 outputs each (float64: 8 bytes a value).
  x = jax.random.normal(jax.random.key(0), (12, 12, 12, 3))
  kernel = jax.random.normal(jax.random.key(1), (5, 5, 3, 6)) / 9.0
  per_example = 64 * (75 + 6) * 8
  slice_bytes = slices * per_example
  assert layers.patch_chunk(12, per_example, 0, slice_bytes) == slices

  def loss(impl):
    return lambda x, k: jnp.sum(jnp.sin(layers.conv2d(x, k, impl)))

  np.testing.assert_allclose(layers.conv2d(x, kernel, f"patches/{slices}"),
                             layers.conv2d(x, kernel), rtol=F64_RTOL, atol=F64_ATOL)
  sliced = jax.grad(loss(f"patches/{slices}"), (0, 1))(x, kernel)
  whole = jax.grad(loss("patches"), (0, 1))(x, kernel)
  reference = jax.grad(loss("lax"), (0, 1))(x, kernel)
  for s, w, r in zip(sliced, whole, reference):
    np.testing.assert_allclose(s, r, rtol=F64_RTOL, atol=F64_ATOL)
    np.testing.assert_allclose(w, r, rtol=F64_RTOL, atol=F64_ATOL)


def test_patch_chunk_slices_only_large_convolutions_into_divisors_of_the_batch():
  assert layers.patch_chunk(64, 1000, whole=64_000, chunk=10) == 64  # fits: one piece
  assert layers.patch_chunk(64, 1000, whole=63_999, chunk=20_000) == 16  # 20 -> divisor 16
  assert layers.patch_chunk(100, 1000, whole=0, chunk=30_000) == 25
  assert layers.patch_chunk(7, 1000, whole=0, chunk=3_000) == 1  # prime: one at a time
  assert layers.patch_chunk(8, 1000, whole=0, chunk=10) == 1  # an example over the slice size


def test_conv_rule_trains_with_patches_sliced_past_the_limit_and_evaluates_with_lax(
    monkeypatch):
  x_shape, k_shape = (64, 28, 28, 1), (5, 5, 1, 20)
  per_example = 24 * 24 * (25 + 20) * 4  # float32 patches and output
  monkeypatch.setattr(layers, "PATCH_WHOLE_BYTES", 64 * per_example)
  monkeypatch.setattr(layers, "PATCH_CHUNK_BYTES", 20 * per_example)
  assert layers.conv_rule(x_shape, k_shape, 4, train=False) == "lax"
  assert layers.conv_rule(x_shape, k_shape, 4, train=True) == "patches"  # fits: one piece
  assert layers.conv_rule(x_shape, k_shape, 8, train=True) == "patches/8"  # float64: 10 -> 8


def test_a_model_trains_the_same_with_sliced_patches(x64, monkeypatch):
  """CNN3 (BatchNorm over the whole batch between the sliced convolutions): the loss and
  every gradient as with whole-batch patches."""
  x = jax.random.normal(jax.random.key(0), (4, 28, 28, 1))
  labels = jnp.arange(4) % 10
  for name in ("cnn3",):
    model = models.build(name, dropout=0.0)
    variables = models.init(model, jax.random.key(1))

    def loss(params, model=model, variables=variables):
      logits, _ = model.apply({**variables, "params": params}, x, train=True,
                            mutable=["batch_stats"])
      return -jnp.mean(logits[jnp.arange(4), labels])

    whole = jax.value_and_grad(loss)(variables["params"])
    with monkeypatch.context() as patch:
      patch.setattr(layers, "PATCH_WHOLE_BYTES", 1)
      patch.setattr(layers, "PATCH_CHUNK_BYTES", 1)  # one example at a time (the fixed rule)
      sliced = jax.value_and_grad(loss)(variables["params"])
    np.testing.assert_allclose(sliced[0], whole[0], rtol=F64_RTOL)
    jax.tree.map(lambda s, w: np.testing.assert_allclose(s, w, rtol=F64_RTOL, atol=F64_ATOL),
                 sliced[1], whole[1])


@pytest.mark.parametrize("window,stride,size", [(2, 2, 24), (3, 1, 14), (2, 2, 7), (3, 2, 9)])
def test_max_pool_and_its_gradient_equal_reduce_window(window, stride, size):
  x = jax.random.normal(jax.random.key(0), (2, size, size, 3))  # no ties
  ours = lambda x: layers.max_pool(x, window, stride)  # noqa: E731
  flax = lambda x: nn.max_pool(x, (window, window), strides=(stride, stride))  # noqa: E731
  np.testing.assert_array_equal(ours(x), flax(x))
  weights = jax.random.normal(jax.random.key(1), ours(x).shape)
  np.testing.assert_allclose(jax.grad(lambda x: jnp.sum(ours(x) * weights))(x),
                             jax.grad(lambda x: jnp.sum(flax(x) * weights))(x),
                             rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", layers.MONOTONE_ACTIVATIONS)
def test_pooling_commutes_with_the_activations_models_pool_first(name):
  # ConvNet pools before these activations; that is exact only if they never decrease.
  x = jax.random.normal(jax.random.key(0), (3, 8, 8, 4)) * 3
  act = layers.activation(name)
  np.testing.assert_array_equal(layers.max_pool(act(x), 2), act(layers.max_pool(x, 2)))
  grad_first = jax.grad(lambda v: jnp.sum(layers.max_pool(act(v), 2) ** 2))(x)
  grad_pooled = jax.grad(lambda v: jnp.sum(act(layers.max_pool(v, 2)) ** 2))(x)
  np.testing.assert_allclose(grad_first, grad_pooled, rtol=1e-6, atol=1e-7)
