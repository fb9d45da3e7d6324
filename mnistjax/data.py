"""MNIST and Fashion-MNIST as uint8 arrays, from local IDX files, a cache or a verified download.

Sources, in order: a directory named by `data_dir` or `$MNISTJAX_DATA_DIR`
(authoritative: when it is set, nothing else is tried); the user cache
(`$MNISTJAX_CACHE_DIR`, else `$XDG_CACHE_HOME/mnistjax`, else
`~/.cache/mnistjax`); a download into that cache from the mirrors that
tensorflow-datasets uses, checked against their sha256 and size.

Images stay uint8 (N x 28 x 28) in memory; `normalize` turns a batch into
floats inside the jitted step.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import os
import pathlib
import stat
import tempfile
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from mnistjax.errors import ConfigError, DataError

ENV_DATA_DIR = "MNISTJAX_DATA_DIR"
ENV_CACHE_DIR = "MNISTJAX_CACHE_DIR"
IMAGE_SHAPE = (28, 28)
NUM_CLASSES = 10


@dataclasses.dataclass(frozen=True)
class RemoteFile:
  name: str  # e.g. "train-images-idx3-ubyte.gz"
  size: int
  sha256: str


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  mirrors: tuple[str, ...]
  files: tuple[RemoteFile, ...]
  class_names: tuple[str, ...]
  payloads: dict[str, str]  # file name without ".gz" -> sha256 of its decompressed bytes


# Mirrors, sizes and sha256 of the .gz files as published in tensorflow-datasets'
# url_checksums/; payloads: the sha256 of each file's decompressed bytes (the IDX file itself),
# which identifies the data also where the .gz was recompressed.
DATASETS: dict[str, DatasetInfo] = {
    "mnist": DatasetInfo(
        mirrors=("https://storage.googleapis.com/cvdf-datasets/mnist/",),
        files=(
            RemoteFile("train-images-idx3-ubyte.gz", 9912422,
                       "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609"),
            RemoteFile("train-labels-idx1-ubyte.gz", 28881,
                       "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c"),
            RemoteFile("t10k-images-idx3-ubyte.gz", 1648877,
                       "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6"),
            RemoteFile("t10k-labels-idx1-ubyte.gz", 4542,
                       "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6"),
        ),
        class_names=tuple(str(i) for i in range(10)),
        payloads={
            "train-images-idx3-ubyte":
                "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
            "train-labels-idx1-ubyte":
                "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
            "t10k-images-idx3-ubyte":
                "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
            "t10k-labels-idx1-ubyte":
                "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
        },
    ),
    "fashion_mnist": DatasetInfo(
        mirrors=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
        files=(
            RemoteFile("train-images-idx3-ubyte.gz", 26421880,
                       "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84"),
            RemoteFile("train-labels-idx1-ubyte.gz", 29515,
                       "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845"),
            RemoteFile("t10k-images-idx3-ubyte.gz", 4422102,
                       "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073"),
            RemoteFile("t10k-labels-idx1-ubyte.gz", 5148,
                       "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5"),
        ),
        class_names=("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                     "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
        payloads={
            "train-images-idx3-ubyte":
                "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
            "train-labels-idx1-ubyte":
                "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
            "t10k-images-idx3-ubyte":
                "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
            "t10k-labels-idx1-ubyte":
                "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
        },
    ),
}

# split -> (images file, labels file, number of examples), file names without ".gz".
SPLITS = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", 60000),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte", 10000),
}

# (mean, std) of pixels scaled to [0, 1]; "Normalize(m, s)" means (x/255 - m) / s.
NORMALIZATIONS: dict[str, tuple[float, float]] = {
    "mnist": (0.1307, 0.3081),
    "fashion_mnist": (0.2860, 0.3530),
    "half": (0.5, 0.5),
    "none": (0.0, 1.0),
}
# Besides the presets: "auto" (the dataset's own preset) and "estimate" (from its train set).
NORMALIZATION_CHOICES = ("auto", "estimate", *NORMALIZATIONS)

_IDX_UBYTE = 0x08


@dataclasses.dataclass(frozen=True)
class Split:
  """One split: images (N x H x W, or N x H x W x C; uint8, or floats in the dataset's
  value_range) and integer labels (N,)."""
  images: np.ndarray
  labels: np.ndarray

  def __len__(self) -> int:
    return len(self.labels)

  def take(self, n: int) -> Split:
    """The first n examples (for quick runs and tests)."""
    return Split(self.images[:n], self.labels[:n])


@dataclasses.dataclass(frozen=True)
class Dataset:
  """A dataset's two splits; `from_arrays` makes one of your own arrays."""
  name: str
  train: Split
  test: Split
  source: str  # where the files were read from, for the run's log
  classes: tuple[str, ...] | None = None  # None: the dataset's own names, else "0", "1", ...
  value_range: tuple[float, float] = (0.0, 255.0)  # the pixels' (black, white)

  @property
  def class_names(self) -> tuple[str, ...]:
    if self.classes is not None:
      return tuple(self.classes)
    if self.name in DATASETS:
      return DATASETS[self.name].class_names
    return tuple(str(i) for i in range(self.num_classes))

  @property
  def num_classes(self) -> int:
    if self.classes is not None:
      return len(self.classes)
    if self.name in DATASETS:
      return NUM_CLASSES
    return int(max(self.train.labels.max(initial=0), self.test.labels.max(initial=0))) + 1

  @property
  def image_shape(self) -> tuple[int, ...]:
    """One image as the model sees it: H x W x C (a channel axis of 1 for H x W images)."""
    shape = self.train.images.shape[1:]
    return (*shape, 1) if len(shape) == 2 else tuple(shape)


def from_arrays(train_images, train_labels, test_images, test_labels, *,
                class_names=None, value_range: tuple[float, float] | None = None,
                name: str = "arrays") -> Dataset:
  """A Dataset of your own arrays, checked: images N x H x W or N x H x W x C (any size and
  channels), uint8 (0..255) or floats, whose value_range (black, white) is detected where not
  given ([0, 1] or [0, 255]); integer labels 0..K-1, K = len(class_names) where given, else
  the largest label + 1. Raises DataError (one line naming the fix)."""
  splits = []
  for split, images, labels in (("train", train_images, train_labels),
                                ("test", test_images, test_labels)):
    images, labels = np.asarray(images), np.asarray(labels)
    if images.ndim not in (3, 4) or not (np.issubdtype(images.dtype, np.integer)
                                         or np.issubdtype(images.dtype, np.floating)):
      raise DataError(f"{split} images: expected numbers of shape N x H x W or N x H x W x C, "
                      f"got {images.dtype} {images.shape}")
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
      raise DataError(f"{split} labels: expected integer class indices of shape (N,), got "
                      f"{labels.dtype} {labels.shape}; convert one-hot labels with "
                      "labels.argmax(-1)")
    if len(images) != len(labels):
      raise DataError(f"{split}: {len(images)} images but {len(labels)} labels; give one "
                      "label per image")
    if len(labels) == 0:
      raise DataError(f"{split}: no examples")
    if np.issubdtype(images.dtype, np.integer):
      if images.min() < 0 or images.max() > 255:
        raise DataError(f"{split} images: integer pixels in [{images.min()}, {images.max()}]; "
                        "give uint8 pixels 0..255, or floats with value_range=(low, high)")
      images = images.astype(np.uint8, copy=False)
    elif not np.all(np.isfinite(images)):
      raise DataError(f"{split} images: NaN or infinite pixels at example "
                      f"{int(np.argmin(np.isfinite(images).reshape(len(images), -1).all(1)))}")
    splits.append(Split(images, labels.astype(np.int32)))  # one dtype: one fingerprint
  train, test = splits
  if train.images.shape[1:] != test.images.shape[1:]:
    raise DataError(f"train images are {train.images.shape[1:]} but test images "
                    f"{test.images.shape[1:]}; give both splits the same image shape")
  if train.images.dtype != test.images.dtype:
    raise DataError(f"train images are {train.images.dtype} but test images "
                    f"{test.images.dtype}; give both splits the same dtype")
  if not (isinstance(name, str) and plain_name(name)):
    raise DataError(f"from_arrays(name={name!r}): give a plain name, e.g. 'kmnist'")
  value_range = _value_range(train, test, value_range)
  classes = None if class_names is None else tuple(str(c) for c in class_names)
  for split, s in (("train", train), ("test", test)):
    check_labels(s.labels, len(classes) if classes else None, f"{split} labels")
  return Dataset(name, train, test, "arrays", classes, value_range)


def _value_range(train: Split, test: Split, given) -> tuple[float, float]:
  """The pixels' (black, white): uint8 is (0, 255); floats: given, or [0, 1] / [0, 255] as
  their values show."""
  if train.images.dtype == np.uint8:
    if given is not None and tuple(given) != (0, 255):
      raise DataError(f"value_range={given}: uint8 pixels are 0..255; convert the images to "
                      "floats to give another range")
    return (0.0, 255.0)
  low = float(min(train.images.min(), test.images.min()))
  high = float(max(train.images.max(), test.images.max()))
  if given is not None:
    given = tuple(float(v) for v in given)
    if len(given) != 2 or not given[0] < given[1]:
      raise DataError(f"value_range={given}: give (black, white) with black < white")
    if low < given[0] or high > given[1]:
      raise DataError(f"float pixels in [{low:g}, {high:g}] fall outside value_range="
                      f"{given}; give the range the pixels are in")
    return given
  if low >= 0 and high <= 1:
    return (0.0, 1.0)
  if low >= 0 and 127 < high <= 255:  # 8-bit pixel values held as floats
    return (0.0, 255.0)
  raise DataError(f"float pixels in [{low:g}, {high:g}]: not [0, 1] or [0, 255]; give "
                  "value_range=(black, white) (already standardised images: value_range="
                  f"({low:g}, {high:g}) and normalization='estimate')")


def plain_name(name: str) -> bool:
  """A dataset's name as a label (config.json, figures): no path in it."""
  return bool(name) and not any(c in name for c in "/\\") and not name.startswith(".")


def check_pixels(dataset: Dataset) -> None:
  """Float images lie in the dataset's value_range (a Dataset built by hand keeps the uint8
  range, (0, 255), where images in [0, 1] would train to chance on a preset)."""
  low, high = dataset.value_range
  for name in ("train", "test"):
    images = getattr(dataset, name).images
    if images.dtype == np.uint8 or not len(images):
      continue
    seen = (float(images.min()), float(images.max()))
    if seen[0] < low or seen[1] > high or (high - low > 1 and seen[1] <= 1):
      raise DataError(f"{name} images: float pixels in [{seen[0]:g}, {seen[1]:g}] but the "
                      f"dataset's value_range is {dataset.value_range}; build it with "
                      "mnistjax.from_arrays(...), which detects the range, or give "
                      "value_range=(black, white)")


def check_labels(labels: np.ndarray, num_classes: int | None, where: str) -> None:
  """Labels are class indices 0..num_classes-1 (num_classes None: any index >= 0)."""
  if len(labels) == 0:
    return
  bad = labels < 0 if num_classes is None else (labels < 0) | (labels >= num_classes)
  if bad.any():
    i = int(np.argmax(bad))
    allowed = "0..K-1" if num_classes is None else f"0..{num_classes - 1}"
    raise DataError(f"{where}: label {labels[i]} at index {i} is out of range {allowed}"
                    + ("" if num_classes is None else
                       f" ({num_classes} classes); fix the label or give every class a name"))


# ----------------------------------------------------------------------------
# IDX files


def _read(path: pathlib.Path, fix: str) -> bytes:
  """The (decompressed) bytes of a regular file. Opened without blocking and checked before
  reading: a FIFO or a device in the file's place would block open() or read() forever."""
  with open(os.open(path, os.O_RDONLY | os.O_NONBLOCK), "rb") as f:
    mode = os.fstat(f.fileno()).st_mode
    if stat.S_ISDIR(mode):
      raise DataError(f"{path} is a folder where the IDX file should be; {fix}")
    if not stat.S_ISREG(mode):
      raise DataError(f"{path} is not a regular file (a FIFO, socket or device); {fix}")
    return gzip.GzipFile(fileobj=f).read() if path.suffix == ".gz" else f.read()


def read_idx(path: str | os.PathLike, fix: str = "replace it with the original file",
             expected_sha256: str | None = None) -> np.ndarray:
  """Reads an IDX file of unsigned bytes (gzip-compressed or not), validating its header and
  size, and where given, the sha256 of its (decompressed) bytes. `fix` ends every error."""
  path = pathlib.Path(path)
  try:
    raw = _read(path, fix)
  except FileNotFoundError:
    raise DataError(f"{path}: file not found") from None
  except (EOFError, gzip.BadGzipFile, zlib.error) as e:
    raise DataError(f"{path}: truncated or corrupt gzip file ({e}); {fix}") from None
  except IsADirectoryError:
    raise DataError(f"{path} is a folder where the IDX file should be; {fix}") from None
  except PermissionError as e:
    raise DataError(f"{path}: cannot read ({e.strerror}); make it readable (chmod a+r), or "
                    "point --data_dir at a copy you can read") from None
  except OSError as e:
    raise DataError(f"{path}: cannot read ({e.strerror}); {fix}") from None
  if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != _IDX_UBYTE or raw[3] not in (1, 3):
    raise DataError(
        f"{path}: not an IDX file of unsigned bytes (magic number {raw[:4].hex() or 'missing'}, "
        f"expected 00000801 or 00000803); {fix}")
  ndim = raw[3]
  header = 4 + 4 * ndim
  if len(raw) < header:
    raise DataError(f"{path}: truncated IDX header; {fix}")
  dims = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
  expected = int(np.prod(dims))
  if len(raw) - header != expected:
    raise DataError(
        f"{path}: holds {len(raw) - header} data bytes but its header {dims} promises {expected} "
        f"(truncated or padded); {fix}")
  if expected_sha256 is not None and hashlib.sha256(raw).hexdigest() != expected_sha256:
    raise DataError(_identify(path, hashlib.sha256(raw).hexdigest(), fix))
  return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _identify(path: pathlib.Path, digest: str, fix: str) -> str:
  """The error for an IDX file whose content is not the expected one: which known file it is,
  if any."""
  for name, info in DATASETS.items():
    for base, known in info.payloads.items():
      if digest == known:
        return (f"{path} holds {name}'s {base}, not the file this dataset needs; point "
                f"--data_dir at the right dataset's files (a <dataset>/ subfolder is looked "
                f"for first)")
  return (f"{path}: its contents are not the published file (sha256 {digest[:16]}...); "
          f"{fix}, or pass --verify_data=false to train on your own files")


def read_split(images_path, labels_path, expected_count: int | None = None,
               fix: str = "replace it with the original file",
               payloads: dict[str, str] | None = None) -> Split:
  """Reads and cross-checks one split's image and label files; with payloads (file name ->
  sha256), each file's content is checked against the published one."""
  def expected(path) -> str | None:
    return None if payloads is None else payloads[pathlib.Path(path).name.removesuffix(".gz")]

  images = read_idx(images_path, fix, expected(images_path))
  labels = read_idx(labels_path, fix, expected(labels_path))
  if images.ndim != 3 or (payloads is not None and images.shape[1:] != IMAGE_SHAPE):
    raise DataError(f"{images_path}: expected images of shape N x 28 x 28, got {images.shape}; "
                    "is this an image file?")
  if labels.ndim != 1:
    raise DataError(f"{labels_path}: expected a 1-D label file, got shape {labels.shape}; "
                    "is this a label file?")
  if len(images) != len(labels):
    raise DataError(f"{images_path} has {len(images)} images but {labels_path} has "
                    f"{len(labels)} labels; the two files belong to different splits or datasets")
  if expected_count is not None and len(labels) != expected_count:
    raise DataError(f"{labels_path}: {len(labels)} examples, expected {expected_count}; "
                    "replace the files with the complete originals, or pass "
                    "--verify_data=false to train on your own files")
  check_labels(labels, NUM_CLASSES, str(labels_path))
  return Split(images, labels)


def fingerprint(split: Split) -> str:
  """sha256 over a split's images and labels (shapes included): what a run trains on,
  recorded with it so that a resume on other files is found (a few ms per 10 MB)."""
  digest = hashlib.sha256()
  for array in (split.images, split.labels):
    array = np.ascontiguousarray(array)
    digest.update(f"{array.dtype}{array.shape};".encode())
    digest.update(array.data)
  return digest.hexdigest()


# ----------------------------------------------------------------------------
# Where the files are


def _check_dataset(name: str) -> DatasetInfo:
  if name not in DATASETS:
    raise ConfigError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}")
  return DATASETS[name]


def find_files(directory: pathlib.Path, name: str) -> pathlib.Path | None:
  """The folder (DIR/<name>/ first, then DIR/) holding all four files of the dataset, if any."""
  for folder in (directory / name, directory):
    if all(_find(folder, base) for images, labels, _ in SPLITS.values() for base in (images, labels)):
      return folder
  return None


def _find(folder: pathlib.Path, base: str) -> pathlib.Path | None:
  for candidate in (folder / f"{base}.gz", folder / base):
    if candidate.exists():  # a folder of that name is reported when it is read
      return candidate
  return None


def _read_folder(folder: pathlib.Path, name: str, fix: str, verify: bool) -> tuple[Split, Split]:
  splits = []
  payloads = DATASETS[name].payloads if verify else None
  for images, labels, count in SPLITS.values():  # your own files (verify off): any count
    splits.append(read_split(_find(folder, images), _find(folder, labels),
                             count if verify else None, fix, payloads))
  return splits[0], splits[1]


def _readable(directory: pathlib.Path, look: Callable[[], Any]) -> Any:
  """look() (a question about directory), with a folder that can't be searched or a name
  that is not UTF-8 (it would fail when printed) as one line naming the fix."""
  try:
    os.fsdecode(directory).encode("utf-8")
  except UnicodeEncodeError:
    raise DataError(f"{repr(os.fsencode(directory))[2:-1]}: the folder's name is not valid UTF-8; "
                    "rename it, or give another --data_dir") from None
  try:
    return look()
  except PermissionError as e:
    raise DataError(f"{directory}: cannot read the folder ({e.strerror}); make it readable "
                    "(chmod a+rx), or point --data_dir at a copy you can read") from None


def cache_dir() -> pathlib.Path:
  """The user cache for downloads: $MNISTJAX_CACHE_DIR, $XDG_CACHE_HOME/mnistjax or ~/.cache/mnistjax."""
  if os.environ.get(ENV_CACHE_DIR):
    return pathlib.Path(os.environ[ENV_CACHE_DIR]).expanduser()
  base = os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache"
  return pathlib.Path(base) / "mnistjax"


def _file_list() -> str:
  return ", ".join(f"{images}.gz, {labels}.gz" for images, labels, _ in SPLITS.values())


def load(name: str = "mnist", data_dir: str | os.PathLike | None = None, *,
         download: bool = True, verify: bool = True) -> Dataset:
  """Loads a dataset as uint8 arrays.

  Args:
    name: "mnist" or "fashion_mnist".
    data_dir: folder with the four IDX files (in it or in `<data_dir>/<name>/`);
      defaults to $MNISTJAX_DATA_DIR. When given, it is the only place looked at.
    download: whether the data may be downloaded into the cache.
    verify: check each file's content against the published dataset's (sha256 of the
      decompressed bytes): another dataset's file, or a modified one, is an error.

  Returns:
    The dataset, with `source` saying where it came from.

  Raises:
    DataError: files missing, corrupt or inconsistent; the message names the fix.
  """
  _check_dataset(name)
  data_dir = data_dir or os.environ.get(ENV_DATA_DIR) or None
  if data_dir is not None:
    directory = pathlib.Path(data_dir).expanduser()
    if not _readable(directory, directory.is_dir):
      raise DataError(f"data directory {directory} does not exist; point --data_dir or "
                      f"${ENV_DATA_DIR} at a folder holding the {name} IDX files "
                      f"({_file_list()}), in it or in a {name}/ subfolder")
    folder = _readable(directory, lambda: find_files(directory, name))
    if folder is None:
      raise DataError(f"no complete {name} dataset in {directory} or {directory / name}; "
                      f"expected {_file_list()} (.gz or uncompressed)")
    fix = "replace it with the original file"
    return Dataset(name, *_read_folder(folder, name, fix, verify), source=str(folder))
  folder = cache_dir() / name
  if _readable(folder, lambda: find_files(folder, name)) is None:
    if not download:
      raise DataError(f"{name} is not in the cache {folder} and downloads are off; "
                      f"set ${ENV_DATA_DIR} to a folder holding {_file_list()}")
    download_dataset(name, folder)
  fix = "delete it to download it again"
  return Dataset(name, *_read_folder(folder, name, fix, verify), source=str(folder))


# ----------------------------------------------------------------------------
# Downloads


def download_file(url: str, dest: pathlib.Path, size: int, sha256: str, timeout: float = 60.0) -> None:
  """Downloads url to dest, verifying size and sha256; dest appears only if both match."""
  dest.parent.mkdir(parents=True, exist_ok=True)
  digest, received = hashlib.sha256(), 0
  fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
  tmp = pathlib.Path(tmp_name)
  try:
    with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
      while chunk := response.read(1 << 20):
        digest.update(chunk)
        received += len(chunk)
        out.write(chunk)
      out.flush()
      os.fsync(out.fileno())
    if received != size or digest.hexdigest() != sha256:
      raise DataError(f"{url}: downloaded {received} bytes with sha256 {digest.hexdigest()}, "
                      f"expected {size} bytes with sha256 {sha256}; the mirror served a bad file, "
                      "try again later or copy the original files by hand")
    os.replace(tmp, dest)  # atomic: a half-written file never carries the final name
  finally:
    tmp.unlink(missing_ok=True)


def download_dataset(name: str, folder: pathlib.Path, mirrors: tuple[str, ...] | None = None) -> None:
  """Downloads the four files of a dataset into folder, trying each mirror in turn."""
  info = _check_dataset(name)
  for remote in info.files:
    dest = folder / remote.name
    if dest.is_file():
      continue
    errors = []
    for mirror in mirrors or info.mirrors:
      try:
        download_file(mirror + remote.name, dest, remote.size, remote.sha256)
        break
      except (urllib.error.URLError, OSError) as e:
        errors.append(f"{mirror}: {getattr(e, 'reason', e)}")
    else:
      raise DataError(
          f"cannot download {remote.name} ({'; '.join(errors)}); on a machine without internet, "
          f"copy {_file_list()} into a folder and set ${ENV_DATA_DIR}=FOLDER (or pass --data_dir)")


# ----------------------------------------------------------------------------
# Normalisation and batches


class Normalization(NamedTuple):
  """x -> ((x - low) / (high - low) - mean) / std: pixels from their value range (black, white)
  to [0, 1], then standardised; (mean, std) of pixels in [0, 1], as torchvision's Normalize."""
  mean: float
  std: float
  low: float = 0.0
  high: float = 255.0


def normalization(spec: str, dataset: Dataset | None = None) -> Normalization:
  """The normalisation of a name: a preset, "auto" (the dataset's preset; a dataset without
  one, e.g. from_arrays: "estimate") or "estimate" (from its training set)."""
  low, high = dataset.value_range if dataset is not None else (0.0, 255.0)
  if spec == "auto":
    spec = dataset.name if dataset is not None else "mnist"
    if spec not in NORMALIZATIONS:
      spec = "estimate"
  if spec == "estimate":
    if dataset is None:
      raise ConfigError("normalization 'estimate' needs the dataset's training set")
    return Normalization(*estimate_normalization(dataset.train.images, (low, high)), low, high)
  if spec not in NORMALIZATIONS:
    raise ConfigError(f"unknown normalization {spec!r}; choose one of: "
                      f"{', '.join(NORMALIZATION_CHOICES)}")
  return Normalization(*NORMALIZATIONS[spec], low, high)


def estimate_normalization(images: np.ndarray, value_range: tuple[float, float] = (0.0, 255.0)
                           ) -> tuple[float, float]:
  """Mean and std of the pixels scaled to [0, 1], in float64 for exactness."""
  low, high = value_range
  pixels = images.reshape(-1)
  mean = (pixels.mean(dtype=np.float64) - low) / (high - low)
  var = np.square(pixels, dtype=np.float64).mean() / (high - low)**2 - (
      pixels.mean(dtype=np.float64) / (high - low))**2
  return float(mean), float(np.sqrt(max(var, 0.0)) or 1.0)


def normalize(images: jax.Array, mean: float, std: float, low: float = 0.0,
              high: float = 255.0) -> jax.Array:
  """A batch of images (B x H x W, or B x H x W x C) -> ((x - low) / (high - low) - mean) / std
  as B x H x W x C, in JAX's default float (float32; float64 under x64, where the
  equivalence tests run)."""
  scale = 1.0 / ((high - low) * std)
  shift = -mean / std - low * scale
  x = images.astype(jnp.result_type(float)) * scale + shift
  return x[..., None] if images.ndim == 3 else x


def epoch_permutation(shuffle_key: jax.Array, epoch: int, n: int) -> np.ndarray:
  """The order of the examples in an epoch: a function of the key (from the seed) and epoch only."""
  return np.asarray(jax.random.permutation(jax.random.fold_in(shuffle_key, epoch), n))


def train_batches(split: Split, batch_size: int, shuffle_key: jax.Array, epoch: int,
                  drop_remainder: bool = False, masked: bool = False, pad: bool = True
                  ) -> Iterator[dict[str, np.ndarray]]:
  """Shuffled batches of one epoch; the last, smaller batch is kept unless drop_remainder.

  masked: every batch carries a "mask" of its real examples and (with pad) the last one is
  padded to the full size, so that one compiled step serves the whole epoch (the padding has
  no weight in the step: see step.train_step).
  """
  order = epoch_permutation(shuffle_key, epoch, len(split))
  stop = len(order) - len(order) % batch_size if drop_remainder else len(order)
  for start in range(0, stop, batch_size):
    idx = order[start:start + batch_size]
    batch = {"image": split.images[idx], "label": split.labels[idx].astype(np.int32)}
    yield pad_batch(batch, batch_size if pad else len(idx)) if masked else batch


def pad_batch(batch: dict[str, np.ndarray], size: int) -> dict[str, np.ndarray]:
  """batch with a "mask" of its real examples (all of them where it had none), every array
  zero-padded to `size` rows; the padded rows are masked out."""
  n = len(batch["label"])
  if "mask" not in batch:
    batch = {**batch, "mask": np.ones(n, bool)}
  if size == n:
    return batch
  return {k: np.concatenate([v, np.zeros((size - n, *v.shape[1:]), v.dtype)])
          for k, v in batch.items()}


def num_train_steps(n: int, batch_size: int, drop_remainder: bool = False) -> int:
  return n // batch_size if drop_remainder else -(-n // batch_size)


def eval_batches(split: Split, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
  """Batches in order, each example exactly once; the last is padded and masked to a full batch."""
  batch_size = min(batch_size, len(split))
  for start in range(0, len(split), batch_size):
    yield pad_batch({"image": split.images[start:start + batch_size],
                     "label": split.labels[start:start + batch_size].astype(np.int32)},
                    batch_size)
