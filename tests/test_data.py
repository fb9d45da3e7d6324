"""The data layer: IDX parsing and validation, sources, verified downloads, batches."""

from __future__ import annotations

import dataclasses
import functools
import gzip
import hashlib
import http.server
import json
import os
import pathlib
import re
import threading

import jax
import numpy as np
import pytest

from conftest import fake_split, idx_bytes, write_dataset, write_idx
from mnistjax import data
from mnistjax.errors import ConfigError, DataError


# ----------------------------------------------------------------------------
# IDX files


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_read_idx_round_trips_images_and_labels(tmp_path, suffix):
  images, labels = fake_split(7)
  got_images = data.read_idx(write_idx(tmp_path / f"images{suffix}", images))
  got_labels = data.read_idx(write_idx(tmp_path / f"labels{suffix}", labels))
  assert got_images.dtype == np.uint8 and got_images.shape == (7, 28, 28)
  np.testing.assert_array_equal(got_images, images)
  np.testing.assert_array_equal(got_labels, labels)


def test_truncated_gzip_names_the_file(tmp_path):
  path = write_idx(tmp_path / "images.gz", fake_split(50)[0])
  path.write_bytes(path.read_bytes()[:-1000])
  with pytest.raises(DataError, match=r"images\.gz: truncated or corrupt gzip") as e:
    data.read_idx(path)
  assert "\n" not in str(e.value)


def test_wrong_magic_number(tmp_path):
  raw = bytearray(idx_bytes(fake_split(3)[0]))
  raw[2] = 0x0D  # float data instead of unsigned bytes
  path = tmp_path / "images"
  path.write_bytes(bytes(raw))
  with pytest.raises(DataError, match=r"images: not an IDX file .*magic number 00000d03"):
    data.read_idx(path)


def test_truncated_uncompressed_payload(tmp_path):
  path = write_idx(tmp_path / "images", fake_split(3)[0])
  path.write_bytes(path.read_bytes()[:-5])
  with pytest.raises(DataError, match=r"holds 2347 data bytes but its header \(3, 28, 28\)"):
    data.read_idx(path)


def test_missing_file(tmp_path):
  with pytest.raises(DataError, match="file not found"):
    data.read_idx(tmp_path / "nothing.gz")


def test_images_and_labels_of_different_length(tmp_path):
  images, labels = fake_split(5)
  with pytest.raises(DataError, match="has 5 images but .* has 4 labels"):
    data.read_split(write_idx(tmp_path / "i", images), write_idx(tmp_path / "l", labels[:4]))


def test_label_out_of_range(tmp_path):
  images, labels = fake_split(5)
  labels[2] = 10
  with pytest.raises(DataError, match="label 10 at index 2 is out of range 0..9"):
    data.read_split(write_idx(tmp_path / "i", images), write_idx(tmp_path / "l", labels))


def test_swapped_files_are_caught_by_their_dimensions(tmp_path):
  images, labels = fake_split(5)
  image_file = write_idx(tmp_path / "i", images)
  label_file = write_idx(tmp_path / "l", labels)
  with pytest.raises(DataError, match="expected images of shape N x 28 x 28"):
    data.read_split(label_file, image_file)


def test_wrong_item_count(tmp_path):
  images, labels = fake_split(5)
  with pytest.raises(DataError, match="5 examples, expected 60000"):
    data.read_split(write_idx(tmp_path / "i", images), write_idx(tmp_path / "l", labels), 60000)


# ----------------------------------------------------------------------------
# Sources


@pytest.mark.parametrize("nested", [False, True])
def test_load_from_directory_flat_or_per_dataset(tmp_path, nested):
  folder = write_dataset(tmp_path / "mnist" if nested else tmp_path, gz=not nested)
  ds = data.load("mnist", data_dir=tmp_path, verify=False)  # random images, not MNIST
  assert ds.source == str(folder)
  assert (len(ds.train), len(ds.test)) == (60000, 10000)
  assert ds.train.images.dtype == np.uint8 and ds.train.images.shape == (60000, 28, 28)
  np.testing.assert_array_equal(ds.test.labels, fake_split(10000, seed=10000)[1])


def test_environment_variable_names_the_directory(tmp_path, monkeypatch):
  write_dataset(tmp_path / "fashion_mnist")
  monkeypatch.setenv(data.ENV_DATA_DIR, str(tmp_path))
  assert data.load("fashion_mnist", verify=False).source == str(tmp_path / "fashion_mnist")


def test_missing_directory_says_where_to_point(tmp_path):
  with pytest.raises(DataError, match=rf"{tmp_path / 'absent'} does not exist; point --data_dir "
                     rf"or \${data.ENV_DATA_DIR}"):
    data.load("mnist", data_dir=tmp_path / "absent")


def test_incomplete_directory_lists_the_files(tmp_path):
  write_dataset(tmp_path)
  (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
  with pytest.raises(DataError, match="no complete mnist dataset .* t10k-labels-idx1-ubyte.gz"):
    data.load("mnist", data_dir=tmp_path)


def test_unknown_dataset_lists_the_choices():
  with pytest.raises(ConfigError, match="choose one of: mnist, fashion_mnist"):
    data.load("cifar10")


def test_cache_is_used_before_downloading(tmp_path, monkeypatch):
  monkeypatch.delenv(data.ENV_DATA_DIR, raising=False)
  monkeypatch.setenv(data.ENV_CACHE_DIR, str(tmp_path))
  write_dataset(tmp_path / "mnist")
  monkeypatch.setattr(data, "download_dataset", lambda *a: pytest.fail("downloaded"))
  assert data.load("mnist", verify=False).source == str(tmp_path / "mnist")


def test_offline_without_data_says_where_to_put_files(tmp_path, monkeypatch):
  monkeypatch.delenv(data.ENV_DATA_DIR, raising=False)
  monkeypatch.setenv(data.ENV_CACHE_DIR, str(tmp_path))
  unreachable = ("http://127.0.0.1:9/",)  # the discard port: connection refused at once
  monkeypatch.setattr(data, "DATASETS", {"mnist": dataclasses.replace(
      data.DATASETS["mnist"], mirrors=unreachable)})
  with pytest.raises(DataError, match=rf"cannot download .*set \${data.ENV_DATA_DIR}=FOLDER"):
    data.load("mnist")
  assert not list((tmp_path / "mnist").glob("*")), "a failed download left a file behind"


def test_a_run_saved_with_the_retired_data_source_setting_loads_and_resumes(tmp_path):
  # Versions with --data_source wrote it into config.json and each checkpoint's record.
  from conftest import quiet, synthetic  # pylint: disable=g-import-not-at-top
  import mnistjax  # pylint: disable=g-import-not-at-top
  from mnistjax import config as config_lib, driver, files  # pylint: disable=g-import-not-at-top
  cfg = config_lib.Config(epochs=1, batch_size=32, eval_train=False, log_every=4)
  driver.train(cfg, None, str(tmp_path), synthetic(), **quiet())
  saved = json.loads((tmp_path / "config.json").read_text())
  assert "data_source" not in saved["config"]
  saved["config"]["data_source"] = "tfds"
  (tmp_path / "config.json").write_text(json.dumps(saved))
  assert mnistjax.load(tmp_path).config.epochs == 1
  driver.train(cfg.replace(epochs=2), None, str(tmp_path), synthetic(), resume=True, **quiet())
  assert [r["epoch"] for r in files.read_jsonl(tmp_path / "metrics.jsonl")] == [0, 1, 2]
  with pytest.raises(TypeError):
    data.load("mnist", None, "tfds")  # the source argument is gone too


def test_a_fifo_in_place_of_a_data_file_is_refused_without_blocking(tmp_path):
  write_dataset(tmp_path, n_train=64, n_test=16)
  images = tmp_path / "train-images-idx3-ubyte.gz"  # the first file read
  images.unlink()
  os.mkfifo(images)  # open() or read() of it would wait for a writer forever
  done = []
  reader = threading.Thread(target=lambda: done.append(_error(
      lambda: data.load("mnist", data_dir=tmp_path, verify=False))), daemon=True)
  reader.start()
  reader.join(timeout=30)
  assert done, "reading a FIFO blocked"
  assert re.fullmatch(rf"{images} is not a regular file \(a FIFO, socket or device\); "
                      r"replace it with the original file", done[0])


def _error(load) -> str:
  with pytest.raises(DataError) as e:
    load()
  return str(e.value)


@pytest.mark.parametrize("locked", ["folder", "subfolder", "file"])
def test_a_data_folder_or_file_without_read_permission_is_one_line(tmp_path, monkeypatch,
                                                                   locked):
  write_dataset(tmp_path / "mnist", n_train=64, n_test=16)
  path = {"folder": tmp_path, "subfolder": tmp_path / "mnist",
          "file": tmp_path / "mnist" / "train-images-idx3-ubyte.gz"}[locked]
  # Denied as the kernel denies a user without permission (tests may run as root).
  real_stat, real_open = os.stat, os.open

  def denied(real):
    def call(target, *args, **kwargs):
      if str(target).startswith(str(path)) and (locked == "file" or str(target) != str(path)):
        raise PermissionError(13, "Permission denied", str(target))
      return real(target, *args, **kwargs)
    return call

  if locked == "file":
    monkeypatch.setattr(os, "open", denied(real_open))
  else:  # nothing in it can be looked up
    monkeypatch.setattr(os, "stat", denied(real_stat))
  message = _error(lambda: data.load("mnist", data_dir=tmp_path, verify=False))
  fix = "(chmod a+r)" if locked == "file" else "(chmod a+rx)"
  assert message.startswith(f"{path if locked == 'file' else tmp_path}: cannot read"), message
  assert "Permission denied" in message and fix in message, message


def test_a_data_folder_whose_name_is_not_utf8_is_one_line(tmp_path):
  folder = tmp_path / os.fsdecode(b"data\xff")
  write_dataset(folder, n_train=64, n_test=16)
  assert _error(lambda: data.load("mnist", data_dir=folder, verify=False)).endswith(
      "data\\xff: the folder's name is not valid UTF-8; rename it, or give another --data_dir")


def test_the_files_of_another_dataset_are_named_as_such(mnist):
  # MNIST's files asked for as Fashion-MNIST: the digits would train with clothes' names.
  folder = pathlib.Path(mnist.source)
  with pytest.raises(DataError, match=r"train-images-idx3-ubyte.gz holds mnist's "
                     r"train-images-idx3-ubyte, not the file this dataset needs; point "
                     r"--data_dir") as e:
    data.load("fashion_mnist", data_dir=folder)
  assert "\n" not in str(e.value)


def test_a_modified_file_is_refused_unless_verification_is_off(tmp_path):
  write_dataset(tmp_path, n_train=60000, n_test=10000)
  with pytest.raises(DataError, match=r"contents are not the published file \(sha256 [0-9a-f]{16}"
                     r"\.\.\.\); replace it with the original file, or pass "
                     r"--verify_data=false"):
    data.load("mnist", data_dir=tmp_path)
  assert len(data.load("mnist", data_dir=tmp_path, verify=False).train) == 60000


def test_a_folder_where_a_data_file_should_be_is_named(tmp_path):
  write_dataset(tmp_path, n_train=60, n_test=10)
  (tmp_path / "train-images-idx3-ubyte.gz").unlink()
  (tmp_path / "train-images-idx3-ubyte.gz").mkdir()
  with pytest.raises(DataError, match=r"train-images-idx3-ubyte.gz is a folder where the IDX file "
                     r"should be; replace it with the original file$"):
    data.load("mnist", data_dir=tmp_path, verify=False)


def test_a_corrupt_file_in_the_cache_says_to_delete_it_one_in_a_data_dir_to_replace_it(
    tmp_path, monkeypatch):
  for where in ("data_dir", "cache"):
    folder = write_dataset(tmp_path / where / "mnist", n_train=60, n_test=10)
    path = folder / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-10])
  with pytest.raises(DataError, match="corrupt gzip file .*; replace it with the original file$"):
    data.load("mnist", data_dir=tmp_path / "data_dir", verify=False)
  monkeypatch.delenv(data.ENV_DATA_DIR, raising=False)
  monkeypatch.setenv(data.ENV_CACHE_DIR, str(tmp_path / "cache"))
  with pytest.raises(DataError, match="corrupt gzip file .*; delete it to download it again$"):
    data.load("mnist", verify=False)


# ----------------------------------------------------------------------------
# Verified downloads, served from this machine


@pytest.fixture
def server(tmp_path):
  """An HTTP server on 127.0.0.1 serving tmp_path/served; yields its base URL."""
  root = tmp_path / "served"
  root.mkdir()
  handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
  handler.log_message = lambda *a: None
  httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
  thread = threading.Thread(target=httpd.serve_forever, daemon=True)
  thread.start()
  yield f"http://127.0.0.1:{httpd.server_address[1]}/", root
  httpd.shutdown()
  httpd.server_close()


def test_download_verifies_and_saves(server, tmp_path):
  url, root = server
  payload = gzip.compress(idx_bytes(fake_split(4)[1]))
  (root / "labels.gz").write_bytes(payload)
  dest = tmp_path / "cache" / "labels.gz"
  data.download_file(url + "labels.gz", dest, len(payload), hashlib.sha256(payload).hexdigest())
  assert dest.read_bytes() == payload
  assert [p.name for p in dest.parent.iterdir()] == ["labels.gz"], "temp file left behind"


@pytest.mark.parametrize("what", ["sha256", "size"])
def test_download_rejects_a_wrong_checksum_or_size(server, tmp_path, what):
  url, root = server
  payload = b"not the file you are looking for"
  (root / "labels.gz").write_bytes(payload)
  sha = hashlib.sha256(payload).hexdigest()
  size = len(payload)
  if what == "sha256":
    sha = "0" * 64
  else:
    size += 1
  dest = tmp_path / "cache" / "labels.gz"
  with pytest.raises(DataError, match="mirror served a bad file"):
    data.download_file(url + "labels.gz", dest, size, sha)
  assert not dest.parent.exists() or not list(dest.parent.iterdir()), "bad bytes kept on disk"


def test_download_dataset_fills_the_cache_from_a_mirror(server, tmp_path, monkeypatch):
  url, root = server
  write_dataset(root, n_train=6, n_test=4)
  files = tuple(data.RemoteFile(f.name, (root / f.name).stat().st_size,
                                hashlib.sha256((root / f.name).read_bytes()).hexdigest())
                for f in data.DATASETS["mnist"].files)
  monkeypatch.setitem(data.DATASETS, "mnist", dataclasses.replace(
      data.DATASETS["mnist"], mirrors=("http://127.0.0.1:9/", url), files=files))
  data.download_dataset("mnist", tmp_path / "cache")  # first mirror refuses; second serves
  for f in files:
    assert (tmp_path / "cache" / f.name).read_bytes() == (root / f.name).read_bytes()


# ----------------------------------------------------------------------------
# Normalisation and batches


def test_normalization_presets_and_estimate():
  images = np.array([[[0, 255]]], np.uint8)
  assert data.estimate_normalization(images) == pytest.approx((0.5, 0.5))
  assert data.normalization("half") == (0.5, 0.5, 0.0, 255.0)  # mean, std; black, white
  assert data.normalization("auto") == (0.1307, 0.3081, 0.0, 255.0)
  with pytest.raises(ConfigError, match="choose one of: auto, estimate"):
    data.normalization("imagenet")


def test_normalize_matches_the_formula():
  images = np.array([[[0, 51, 255]]], np.uint8)
  x = np.asarray(data.normalize(images, 0.1307, 0.3081))
  assert x.shape == (1, 1, 3, 1) and x.dtype == np.float32
  np.testing.assert_allclose(x[0, 0, :, 0], (images[0, 0] / 255 - 0.1307) / 0.3081, rtol=1e-6)
  # Floats in another range, with channels: (x - black) / (white - black), then standardised.
  floats = np.array([[[[-1.0, 0.0, 1.0]]]], np.float32)  # 1 x 1 x 1 x 3: a channel axis kept
  y = np.asarray(data.normalize(floats, 0.5, 0.25, -1.0, 1.0))
  assert y.shape == (1, 1, 1, 3)
  np.testing.assert_allclose(y[0, 0, 0], ((floats[0, 0, 0] + 1) / 2 - 0.5) / 0.25, rtol=1e-6)


def test_shuffle_depends_only_on_seed_and_epoch():
  key = jax.random.key(3)
  a = data.epoch_permutation(key, 1, 1000)
  np.testing.assert_array_equal(a, data.epoch_permutation(jax.random.key(3), 1, 1000))
  assert sorted(a) == list(range(1000))
  assert not np.array_equal(a, data.epoch_permutation(key, 2, 1000))
  assert not np.array_equal(a, data.epoch_permutation(jax.random.key(4), 1, 1000))


@pytest.mark.parametrize("drop_remainder", [False, True])
def test_train_batches_cover_the_split_once(drop_remainder):
  images, labels = fake_split(100)
  split = data.Split(images, labels)
  batches = list(data.train_batches(split, 32, jax.random.key(0), 1, drop_remainder))
  sizes = [len(b["label"]) for b in batches]
  assert sizes == ([32, 32, 32] if drop_remainder else [32, 32, 32, 4])
  assert len(batches) == data.num_train_steps(100, 32, drop_remainder)
  seen = np.concatenate([b["image"].reshape(len(b["image"]), -1) for b in batches])
  assert len(np.unique(seen, axis=0)) == len(seen)
  masked = list(data.train_batches(split, 32, jax.random.key(0), 1, drop_remainder, masked=True))
  assert all(b["image"].shape == (32, 28, 28) and b["label"].shape == (32,) for b in masked)
  assert [int(b["mask"].sum()) for b in masked] == sizes
  real = np.concatenate([b["image"][b["mask"]].reshape(-1, 784) for b in masked])
  np.testing.assert_array_equal(real, seen)  # the same examples in the same order


def test_eval_batches_score_every_example_exactly_once():
  images, labels = fake_split(10)
  batches = list(data.eval_batches(data.Split(images, labels), 4))
  assert [b["mask"].sum() for b in batches] == [4, 4, 2]
  assert all(b["image"].shape == (4, 28, 28) for b in batches)
  kept = np.concatenate([b["label"][b["mask"]] for b in batches])
  np.testing.assert_array_equal(kept, labels)


def test_real_mnist_matches_its_published_label_counts(mnist):
  assert np.bincount(mnist.train.labels).tolist() == [
      5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
  assert np.bincount(mnist.test.labels).tolist() == [
      980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
  mean, std = data.estimate_normalization(mnist.train.images)
  assert (mean, std) == pytest.approx((0.1307, 0.3081), abs=1e-4)
