"""The training program: one run of K >= 1 members, from its config to its results.

`train(config)` reads top to bottom: set up (the data, the model, the members and
their optimiser), restore from the workdir's checkpoint where asked, then the
loop (each epoch: the steps, the training loss logged every `log_every` steps,
every member evaluated, a checkpoint), then finish (summary, figures, a
`Result`). A plain run is a sweep of one member: the same program, the same
numbers.

How the members step (`Trainer`): on CPU one after another, each through the
same compiled single-member program over a window of WINDOW_STEPS batches
(XLA:CPU's speed depends on a step's working set staying in cache, and a call's
cost is paid once per window); on GPU/TPU all together, vmapped, and with
`--epoch_loop=scan` (the default there) each epoch one `lax.scan` program over
the dataset resident on the device. Every way takes the same steps on the same
batches (tests).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import io
import itertools
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import tqdm

from mnistjax import checkpoint, data, errors, files, metrics, models, parallel, plots, step
from mnistjax import config as config_lib
from mnistjax.checkpoint import Checkpoints
from mnistjax.config import Config, Member
from mnistjax.errors import ConfigError, Interrupted, MnistjaxError, NonFiniteLoss, WorkdirError
from mnistjax.results import Result
from mnistjax.workdir import CHECKPOINTS, Workdir


def train(config: Config, sweep: dict[str, tuple] | None = None,
          workdir: str | os.PathLike | None = None, dataset: data.Dataset | None = None, *,
          model=None, optimizer=None, loss=None, metrics=None, writers=(),
          resume: bool = False, overwrite: bool = False,
          log: Callable[[str], None] = print) -> Result:
  """Trains per config, evaluating before training and after every epoch.

  Args:
    config: the run's settings (validated here; an argument of the wrong type is a
      ConfigError too).
    sweep: settings to sweep (config.SWEEPABLE), each with its values ({"dropout": (0.25,
      0.5)}); their product
      are the members, trained together, each evaluated and reported on its own. None: the
      config's one member.
    workdir: where every result is written (None: nowhere, and no checkpoints). A folder
      that holds an earlier run needs resume or overwrite.
    dataset: data to use instead of loading config.dataset: a data.Dataset, e.g. your own
      arrays through mnistjax.data.from_arrays.
    model: a flax.linen.Module to train instead of config.model: `__call__(x, train)` from
      B x H x W x C images to B x classes logits (docs/models.md, "Your own model").
    optimizer: instead of config.optimizer, an optax.GradientTransformation, or a function
      of `learning_rate` (and `momentum`, `weight_decay` where it takes them, for sweeps)
      that returns one.
    loss: the training loss, a function (logits B x K, labels B) -> B losses (default:
      softmax cross-entropy); reported per epoch as "objective" beside the cross-entropy.
    metrics: more evaluation metrics, {name: function (logits, labels) -> B values}, each
      reported per epoch as test_<name> (and train_<name>), the mean over the split.
    writers: functions called with (stream, record) for every record the run writes to its
      JSONL files ("metrics", "train_log"), e.g. mnistjax.TensorBoardWriter(logdir).
    resume: continue from the workdir's last checkpoint; the settings that may change are
      config.RESUME_MAY_CHANGE.
    overwrite: replace the workdir's earlier run (its files are kept aside until this run
      has a checkpoint of its own).
    log: where the printed lines go (they are also appended to workdir/log.txt).

  Returns:
    The Result: per-epoch history, final state, test predictions, summary.

  Raises:
    ConfigError, DataError, WorkdirError: bad settings, data or folder (one line each).
    NonFiniteLoss: every member diverged; the last finite epoch's checkpoint is kept.
    Interrupted: Ctrl-C, SIGTERM or SIGHUP; the last finished epoch's checkpoint is kept for
      --resume.
  """
  wall_start = time.perf_counter()
  _check_arguments(config, workdir, dataset, resume, overwrite)
  parts = Parts.check(model, optimizer, loss, metrics, writers)
  config.validate()  # (the types first: a path is a str)
  if models.is_path(config.model) and model is None:  # imported now: before the folder is made
    models.load_object(config.model, "--model")
  if models.is_path(config.optimizer) and optimizer is None:  # checked as one given
    parts = dataclasses.replace(parts, optimizer=models.load_object(config.optimizer,
                                                                    "--optimizer"))
  config = parts.label(config).validate()
  if dataset is not None and dataset.name not in data.DATASETS:  # your own data, by its name
    config = config.replace(dataset=dataset.name)
  elif config.dataset not in data.DATASETS:  # (the folder is not made for a bad name)
    raise ConfigError(f"--dataset={config.dataset}: choose one of: {', '.join(data.DATASETS)} "
                      "(your own arrays: train(..., dataset=mnistjax.data.from_arrays(...)))")
  sweep = config_lib.check_sweep(sweep) or None
  if resume and overwrite:
    raise ConfigError("--resume continues the workdir's run and --overwrite replaces it: "
                      "give one of them")
  if resume and not workdir:
    raise ConfigError("--resume needs the --workdir of the run to continue")
  if resume and not config.checkpoint:
    raise ConfigError("--resume continues from a checkpoint: drop --checkpoint=false")
  # The folder first: a bad one fails before the data is loaded or anything compiles.
  mode = "resume" if resume else "overwrite" if overwrite else "new"
  out = Workdir(workdir, log).open(mode) if workdir else None
  try:
    # From here a Ctrl-C is a request the loop honours between two steps (never inside a
    # checkpoint's save), keeping the last finished epoch's checkpoint; a second one stops at once.
    with _StopRequest() as stop:
      run = setup(config, dataset, sweep, parallel.make(config.devices), parts)  # devices 1st
      return _train(run, out, log, stop, wall_start)
  except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM / SIGHUP (errors.Signal)
    signum = getattr(e, "signum", signal.SIGINT)
    error = Interrupted(_stopped("interrupted" if signum == signal.SIGINT else
                                 f"stopped by {signal.Signals(signum).name}", out), signum)
    if out:
      out.log_only(f"error: {error}")
    raise error from None
  except MnistjaxError as e:
    if out:
      out.log_only(f"error: {e}")
    raise
  finally:
    if out:
      out.close()


def _check_arguments(config, workdir, dataset, resume, overwrite) -> None:
  """train's arguments of the wrong type, as one line (the settings are Config.validate's)."""
  if not isinstance(config, Config):
    raise ConfigError(f"train(config={config!r}): give a mnistjax.Config, e.g. "
                      "mnistjax.Config(model='lenet')")
  if workdir is not None and not isinstance(workdir, (str, os.PathLike)):
    raise ConfigError(f"train(workdir={workdir!r}): give a folder's path (a str or a "
                      "pathlib.Path), or None")
  if dataset is not None and not isinstance(dataset, data.Dataset):
    raise ConfigError(f"train(dataset={dataset!r}): give a mnistjax.data.Dataset, or None "
                      "(the dataset is Config.dataset: Config(dataset='fashion_mnist'))")
  for name, value in (("resume", resume), ("overwrite", overwrite)):
    if not isinstance(value, bool):
      raise ConfigError(f"train({name}={value!r}): must be True or False")


def _train(run: Run, out: Workdir | None, log, stop: _StopRequest, wall_start: float
           ) -> Result:
  # -- Set up: the members (each its own optimiser state), their step, the evaluation.
  config = run.config
  members, keys = step.init_members(run.model, run.group, run.steps_per_epoch, run.optimizer,
                                    run.dataset.image_shape)
  report = _Report(run.group, out, log, run.parts.writers)
  start = _Start()
  if out and out.mode == "resume":
    with stop.hold():
      members, start = _restore(run, out, members, report)
  num_params = models.count_params(step.unstack(members.state.params, 0))
  if out:
    _write_config(out, run, num_params)
  report.log(_first_line(run, num_params))
  if start.resumed_line:
    report.log(start.resumed_line)
  trainer = Trainer(run, members, keys, start.examples_seen)
  eval_step = parallel.jit_step(functools.partial(step.eval_step, model=run.net), run.dp)

  def evaluate(trainer, epoch, predictions):  # the module's, looked up now: tests replace it
    return _evaluate(run, eval_step, trainer, epoch, predictions)

  # -- The loop: an epoch of steps, its evaluation, its checkpoint.
  history, records = start.history, []
  ckpt = Checkpoints(out.path / CHECKPOINTS) if out and config.checkpoint else None
  try:
    if start.epoch == 0:
      records = evaluate(trainer, 0, predictions=config.epochs == 0)
      history += report.epoch(records, "  (untrained)")
    for epoch in range(start.epoch + 1, config.epochs + 1):
      t0 = time.perf_counter()
      with _progress(run.steps_per_epoch, f"epoch {epoch}/{config.epochs}") as bar:
        for steps, interval in trainer.epoch(epoch):
          bar.update(steps)
          if interval:
            report.interval(interval, bar)
          if steps:  # after each step taken (a scanned epoch's, with its last interval)
            stop.check()
      train_seconds = time.perf_counter() - t0
      records = evaluate(trainer, epoch, predictions=epoch == config.epochs)
      for record in records:
        record.update(train_seconds=train_seconds, seconds=time.perf_counter() - t0)
      trainer.freeze(report.evaluation(records))  # a member whose evaluation is not finite
      history += report.epoch(records)
      if ckpt:
        with stop.hold():
          ckpt.save(epoch, trainer.members, {"epoch": epoch, **_run_record(run),
                                             "examples_seen": trainer.examples_seen})
          out.replaced_done()
  except (NonFiniteLoss, WorkdirError) as e:  # say what is kept, and how to go on
    raise type(e)(f"{e}; {_stopped('stopped', out)}") from None
  finally:
    report.flush()
    if ckpt:
      with stop.hold():
        ckpt.close()
  if not records:  # resumed at the last epoch: nothing left to train
    records = evaluate(trainer, start.epoch, predictions=True)

  # -- Finish: the summary, the closing lines, the result files.
  predictions = np.stack([r.pop("predictions") for r in records])
  alive = np.atleast_1d(parallel.to_host(trainer.members.alive))
  summary = _summary(run, records, history, predictions, alive)
  summary.update(num_params=num_params, wall_seconds=time.perf_counter() - wall_start,
                 **trainer.timing(), backend=jax.default_backend(),
                 devices=run.dp.size if run.dp else 1)
  if report.plain:
    report.log(f"final test accuracy {records[-1]['test_accuracy']:.2f}%, wall "
               f"{summary['wall_seconds']:.1f}s" + (f", results in {out.path}" if out else ""))
  else:
    report.log(format_table(summary["members"]))
  if out and out.primary:
    _write_results(out, run, summary, history, predictions)
    out.replaced_done()
  return Result(config=config, members=run.group, model=run.model, history=history,
                train_log=report.train_log, summary=summary, state=trainer.members.state,
                alive=alive, predictions=predictions, workdir=out.path if out else None)


# ----------------------------------------------------------------------------- set up

@dataclasses.dataclass(frozen=True)
class Parts:
  """A researcher's own parts of a run (train's model, optimizer, loss, metrics and writers),
  each checked for its kind; None: the config's."""
  model: Any = None  # a flax.linen.Module
  optimizer: Any = None  # an optax.GradientTransformation, or a function returning one
  loss: Callable | None = None
  metrics: tuple[tuple[str, Callable], ...] = ()
  writers: tuple[Callable, ...] = ()

  @classmethod
  def check(cls, model, optimizer, loss, metrics, writers) -> Parts:
    if model is not None and not isinstance(model, nn.Module):
      raise ConfigError(f"train(model={model!r}): give a flax.linen.Module instance "
                        "(model=MyNet()), or None for config.model")
    if optimizer is not None and not (step.is_transformation(optimizer) or callable(optimizer)):
      raise ConfigError(f"train(optimizer={optimizer!r}): give an optax.GradientTransformation "
                        "or a function of learning_rate returning one")
    if loss is not None and not callable(loss):
      raise ConfigError(f"train(loss={loss!r}): give a function (logits, labels) -> one loss "
                        "per example")
    if metrics is None:
      metrics = {}
    if callable(metrics) or not hasattr(metrics, "__iter__") or isinstance(metrics, str):
      raise ConfigError(f"train(metrics={metrics!r}): give a dict of name -> function "
                        "(logits, labels) -> one value per example")
    named = (tuple(metrics.items()) if isinstance(metrics, Mapping)
             else tuple((getattr(f, "__name__", ""), f) for f in metrics))
    taken = {"loss", "accuracy", "objective", "seconds", "predictions"}  # a record's own
    for name, fn in named:
      if not (isinstance(name, str) and name.isidentifier()) or name in taken or not callable(fn):
        raise ConfigError(f"train(metrics=...): {name!r}: {fn!r}: each metric needs a name "
                          "that is an identifier other than loss, accuracy, objective, seconds "
                          "or predictions, and a function (logits, labels) -> one value per "
                          "example")
      taken.add(name)
    if writers is None:
      writers = ()
    if callable(writers) or isinstance(writers, str) or not hasattr(writers, "__iter__"):
      writers = (writers,)  # one writer
    writers = tuple(writers)
    for writer in writers:
      if not callable(writer):
        raise ConfigError(f"train(writers=...): {writer!r} is not callable; a writer is "
                          "called with (stream, record)")
    if loss is not None:
      named = (("objective", loss), *named)
    return cls(model, optimizer, loss, named, writers)

  def label(self, config: Config) -> Config:
    """config with its model and optimizer named after the objects given (so that config.json,
    the lines and the figures say what trained); refuses settings the objects make moot."""
    default = Config()
    if self.model is not None:
      name = _qualified(type(self.model))
      if config.model not in (default.model, name):
        raise ConfigError(f"config.model={config.model!r} and train(model=...): give the "
                          "model once")
      given = [k for k, v in config.model_settings().items() if v is not None]
      if given:
        raise ConfigError(f"{', '.join(given)}: settings of the built-in models; set them on "
                          f"your module instead ({type(self.model).__name__}(...))")
      config = config.replace(model=name)
    if self.optimizer is not None:
      transformation = step.is_transformation(self.optimizer)
      # A transformation object has no name of its own (its class is optax's): "own:..."
      # says so, and load asks for it; one given by its import path keeps that path.
      name = (config.optimizer if models.is_path(config.optimizer) else
              "own:optax_transformation" if transformation else _qualified(self.optimizer))
      if transformation and config.lr != default.lr:
        raise ConfigError(f"config.lr={config.lr}: an optax transformation has its learning "
                          "rate in it; give a function of it instead: lambda learning_rate: "
                          "optax.adam(learning_rate)")
      if config.optimizer not in (default.optimizer, name):
        raise ConfigError(f"config.optimizer={config.optimizer!r} and train(optimizer=...): "
                          "give the optimizer once")
      taken = (() if step.is_transformation(self.optimizer)
               else step.parameters(self.optimizer))
      for field in step.OPTIMIZER_SETTINGS:
        if getattr(config, field) != getattr(default, field) and not (
            field in ("momentum", "weight_decay") and field in taken):
          raise ConfigError(f"config.{field}={getattr(config, field)!r}: not a parameter of "
                            f"your optimizer {name}; set it there")
      config = config.replace(optimizer=name)
    return config

  def sweepable(self, axes: dict[str, tuple]) -> None:
    """A sweep of an optimiser setting needs an optimiser function that takes it by name."""
    if self.optimizer is None:
      return
    taken = (set() if step.is_transformation(self.optimizer)
             else set(step.parameters(self.optimizer)))
    for key in axes:
      names = {"lr": {"learning_rate", "lr"}}.get(key, {key})
      if key in ("lr", "momentum", "weight_decay") and not taken & names:
        raise ConfigError(
            f"sweep of {key}: the optimizer you gave does not take it; give a function of it, "
            f"e.g. lambda learning_rate, {key}: optax.sgd(learning_rate, ...)" if key != "lr"
            else "sweep of lr: an optimizer given as a transformation has its learning rate "
            "fixed; give a function of it: lambda learning_rate: optax.adam(learning_rate)")


def _qualified(obj) -> str:
  """"module:Name" of a class or function (a label; importable where it is not __main__)."""
  if not hasattr(obj, "__qualname__"):  # an object such as an optax transformation
    return f"{type(obj).__module__}:{type(obj).__qualname__}"
  return f"{obj.__module__}:{obj.__qualname__}"


@dataclasses.dataclass(frozen=True)
class Run:
  """A run's constants: what every part of the program reads and none changes."""
  config: Config
  model: Any  # a flax.linen.Module
  norm: data.Normalization
  dataset: data.Dataset
  group: list[Member]  # K >= 1 members, each with its own config
  axes: dict[str, tuple]  # the swept settings and their values ({} for a plain run)
  dp: parallel.DataParallel | None = None
  parts: Parts = Parts()
  optimizer: step.Own | None = None  # None: config.optimizer

  @property
  def net(self) -> step.Model:
    """The model as the steps use it."""
    return step.Model(self.model, self.norm, models.takes_mask(self.model), self.parts.loss,
                      self.parts.metrics, any(m.config.l2 for m in self.group))

  def member_nets(self) -> list[step.Model] | None:
    """Per member, its own model where each has its own static dropout rate (a swept
    nn.Dropout: one compiled program per rate); None where one program serves every member."""
    if "dropout" not in self.axes or models.traced_dropout(self.model):
      return None
    return [dataclasses.replace(self.net, module=self.model.clone(dropout=m.config.dropout))
            for m in self.group]

  @property
  def steps_per_epoch(self) -> int:
    return data.num_train_steps(len(self.dataset.train), self.config.batch_size,
                                self.config.drop_remainder)

  @property
  def plain(self) -> bool:
    """A plain run: one member, nothing swept (its records and lines carry no member)."""
    return _plain(self.group)

  @functools.cached_property
  def data_sha256(self) -> str:
    """The fingerprint of the training data (data.fingerprint), recorded for --resume."""
    return data.fingerprint(self.dataset.train)

  @property
  def per_member_data(self) -> bool:
    """Whether each member has its own data order: where the members' seeds differ (the seed
    sets initialisation, dropout and shuffling); else they share every batch."""
    return len({m.config.seed for m in self.group}) > 1


def setup(config: Config, dataset: data.Dataset | None = None,
          axes: dict[str, tuple] | None = None, dp: parallel.DataParallel | None = None,
          parts: Parts = Parts()) -> Run:
  """A run's constants: the data (loaded unless given), the model, the normalisation and the
  members of a validated config."""
  config.validate()
  if dataset is None:
    dataset = data.load(config.dataset, config.data_dir, verify=config.verify_data)
  if config.train_limit or config.test_limit:
    dataset = dataclasses.replace(
        dataset, train=dataset.train.take(config.train_limit or len(dataset.train)),
        test=dataset.test.take(config.test_limit or len(dataset.test)))
  if config.batch_size > len(dataset.train):
    raise ConfigError(f"--batch_size={config.batch_size} is larger than the training set "
                      f"({len(dataset.train)} examples); use --batch_size={len(dataset.train)} "
                      "or fewer")
  model = parts.model or models.build(config.model, dataset.num_classes,
                                      **config.model_settings())
  data.check_pixels(dataset)
  models.check(model, dataset.image_shape, dataset.num_classes)
  for name in ("train", "test"):  # labels a model with these classes can learn
    data.check_labels(getattr(dataset, name).labels, dataset.num_classes, f"{name} labels")
  if "dropout" in (axes or {}) and not models.traced_dropout(model) and not any(
      f.name == "dropout" for f in dataclasses.fields(model)):
    raise ConfigError(f"sweep of dropout: {type(model).__name__} has no field `dropout`; give "
                      "it one (dropout: float = 0.0, used as nn.Dropout(self.dropout))")
  parts.sweepable(axes or {})
  optimizer = parts.optimizer
  if optimizer is not None:
    optimizer = step.own_optimizer(optimizer, config, tuple(axes or ()))
  norm = data.normalization(config.normalization, dataset)
  return Run(config, model, norm, dataset, config_lib.members(config, axes), dict(axes or {}),
             dp, parts, optimizer)


@dataclasses.dataclass
class _Start:
  """Where a run starts: its first epoch to train, the examples seen and history so far."""
  epoch: int = 0
  examples_seen: int = 0
  history: list[dict[str, Any]] = dataclasses.field(default_factory=list)
  resumed_line: str = ""


def _restore(run: Run, out: Workdir, fresh: step.Members, report: _Report
             ) -> tuple[step.Members, _Start]:
  """The members of the workdir's last checkpoint, with this config's hyperparameters; the
  records past it dropped. Refuses a config, sweep or training data that would mix two runs."""
  ckpt = Checkpoints(out.path / CHECKPOINTS)
  try:
    # The checkpoint's own record of its run, over config.json (which may be gone or edited),
    # before the arrays are read; then again the record of the checkpoint restored, which
    # its checksum vouches for (the latest one's may be what was edited).
    _check_resume(run, out, ckpt.latest_record() or {})
    epoch, restored, record = ckpt.restore_latest(fresh, report.log)
    allowed = _check_resume(run, out, record)
  finally:
    ckpt.close()
  # Hyperparameters come from the config, also where the resumed run's flags changed them.
  members = restored.replace(state=step.with_hyperparameters(restored.state, fresh.state))
  last_step = int(np.max(parallel.to_host(members.state.step)))
  out.truncate_after(epoch, last_step)
  report.train_log = files.read_jsonl(out.path / "train_log.jsonl")
  line = f"resumed from the checkpoint of epoch {epoch} (step {last_step})"
  if allowed:
    line += "; changed since: " + ", ".join(f"{k} {_shown(a)} -> {_shown(b)}"
                                            for k, (a, b) in sorted(allowed.items()))
  return members, _Start(epoch, record["examples_seen"],
                         files.read_jsonl(out.path / "metrics.jsonl"), line)


def _check_resume(run: Run, out: Workdir, record: dict[str, Any]) -> dict[str, tuple]:
  """Raises WorkdirError (one line) where this run can't continue the one a checkpoint's record
  describes (config.json fills in what an older record lacks); returns the changes allowed."""
  saved = {**out.saved_config(), **record}
  settings, sweep = saved.get("config"), saved.get("sweep")
  allowed, refused = run.config.resume_changes(settings if isinstance(settings, dict) else {})
  axes = {k: list(v) for k, v in run.axes.items()}
  saved_axes = {k: list(v) for k, v in sweep.items()} if isinstance(sweep, dict) else axes
  if saved_axes != axes:
    refused["sweep"] = (saved_axes or "none", axes or "none")
  if refused:
    diff = ", ".join(f"{k} {_shown(a)} -> {_shown(b)}" for k, (a, b) in sorted(refused.items()))
    raise WorkdirError(f"--resume: {out.path} holds a run with other settings ({diff}); "
                       "those can't change when a run continues: give another --workdir, or "
                       "--overwrite")
  order = saved.get("sweep_order")
  if isinstance(order, list) and sorted(order) == sorted(axes) and order != list(axes):
    # The same axes in another order: the members' positions differ.
    given = " ".join(f"--sweep={k}={','.join(map(str, saved_axes[k]))}" for k in order)
    raise WorkdirError(f"--resume: {out.path} holds a sweep over {', '.join(order)} in that "
                       f"order, which names and places its members; give it in that order: "
                       f"{given}")
  trained_on = saved.get("train_data_sha256")  # None: a run from before it was recorded
  if trained_on is not None and trained_on != run.data_sha256:
    where = ("the arrays given" if run.dataset.source == "arrays" else
             f"the files in {run.dataset.source}")
    fix = ("the arrays it was trained on" if run.dataset.source == "arrays" else
           "the files it was trained on (--data_dir)")
    raise WorkdirError(f"--resume: {out.path} was trained on other data than {where} (the "
                       f"sha256 of the training images and labels differs); resume on {fix}, "
                       "or start again with --overwrite")
  # A model or loss of yours: its own settings (the config names only its class).
  for key, now in (("model", models.settings(run.model)), ("parts", _parts(run))):
    before = saved.get(key)
    if isinstance(before, dict) and before != now:
      diff = ", ".join(f"{k} {before.get(k)} -> {v}" for k, v in now.items()
                       if before.get(k) != v)
      raise WorkdirError(f"--resume: {out.path} holds a run of another {key} ({diff}); give "
                         "the one it was trained with, or --overwrite")
  return allowed


def _write_config(out: Workdir, run: Run, num_params: int) -> None:
  """config.json: every setting, the model's resolved fields, and facts about the run."""
  if not out.primary:
    return
  ds = run.dataset
  files.write_json(out.path / "config.json", {
      **_run_record(run),  # as every checkpoint's record
      "normalization": list(run.norm),
      "dataset_source": ds.source, "num_params": num_params,
      "train_examples": len(ds.train), "test_examples": len(ds.test),
      "image_shape": list(ds.image_shape), "class_names": list(ds.class_names),
      "jax_version": jax.__version__, "backend": jax.default_backend(),
      "devices": [str(d) for d in jax.devices()], "argv": sys.argv})


def _name_of(fn) -> str | None:
  return None if fn is None else getattr(fn, "__qualname__", repr(fn))


def _run_record(run: Run) -> dict[str, Any]:
  """What config.json and every checkpoint's record say of the run, for a resume to check:
  its settings, its members and the data it trains on."""
  return {"config": run.config.to_dict(),
          "sweep": {k: list(v) for k, v in run.axes.items()},
          "sweep_order": list(run.axes),  # JSON sorts keys; the order names the members
          "train_data_sha256": run.data_sha256,
          "model": models.settings(run.model), "parts": _parts(run)}


def _parts(run: Run) -> dict[str, Any]:
  return {"loss": _name_of(run.parts.loss),
          "metrics": [name for name, _ in run.parts.metrics if name != "objective"]}


def _first_line(run: Run, num_params: int) -> str:
  cfg, ds, norm = run.config, run.dataset, run.norm
  line = (f"{cfg.model} on {ds.name} ({len(ds.train)} train / {len(ds.test)} test, from "
          f"{ds.source}): {num_params:,} parameters, normalization mean {norm.mean:.4f} std "
          f"{norm.std:.4f}, {cfg.optimizer}"
          + ("" if run.optimizer and not run.optimizer.settings else f" lr {cfg.lr:g}")
          + f", {jax.default_backend()} backend")
  if run.dp:
    line += f", {run.dp.describe(cfg.batch_size)}"
  if not run.plain:
    line += f"; sweep of {len(run.group)} members" + (
        " in one program" if run.member_nets() is None else ", a program per dropout rate")
  return line


# ----------------------------------------------------------------------------- the steps

@dataclasses.dataclass(frozen=True)
class Interval:
  """Steps of an epoch whose training losses were pulled to the host together: per step
  its epoch, global step and examples seen, and the loss of every member and whether the
  member took the step (each steps x K)."""
  rows: list[dict[str, int]]
  losses: np.ndarray
  alive: np.ndarray


class Trainer:
  """Owns the members' states and their compiled step; trains them an epoch at a time.

  Its `members` (step.Members: every state stacked) is what the loop evaluates and
  checkpoints; how the members step is its own business (see the module's docstring).
  """

  def __init__(self, run: Run, members: step.Members, keys: jax.Array, examples_seen: int):
    self.run = run
    self.examples_seen = examples_seen
    self.per_member = run.per_member_data
    self._shuffle_keys = [step.run_keys(m.config.seed)[2] for m in run.group]
    place = self._place = run.dp.put_replicated if run.dp else lambda tree: tree
    cpu = jax.default_backend() == "cpu"
    loop = run.config.epoch_loop
    # A model that takes no mask but keeps BatchNorm statistics must never see a padded
    # batch (the padding would enter its statistics): its epoch ends on a smaller batch.
    self.pad = run.net.mask or not jax.tree.leaves(members.state.batch_stats)
    nets = run.member_nets()  # a swept nn.Dropout: a program per member's rate
    cfg, n = run.config, len(run.dataset.train)
    if run.dp and not self.pad and (cfg.batch_size % run.dp.size or (
        not cfg.drop_remainder and n % cfg.batch_size % run.dp.size)):
      raise ConfigError(f"{type(run.model).__name__} keeps BatchNorm statistics without taking "
                        f"a `mask`, and batches of {cfg.batch_size} (and {n % cfg.batch_size} "
                        f"at an epoch's end) don't divide over {run.dp.size} devices: the "
                        "padding would enter its statistics; give a --batch_size they divide "
                        "(and --drop_remainder), or --devices=1")
    fits_scan = self.pad or run.config.drop_remainder  # a scanned epoch pads its last batch
    if loop == "scan" and not fits_scan:
      raise ConfigError(f"--epoch_loop=scan pads the epoch's last batch, and "
                        f"{type(run.model).__name__} keeps BatchNorm statistics without taking "
                        "a `mask`: add --drop_remainder, or --epoch_loop=python")
    if loop == "scan" and nets:
      raise ConfigError("--epoch_loop=scan trains every member in one program, and a sweep of "
                        "nn.Dropout's rate needs a program per rate: use --epoch_loop=python")
    self.scanned = (loop == "scan" or (loop == "auto" and not cpu)) and fits_scan and not nets
    self.vmapped = (self.scanned or not cpu) and not nets
    self.window = 1  # batches per call of the step
    # The step's optimiser reads every value from the member's state (injected
    # hyperparameters), so one optimiser, built from the first member's config, steps all.
    tx = step.make_optimizer(run.group[0].config, run.steps_per_epoch, run.optimizer)
    one = functools.partial(_member_step, model=run.net, tx=tx)
    if self.scanned:
      self._step = jax.jit(functools.partial(
          scan_epoch, step_fn=_vmapped(one, self.per_member), batch_size=run.config.batch_size,
          drop_remainder=run.config.drop_remainder, per_member=self.per_member,
          batch_sharding=run.dp.batch_sharding_of(self.per_member) if run.dp else None),
          donate_argnums=0)
      self._resident = place((jnp.asarray(run.dataset.train.images),
                              jnp.asarray(run.dataset.train.labels)))
    elif self.vmapped:
      self._step = parallel.jit_step(_vmapped(one, self.per_member), run.dp, donate_state=True,
                                     replicate_outputs=True, member_axis=self.per_member)
    else:  # CPU: member after member, WINDOW_STEPS batches a call (see _window)
      self.window = _window(run, self.pad)
      programs = {}  # one per model: per dropout rate where each member has its own
      self._steps = [programs.setdefault(net, parallel.jit_step(
          _windowed(functools.partial(_member_step, model=net, tx=tx)) if self.window > 1
          else functools.partial(_member_step, model=net, tx=tx), run.dp, donate_state=True,
          replicate_outputs=True)) for net in (nets or [run.net])]
    self._keys = place(keys)
    if not self.vmapped:
      self._member_keys = [self._keys[k] for k in range(len(run.group))]
    self._set(place(members))
    self._compiled = False
    self._compile_seconds = self._train_seconds = 0.0
    self._train_images = 0

  # The members, as the loop sees them: stacked. Stepped one by one, they are kept apart.
  def _set(self, members: step.Members) -> None:
    if self.vmapped:
      self._members = members
    else:
      self._members = [(step.unstack(members.state, k), members.alive[k])
                       for k in range(members.size)]

  @property
  def members(self) -> step.Members:
    if self.vmapped:
      return self._members
    states, alive = zip(*self._members)
    return step.Members(step.stack(list(states)), jnp.stack(alive))

  def freeze(self, mask: np.ndarray) -> None:
    """Marks members (a K bool mask) as diverged: they take no more steps."""
    if mask.any():
      members = self.members
      self._set(self._place(members.replace(alive=members.alive & jnp.asarray(~mask))))

  def timing(self) -> dict[str, Any]:
    return {"compile_seconds": self._compile_seconds,
            "train_images_per_second": (self._train_images / self._train_seconds
                                        if self._train_seconds else None),
            "member_images_per_second": (self._train_images / self._train_seconds
                                         * len(self.run.group) if self._train_seconds else 0)}

  def epoch(self, epoch: int) -> Iterator[tuple[int, Interval | None]]:
    """Trains one epoch, yielding after each call of the step (steps taken, the log
    interval it completed or None): the interval's losses are pulled to the host every
    `log_every` steps (and at the epoch's end), not per step."""
    if self.scanned:
      yield from self._scanned_epoch(epoch)
      return
    log_every, last = self.run.config.log_every, self.run.steps_per_epoch
    rows, pending, host, done = [], [], ([], []), 0  # done: the epoch's steps so far
    steady_start, steady_images = time.perf_counter(), 0
    for unit, sizes in self.units(epoch):
      compiling = not self._compiled
      if compiling:  # the first call compiles: its time is reported apart
        start = time.perf_counter()
      pending.append((*self.take_step(unit), len(sizes)))
      if compiling:
        jax.block_until_ready(pending[-1])
        self._compile_seconds += time.perf_counter() - start
        self._compiled = True
        steady_start = time.perf_counter()
      else:
        steady_images += sum(sizes)
      rows += [self._row(epoch, done + i, size) for i, size in enumerate(sizes, 1)]
      done += len(sizes)
      if done // log_every > (done - len(sizes)) // log_every or done == last:
        for losses, alive in map(_steps_by_members, pending):
          host[0].append(losses)
          host[1].append(alive)
        losses, alive = np.concatenate(host[0]), np.concatenate(host[1])
        first = done - len(rows)  # rows[j - 1] is the epoch's step first + j
        ends = [j for j in range(1, len(rows) + 1)
                if (first + j) % log_every == 0 or first + j == last]
        for begin, end in zip([0] + ends, ends):
          yield 0, Interval(rows[begin:end], losses[begin:end], alive[begin:end])
        cut = ends[-1] if ends else 0
        rows, pending, host = rows[cut:], [], ([losses[cut:]], [alive[cut:]])
      yield len(sizes), None
    jax.block_until_ready(self._members)
    self._train_seconds += time.perf_counter() - steady_start
    self._train_images += steady_images

  def take_step(self, unit: list[step.Batch]) -> tuple[Any, Any]:
    """Every member takes the steps of one unit of `units` (one batch, or a window of
    batches, shared or one per member); returns the members' losses and alive flags (on the
    device, stacked on the host later: a step costs no dispatch beyond the members' own)."""
    if self.scanned:
      raise ValueError("a Trainer with --epoch_loop=scan trains whole epochs (Trainer.epoch)")
    if self.vmapped:
      batch = (unit[0] if not self.per_member
               else {k: np.stack([b[k] for b in unit]) for k in unit[0]})
      self._members, losses, alive = self._step(self._members, batch, self._keys)
      return losses, alive
    if not self.per_member and not self.run.dp:  # one transfer for every member
      unit = [jax.device_put(unit[0])]
    out = [self._steps[k % len(self._steps)](member, unit[k if self.per_member else 0],
                                              self._member_keys[k])
           for k, member in enumerate(self._members)]
    self._members = [carry for carry, _ in out]
    return [loss for _, (loss, _) in out], [alive for _, (_, alive) in out]

  def units(self, epoch: int) -> Iterator[tuple[list[step.Batch], list[int]]]:
    """The epoch's host batches, each masked, the last one padded (one compiled step for the
    epoch), grouped into the units a call of the step takes: one batch, or a window of
    `window` batches stacked (the last window padded with batches of no example, which the
    step skips); a list of one, or one per member in its own order. Yields (unit, the real
    examples of each of its batches)."""
    cfg = self.run.config
    keys = self._shuffle_keys if self.per_member else self._shuffle_keys[:1]
    streams = [data.train_batches(self.run.dataset.train, cfg.batch_size, key, epoch,
                                  cfg.drop_remainder, masked=True, pad=self.pad)
               for key in keys]
    batches = zip(*streams)
    while group := list(itertools.islice(batches, self.window)):
      sizes = [int(b[0]["mask"].sum()) for b in group]  # every member's holds as many
      if self.window == 1:
        yield list(group[0]), sizes
        continue
      empty = {**group[-1][0], "mask": np.zeros_like(group[-1][0]["mask"])}
      group += [[empty] * len(keys)] * (self.window - len(group))
      yield [{k: np.stack([g[m][k] for g in group]) for k in empty}
             for m in range(len(keys))], sizes

  def _row(self, epoch: int, i: int, size: int) -> dict[str, int]:
    self.examples_seen += size
    return {"epoch": epoch, "step": (epoch - 1) * self.run.steps_per_epoch + i,
            "examples_seen": self.examples_seen}

  def _scanned_epoch(self, epoch: int) -> Iterator[tuple[int, Interval | None]]:
    cfg, steps = self.run.config, self.run.steps_per_epoch
    args = (self._members, self._resident, jnp.asarray(epoch, jnp.int32),
            self._place(jnp.stack(self._shuffle_keys)), self._keys)
    if not self._compiled:  # compiled ahead of the first epoch, timed on its own
      start = time.perf_counter()
      self._step = self._step.lower(*args).compile()
      self._compile_seconds += time.perf_counter() - start
      self._compiled = True
    start = time.perf_counter()
    self._members, (losses, alive) = self._step(*args)
    losses, alive = map(np.asarray, parallel.to_host((losses, alive)))  # waits for the epoch
    trained = steps * cfg.batch_size if cfg.drop_remainder else len(self.run.dataset.train)
    self._train_seconds += time.perf_counter() - start
    self._train_images += trained
    sizes = [min(cfg.batch_size, trained - s * cfg.batch_size) for s in range(steps)]
    for first in range(0, steps, cfg.log_every):
      rows = [self._row(epoch, i, size)
              for i, size in enumerate(sizes[first:first + cfg.log_every], first + 1)]
      interval = Interval(rows, losses[first:first + cfg.log_every],
                          alive[first:first + cfg.log_every])
      yield (steps if first + cfg.log_every >= steps else 0), interval


# Batches per call of the CPU step (`_windowed`): a call costs a dispatch and XLA's buffers
# for the step's temporaries, which a window pays once for all its steps; more batches pad
# the epoch's last window with more skipped steps. benchmarks/run.py --baseline measured
# the window against one batch a call (docs/scaling.md).
WINDOW_STEPS = 16


def _steps_by_members(out) -> tuple[np.ndarray, np.ndarray]:
  """A call's losses and alive flags on the host, as (its real steps) x K."""
  *values, real = out
  losses, alive = (np.asarray(v) for v in parallel.to_host(values))
  if losses.ndim == 1:  # one step: K values
    return losses[None], alive[None]
  return losses.T[:real], alive.T[:real]  # K x window


def _windowed(one):
  """one member's step over a window of batches (every leaf W x ...), in one lax.scan."""
  def window(carry, batches, key):
    return jax.lax.scan(lambda carry, batch: one(carry, batch, key), carry, batches)
  return window


def _window(run: Run, pad: bool) -> int:
  """Batches per call of the CPU step: WINDOW_STEPS, but one for a model of yours that
  convolves (flax's nn.Conv, lax.conv, trains many times slower inside a lax.scan on XLA:CPU,
  jax-ml/jax#12868; the built-in models convolve as matmuls in training), a data-parallel run
  (its batches are placed per call) and an epoch that ends on a smaller batch
  (benchmarks/own_model.py; docs/performance.md, "A model of your own")."""
  if run.dp or not pad:
    return 1
  if models.traced_dropout(run.model) or not models.convolves(run.model,
                                                             run.dataset.image_shape):
    return WINDOW_STEPS
  return 1


def _member_step(carry, batch, key, *, model, tx):
  """step.member_step over (state, alive): (state, alive), (loss, alive). The second alive is
  the one to read: the next step takes the carry's buffers (donated)."""
  state, alive, metrics = step.member_step(*carry, batch, key, model=model, tx=tx)
  return (state, alive), (metrics["loss"], alive)


def _vmapped(one, per_member: bool):
  """one member's step over every member in one program: (Members, batch, keys) -> (Members,
  losses, alive). per_member: the batch has a leading member axis, each member its own batch.
  vmapped on GPU/TPU, which need the wide work; on CPU (`--epoch_loop=scan`) a loop over the
  members, whose working set stays that of one member."""
  def members_step(members: step.Members, batch, keys):
    carry = (members.state, members.alive)
    if jax.default_backend() == "cpu":
      def member(args):
        carry, key, *own = args
        return one(carry, own[0] if per_member else batch, key)
      (state, alive), (losses, _) = jax.lax.map(member, (carry, keys) + (
          (batch,) if per_member else ()))
    else:
      (state, alive), (losses, _) = jax.vmap(one, in_axes=(0, 0 if per_member else None, 0))(
          carry, batch, keys)
    return step.Members(state, alive), losses, alive
  return members_step


def scan_epoch(members, resident, epoch, shuffle_keys, keys, *, step_fn, batch_size: int,
               drop_remainder: bool, per_member: bool = False, batch_sharding=None):
  """One epoch as one program (the accelerator path): the dataset lives on the device as uint8,
  the epoch is shuffled there (the order of data.epoch_permutation, from each member's key
  with per_member, else from the first), and `lax.scan` runs step_fn over its batches, the
  last one padded and masked as data.train_batches(masked=True) does. resident: the training
  (images, labels). Returns the final members, and the losses and alive flags, each
  steps x K."""
  images, labels = resident
  n = images.shape[0]
  steps = data.num_train_steps(n, batch_size, drop_remainder)
  total = steps * batch_size

  def batch_indices(shuffle_key):  # steps x batch_size
    order = jax.random.permutation(jax.random.fold_in(shuffle_key, epoch), n)
    order = jnp.concatenate([order, jnp.zeros(max(total - n, 0), order.dtype)])[:total]
    return order.reshape(steps, batch_size)

  if per_member:  # steps x K x batch_size
    idx = jnp.swapaxes(jax.vmap(batch_indices)(shuffle_keys), 0, 1)
  else:
    idx = batch_indices(shuffle_keys[0])
  mask = (jnp.arange(total) < n).reshape(steps, batch_size)

  def body(members, xs):
    idx_t, mask_t = xs
    batch = {"image": images[idx_t], "label": labels[idx_t].astype(jnp.int32),
             "mask": jnp.broadcast_to(mask_t, idx_t.shape)}
    if batch_sharding is not None:  # data-parallel: each device gathers its own rows
      batch = jax.lax.with_sharding_constraint(batch, batch_sharding)
    members, losses, alive = step_fn(members, batch, keys)
    return members, (losses, alive)

  return jax.lax.scan(body, members, (idx, mask))


# ----------------------------------------------------------------------------- evaluation

def _evaluate(run: Run, eval_step, trainer: Trainer, epoch: int, predictions: bool = False
              ) -> list[dict[str, Any]]:
  """One epoch record per member: its test (and train) loss and accuracy; with predictions,
  its test predictions under "predictions"."""
  members = trainer.members
  steps = np.atleast_1d(parallel.to_host(members.state.step))
  batch_size = run.config.eval_batch(jax.default_backend())
  records = []
  for k in range(members.size):
    state = step.unstack(members.state, k)
    record: dict[str, Any] = {"epoch": epoch, "step": int(steps[k]),
                              "examples_seen": trainer.examples_seen}
    splits = ("train", "test") if run.config.eval_train else ("test",)
    for name in splits:
      result = evaluate_split(eval_step, state, getattr(run.dataset, name), batch_size,
                              predictions and name == "test")
      record.update({f"{name}_{key}": value for key, value in result.items()
                     if key != "predictions"})
      test = result
    if predictions:
      record["predictions"] = test["predictions"]
    records.append(record)
  return records


def evaluate_split(eval_step, state: step.TrainState, split: data.Split, batch_size: int,
                   predictions: bool = False) -> dict[str, Any]:
  """Mean loss (cross-entropy), accuracy (in %) and the mean of each metric of the step's
  (step.eval_step) of one member's state on split, each example scored once; with
  predictions, the predicted class of every example too."""
  sums, predicted = [], []
  for batch in data.eval_batches(split, batch_size):
    out = eval_step(state, batch)
    sums.append({k: v for k, v in out.items() if k != "prediction"})
    if predictions:  # [:n]: a data-parallel batch may come back padded
      n = len(batch["mask"])
      predicted.append(parallel.to_host(out["prediction"])[:n][batch["mask"]])
  keys, host = list(sums[0]), parallel.to_host(sums)
  totals = dict(zip(keys, np.sum(np.asarray([[h[k] for k in keys] for h in host], np.float64),
                                 axis=0).tolist()))
  result = {"loss": totals.pop("loss_sum") / len(split),
            "accuracy": 100.0 * totals.pop("correct") / len(split),
            **{k.removesuffix("_sum"): v / len(split) for k, v in totals.items()}}
  if predictions:
    result["predictions"] = np.concatenate(predicted)
  return result


# ----------------------------------------------------------------------------- reporting

class _Report:
  """The printed lines and the workdir records of a run of K >= 1 members. A plain run (one
  member, nothing swept) prints and writes its records untagged; a sweep tags each with its
  member's name and settings. A member whose loss stops being finite is frozen and named; a
  plain run, or a sweep whose every member diverged, stops (NonFiniteLoss)."""

  def __init__(self, group: list[Member], out: Workdir | None, log: Callable[[str], None],
               writers: tuple[Callable, ...] = ()):
    self.group, self.out, self.writers = group, out, writers
    self.log = out.log if out else log
    self.plain = _plain(group)
    self.frozen: dict[int, int] = {}  # member -> the step at which it stopped
    self.train_log: list[dict[str, Any]] = []  # the interval rows (train_log.jsonl)

  def epoch(self, records: list[dict[str, Any]], suffix: str = "") -> list[dict[str, Any]]:
    """Prints and appends (metrics.jsonl) one epoch's records; returns them tagged."""
    rows = []
    for k, record in enumerate(records):
      row = _tag(self.group, k, {key: v for key, v in record.items() if key != "predictions"})
      prefix = "" if self.plain else f"[{row['member']}] "
      self.log(prefix + epoch_line(row) + suffix)
      self._write("metrics", row)
      rows.append(row)
    return rows

  def _write(self, stream: str, row: dict[str, Any]) -> None:
    """One record to its JSONL file (workdir/<stream>.jsonl) and to every writer."""
    if self.out and self.out.primary:
      files.append_jsonl(self.out.path / f"{stream}.jsonl", row)
    for writer in list(self.writers):
      try:
        writer(stream, dict(row))
      except Exception as e:  # pylint: disable=broad-except  # a writer's failure is not the run's
        self.writers = tuple(w for w in self.writers if w is not writer)
        self.log(f"writer {getattr(writer, '__qualname__', type(writer).__name__)} failed "
                 f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); the run "
                 "goes on without it")

  def flush(self) -> None:
    for writer in self.writers:
      if hasattr(writer, "flush"):
        try:
          writer.flush()
        except Exception:  # pylint: disable=broad-except  # as _write
          pass

  def interval(self, interval: Interval, bar) -> None:
    """One log interval: divergence reports, the bar's loss, a train_log.jsonl row."""
    losses, alive, rows = interval.losses, interval.alive, interval.rows
    for k in np.flatnonzero(~alive.all(axis=0)):
      if k in self.frozen:
        continue
      j = int(np.argmin(alive[:, k]))  # the member's first step not taken
      what = (f"the training loss became {losses[j, k]}" if not np.isfinite(losses[j, k])
              else "the parameters became NaN or infinite")
      self._diverged(k, rows[j]["step"], f"{what} at step {rows[j]['step']} (epoch "
                     f"{rows[j]['epoch']})", rows[-1]["epoch"])
    count = alive.sum(axis=0)
    mean = np.where(count > 0, np.where(alive, losses, 0.0).sum(axis=0) / np.maximum(count, 1),
                    np.nan)  # per member, over the steps it took
    bar.set_postfix(loss=f"{np.nanmean(mean):.4f}")
    row = {**rows[-1], "interval": len(rows),
           "loss": float(mean[0]) if self.plain else mean.tolist()}
    if not self.plain:  # whose each loss is
      row["members"] = [m.name for m in self.group]
    self.train_log.append(row)
    self._write("train_log", row)

  def evaluation(self, records: list[dict[str, Any]]) -> np.ndarray:
    """Which members' evaluation (test, or train-set, loss) is not finite, newly: they are
    frozen from here on. Returns that mask (K,)."""
    bad = np.zeros(len(records), bool)
    for k, record in enumerate(records):
      losses = [record[key] for key in ("train_loss", "test_loss") if key in record]
      if k in self.frozen or all(np.isfinite(losses)):
        continue
      what = f"the evaluation loss became {next(v for v in losses if not np.isfinite(v))}"
      bad[k] = True
      self._diverged(k, record["step"], f"{what} after epoch {record['epoch']}",
                     record["epoch"])
    return bad

  def _diverged(self, k: int, at_step: int, what: str, epoch: int) -> None:
    if self.plain:
      raise NonFiniteLoss(f"{what}; lower --lr or check the data")
    self.frozen[k] = at_step
    self.log(f"member {self.group[k].name}: {what}; frozen, the other members go on")
    if len(self.frozen) == len(self.group):
      raise NonFiniteLoss(f"every member of the sweep diverged by step "
                          f"{max(self.frozen.values())} (epoch {epoch}); lower --lr")


def _plain(group: list[Member]) -> bool:
  return len(group) == 1 and not group[0].settings


def _tag(group: list[Member], k: int, record: dict[str, Any]) -> dict[str, Any]:
  """A record as the history keeps it: a sweep's tagged with its member."""
  if _plain(group):
    return dict(record)
  return {"member": group[k].name, **group[k].settings, **record}


def epoch_line(record: dict[str, Any]) -> str:
  """One printed line per epoch."""
  parts = [f"epoch {record['epoch']:>3}"]
  if "train_loss" in record:
    parts.append(f"train loss {record['train_loss']:.4f} acc {record['train_accuracy']:6.2f}%")
  parts.append(f"test loss {record['test_loss']:.4f} acc {record['test_accuracy']:6.2f}%")
  if "seconds" in record:
    parts.append(f"{record['seconds']:.1f}s")
  return " | ".join(parts)


def _progress(total: int, desc: str):
  """A progress bar on a terminal; nothing when output goes to a file (disable=None: only on a
  TTY). In a notebook, a text bar left at its final state: a saved notebook keeps what a text
  stream last showed ("100% 157/157"), where tqdm's widget is saved as "0%" forever."""
  if "ipykernel" in sys.modules:
    return tqdm.tqdm(total=total, desc=desc, leave=True, unit="step", file=sys.stdout,
                     mininterval=1.0)
  return tqdm.tqdm(total=total, desc=desc, leave=False, unit="step", disable=None,
                   dynamic_ncols=True)


def _summary(run: Run, records, history, predictions: np.ndarray, alive: np.ndarray
             ) -> dict[str, Any]:
  """summary.json's members: each one's final record, best test accuracy, divergence and
  classification report; and the mean +- std over seeds per setting."""
  rows = []
  for k, (member, record) in enumerate(zip(run.group, records)):
    confusion = metrics.confusion_matrix(run.dataset.test.labels, predictions[k])
    own = [r for r in history if r.get("member", member.name) == member.name]
    rows.append({"member": member.name, "settings": member.settings,
                 "final": _tag(run.group, k, record), "diverged": not bool(alive[k]),
                 "best_test_accuracy": max(r["test_accuracy"] for r in own),
                 "classification_report": metrics.classification_report(
                     confusion, run.dataset.class_names)})
  return {"members": rows, "by_setting": aggregate(rows)}


def aggregate(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
  """Mean and std of the final test accuracy over seeds, per setting of the other axes."""
  groups: dict[str, list[float]] = {}
  for row in rows:
    key = config_lib.settings_name({k: v for k, v in row["settings"].items() if k != "seed"})
    key = key or "all"
    groups.setdefault(key, []).append(row["final"]["test_accuracy"])
  return [{"setting": k, "seeds": len(v), "test_accuracy_mean": float(np.mean(v)),
           "test_accuracy_std": float(np.std(v, ddof=1)) if len(v) > 1 else 0.0}
          for k, v in groups.items()]


def format_table(rows: list[dict[str, Any]]) -> str:
  """Final numbers per member, and mean +- std over seeds where seeds were swept."""
  width = max(len(r["member"]) for r in rows)
  lines = [f"{'member':<{width}}  test acc  test loss"]
  for r in rows:
    flag = "  (diverged, frozen)" if r["diverged"] else ""
    final = r["final"]
    lines.append(f"{r['member']:<{width}}  {final['test_accuracy']:8.2f}  "
                 f"{final['test_loss']:9.4f}{flag}")
  if any("seed" in r["settings"] for r in rows):
    for g in aggregate(rows):
      lines.append(f"{g['setting']}: {g['test_accuracy_mean']:.2f} +- "
                   f"{g['test_accuracy_std']:.2f} over {g['seeds']} seeds")
  return "\n".join(lines)


def _write_results(out: Workdir, run: Run, summary: dict[str, Any],
                   history: list[dict[str, Any]], predictions: np.ndarray) -> None:
  """summary.json and predictions.npy; a plain run's classification report, confusion matrix
  and figures, a sweep's figures."""
  dataset, path = run.dataset, out.path
  title = plots.run_title(run.config, run.axes)
  buffer = io.BytesIO()
  np.save(buffer, predictions)
  files.write_bytes(path / "predictions.npy", buffer.getvalue())
  files.write_json(path / "summary.json", summary)
  if run.axes:
    plots.sweep_accuracy(history, run.axes, path / "sweep_accuracy.png", title)
    plots.sweep_curves(history, path / "sweep_curves.png", title)
    return
  names = dataset.class_names
  confusion = metrics.confusion_matrix(dataset.test.labels, predictions[0])
  files.write_text(path / "classification_report.txt",
                   metrics.format_report(summary["members"][0]["classification_report"]))
  files.write_text(path / "confusion_matrix.csv", "true\\predicted," + ",".join(names) + "\n"
                   + "\n".join(f"{name}," + ",".join(map(str, row))
                                for name, row in zip(names, confusion)) + "\n")
  plots.loss_curves(files.read_jsonl(path / "train_log.jsonl"), history, path / "loss.png",
                    title)
  plots.error_curves(history, path / "error.png", title)
  plots.prediction_grid(dataset.test.images, dataset.test.labels, predictions[0], names,
                        path / "predictions.png", title=title, value_range=dataset.value_range)
  plots.confusion(confusion, names, path / "confusion_matrix.png", title)


# ----------------------------------------------------------------------------- stopping

class _StopRequest:
  """Turns the first Ctrl-C, SIGTERM or SIGHUP (what a scheduler sends before it takes the
  machine back; a closed terminal) into a request the loop honours between steps, so that it
  never lands inside a checkpoint save; a second one stops at once."""

  def __init__(self):
    self.requested = None  # the signal's number
    self.lost = None  # a second signal Python could not raise where it landed
    self.held = None  # a second signal that landed inside a checkpoint's save or restore
    self._holding = False
    self._previous = {}
    self._unraisable = sys.unraisablehook

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      for signum in errors.SIGNALS:
        self._previous[signum] = signal.signal(signum, self._handle)
      sys.unraisablehook = self._keep_lost
    return self

  def _keep_lost(self, unraisable):
    """A second signal that lands in a garbage-collection or weakref callback (often while
    the figures are drawn) can't be raised there: Python would print it as "Exception
    ignored" and go on. It is kept instead, and raised on leaving."""
    if self._previous and isinstance(unraisable.exc_value, errors.Signal):
      self.lost = unraisable.exc_value.signum
    else:
      self._unraisable(unraisable)

  def _handle(self, signum, frame):
    if self.requested is None:
      self.requested = signum
    elif self._holding:
      self.held = signum
    else:
      raise errors.Signal(signum)

  @contextlib.contextmanager
  def hold(self) -> Iterator[None]:
    """A second signal that lands in here waits until the block is done. Orbax saves and
    restores on an event loop and writer threads: raised there, the signal left the save
    half done and asyncio printed it as a task's traceback. A save takes a moment."""
    self._holding = True
    try:
      yield
    finally:
      self._holding = False
    if self.held is not None:
      signum, self.held = self.held, None
      raise errors.Signal(signum)

  def check(self):
    if self.requested is not None:
      raise errors.Signal(self.requested)

  def __exit__(self, exc_type, *exc):
    for signum, previous in self._previous.items():
      signal.signal(signum, previous)
    self._previous = {}
    if sys.unraisablehook == self._keep_lost:  # else a hook set since wraps it: it passes on
      sys.unraisablehook = self._unraisable
    if self.lost is not None and exc_type is None:
      raise errors.Signal(self.lost)


def _shown(value) -> str:
  return "(the model's default)" if value is None else str(value)


def _stopped(what: str, out: Workdir | None) -> str:
  epoch = checkpoint.latest_epoch(out.path / CHECKPOINTS) if out else None
  if epoch is None:
    return f"{what} before any epoch was saved" + (
        "; start again with --overwrite" if out and out.holds_run() else "")
  return (f"{what}; the checkpoint of epoch {epoch} and the metrics up to it are in "
          f"{out.path}: continue with --resume")
