"""Building blocks shared by every model: initialisers, convolution, pooling, dropout, activations.

A convolution has several implementations of the same maths (CONV_IMPLS); a fixed
rule picks one per shape (conv_rule): on CPU, training convolves as patches @ kernel
(one matmul whose gradient XLA:CPU also runs at matmul speed, where `lax.conv` trains
slower, and several times slower again under `vmap` or `lax.scan`, jax-ml/jax#12868),
sliced where the patch tensor would leave the cache; evaluation, and GPU/TPU, use
`lax.conv`. Parameters are the same whatever runs (kernel H x W x I x O, bias O).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from mnistjax import machine
from mnistjax.errors import ConfigError

Initializer = Callable[..., jax.Array]
vs = jax.nn.initializers.variance_scaling

# Kernel initialisers by name. "normal" is the untruncated normal, as in PyTorch.
KERNEL_INITS: dict[str, Initializer] = {
    # PyTorch's kaiming_uniform(a=sqrt(5)): U(-b, b), b = 1/sqrt(fan_in).
    "torch_default": vs(1.0 / 3.0, "fan_in", "uniform"),
    "xavier_normal": vs(1.0, "fan_avg", "normal"),
    "xavier_uniform": vs(1.0, "fan_avg", "uniform"),
    "kaiming_normal": vs(2.0, "fan_in", "normal"),
    "kaiming_uniform": vs(2.0, "fan_in", "uniform"),
    "lecun_normal": vs(1.0, "fan_in", "normal"),
}


def kernel_init(name: str, linear: bool = False) -> Initializer:
  """The kernel initialiser registered under name.

  linear=True gives the kaiming schemes the gain of a linear layer (1, not sqrt 2), as
  PyTorch's kaiming_normal_(nonlinearity="linear") for a network's output layer.
  """
  if name not in KERNEL_INITS:
    raise ConfigError(f"unknown init {name!r}; choose one of: {', '.join(KERNEL_INITS)}")
  if linear and name.startswith("kaiming_"):
    return vs(1.0, "fan_in", name.removeprefix("kaiming_"))
  return KERNEL_INITS[name]


def torch_bias_init(fan_in: int) -> Initializer:
  """PyTorch's default bias: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
  bound = 1.0 / math.sqrt(fan_in)

  def init(key, shape, dtype=None):  # JAX's default float, as jax.nn.initializers
    return jax.random.uniform(key, shape, dtype or jnp.result_type(float), -bound, bound)

  return init


def bias_init(name: str, fan_in: int) -> Initializer:
  """"torch" (PyTorch's default, depends on fan_in) or "zeros"."""
  return torch_bias_init(fan_in) if name == "torch" else jax.nn.initializers.zeros


# ----------------------------------------------------------------------------
# Linear layers


# A convolution runs one of these implementations, all the same maths (tests pin each against
# lax.conv, values and gradients): "lax" (lax.conv), "patches" (patches @ kernel, one matmul),
# "patches/N" (the same, N examples of the batch at a time: no patch tensor of the whole
# batch is built). conv_rule picks one per shape.
CONV_IMPLS = ("lax", "patches", "patches/N")


def _patch_limits() -> tuple[int, int]:
  """conv_rule's (whole, chunk) byte limits: from the CPU's last-level cache (a 32 MB L3
  gives 10 MB and 4 MB, the limits measured on a Zen 4: README, Performance), unless
  PATCH_WHOLE_BYTES / PATCH_CHUNK_BYTES set them."""
  llc = machine.last_level_cache_bytes()
  return (PATCH_WHOLE_BYTES or llc * 5 // 16, PATCH_CHUNK_BYTES or llc // 8)


# Set to a byte count to override the cache-derived limits of _patch_limits (0: derive).
PATCH_WHOLE_BYTES = 0
PATCH_CHUNK_BYTES = 0


def patch_chunk(batch: int, bytes_per_example: int, whole: int | None = None,
                chunk: int | None = None) -> int:
  """Examples per slice of the batch for a convolution of bytes_per_example each (patches and
  output): the whole batch when it fits in `whole` bytes, else the largest divisor of batch
  whose slice fits in `chunk` bytes (at least 1). A step whose tensors leave the CPU's cache
  slows down several-fold; slicing a convolution that fits only adds work."""
  limits = _patch_limits()
  whole = limits[0] if whole is None else whole
  chunk = limits[1] if chunk is None else chunk
  if batch * bytes_per_example <= whole:
    return batch
  n = max(1, min(batch, chunk // bytes_per_example))
  while batch % n:
    n -= 1
  return n


def _patch_bytes(x_shape, kernel_shape, itemsize: int) -> int:
  """Bytes per example of a patch convolution's patches and output."""
  kh, kw, ci, co = kernel_shape
  return (x_shape[1] - kh + 1) * (x_shape[2] - kw + 1) * (kh * kw * ci + co) * itemsize


def conv_rule(x_shape, kernel_shape, itemsize: int, train: bool) -> str:
  """The implementation a convolution runs: on CPU, training uses patches, sliced where they
  would leave the cache (patch_chunk); evaluation, and GPU/TPU, use lax.conv."""
  if not train or jax.default_backend() != "cpu":
    return "lax"
  n = patch_chunk(x_shape[0], _patch_bytes(x_shape, kernel_shape, itemsize))
  return "patches" if n == x_shape[0] else f"patches/{n}"


def _patches(x_BxHxWxI: jax.Array, kh: int, kw: int) -> jax.Array:
  """B x h x w x (kh kw I) patches of a VALID convolution, features ordered (i, j, c) as the
  kernel's row-major reshape."""
  h, w = x_BxHxWxI.shape[1] - kh + 1, x_BxHxWxI.shape[2] - kw + 1
  return jnp.concatenate(
      [x_BxHxWxI[:, i:i + h, j:j + w, :] for i in range(kh) for j in range(kw)], axis=-1)


def _patch_matmul(x_BxHxWxI: jax.Array, kernel_KxKxIxO: jax.Array) -> jax.Array:
  kh, kw, _, co = kernel_KxKxIxO.shape
  patches = _patches(x_BxHxWxI, kh, kw)
  b, h, w, f = patches.shape
  # A 2-D matmul: its kernel gradient is then one plain GEMM (patches^T @ dy), where XLA:CPU
  # runs the 4-D form's contraction over (b, h, w) as a slower general dot.
  return (patches.reshape(b * h * w, f) @ kernel_KxKxIxO.reshape(f, co)).reshape(b, h, w, co)


def _slices(a: jax.Array, n: int) -> jax.Array:
  """B x ... -> (B / n) x n x ...: consecutive slices of n examples."""
  return a.reshape(a.shape[0] // n, n, *a.shape[1:])


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _sliced_patch_conv(x_BxHxWxI: jax.Array, kernel_KxKxIxO: jax.Array, n: int) -> jax.Array:
  """The patch convolution n examples at a time, forward and backward: no patch tensor of the
  whole batch is ever built or kept (the backward rebuilds each slice's patches from x)."""
  y = lax.map(lambda x: _patch_matmul(x, kernel_KxKxIxO), _slices(x_BxHxWxI, n))
  return y.reshape(x_BxHxWxI.shape[0], *y.shape[2:])


def _sliced_patch_conv_fwd(x, kernel, n):
  return _sliced_patch_conv(x, kernel, n), (x, kernel)


def _sliced_patch_conv_bwd(n, residuals, dy_BxhxwxO):
  x, kernel = residuals
  kh, kw, ci, co = kernel.shape
  kernel_FxO = kernel.reshape(kh * kw * ci, co)

  def one_slice(dkernel_FxO, x_dy):
    patches, patches_vjp = jax.vjp(lambda a: _patches(a, kh, kw), x_dy[0])
    b, h, w, f = patches.shape
    dy_NxO = x_dy[1].reshape(b * h * w, co)
    dkernel_FxO = dkernel_FxO + patches.reshape(b * h * w, f).T @ dy_NxO
    dx, = patches_vjp((dy_NxO @ kernel_FxO.T).reshape(b, h, w, f))
    return dkernel_FxO, dx

  dkernel, dx = lax.scan(one_slice, jnp.zeros_like(kernel_FxO),
                         (_slices(x, n), _slices(dy_BxhxwxO, n)))
  return dx.reshape(x.shape), dkernel.reshape(kernel.shape)


_sliced_patch_conv.defvjp(_sliced_patch_conv_fwd, _sliced_patch_conv_bwd)


def conv2d(x_BxHxWxI: jax.Array, kernel_KxKxIxO: jax.Array, impl: str = "lax") -> jax.Array:
  """VALID, stride-1 convolution by impl (see CONV_IMPLS): "patches/N" slices the batch N
  examples at a time (N divides it)."""
  if impl == "lax":
    return lax.conv_general_dilated(x_BxHxWxI, kernel_KxKxIxO, (1, 1), "VALID",
                                    dimension_numbers=("NHWC", "HWIO", "NHWC"))
  kind, _, n = impl.partition("/")
  if kind != "patches" or (n and (not n.isdigit() or int(n) == 0
                                  or x_BxHxWxI.shape[0] % int(n))):
    raise ValueError(f"convolution impl {impl!r}: one of {', '.join(CONV_IMPLS)} (N a "
                     f"divisor of the batch, {x_BxHxWxI.shape[0]})")
  if not n or int(n) == x_BxHxWxI.shape[0]:
    return _patch_matmul(x_BxHxWxI, kernel_KxKxIxO)
  return _sliced_patch_conv(x_BxHxWxI, kernel_KxKxIxO, int(n))


class Conv2d(nn.Module):
  """Square-kernel, stride-1 2-D convolution with symmetric zero padding (NHWC)."""
  features: int
  kernel_size: int
  padding: int = 0
  kernel_init: Initializer = KERNEL_INITS["torch_default"]
  bias: str = "torch"  # "torch", "zeros" or "none"
  impl: str | None = None  # see CONV_IMPLS; None: conv_rule's choice for the shape

  @nn.compact
  def __call__(self, x_BxHxWxI: jax.Array, train: bool = False) -> jax.Array:
    k, ci = self.kernel_size, x_BxHxWxI.shape[-1]
    kernel = self.param("kernel", self.kernel_init, (k, k, ci, self.features))
    if self.padding:
      p = self.padding
      x_BxHxWxI = jnp.pad(x_BxHxWxI, ((0, 0), (p, p), (p, p), (0, 0)))
    impl = self.impl or conv_rule(x_BxHxWxI.shape, kernel.shape, x_BxHxWxI.dtype.itemsize, train)
    y = conv2d(x_BxHxWxI, kernel, impl)
    if self.bias != "none":
      y = y + self.param("bias", bias_init(self.bias, k * k * ci), (self.features,))
    return y


class Dense(nn.Module):
  """Fully connected layer with a named bias scheme ("torch", "zeros" or "none")."""
  features: int
  kernel_init: Initializer = KERNEL_INITS["torch_default"]
  bias: str = "torch"

  @nn.compact
  def __call__(self, x_BxI: jax.Array) -> jax.Array:
    fan_in = x_BxI.shape[-1]
    y = x_BxI @ self.param("kernel", self.kernel_init, (fan_in, self.features))
    if self.bias != "none":
      y = y + self.param("bias", bias_init(self.bias, fan_in), (self.features,))
    return y


# ----------------------------------------------------------------------------
# Pooling, dropout, normalisation, activations


def max_pool(x_BxHxWxC: jax.Array, window: int, stride: int | None = None) -> jax.Array:
  """Max pooling, VALID. Windows that tile the input: one reshape and a max; else separable,
  the maximum along rows, then along columns (2 (window - 1) maxima, not window^2 - 1).
  Values and gradients equal lax.reduce_window's, which XLA:CPU runs slower in training."""
  stride = stride or window
  b, h, w, c = x_BxHxWxC.shape
  if stride == window and h % window == 0 and w % window == 0:
    return x_BxHxWxC.reshape(b, h // window, window, w // window, window, c).max(axis=(2, 4))
  ho, wo = (h - window) // stride + 1, (w - window) // stride + 1
  rows = functools.reduce(jnp.maximum, [x_BxHxWxC[:, i:i + stride * (ho - 1) + 1:stride]
                                        for i in range(window)])
  return functools.reduce(jnp.maximum, [rows[:, :, j:j + stride * (wo - 1) + 1:stride]
                                        for j in range(window)])


def keep_mask(key: jax.Array, keep: jax.Array, shape: tuple[int, ...]) -> tuple[jax.Array, jax.Array]:
  """A Bernoulli(keep) mask and the scale 1/keep that makes the kept units unbiased.

  The keep probability is rounded to a multiple of 2^-16 (the scale uses the rounded
  value, so E[mask * scale] = 1 exactly; 0.25, 0.5, 0.75, 0 and 1 are exact). Each unit
  draws 16 bits, two per threefry word, generated flat: half the random bits of
  `jax.random.bernoulli(key, keep, shape)`, whose generation dominates a small step with
  dropout on XLA:CPU (benchmarks/dropout.py measures the two side by side).
  """
  threshold = jnp.round(jnp.asarray(keep, jnp.float32) * 65536.0)
  n = math.prod(shape)
  words = jax.random.bits(key, ((n + 1) // 2,), jnp.uint32)
  draws = lax.bitcast_convert_type(words, jnp.uint16).reshape(-1)[:n].reshape(shape)
  mask = draws.astype(jnp.float32) < threshold  # exact: integers below 2^24
  scale = jnp.where(threshold > 0, 65536.0 / jnp.maximum(threshold, 1.0), 0.0)
  return mask, scale


class Dropout(nn.Module):
  """Inverted dropout with drop probability `rate`, which may be a traced value (for sweeps).

  rate 1.0 gives exact zeros and zero gradients, never NaN.
  """
  rate: float | jax.Array

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    if not train or (isinstance(self.rate, (int, float)) and self.rate == 0):
      return x
    mask, scale = keep_mask(self.make_rng("dropout"), 1.0 - jnp.asarray(self.rate, jnp.float32),
                            x.shape)
    return jnp.where(mask, x * scale.astype(x.dtype), 0.0)


def batch_norm(train: bool, name: str | None = None) -> nn.BatchNorm:
  """BatchNorm as PyTorch's default: momentum 0.1 in PyTorch's terms (0.9 in Flax's), eps 1e-5.

  Flax keeps the biased running variance where PyTorch keeps the unbiased one
  (a factor n/(n-1) of the batch's n values per channel).
  """
  return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, name=name)


def example_mask(mask_B: jax.Array | None, x: jax.Array) -> jax.Array | None:
  """A per-example mask (B,) shaped to broadcast against x (B x ...): BatchNorm's `mask`,
  so that padded examples of a data-parallel batch stay out of the statistics."""
  return None if mask_B is None else mask_B.reshape(mask_B.shape + (1,) * (x.ndim - 1))


class PReLU(nn.Module):
  """PReLU with one learnable scalar slope; call one instance at several layers to share it."""
  init_slope: float = 0.25

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    slope = self.param("slope", jax.nn.initializers.constant(self.init_slope), ())
    return jnp.where(x > 0, x, slope * x)


ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array] | None] = {
    "relu": jax.nn.relu,
    "sigmoid": jax.nn.sigmoid,
    "tanh": jnp.tanh,
    "prelu": None,  # has a parameter: built per model by `activation`
}


# Non-decreasing activations: max-pooling commutes with them, max(f(a), f(b)) = f(max(a, b)),
# so a model may pool first and apply them to 4x fewer values. (PReLU's learned slope may turn
# negative, so it is not here.)
MONOTONE_ACTIVATIONS = ("relu", "sigmoid", "tanh")


def activation(name: str, prelu_init: float = 0.25) -> Callable[[jax.Array], jax.Array]:
  """The activation by name. "prelu" is a PReLU submodule (one slope, shared wherever it is
  called): create it inside a compact method, once per model."""
  if name not in ACTIVATIONS:
    raise ConfigError(f"unknown activation {name!r}; choose one of: {', '.join(ACTIVATIONS)}")
  return PReLU(prelu_init, name="prelu") if name == "prelu" else ACTIVATIONS[name]
