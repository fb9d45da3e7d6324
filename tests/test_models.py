"""Shape, normalisation and parameter-count invariants of every registered model."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mnistjax import layers, models
from mnistjax.errors import ConfigError

PARAM_COUNTS = {"lenet": 431_080}  # PyTorch's counts for the same layers


def test_every_model_has_a_known_parameter_count():
  assert set(PARAM_COUNTS) == set(models.MODELS)


@pytest.mark.parametrize("name", sorted(models.MODELS))
def test_parameter_count(name):
  variables = models.init(models.build(name), jax.random.key(0))
  assert models.count_params(variables["params"]) == PARAM_COUNTS[name]


@pytest.mark.parametrize("name", sorted(models.MODELS))
@pytest.mark.parametrize("batch", [1, 7, 64])
@pytest.mark.parametrize("train", [False, True])
def test_output_is_log_probabilities(name, batch, train):
  model = models.build(name)
  variables = models.init(model, jax.random.key(0))
  x = jax.random.normal(jax.random.key(1), (batch, 28, 28, 1))
  logp, _ = model.apply(variables, x, train=train, rngs={"dropout": jax.random.key(2)},
                        mutable=["batch_stats"])
  assert logp.shape == (batch, 10)
  np.testing.assert_allclose(jnp.exp(logp).sum(-1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("activation", ["relu", "sigmoid", "tanh"])
def test_lenet_activations_change_the_function(activation):
  x = jax.random.normal(jax.random.key(1), (2, 28, 28, 1))
  outputs = {}
  for act in ("relu", activation):
    model = models.build("lenet", activation=act)
    outputs[act] = model.apply(models.init(model, jax.random.key(0)), x)
  assert (activation == "relu") == bool(jnp.allclose(outputs["relu"], outputs[activation]))


def test_same_key_same_parameters_other_key_other_parameters():
  model = models.build("lenet")
  a, b, c = (models.init(model, jax.random.key(k)) for k in (0, 0, 1))
  assert all(jax.tree.leaves(jax.tree.map(jnp.array_equal, a, b)))
  assert not any(jax.tree.leaves(jax.tree.map(jnp.array_equal, a, c)))


def test_torch_default_init_bounds():
  """Weights and biases U(-1/sqrt(fan_in), 1/sqrt(fan_in)), as PyTorch."""
  params = models.init(models.build("lenet"), jax.random.key(0))["params"]
  for name, fan_in in [("conv1", 25), ("conv2", 500), ("fc1", 800), ("fc2", 500)]:
    bound = 1 / np.sqrt(fan_in)
    for kind in ("kernel", "bias"):
      w = np.asarray(params[name][kind])
      assert np.abs(w).max() <= bound
      assert np.abs(w).max() > 0.9 * bound or w.size < 30  # fills the interval
  w = np.asarray(params["fc1"]["kernel"])  # 400,000 draws: U(-b, b) has std b/sqrt(3)
  np.testing.assert_allclose(w.std(), 1 / np.sqrt(800) / np.sqrt(3), rtol=0.01)


def test_patches_convolution_equals_lax_convolution():
  x = jax.random.normal(jax.random.key(0), (3, 12, 12, 4))
  k = jax.random.normal(jax.random.key(1), (5, 5, 4, 6))
  np.testing.assert_allclose(layers.conv2d(x, k, "patches"), layers.conv2d(x, k, "lax"),
                             rtol=1e-5, atol=1e-5)


def test_unknown_model_and_setting_list_the_choices():
  with pytest.raises(ConfigError, match="unknown model 'resnet'; choose one of: lenet"):
    models.build("resnet")
  with pytest.raises(ConfigError, match="has no setting width; its settings are: activation"):
    models.build("lenet", width=3)


def test_summary_lists_every_model():
  text = models.summary()
  for name, count in PARAM_COUNTS.items():
    assert f"{count:,}" in next(line for line in text.splitlines() if line.startswith(name))
