"""Shared fixtures: real MNIST from $MNISTJAX_DATA_DIR, and IDX files written by the tests."""

from __future__ import annotations

import gzip
import os
import pathlib

import numpy as np
import pytest

from mnistjax import data


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
  """Keyword arguments that silence train_and_evaluate's printed lines."""
  return {"log": lambda line: None}
