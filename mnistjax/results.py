"""What a run gives back: `Result`, returned by `mnistjax.train` and rebuilt from a workdir
by `mnistjax.load`."""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from typing import Any

import flax.linen as nn
import numpy as np

from mnistjax import config as config_lib
from mnistjax import data, models, step
from mnistjax.checkpoint import Checkpoints, latest_epoch
from mnistjax.config import Config, settings_name
from mnistjax.errors import ConfigError, WorkdirError
from mnistjax.files import read_jsonl


@dataclasses.dataclass
class Result:
  """A run of K >= 1 members (a plain run is one member with no swept setting).

  history: one row per epoch and member, as metrics.jsonl holds them (epoch 0: before
    training); a sweep's rows carry "member" and the swept values.
  train_log: the mean training loss of every log interval (train_log.jsonl's rows; a
    sweep's "loss" is a list, one per member).
  summary: as summary.json: per member its final record, best test accuracy, divergence and
    classification report; timings. None for a run that did not finish.
  state: the members' train states stacked along a leading axis (None where a workdir kept
    no checkpoint); `variables(k)` gives member k's for `model.apply`.
  alive: per member, False where it diverged and was frozen.
  predictions: K x n_test predicted classes of the test set after the last epoch (None for
    a run that did not finish).
  """
  config: Config
  members: list[config_lib.Member]
  model: nn.Module
  history: list[dict[str, Any]]
  train_log: list[dict[str, Any]] = dataclasses.field(default_factory=list)
  summary: dict[str, Any] | None = None
  state: step.TrainState | None = None
  alive: np.ndarray | None = None
  predictions: np.ndarray | None = None
  workdir: pathlib.Path | None = None

  @property
  def final(self) -> list[dict[str, Any]]:
    """Each member's last epoch record."""
    last = max(r["epoch"] for r in self.history)
    return [r for r in self.history if r["epoch"] == last]

  def variables(self, member: int = 0) -> dict[str, Any]:
    """Member's model variables ({"params": ..., "batch_stats": ...}) for model.apply."""
    if self.state is None:
      raise ConfigError("this result has no state: its workdir kept no checkpoint")
    return step.variables(step.unstack(self.state, member))

  def dataframe(self):
    """The history as a pandas DataFrame (pandas is an optional extra: mnistjax[pandas])."""
    try:
      import pandas  # pylint: disable=g-import-not-at-top
    except ImportError:
      raise ConfigError('Result.dataframe() needs pandas: python -m pip install '
                        '"mnistjax[pandas]" (or pandas)') from None
    return pandas.DataFrame(self.history)

  def __repr__(self) -> str:
    names = ", ".join(m.name for m in self.members if m.name) or "one member"
    final = ", ".join(f"{r['test_accuracy']:.2f}%" for r in self.final)
    where = f", workdir={str(self.workdir)!r}" if self.workdir else ""
    return (f"Result({self.config.model} on {self.config.dataset}, {names}: epoch "
            f"{self.final[0]['epoch']} test accuracy {final}{where})")


def load(workdir: str | os.PathLike, model: nn.Module | None = None, optimizer=None) -> Result:
  """The Result of a finished or interrupted run from its workdir: history, summary and
  predictions where written, and the state of its last checkpoint.

  model, optimizer: a run of your own model or optimiser needs them again, as given to
  train (a model named by an import path, --model=package.module:Name, is imported)."""
  if not isinstance(workdir, (str, os.PathLike)):
    raise ConfigError(f"load({workdir!r}): give the path of a run's workdir")
  path = pathlib.Path(workdir).expanduser().absolute()
  if path.exists() and not path.is_dir():
    raise ConfigError(f"{path} is a file, not a run's folder; give the --workdir of a run")
  try:
    saved = json.loads((path / "config.json").read_text())
  except FileNotFoundError:
    raise ConfigError(f"{path} holds no run (no config.json); give the --workdir of a "
                      "run") from None
  except (OSError, ValueError) as e:  # ValueError: not JSON, or not UTF-8
    raise WorkdirError(f"{path / 'config.json'} can't be read ({_reason(e)}); the run's "
                       "settings are lost: retrain it") from None
  history = read_jsonl(path / "metrics.jsonl")
  try:
    config = Config.from_dict(saved["config"]).validate()
    axes = {k: tuple(saved["sweep"][k]) for k in _sweep_order(saved, history)}
    group = config_lib.members(config, config_lib.check_sweep(axes) or None)
  except (ConfigError, KeyError, TypeError, AttributeError) as e:
    raise WorkdirError(f"{path / 'config.json'} is not a run's config ({_reason(e)}); the "
                       "run's settings are lost: retrain it") from None
  model = _model(config, saved, model, path)
  summary_path, predictions_path = path / "summary.json", path / "predictions.npy"
  result = Result(config=config, members=group, model=model, history=history,
                  train_log=read_jsonl(path / "train_log.jsonl"), workdir=path,
                  summary=_read_json(summary_path) if summary_path.exists() else None,
                  predictions=np.load(predictions_path) if predictions_path.exists() else None)
  if (path / "checkpoints").is_dir():
    ckpt = Checkpoints(path / "checkpoints")
    try:
      if latest_epoch(path / "checkpoints") is not None:
        steps = data.num_train_steps(saved["train_examples"], config.batch_size,
                                     config.drop_remainder)
        if optimizer is None and models.is_path(config.optimizer):
          optimizer = _imported(config.optimizer, "optimizer", path)
        own = None if optimizer is None else step.own_optimizer(optimizer, config, tuple(axes))
        image_shape = tuple(saved.get("image_shape", (28, 28, 1)))
        template, _ = step.init_members(model, group, steps, own, image_shape)
        _, members, _ = ckpt.restore_latest(template)  # verified against its checksum
        result.state, result.alive = members.state, np.asarray(members.alive)
    finally:
      ckpt.close()
  return result


def _model(config: Config, saved: dict[str, Any], model, path: pathlib.Path) -> nn.Module:
  """The run's model: the one given, or the registered or importable one its config names."""
  if model is not None:
    if not isinstance(model, nn.Module):
      raise ConfigError(f"load(model={model!r}): give the flax.linen.Module the run trained")
    return model
  try:
    model = models.build(config.model, len(saved.get("class_names", range(10))),
                         **config.model_settings())
  except ConfigError as e:
    raise ConfigError(f"{path} trained {config.model}, which can't be built here ({e}); give "
                      "it: mnistjax.load(workdir, model=YourModule(...))") from None
  trained = saved.get("model")
  if models.is_path(config.model) and isinstance(trained, dict) and (
      models.settings(model) != trained):  # built with its defaults, it trained with others
    raise ConfigError(f"{path} trained {config.model} with its settings "
                      f"{settings_name(trained, ', ')}; give it: mnistjax.load(workdir, "
                      "model=YourModule(...))")
  return model


def _imported(name: str, what: str, path: pathlib.Path):
  """The object a run named by its import path, or the one line asking for it."""
  try:
    return models.load_object(name, what)
  except ConfigError:
    raise ConfigError(f"{path} trained with {what} {name}, which can't be imported here; give "
                      f"it: mnistjax.load(workdir, {what}=...)") from None


def _reason(e: BaseException) -> str:
  return f"{type(e).__name__}: {str(e).splitlines()[0]}" if str(e) else type(e).__name__


def _read_json(path: pathlib.Path) -> Any:
  try:
    return json.loads(path.read_text())
  except (OSError, ValueError) as e:
    raise WorkdirError(f"{path} can't be read ({_reason(e)}); delete it and rerun the run "
                       "with --resume to write it again") from None


def _sweep_order(saved: dict[str, Any], history: list[dict[str, Any]]) -> list[str]:
  """The sweep's axes in the run's order, which orders its members (config.json's "sweep" has
  its keys sorted). A run written before "sweep_order" was kept: the order of the settings in
  its members' names."""
  if "sweep_order" in saved:
    return saved["sweep_order"]
  named = next((r["member"] for r in history if r.get("member")), "")
  order = [part.split("=")[0] for part in named.split(",") if "=" in part]
  return order if sorted(order) == sorted(saved.get("sweep", {})) else list(saved.get("sweep", {}))
