"""Shared fixtures: real MNIST from $MNISTJAX_DATA_DIR, and IDX files written by the tests."""

from __future__ import annotations

import gzip
import os
import pathlib
import shutil
import tempfile

import jax
import numpy as np
import pytest

from mnistjax import data

# One persistent compilation cache for the session, its subprocesses included: many tests
# compile the same programs (the same model, batch and optimiser on the synthetic data), and
# a cache hit loads the compiled program instead of compiling it again. It changes no result.
_CACHE = None
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:  # else the user's, or the session's parent's
  _CACHE = tempfile.mkdtemp(prefix="mnistjax-test-jax-cache-")
  os.environ.update(JAX_COMPILATION_CACHE_DIR=_CACHE,
                    JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                    JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")

jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def pytest_sessionfinish(session, exitstatus):
  if _CACHE is not None:
    shutil.rmtree(_CACHE, ignore_errors=True)

# Equivalence tests (two programs that compute the same maths in another order: sliced vs
# whole patches, 4 devices vs 1, a sweep member vs a single run, scan vs Python loop) run in
# float64, where they hold on any CPU. A sum of n terms taken in another order differs by at
# most ~n * 2.2e-16 of the terms' magnitudes: ~2e-12 for the n <= 1e4 summands of these
# tests' matmuls and reductions, grown by a few optimisation steps. 1e-9 leaves a margin of
# over 100x for that; a real bug (a wrong slice, a BatchNorm counting padded examples, a
# member fed another's batch) moves values by 1e-3 or more. In float32 the same rounding is
# ~1e-4 after a few steps and depends on the CPU's kernels.
F64_RTOL = 1e-9
F64_ATOL = 1e-12


def enable_x64():
  """JAX's float64 mode as a context manager (jax.enable_x64 from 0.6; before it, under
  jax.experimental)."""
  if hasattr(jax, "enable_x64"):
    return jax.enable_x64(True)
  from jax.experimental import enable_x64 as experimental  # pylint: disable=g-import-not-at-top
  return experimental()


# jaxlib 0.5.3 to 0.10.1 miscompile the float64 gradient of BatchNorm models under jit on
# XLA:CPU (LeNet with BatchNorm: jit(grad) is off by ~0.5 where grad and finite differences
# agree to 1e-8; seen on an Intel Xeon Ice Lake). Their float32 programs are right (jit(grad)
# within float32 rounding of the float64 reference), so the package supports them, but the
# float64 equivalence tests can only run on jaxlib >= 0.10.2.
X64_MIN_JAXLIB = (0, 10, 2)


def _version(text: str) -> tuple[int, ...]:
  return tuple(int(part) for part in text.split(".")[:3] if part.isdigit())


def require_float64_jaxlib() -> None:
  """Skips a float64 test where jaxlib is older than X64_MIN_JAXLIB."""
  import jaxlib  # pylint: disable=g-import-not-at-top
  if _version(jaxlib.__version__) < X64_MIN_JAXLIB:
    pytest.skip(f"jaxlib {jaxlib.__version__} < 0.10.2 miscompiles float64 gradients of "
                "BatchNorm models under jit on XLA:CPU (conftest.X64_MIN_JAXLIB)")


@pytest.fixture
def x64():
  """Runs the test with JAX in float64 (see F64_RTOL)."""
  require_float64_jaxlib()
  with enable_x64():
    yield


@pytest.fixture(scope="session")
def mnist() -> data.Dataset:
  """Real MNIST; skipped only where $MNISTJAX_DATA_DIR is not set (CI sets it)."""
  if not os.environ.get(data.ENV_DATA_DIR):
    pytest.skip(f"set ${data.ENV_DATA_DIR} to the folder with the MNIST IDX files")
  return data.load("mnist")


def idx_bytes(array: np.ndarray) -> bytes:
  """The IDX encoding of a uint8 array."""
  header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
      int(d).to_bytes(4, "big") for d in array.shape)
  return header + np.ascontiguousarray(array, np.uint8).tobytes()


def write_idx(path: pathlib.Path, array: np.ndarray) -> pathlib.Path:
  raw = idx_bytes(array)
  if path.suffix == ".gz":
    raw = gzip.compress(raw, compresslevel=1)
  path.write_bytes(raw)
  return path


def fake_split(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  rng = np.random.default_rng(seed)
  return (rng.integers(0, 256, (n, 28, 28), dtype=np.uint8),
          rng.integers(0, 10, n, dtype=np.uint8))


def write_dataset(folder: pathlib.Path, n_train: int = 60000, n_test: int = 10000,
                  gz: bool = True) -> pathlib.Path:
  """Writes the four IDX files of a random dataset of standard size into folder."""
  folder.mkdir(parents=True, exist_ok=True)
  suffix = ".gz" if gz else ""
  for (images_name, labels_name, _), n in zip(data.SPLITS.values(), (n_train, n_test)):
    images, labels = fake_split(n, seed=n)
    write_idx(folder / f"{images_name}{suffix}", images)
    write_idx(folder / f"{labels_name}{suffix}", labels)
  return folder


def synthetic(n_train=256, n_test=100) -> data.Dataset:
  """A learnable toy dataset: the label is written into the image as a bright bar."""
  def split(n, seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n).astype(np.uint8)
    images = rng.integers(0, 60, (n, 28, 28)).astype(np.uint8)
    for i, label in enumerate(labels):
      images[i, 2 + 2 * label: 4 + 2 * label, 4:24] = 255
    return data.Split(images, labels)
  return data.Dataset("mnist", split(n_train, 0), split(n_test, 1), source="synthetic")


def quiet() -> dict:
  """Keyword arguments that silence driver.train's printed lines."""
  return {"log": lambda line: None}
