"""Shape, probability, parameter-count, initialisation and gradient invariants of every model."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from conftest import enable_x64
from mnistjax import layers, models
from mnistjax.errors import ConfigError

# PyTorch's parameter counts for the same layers (BatchNorm running statistics not counted).
PARAM_COUNTS = {"lenet": 431_080, "cnn": 108_874, "cnn2": 857_738, "cnn3": 454_250,
                "mlp_small": 42_200, "mlp_deep": 543_860}
ALL = sorted(models.MODELS)


def test_every_registered_model_has_a_known_parameter_count():
  assert set(PARAM_COUNTS) == set(models.MODELS)


@pytest.mark.parametrize("name", ALL)
def test_parameter_count(name):
  variables = models.init(models.build(name), jax.random.key(0))
  assert models.count_params(variables["params"]) == PARAM_COUNTS[name]
  assert ("batch_stats" in variables) == (name == "cnn3")


@pytest.mark.parametrize("name", ALL)
def test_prelu_adds_one_shared_slope(name):
  model = models.build(name, activation="prelu")
  params = models.init(model, jax.random.key(0))["params"]
  assert models.count_params(params) == PARAM_COUNTS[name] + 1
  assert params["prelu"]["slope"].shape == ()


def test_batchnorm_state_of_cnn3_and_lenet():
  cnn3 = models.init(models.build("cnn3"), jax.random.key(0))["batch_stats"]
  assert models.count_params(cnn3) == 2 * (16 + 32 + 64 + 128)
  lenet = models.init(models.build("lenet", batchnorm=True), jax.random.key(0))
  assert models.count_params(lenet["params"]) == PARAM_COUNTS["lenet"] + 2 * (20 + 50 + 500)


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("batch", [1, 7, 64])
@pytest.mark.parametrize("train", [False, True])
def test_output_is_one_logit_per_class(name, batch, train):
  model = models.build(name)
  variables = models.init(model, jax.random.key(0))
  x = jax.random.normal(jax.random.key(1), (batch, 28, 28, 1))
  logits, _ = model.apply(variables, x, train=train, rngs={"dropout": jax.random.key(2)},
                          mutable=["batch_stats"])
  assert logits.shape == (batch, 10) and logits.dtype == jnp.float32
  assert bool(jnp.all(jnp.isfinite(logits)))
  # Logits, as flax's own modules give (the step takes log_softmax): not log-probabilities.
  assert not np.allclose(jnp.exp(logits).sum(-1), 1.0, rtol=1e-3)


@pytest.mark.parametrize("name", ALL)
def test_same_key_same_parameters_other_key_other_parameters(name):
  model = models.build(name)
  a, b, c = (models.init(model, jax.random.key(k))["params"] for k in (0, 0, 1))
  assert all(jax.tree.leaves(jax.tree.map(jnp.array_equal, a, b)))
  kernels = [(u, v) for (path, u), v in zip(jax.tree_util.tree_leaves_with_path(a),
                                             jax.tree.leaves(c)) if "kernel" in str(path)]
  assert kernels and not any(bool(jnp.array_equal(u, v)) for u, v in kernels)


@pytest.mark.parametrize("name", ["lenet", "cnn", "cnn3"])  # uniform, normal, BatchNorm
def test_compiled_init_gives_flax_init(name):
  # models.init is one jitted program; a notebook's model.init, run op by op, gives the same
  # variables (BatchNorm state included): bit for bit for uniform initialisers, to float32
  # rounding for normal ones (XLA fuses their inverse error function its own way).
  model = models.build(name)
  key = jax.random.key(3)
  eager = model.init({"params": key, "dropout": key}, jnp.zeros((1, 28, 28, 1)), train=False)
  compiled = models.init(model, key)
  assert jax.tree.structure(eager) == jax.tree.structure(compiled)
  for a, b in zip(jax.tree.leaves(eager), jax.tree.leaves(compiled)):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
  if name == "lenet":
    assert all(jax.tree.leaves(jax.tree.map(jnp.array_equal, eager, compiled)))


def test_init_of_a_model_with_a_list_setting_runs_op_by_op():
  # A list cannot be a static argument of a compiled program; init must still work.
  listed = models.init(models.build("lenet", features=[20, 50]), jax.random.key(3))
  compiled = models.init(models.build("lenet"), jax.random.key(3))
  assert all(jax.tree.leaves(jax.tree.map(jnp.array_equal, listed, compiled)))


@pytest.mark.parametrize("name", ALL)
def test_gradients_match_finite_differences_in_evaluation_mode(name):
  # tanh keeps the function smooth: with ReLU, among ~10^5 units some pre-activation crosses
  # zero within any finite-difference step, and the two sides of its kink disagree.
  model = models.build(name, activation="tanh")
  variables32 = models.init(model, jax.random.key(0))
  with enable_x64():
    variables = jax.tree.map(lambda a: a.astype(jnp.float64), variables32)
    if "batch_stats" in variables:  # non-trivial running statistics
      variables["batch_stats"] = jax.tree.map(
          lambda a: a + 0.1 * jax.random.uniform(jax.random.key(3), a.shape, a.dtype),
          variables["batch_stats"])
    x = jax.random.normal(jax.random.key(1), (2, 28, 28, 1), jnp.float64)

    def f(params, x):
      return model.apply({**variables, "params": params}, x, train=False)

    # A small step: the random direction moves all parameters at once.
    check_grads(f, (variables["params"], x), order=1, modes=["rev"], eps=1e-7, atol=1e-5,
                rtol=1e-5)


# ----------------------------------------------------------------------------
# Initialisation


def _std_or_bound(scheme: str, fan_in: int, fan_out: int) -> tuple[str, float]:
  return {"torch_default": ("bound", 1 / np.sqrt(fan_in)),
          "xavier_normal": ("std", np.sqrt(2 / (fan_in + fan_out))),
          "xavier_uniform": ("bound", np.sqrt(6 / (fan_in + fan_out))),
          "kaiming_normal": ("std", np.sqrt(2 / fan_in)),
          "kaiming_uniform": ("bound", np.sqrt(6 / fan_in)),
          "lecun_normal": ("std", np.sqrt(1 / fan_in))}[scheme]


def test_every_scheme_has_a_theory():
  for scheme in layers.KERNEL_INITS:
    _std_or_bound(scheme, 1, 1)


@pytest.mark.parametrize("scheme", sorted(layers.KERNEL_INITS))
@pytest.mark.parametrize("shape", [(800, 1200), (5, 5, 40, 1000)])
def test_scheme_matches_theory_on_a_large_layer(scheme, shape):
  """1M draws: the std is estimated to ~0.1%, so 1% tolerance; a uniform fills its interval."""
  w = np.asarray(layers.kernel_init(scheme)(jax.random.key(0), shape))
  receptive = int(np.prod(shape[:-2]))
  fan_in, fan_out = receptive * shape[-2], receptive * shape[-1]
  kind, value = _std_or_bound(scheme, fan_in, fan_out)
  if kind == "bound":
    assert np.abs(w).max() <= value and np.abs(w).max() > 0.999 * value
    np.testing.assert_allclose(w.std(), value / np.sqrt(3), rtol=0.01)
  else:
    np.testing.assert_allclose(w.std(), value, rtol=0.01)
    assert np.abs(w).max() > 4 * value  # untruncated normal, as PyTorch
  assert abs(w.mean()) < 0.01 * w.std()


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("scheme", sorted(layers.KERNEL_INITS))
def test_every_model_takes_every_scheme(name, scheme):
  model = models.build(name, init_scheme=scheme)
  shapes = jax.eval_shape(lambda: models.init(model, jax.random.key(0)))
  assert models.count_params(shapes["params"]) == PARAM_COUNTS[name]
  assert model.init_scheme == scheme


def test_lenet_biases_follow_pytorch_default():
  params = models.init(models.build("lenet"), jax.random.key(0))["params"]
  for name, fan_in in [("conv1", 25), ("conv2", 500), ("fc1", 800), ("fc2", 500)]:
    bias = np.asarray(params[name]["bias"])
    assert np.abs(bias).max() <= 1 / np.sqrt(fan_in)
    assert bias.std() > 0


def test_cnn_kaiming_normal_with_linear_gain_on_the_output():
  params = models.init(models.build("cnn2"), jax.random.key(0))["params"]
  np.testing.assert_allclose(params["fc1"]["kernel"].std(), np.sqrt(2 / 3136), rtol=0.01)
  np.testing.assert_allclose(params["fc2"]["kernel"].std(), np.sqrt(1 / 256), rtol=0.05)


def test_mlps_biases_and_init():
  small = models.init(models.build("mlp_small"), jax.random.key(0))["params"]
  assert all(set(layer) == {"kernel"} for layer in small.values())
  np.testing.assert_allclose(small["fc1"]["kernel"].std(), np.sqrt(2 / (784 + 50)), rtol=0.02)
  deep = models.init(models.build("mlp_deep"), jax.random.key(0))["params"]
  assert all(float(jnp.abs(layer["bias"]).max()) == 0 for layer in deep.values())
  bound = np.sqrt(6 / (784 + 500))
  assert float(jnp.abs(deep["fc1"]["kernel"]).max()) <= bound


# ----------------------------------------------------------------------------
# Registry


def test_unknown_model_and_setting_list_the_choices():
  with pytest.raises(ConfigError, match="unknown model 'resnet'; choose one of: lenet, cnn"):
    models.build("resnet")
  with pytest.raises(ConfigError, match="has no setting width; its settings are: features"):
    models.build("lenet", width=3)
  with pytest.raises(ConfigError, match="unknown activation 'swish'"):
    models.init(models.build("mlp_deep", activation="swish"), jax.random.key(0))


def test_summary_lists_every_model_with_its_count():
  lines = models.summary().splitlines()
  for name, count in PARAM_COUNTS.items():
    assert f"{count:,}" in next(line for line in lines if line.startswith(name + " "))
