"""The driver: one run of K >= 1 members, from its config to its results.

`train(config)` loads the data, builds the model, optimiser and members, resumes
from the workdir's checkpoint where asked, evaluates before training and after
every epoch, checkpoints each finished epoch, and returns a `Result`. A plain
run is a sweep of one member: the same program, the same numbers.
"""

from __future__ import annotations

import dataclasses
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from mnistjax import checkpoint, data, epochs, metrics, models, parallel, reporting, step
from mnistjax import sweep as sweep_lib
from mnistjax.checkpoint import Checkpoints
from mnistjax.config import Config
from mnistjax.errors import (ConfigError, Interrupted, MnistjaxError, NonFiniteLoss,
                             WorkdirError)
from mnistjax.results import Result
from mnistjax.workdir import CHECKPOINTS, Workdir


def setup(config: Config, dataset: data.Dataset | None = None,
          axes: dict[str, tuple] | None = None,
          dp: parallel.DataParallel | None = None) -> epochs.Plan:
  """A run's constants: the data (loaded unless given), the model, optimiser, normalisation
  and members of a validated config."""
  config.validate()
  if dataset is None:
    dataset = data.load(config.dataset, config.data_dir, config.data_source,
                        verify=config.verify_data)
  if config.train_limit or config.test_limit:
    dataset = data.Dataset(
        dataset.name, dataset.train.take(config.train_limit or len(dataset.train)),
        dataset.test.take(config.test_limit or len(dataset.test)), dataset.source)
  if config.batch_size > len(dataset.train):
    raise ConfigError(f"--batch_size={config.batch_size} is larger than the training set "
                      f"({len(dataset.train)} examples); use --batch_size={len(dataset.train)} "
                      "or fewer")
  model = models.build(config.model, **config.model_settings())
  tx = step.make_optimizer(config, len(dataset.train))
  norm = data.normalization(config.normalization, dataset)
  return epochs.Plan(config, model, tx, norm, dataset, sweep_lib.members(config, axes), dp)


class _StopRequest:
  """Turns the first Ctrl-C into a request the loop honours between steps, so that it never
  lands inside a checkpoint save; a second Ctrl-C interrupts at once."""

  def __init__(self):
    self.requested = False
    self._previous = None

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGINT, self._handle)
    return self

  def _handle(self, signum, frame):
    self.requested = True
    signal.signal(signal.SIGINT, self._previous)

  def check(self):
    if self.requested:
      raise KeyboardInterrupt

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGINT, self._previous)


def train(config: Config, sweep: dict[str, tuple] | None = None, workdir: str | None = None,
          dataset: data.Dataset | None = None, *, resume: bool = False, overwrite: bool = False,
          log: Callable[[str], None] = print) -> Result:
  """Trains per config, evaluating before training and after every epoch.

  Args:
    config: the run's settings (validated here).
    sweep: settings to sweep, each with its values ({"dropout": (0.25, 0.5)}); their product
      are the members, trained together in one program, each evaluated and reported on its
      own. None: the config's one member.
    workdir: where every result is written (None: nowhere, and no checkpoints). A folder
      that holds an earlier run needs resume or overwrite.
    dataset: data to use instead of loading config.dataset (tests, notebooks).
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
    Interrupted: Ctrl-C; the last finished epoch's checkpoint is kept for --resume.
  """
  wall_start = time.perf_counter()
  config.validate()
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
    with _StopRequest() as stop:
      return _train(config, sweep, out, dataset, resume, log, stop, wall_start)
  except KeyboardInterrupt:
    error = Interrupted(_stopped("interrupted", out))
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


def _train(config: Config, axes, out: Workdir | None, dataset, resume: bool, log,
           stop: _StopRequest, wall_start: float) -> Result:
  dp = parallel.make(config.devices)  # before the data: a wrong count fails fast
  plan = setup(config, dataset, axes, dp)
  reporter = reporting.Reporter(plan.group, out, log)
  members, keys = sweep_lib.init(plan.model, plan.group, len(plan.dataset.train))
  start = _Start()
  if resume:
    members, start = _resume(plan, axes, out, members, reporter)
  ckpt = Checkpoints(out.path / CHECKPOINTS) if out and config.checkpoint else None
  num_params = models.count_params(sweep_lib.unstack(members.state.params, 0))
  if out:
    out.write_config(config, model=plan.model, normalization=plan.norm,
                     dataset_source=plan.dataset.source, num_params=num_params,
                     train_examples=len(plan.dataset.train), test_examples=len(plan.dataset.test),
                     sweep={k: list(v) for k, v in (axes or {}).items()},
                     sweep_order=list(axes or {}))  # JSON sorts keys; the order names members
  reporter.log(_first_line(plan, num_params))
  if start.resumed_line:
    reporter.log(start.resumed_line)

  runner = epochs.make_runner(plan, members, keys, start.examples_seen)
  evaluator = epochs.Evaluator(plan)
  history, records = start.history, []
  try:
    if start.epoch == 0:
      records = evaluator.members(runner.members, 0, 0, predictions=config.epochs == 0)
      history += reporter.epoch(records, "  (untrained)")
    for epoch in range(start.epoch + 1, config.epochs + 1):
      t0 = time.perf_counter()
      with reporting.progress(plan.steps_per_epoch, f"epoch {epoch}/{config.epochs}") as bar:
        for progress in runner.train(epoch):
          bar.update(progress.steps)
          for interval in progress.intervals:
            reporter.interval(interval, bar)
          stop.check()
      train_seconds = time.perf_counter() - t0
      records = evaluator.members(runner.members, epoch, runner.examples_seen,
                                  predictions=epoch == config.epochs)
      for record in records:
        record.update(train_seconds=train_seconds, seconds=time.perf_counter() - t0)
      runner.freeze(reporter.evaluation(records))  # a member whose evaluation is not finite
      history += reporter.epoch(records)
      if ckpt:
        ckpt.save(epoch, runner.members, {"epoch": epoch, "examples_seen": runner.examples_seen,
                                          "config": config.to_dict()})
        out.replaced_done()
  except (NonFiniteLoss, WorkdirError) as e:  # say what is kept, and how to go on
    raise type(e)(f"{e}; {_stopped('stopped', out)}") from None
  finally:
    if ckpt:
      ckpt.close()

  if not records:  # resumed at the last epoch: nothing left to train
    records = evaluator.members(runner.members, start.epoch, runner.examples_seen,
                                predictions=True)
  result = _finish(plan, axes, runner, records, history, reporter, out, num_params,
                   time.perf_counter() - wall_start)
  if out:
    out.replaced_done()
  return result


@dataclasses.dataclass
class _Start:
  """Where a run starts: its first epoch to train, the examples seen and history so far."""
  epoch: int = 0
  examples_seen: int = 0
  history: list[dict[str, Any]] = dataclasses.field(default_factory=list)
  resumed_line: str = ""


def _resume(plan: epochs.Plan, axes, out: Workdir, fresh: sweep_lib.Members,
            reporter: reporting.Reporter) -> tuple[sweep_lib.Members, _Start]:
  """The members of the workdir's last checkpoint, with this config's hyperparameters; the
  records past it dropped. Refuses a config or sweep that would mix two runs."""
  saved = out.saved_config()
  allowed, refused = plan.config.resume_changes(saved.get("config", {}))
  saved_axes = {k: list(v) for k, v in saved.get("sweep", {}).items()}
  if saved_axes != {k: list(v) for k, v in (axes or {}).items()}:
    refused["sweep"] = (saved_axes or "none", {k: list(v) for k, v in (axes or {}).items()}
                        or "none")
  if refused:
    diff = ", ".join(f"{k} {_shown(a)} -> {_shown(b)}" for k, (a, b) in sorted(refused.items()))
    raise WorkdirError(f"--resume: {out.path} holds a run with other settings ({diff}); "
                       "those can't change when a run continues: give another --workdir, or "
                       "--overwrite")
  ckpt = Checkpoints(out.path / CHECKPOINTS)
  try:
    epoch = ckpt.latest_epoch()
    restored, record = ckpt.restore(epoch, fresh)
  except (ValueError, KeyError, TypeError) as e:  # a checkpoint of another structure
    raise WorkdirError(f"--resume: the checkpoint in {out.path} does not fit this run "
                       f"({type(e).__name__}); give another --workdir, or --overwrite") from None
  finally:
    ckpt.close()
  # Hyperparameters come from the config, also where the resumed run's flags changed them.
  members = restored.replace(state=step.with_hyperparameters(restored.state, fresh.state))
  last_step = int(np.max(parallel.to_host(members.state.step)))
  out.truncate_after(epoch, last_step)
  reporter.train_log = out.read("train_log.jsonl")
  line = f"resumed from the checkpoint of epoch {epoch} (step {last_step})"
  if allowed:
    line += "; changed since: " + ", ".join(f"{k} {_shown(a)} -> {_shown(b)}"
                                            for k, (a, b) in sorted(allowed.items()))
  return members, _Start(epoch, record["examples_seen"], out.read("metrics.jsonl"), line)


def _shown(value) -> str:
  return "(the model's default)" if value is None else str(value)


def _first_line(plan: epochs.Plan, num_params: int) -> str:
  cfg, ds, norm = plan.config, plan.dataset, plan.norm
  line = (f"{cfg.model} on {ds.name} ({len(ds.train)} train / {len(ds.test)} test, from "
          f"{ds.source}): {num_params:,} parameters, normalization mean {norm[0]:.4f} std "
          f"{norm[1]:.4f}, {cfg.optimizer} lr {cfg.lr:g}, {jax.default_backend()} backend")
  if plan.dp:
    line += f", {plan.dp.describe(cfg.batch_size)}"
  if len(plan.group) > 1 or plan.group[0].settings:
    line += f"; sweep of {len(plan.group)} members in one program"
  return line


def _stopped(what: str, out: Workdir | None) -> str:
  epoch = checkpoint.latest_epoch(out.path / CHECKPOINTS) if out else None
  if epoch is None:
    return f"{what} before any epoch was saved" + (
        "; start again with --overwrite" if out and out.holds_run() else "")
  return (f"{what}; the checkpoint of epoch {epoch} and the metrics up to it are in "
          f"{out.path}: continue with --resume")


def _finish(plan: epochs.Plan, axes, runner, records, history, reporter, out, num_params,
            wall_seconds) -> Result:
  """The summary (as summary.json), the closing lines and the result files; the Result."""
  alive = np.atleast_1d(parallel.to_host(runner.members.alive))
  predictions = np.stack([r.pop("predictions") for r in records])
  timing = runner.timing
  rows = []
  for k, (member, record) in enumerate(zip(plan.group, records)):
    confusion = metrics.confusion_matrix(plan.dataset.test.labels, predictions[k])
    own = [r for r in history if r.get("member", member.name) == member.name]
    rows.append({"member": member.name, "settings": member.settings,
                 "final": reporter.tag(k, record), "diverged": not bool(alive[k]),
                 "best_test_accuracy": max(r["test_accuracy"] for r in own),
                 "classification_report": metrics.classification_report(
                     confusion, plan.dataset.class_names)})
  summary = {"members": rows, "by_setting": sweep_lib.aggregate(rows), "num_params": num_params,
             "wall_seconds": wall_seconds, "compile_seconds": timing.compile_seconds,
             "train_images_per_second": timing.images_per_second,
             "member_images_per_second": (timing.images_per_second or 0) * len(plan.group),
             "backend": jax.default_backend(), "devices": plan.dp.size if plan.dp else 1}
  if reporter.plain:
    reporter.log(f"final test accuracy {records[-1]['test_accuracy']:.2f}%, wall "
                 f"{wall_seconds:.1f}s" + (f", results in {out.path}" if out else ""))
  else:
    reporter.log(sweep_lib.format_table(rows))
  if out and out.primary:
    reporting.write_results(out, plan.dataset, summary, history, predictions, axes)
  return Result(config=plan.config, members=plan.group, model=plan.model, history=history,
                train_log=reporter.train_log, summary=summary, state=runner.members.state,
                alive=alive, predictions=predictions, workdir=out.path if out else None)
