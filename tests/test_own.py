"""A researcher's own parts: a Flax module, an optax optimiser, arrays, a loss, metrics and
writers, each trained, checkpointed, resumed, swept and loaded like the built-ins."""

from __future__ import annotations

import json
import pathlib
import struct
import subprocess
import sys
import textwrap

import flax.linen as nn
import jax
import numpy as np
import optax
import pytest

import mnistjax
from mnistjax import checkpoint, data, driver, plots
from mnistjax.config import Config
from mnistjax.errors import ConfigError, DataError, WorkdirError

REPO = pathlib.Path(__file__).resolve().parents[1]


class Net(nn.Module):
  """Written as Flax's docs write a module: nn.Conv, nn.BatchNorm, nn.Dropout with the
  "dropout" rng, `train` deciding both; logits out."""
  dropout: float = 0.2
  classes: int = 5

  @nn.compact
  def __call__(self, x, train: bool):
    x = nn.Conv(features=4, kernel_size=(3, 3))(x)
    x = nn.BatchNorm(use_running_average=not train)(x)
    x = nn.relu(x)
    x = nn.avg_pool(x, window_shape=(2, 2), strides=(2, 2))
    x = x.reshape((x.shape[0], -1))
    x = nn.Dropout(self.dropout, deterministic=not train)(nn.relu(nn.Dense(16)(x)))
    return nn.Dense(self.classes)(x)


def arrays(n_train=90, n_test=40, shape=(12, 12, 3), classes=5, dtype=np.float32, seed=0):
  """Learnable images of another size: each class brightens its own band of rows."""
  rng = np.random.default_rng(seed)

  def split(n):
    labels = rng.integers(0, classes, n)
    images = rng.random((n, *shape)).astype(np.float32) * 0.5
    band = shape[0] // classes
    for i, label in enumerate(labels):
      images[i, label * band:(label + 1) * band] += 0.5
    return (images * 255).astype(np.uint8) if dtype == np.uint8 else images, labels
  return (*split(n_train), *split(n_test))


def own_data(**kwargs) -> data.Dataset:
  return data.from_arrays(*arrays(**kwargs), class_names=[f"c{i}" for i in range(5)])


CFG = Config(epochs=2, batch_size=32, log_every=2, eval_batch_size=64)


def quiet(line):
  del line


def _params(result, member=0):
  return jax.tree.leaves(result.variables(member))


def test_a_flax_module_of_another_image_size_and_classes_trains_and_learns(tmp_path):
  ds = own_data()
  result = mnistjax.train(CFG.replace(epochs=4, lr=0.1, momentum=0.9), dataset=ds,
                          model=Net(), workdir=str(tmp_path / "run"), log=quiet)
  saved = json.loads((tmp_path / "run" / "config.json").read_text())
  assert saved["config"]["model"] == "test_own:Net" or saved["config"]["model"].endswith(":Net")
  assert saved["config"]["dataset"] == "arrays"
  assert saved["image_shape"] == [12, 12, 3] and saved["class_names"] == [f"c{i}" for i in range(5)]
  assert result.predictions.shape == (1, 40) and result.predictions.max() < 5
  assert result.history[-1]["test_accuracy"] > 60  # 20% is chance
  assert (tmp_path / "run" / "confusion_matrix.png").exists()
  assert "c4" in (tmp_path / "run" / "classification_report.txt").read_text()


def test_own_module_resumes_bit_exactly_in_a_sweep_of_seeds_and_dropout(tmp_path):
  ds, sweep = own_data(), {"seed": (0, 1), "dropout": (0.0, 0.5)}
  whole = mnistjax.train(CFG, sweep, str(tmp_path / "whole"), ds, model=Net(), log=quiet)
  mnistjax.train(CFG.replace(epochs=1), sweep, str(tmp_path / "cut"), ds, model=Net(), log=quiet)
  resumed = mnistjax.train(CFG, sweep, str(tmp_path / "cut"), ds, model=Net(), resume=True,
                           log=quiet)
  assert [r["member"] for r in whole.final] == [
      "seed=0,dropout=0.0", "seed=0,dropout=0.5", "seed=1,dropout=0.0", "seed=1,dropout=0.5"]
  for k in range(4):
    for a, b in zip(_params(whole, k), _params(resumed, k)):
      np.testing.assert_array_equal(a, b)
  assert [r["test_loss"] for r in whole.history] == [r["test_loss"] for r in resumed.history]
  # Dropout rates act: the members of one seed differ only by it.
  assert whole.final[0]["test_loss"] != whole.final[1]["test_loss"]
  # A member of the sweep is the run of its settings alone.
  alone = mnistjax.train(CFG.replace(seed=1), None, None, ds, model=Net(dropout=0.5),
                         log=quiet)
  for a, b in zip(_params(alone), _params(whole, 3)):
    np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6)


def test_load_of_an_own_model_needs_the_module_and_restores_its_state(tmp_path):
  ds = own_data()
  trained = mnistjax.train(CFG.replace(epochs=1), dataset=ds, model=Net(),
                           workdir=str(tmp_path / "run"), log=quiet)
  loaded = mnistjax.load(tmp_path / "run")  # importable: test_own:Net
  for a, b in zip(_params(trained), _params(loaded)):
    np.testing.assert_array_equal(a, b)

  class Local(Net):  # not importable by its name: load needs it given
    pass

  mnistjax.train(CFG.replace(epochs=1), dataset=ds, model=Local(),
                 workdir=str(tmp_path / "local"), log=quiet)
  with pytest.raises(ConfigError, match=r"mnistjax.load\(workdir, model="):
    mnistjax.load(tmp_path / "local")
  assert mnistjax.load(tmp_path / "local", model=Local()).state is not None


def test_resume_with_another_module_or_optimizer_is_one_line_and_keeps_the_checkpoints(
    tmp_path):
  ds = own_data()
  mnistjax.train(CFG.replace(epochs=1), dataset=ds, model=Net(), workdir=str(tmp_path / "run"),
                 log=quiet)
  before = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())

  class Wider(Net):
    @nn.compact
    def __call__(self, x, train: bool):
      return nn.Dense(self.classes)(nn.relu(nn.Dense(32)(x.reshape((x.shape[0], -1)))))

  def make(learning_rate):  # the same name, another optimiser state
    return optax.adam(learning_rate)

  with pytest.raises(WorkdirError, match="other settings .*optimizer sgd -> "):
    mnistjax.train(CFG, dataset=ds, model=Net(), workdir=str(tmp_path / "run"), resume=True,
                   optimizer=make, log=quiet)
  (tmp_path / "own").mkdir()
  mnistjax.train(CFG.replace(epochs=1), dataset=ds, model=Net(), workdir=str(tmp_path / "own"),
                 optimizer=_sgd, log=quiet)
  make.__qualname__ = _sgd.__qualname__
  with pytest.raises(WorkdirError, match="hold the state of another model or optimiser"):
    mnistjax.train(CFG, dataset=ds, model=Net(), workdir=str(tmp_path / "own"), resume=True,
                   optimizer=make, log=quiet)
  with pytest.raises(WorkdirError, match="another model|other settings"):
    mnistjax.train(CFG, dataset=ds, model=Wider(), workdir=str(tmp_path / "run"),
                   resume=True, log=quiet)
  assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == before


def _sgd(learning_rate):
  return optax.sgd(learning_rate, momentum=0.9)


def _shaped(result, member=0):
  """The variables that the data shapes: all but the bias of the convolution before
  BatchNorm, whose gradient BatchNorm cancels (~1e-9, rounding) and Adam scales up to lr,
  and the running mean that adds it."""
  return [leaf for path, leaf in jax.tree_util.tree_leaves_with_path(result.variables(member))
          if not any(name in jax.tree_util.keystr(path) for name in ("Conv_0']['bias",
                                                                        "['mean']"))]


def test_optax_transformation_and_a_factory_with_a_swept_learning_rate(tmp_path):
  ds = own_data()
  given = mnistjax.train(CFG.replace(epochs=1), dataset=ds, model=Net(),
                         optimizer=optax.adamw(3e-3), log=quiet)
  by_name = mnistjax.train(CFG.replace(epochs=1, optimizer="adamw", lr=3e-3,
                                       weight_decay=1e-4), dataset=ds, model=Net(), log=quiet)
  for a, b in zip(_shaped(given), _shaped(by_name)):  # optax's defaults are PyTorch's
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)

  def adamw(learning_rate, weight_decay=1e-4):
    return optax.adamw(learning_rate, weight_decay=weight_decay)

  sweep = mnistjax.train(CFG.replace(epochs=1), {"lr": (1e-3, 3e-3)}, str(tmp_path / "s"), ds,
                         model=Net(), optimizer=adamw, log=quiet)
  for a, b in zip(_shaped(given), _shaped(sweep, 1)):  # member lr=3e-3 is the run above
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  assert not np.allclose(_params(sweep, 0)[0], _params(sweep, 1)[0])
  # Resumed with another learning rate: the factory's value is the config's, not the saved.
  resumed = mnistjax.train(CFG.replace(epochs=2), {"lr": (1e-3, 3e-3)}, str(tmp_path / "s"),
                           ds, model=Net(), optimizer=adamw, resume=True, log=quiet)
  assert resumed.history[-1]["epoch"] == 2
  with pytest.raises(ConfigError, match="sweep of lr: .*function of it"):
    mnistjax.train(CFG, {"lr": (0.1, 0.2)}, dataset=ds, model=Net(),
                   optimizer=optax.adam(1e-3), log=quiet)
  with pytest.raises(ConfigError, match="config.momentum=0.9: not a parameter"):
    mnistjax.train(CFG.replace(momentum=0.9), dataset=ds, model=Net(), optimizer=adamw,
                   log=quiet)


def test_a_loss_and_metrics_of_your_own_land_in_metrics_jsonl_and_writers_get_every_record(
    tmp_path):
  ds, seen = own_data(), []

  def top2(logits, labels):
    return (jax.lax.top_k(logits, 2)[1] == labels[:, None]).any(-1)

  def smoothed(logits, labels):
    return optax.softmax_cross_entropy(logits, optax.smooth_labels(
        jax.nn.one_hot(labels, logits.shape[-1]), 0.1))

  mnistjax.train(CFG, {"seed": (0, 1)}, str(tmp_path / "run"), ds, model=Net(),
                 loss=smoothed, metrics={"top2": top2},
                 writers=[lambda stream, record: seen.append((stream, record))], log=quiet)
  run = tmp_path / "run"
  metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
  train_log = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
  assert seen == [("metrics", r) if "test_loss" in r else ("train_log", r)
                  for r in _in_order(metrics, train_log, seen)]
  assert len(seen) == len(metrics) + len(train_log)
  last = metrics[-1]
  assert 0 <= last["test_top2"] <= 1 and last["test_top2"] >= last["test_accuracy"] / 100
  assert "train_top2" in last and "test_objective" in last
  # The objective is the smoothed loss; the reported test loss stays the cross-entropy.
  assert last["test_objective"] != last["test_loss"]
  assert train_log[0]["members"] == ["seed=0", "seed=1"]


def _in_order(metrics, train_log, seen):
  """The file records in the order the writer saw their kinds."""
  m, t = iter(metrics), iter(train_log)
  return [next(m) if stream == "metrics" else next(t) for stream, _ in seen]


def _events(folder: pathlib.Path) -> dict[str, list[tuple[int, float]]]:
  """The scalars of TensorBoard event files (TFRecord frames of Event protos)."""
  from tensorboardX.proto import event_pb2  # pylint: disable=g-import-not-at-top
  scalars: dict[str, list[tuple[int, float]]] = {}
  for path in folder.glob("events.out.tfevents.*"):
    raw = path.read_bytes()
    offset = 0
    while offset < len(raw):
      (length,) = struct.unpack("<Q", raw[offset:offset + 8])
      event = event_pb2.Event.FromString(raw[offset + 12:offset + 12 + length])
      offset += 12 + length + 4
      for value in event.summary.value:
        scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
  return scalars


def test_tensorboard_writer_writes_each_members_scalars(tmp_path):
  pytest.importorskip("tensorboardX")
  writer = mnistjax.TensorBoardWriter(tmp_path / "tb")
  result = mnistjax.train(CFG, {"seed": (0, 1)}, dataset=own_data(), model=Net(),
                          writers=[writer], log=quiet)
  writer.close()
  for k, member in enumerate(["seed=0", "seed=1"]):
    scalars = _events(tmp_path / "tb" / member)
    own = [r for r in result.history if r["member"] == member]
    assert [v for _, v in scalars["test/accuracy"]] == pytest.approx(
        [r["test_accuracy"] for r in own])
    assert [s for s, _ in scalars["test/accuracy"]] == [r["step"] for r in own]
    assert len(scalars["train/loss"]) == len(result.train_log)  # one per log interval
    assert [v for _, v in scalars["train_set/loss"]] == pytest.approx(
        [r["train_loss"] for r in own])
    assert scalars["train/loss"][-1][1] == pytest.approx(result.train_log[-1]["loss"][k])


@pytest.mark.parametrize("bad, match", [
    (lambda x, y, a, b: (x, np.where(np.arange(len(y)) == 7, 9, y), a, b),
     r"train labels: label 9 at index 7 is out of range 0..4 \(5 classes\)"),
    (lambda x, y, a, b: (x, y, a, b - 1 - b), r"test labels: label -1 at index 0"),
    (lambda x, y, a, b: (x * 4, y, a * 4, b), r"float pixels in \[2.*e-05, 3.99.*\]: not \[0, "
                                              r"1\] or \[0, 255\]; give value_range"),
    (lambda x, y, a, b: (x, y, a[:, :8], b), r"train images are \(12, 12, 3\) but test "
                                             r"images \(8, 12, 3\)"),
    (lambda x, y, a, b: (x, y.astype(float), a, b), r"train labels: expected integer"),
    (lambda x, y, a, b: (x, y[:-1], a, b), r"train: 90 images but 89 labels"),
])
def test_bad_arrays_are_one_line_naming_the_fix(bad, match):
  with pytest.raises(DataError, match=match) as e:
    data.from_arrays(*bad(*arrays()), class_names=[f"c{i}" for i in range(5)])
  assert "\n" not in str(e.value)


def test_float_and_uint8_images_of_one_picture_train_the_same(tmp_path):
  floats = arrays()
  as_uint8 = [(a * 255).round().astype(np.uint8) if a.dtype == np.float32 else a
              for a in floats]
  in_unit = [a.astype(np.float32) / 255 if a.dtype == np.uint8 else a for a in as_uint8]
  a = data.from_arrays(*as_uint8)
  b = data.from_arrays(*in_unit)  # [0, 1], detected
  assert a.value_range == (0.0, 255.0) and b.value_range == (0.0, 1.0)
  np.testing.assert_allclose(data.normalization("auto", a), data.normalization("auto", b)[:2]
                             + (0.0, 255.0), rtol=1e-6)
  ra = mnistjax.train(CFG.replace(epochs=1), dataset=a, model=Net(), log=quiet)
  rb = mnistjax.train(CFG.replace(epochs=1), dataset=b, model=Net(), log=quiet)
  assert ra.history[-1]["test_loss"] == pytest.approx(rb.history[-1]["test_loss"], rel=1e-4)


def test_a_model_that_does_not_fit_the_data_or_the_contract_is_one_line():
  """(A module whose __call__ takes no `train`, as the CNN of Flax's quick start, trains.)"""
  ds = own_data()

  class Seven(Net):
    classes: int = 7

  class NoTrain(nn.Module):
    @nn.compact
    def __call__(self, x):
      return nn.Dense(5)(x.reshape((x.shape[0], -1)))

  with pytest.raises(ConfigError, match=r"Seven maps a batch of 2 images \(12, 12, 3\) to "
                                        r"\(2, 7\); it must give logits of shape \(2, 5\)"):
    mnistjax.train(CFG, dataset=ds, model=Seven(), log=quiet)
  assert mnistjax.train(CFG.replace(epochs=1), dataset=ds, model=NoTrain(), log=quiet).history
  with pytest.raises(ConfigError, match="give a flax.linen.Module instance"):
    mnistjax.train(CFG, dataset=ds, model=Net, log=quiet)
  with pytest.raises(ConfigError, match="sweep of dropout: NoDropout has no field `dropout`"):
    class NoDropout(nn.Module):
      @nn.compact
      def __call__(self, x, train: bool):
        return nn.Dense(5)(x.reshape((x.shape[0], -1)))
    mnistjax.train(CFG, {"dropout": (0.1, 0.2)}, dataset=ds, model=NoDropout(), log=quiet)
  with pytest.raises(ConfigError, match=r"must be a str \(a name\); give your own to train: "
                                        r"mnistjax.train\(config, model=...\)"):
    mnistjax.train(Config(model=Net()), dataset=ds, log=quiet)
  with pytest.raises(ConfigError, match="settings of the built-in models"):
    mnistjax.train(CFG.replace(activation="tanh"), dataset=ds, model=Net(), log=quiet)


def test_a_batchnorm_model_without_mask_never_sees_a_padded_batch():
  ds = own_data(n_train=70)  # batches of 32: 32, 32, 6
  run = driver.setup(CFG, ds, None, None, driver.Parts(model=Net()))
  members, keys = mnistjax.step.init_members(run.model, run.group, run.steps_per_epoch,
                                             None, ds.image_shape)
  trainer = driver.Trainer(run, members, keys, 0)
  sizes = [len(unit[0]["label"]) for unit, _ in trainer.units(1)]
  assert sizes == [32, 32, 6] and not trainer.pad
  lenet = driver.setup(Config(batch_size=32), data.Dataset(
      "mnist", data.Split(np.zeros((70, 28, 28), np.uint8), np.zeros(70, np.uint8)),
      data.Split(np.zeros((10, 28, 28), np.uint8), np.zeros(10, np.uint8)), "zeros"))
  members, keys = mnistjax.step.init_members(lenet.model, lenet.group, lenet.steps_per_epoch)
  assert driver.Trainer(lenet, members, keys, 0).pad  # LeNet takes the mask: one shape


def test_own_idx_files_of_any_count_with_verify_data_false(tmp_path, monkeypatch):
  folder = tmp_path / "mine"
  folder.mkdir()
  rng = np.random.default_rng(0)
  for images, labels, n in (("train-images-idx3-ubyte", "train-labels-idx1-ubyte", 300),
                            ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte", 50)):
    (folder / images).write_bytes(bytes([0, 0, 8, 3]) + struct.pack(">III", n, 28, 28)
                                  + rng.integers(0, 256, n * 784, dtype=np.uint8).tobytes())
    (folder / labels).write_bytes(bytes([0, 0, 8, 1]) + struct.pack(">I", n)
                                  + rng.integers(0, 10, n, dtype=np.uint8).tobytes())
  ds = data.load("mnist", str(folder), verify=False)
  assert len(ds.train) == 300 and len(ds.test) == 50
  with pytest.raises(DataError, match="--verify_data=false"):
    data.load("mnist", str(folder), verify=True)


def test_command_line_trains_a_module_named_by_its_import_path(tmp_path):
  (tmp_path / "my_models.py").write_text(textwrap.dedent("""
      import flax.linen as nn

      class Tiny(nn.Module):
        dropout: float = 0.0

        @nn.compact
        def __call__(self, x, train: bool):
          x = nn.Dropout(self.dropout, deterministic=not train)(x.reshape((x.shape[0], -1)))
          return nn.Dense(10)(x)
      """))
  cmd = [sys.executable, str(REPO / "experiments" / "run.py"), "--model=my_models:Tiny",
         "--train_limit=256", "--test_limit=128", "--epochs=1", "--sweep=dropout=0.0,0.5",
         f"--workdir={tmp_path / 'run'}"]
  done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-2000:]
  assert "my_models:Tiny on mnist" in done.stdout
  assert mnistjax.load(tmp_path / "run", model=_import_tiny(tmp_path)).history[-1]["epoch"] == 1
  missing = subprocess.run(cmd[:2] + ["--model=my_models:Nope"] + cmd[3:-1]
                           + [f"--workdir={tmp_path / 'other'}"], cwd=tmp_path,
                           capture_output=True, text=True, timeout=600)
  assert missing.returncode == 2 and missing.stderr.strip().count("\n") == 0
  assert "my_models has no Nope" in missing.stderr
  assert not (tmp_path / "other").exists()  # refused before the folder was made


def _import_tiny(folder: pathlib.Path):
  sys.path.insert(0, str(folder))
  try:
    import my_models  # pylint: disable=g-import-not-at-top,import-error
    return my_models.Tiny()
  finally:
    sys.path.remove(str(folder))


def test_result_dataframe_without_pandas_names_the_extra(monkeypatch):
  monkeypatch.setitem(sys.modules, "pandas", None)
  result = mnistjax.Result(config=Config(), members=[], model=Net(), history=[])
  with pytest.raises(ConfigError, match=r"mnistjax\[pandas\]"):
    result.dataframe()


def test_checkpoint_record_names_the_state_structure(tmp_path):
  ds = own_data()
  mnistjax.train(CFG.replace(epochs=1), dataset=ds, model=Net(), workdir=str(tmp_path / "r"),
                 log=quiet)
  ckpt = checkpoint.Checkpoints(tmp_path / "r" / "checkpoints")
  try:
    record = ckpt.manager.restore(1, args=checkpoint.ocp.args.Composite(
        record=checkpoint.ocp.args.JsonRestore()))["record"]
  finally:
    ckpt.close()
  assert len(record["structure"]) == 64


@pytest.mark.parametrize("shape, value_range", [((8, 8, 1), (0.0, 1.0)), ((8, 8, 3), (0.0, 255.0)),
                                                ((8, 8), (0.0, 255.0))])
def test_the_prediction_grid_draws_images_of_any_channels_and_range(tmp_path, shape,
                                                                      value_range):
  images = np.random.default_rng(0).random((4, *shape)) * value_range[1]
  labels = np.arange(4)
  plots.prediction_grid(images, labels, labels, ["a", "b", "c", "d"],
                                 tmp_path / "grid.png", value_range=value_range)
  assert (tmp_path / "grid.png").stat().st_size > 1000


def test_an_optimizer_named_by_its_import_path_is_checked_as_one_given(tmp_path, monkeypatch):
  (tmp_path / "my_opts.py").write_text("import optax\nfixed = optax.sgd(0.05)\n"
                                       "def adam(learning_rate):\n"
                                       "  return optax.adam(learning_rate)\n")
  monkeypatch.chdir(tmp_path)
  ds = own_data()
  with pytest.raises(ConfigError, match="sweep of lr: an optimizer given as a transformation"):
    mnistjax.train(Config(optimizer="my_opts:fixed", epochs=1), {"lr": (0.1, 0.01)},
                   dataset=ds, model=Net(), log=quiet)
  with pytest.raises(ConfigError, match="sweep of momentum: the optimizer you gave"):
    mnistjax.train(Config(optimizer="my_opts:adam", epochs=1), {"momentum": (0.1, 0.9)},
                   dataset=ds, model=Net(), log=quiet)
  with pytest.raises(ConfigError, match="config.beta1=0.5: not a parameter"):
    mnistjax.train(Config(optimizer="my_opts:adam", beta1=0.5), dataset=ds, model=Net(),
                   log=quiet)


def test_resume_and_load_compare_the_modules_own_settings(tmp_path):
  ds = own_data()
  mnistjax.train(CFG.replace(epochs=1), dataset=ds, model=Net(dropout=0.1),
                 workdir=str(tmp_path / "run"), log=quiet)
  with pytest.raises(WorkdirError, match=r"another model \(dropout 0.1 -> 0.9\)"):
    mnistjax.train(CFG, dataset=ds, model=Net(dropout=0.9), workdir=str(tmp_path / "run"),
                   resume=True, log=quiet)
  with pytest.raises(ConfigError, match=r"trained test_own:Net with its settings classes=5, dropout=0.1"):
    mnistjax.load(tmp_path / "run")  # importable, but its defaults are not what trained
  assert mnistjax.load(tmp_path / "run", model=Net(dropout=0.1)).state is not None
  # A transformation object: load asks for it.
  mnistjax.train(CFG.replace(epochs=1), dataset=ds, model=Net(), optimizer=optax.adam(1e-3),
                 workdir=str(tmp_path / "adam"), log=quiet)
  with pytest.raises(ConfigError, match=r"load\(workdir, optimizer=...\)"):
    mnistjax.load(tmp_path / "adam", model=Net())
  assert mnistjax.load(tmp_path / "adam", model=Net(), optimizer=optax.adam(1e-3)).state


def test_a_failing_module_and_other_variable_collections_are_one_line():
  ds = own_data()

  class Flat(nn.Module):  # written for 28 x 28 x 1 images
    @nn.compact
    def __call__(self, x, train: bool):
      return nn.Dense(5)(x.reshape((x.shape[0], 784)))

  class Counting(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool):
      scale = self.variable("constants", "scale", lambda: jax.numpy.ones(()))
      return nn.Dense(5)(x.reshape((x.shape[0], -1))) * scale.value

  with pytest.raises(ConfigError, match=r"Flat fails on a batch of images \(12, 12, 3\)") as e:
    mnistjax.train(CFG, dataset=ds, model=Flat(), log=quiet)
  assert "\n" not in str(e.value)
  with pytest.raises(ConfigError, match="Counting keeps variables in constants"):
    mnistjax.train(CFG, dataset=ds, model=Counting(), log=quiet)
  with pytest.raises(ConfigError, match="other than loss, accuracy, objective, seconds"):
    mnistjax.train(CFG, dataset=ds, model=Net(), metrics={"seconds": lambda z, y: y}, log=quiet)


def test_a_writer_that_fails_is_dropped_in_one_line_and_the_run_goes_on(tmp_path):
  lines, seen = [], []

  def broken(stream, record):
    raise OSError("disk gone")

  result = mnistjax.train(CFG, dataset=own_data(), model=Net(), log=lines.append,
                          writers=[broken, lambda stream, record: seen.append(stream)])
  assert result.history[-1]["epoch"] == 2
  assert sum("writer" in line and "broken failed (OSError: disk gone)" in line
             for line in lines) == 1
  assert seen.count("metrics") == 3  # the other writer got every record


def test_data_given_by_hand_with_float_pixels_out_of_its_range_is_one_line():
  x, y, a, b = arrays()
  floats = data.Dataset("mnist", data.Split(x[..., 0], y), data.Split(a[..., 0], b), "mine")
  with pytest.raises(DataError, match=r"float pixels in \[.*\] but the dataset's value_range "
                                      r"is \(0.0, 255.0\); build it with mnistjax.from_arrays"):
    mnistjax.train(CFG, dataset=floats, log=quiet)
  ok = data.from_arrays(x, y, a, b, name="k-mnist")  # any plain name
  assert mnistjax.train(CFG.replace(epochs=1), dataset=ok, model=Net(), log=quiet).config.dataset == "k-mnist"
  assert data.fingerprint(data.from_arrays(x, y.astype(np.uint8), a, b).train) == (
      data.fingerprint(data.from_arrays(x, y.astype(np.int64), a, b).train))


def test_a_dropout_sweep_of_an_own_module_compiles_one_program_per_rate():
  ds = own_data()
  run = driver.setup(CFG, ds, {"seed": (0, 1), "dropout": (0.0, 0.5)}, None,
                     driver.Parts(model=Net()))
  members, keys = mnistjax.step.init_members(run.model, run.group, run.steps_per_epoch,
                                             None, ds.image_shape)
  trainer = driver.Trainer(run, members, keys, 0)
  assert len(trainer._steps) == 4 and len(set(map(id, trainer._steps))) == 2  # pylint: disable=protected-access
