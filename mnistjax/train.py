"""Pure, jit-compiled train and eval steps, and the epoch loop that drives them.

`train_step(state, batch, key) -> (state, metrics)`: the step's dropout key is
`fold_in(key, state.step)`, so the loop passes one key and never threads keys
by hand. Images arrive as uint8 and are normalised inside the step. Values a
sweep varies (learning rate and weight decay in the optimiser state, the L2
coefficient in `state.hparams`) are arrays in the state, not constants of the
compiled program.
"""

from __future__ import annotations

import functools
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from mnistjax import data, metrics, models, optim, parallel, plots, reporting
from mnistjax import sweep as sweep_lib
from mnistjax.checkpoint import Checkpoints
from mnistjax.config import Config
from mnistjax.errors import Interrupted, NonFiniteLoss

Batch = dict[str, Any]


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  batch_stats: Any  # BatchNorm running statistics ({} for models without BatchNorm)
  opt_state: Any
  hparams: dict[str, jax.Array]  # {"l2": ...}; in sweeps also "dropout" and "alive"


def create_state(model: nn.Module, tx: optax.GradientTransformation, key: jax.Array,
                 l2: float = 0.0) -> TrainState:
  """Initial parameters (from key), BatchNorm statistics and optimiser state."""
  variables = models.init(model, key)
  params = variables["params"]
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    batch_stats=variables.get("batch_stats", {}), opt_state=tx.init(params),
                    hparams={"l2": jnp.asarray(l2, jnp.result_type(float))})


def _variables(params, batch_stats) -> dict:
  return {"params": params, "batch_stats": batch_stats} if batch_stats else {"params": params}


def nll(logp_BxK: jax.Array, labels_B: jax.Array) -> jax.Array:
  """Per-example negative log-likelihood of integer labels."""
  return -jnp.take_along_axis(logp_BxK, labels_B[:, None], axis=-1)[:, 0]


def train_step(state: TrainState, batch: Batch, key: jax.Array, *, model: nn.Module,
               tx: optax.GradientTransformation, norm: tuple[float, float]
               ) -> tuple[TrainState, dict[str, jax.Array]]:
  """One optimisation step on a batch of uint8 images; returns the new state and batch metrics."""
  x = data.normalize(batch["image"], *norm)
  labels = batch["label"]
  step_key = jax.random.fold_in(key, state.step)
  if "dropout" in state.hparams:  # a sweep member's own rate, a traced value
    model = model.clone(dropout=state.hparams["dropout"])

  # A batch padded for data parallelism has a mask; its padding carries no weight anywhere.
  mask = batch.get("mask")
  weight = None if mask is None else mask.astype(x.dtype)
  count = labels.shape[0] if mask is None else jnp.sum(weight)

  def mean(values_B):
    return values_B.mean() if weight is None else jnp.sum(values_B * weight) / count

  def loss_fn(params):
    logp, updates = model.apply(_variables(params, state.batch_stats), x, train=True,
                                mask=mask, rngs={"dropout": step_key}, mutable=["batch_stats"])
    data_loss = mean(nll(logp, labels))
    loss = data_loss + optim.l2_penalty(params, state.hparams["l2"], count)
    return loss, (data_loss, logp, updates.get("batch_stats", {}))

  (loss, (data_loss, logp, batch_stats)), grads = jax.value_and_grad(
      loss_fn, has_aux=True)(state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  step_metrics = {"loss": loss, "data_loss": data_loss,
                  "accuracy": mean((jnp.argmax(logp, -1) == labels).astype(logp.dtype)),
                  "grad_norm": optax.tree.norm(grads)}
  return state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                       opt_state=opt_state), step_metrics


def eval_step(state: TrainState, batch: Batch, *, model: nn.Module, norm: tuple[float, float]
              ) -> dict[str, jax.Array]:
  """Summed loss and correct count over the batch's unmasked examples, and the predictions."""
  x = data.normalize(batch["image"], *norm)
  logp = model.apply(_variables(state.params, state.batch_stats), x, train=False)
  mask = batch["mask"]
  prediction = jnp.argmax(logp, -1)
  return {"loss_sum": jnp.sum(jnp.where(mask, nll(logp, batch["label"]), 0.0)),
          "correct": jnp.sum(mask & (prediction == batch["label"])),
          "prediction": prediction}


def evaluate(eval_fn: Callable, state: TrainState, split: data.Split, batch_size: int,
             return_predictions: bool = False) -> dict[str, Any]:
  """Mean loss and accuracy (in %) over every example of split, each scored exactly once."""
  sums, predictions = [], []
  for batch in data.eval_batches(split, batch_size):
    out = eval_fn(state, batch)
    sums.append((out["loss_sum"], out["correct"]))
    if return_predictions:  # [:n]: a data-parallel batch may come back padded
      predictions.append(parallel.to_host(out["prediction"])[:len(batch["mask"])][batch["mask"]])
  loss_sum, correct = np.sum(np.asarray(parallel.to_host(sums), np.float64), axis=0)
  result = {"loss": float(loss_sum / len(split)), "accuracy": float(100.0 * correct / len(split))}
  if return_predictions:
    result["predictions"] = np.concatenate(predictions)
  return result


def make_steps(model: nn.Module, tx: optax.GradientTransformation, norm: tuple[float, float],
               dp: parallel.DataParallel | None = None) -> tuple[Callable, Callable]:
  """The jitted train step (state donated) and eval step of a run; with dp, data-parallel
  over its devices (they take host batches and a state placed with dp.put_replicated)."""
  train_fn = parallel.jit_step(functools.partial(train_step, model=model, tx=tx, norm=norm),
                               dp, donate_state=True, replicate_outputs=True)
  eval_fn = parallel.jit_step(functools.partial(eval_step, model=model, norm=norm), dp)
  return train_fn, eval_fn


def run_keys(seed: int) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(init, dropout, shuffle) keys, all derived from the seed."""
  init_key, dropout_key, shuffle_key = jax.random.split(jax.random.key(seed), 3)
  return init_key, dropout_key, shuffle_key


def setup(config: Config, dataset: data.Dataset | None = None):
  """Loads the data and builds the model, optimiser and normalisation of a validated config."""
  config.validate()
  if dataset is None:
    dataset = data.load(config.dataset, config.data_dir, config.data_source)
  if config.train_limit or config.test_limit:
    dataset = data.Dataset(
        dataset.name, dataset.train.take(config.train_limit or len(dataset.train)),
        dataset.test.take(config.test_limit or len(dataset.test)), dataset.source)
  model = models.build(config.model, **config.model_settings())
  tx = make_optimizer(config, len(dataset.train))
  norm = data.normalization(config.normalization, dataset)
  return dataset, model, tx, norm


def scanned_epochs(config: Config) -> bool:
  """Whether epochs run as one scanned program: --epoch_loop, "auto" choosing it on GPU/TPU
  (on XLA:CPU the Python loop of jitted steps is faster)."""
  if config.epoch_loop == "auto":
    return jax.default_backend() != "cpu"
  return config.epoch_loop == "scan"


def make_optimizer(config: Config, num_train: int) -> optax.GradientTransformation:
  """The config's optimiser, with its learning-rate schedule over the run's steps."""
  if config.schedule == "constant" and not config.warmup_epochs:
    return optim.make(config.optimizer, **config.optimizer_hparams())
  steps_per_epoch = data.num_train_steps(num_train, config.batch_size, config.drop_remainder)
  schedule = optim.lr_multiplier(config.schedule, config.epochs * steps_per_epoch,
                                 round(config.warmup_epochs * steps_per_epoch))
  return optim.make(config.optimizer, schedule=schedule, **config.optimizer_hparams())


def _with_hyperparams(opt_state, source):
  """opt_state with the injected hyperparameters of source (an optimiser state of the same
  optimiser)."""
  hyper = optim.injected(opt_state)._replace(hyperparams=optim.injected(source).hyperparams)
  return hyper if hasattr(opt_state, "hyperparams") else (hyper, *opt_state[1:])


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


def _evaluate_epoch(config, eval_fn, state, dataset, epoch, examples_seen) -> dict[str, Any]:
  record: dict[str, Any] = {"epoch": epoch, "step": int(parallel.to_host(state.step)),
                            "examples_seen": examples_seen}
  if config.eval_train:
    train_eval = evaluate(eval_fn, state, dataset.train, config.eval_batch(jax.default_backend()))
    record.update(train_loss=train_eval["loss"], train_accuracy=train_eval["accuracy"])
  test_eval = evaluate(eval_fn, state, dataset.test, config.eval_batch(jax.default_backend()))
  record.update(test_loss=test_eval["loss"], test_accuracy=test_eval["accuracy"])
  return record


def train_and_evaluate(config: Config, workdir: str | None = None,
                       dataset: data.Dataset | None = None, resume: bool = False,
                       log: Callable[[str], None] = print,
                       sweep: dict[str, tuple] | None = None) -> dict[str, Any]:
  """Trains per config, evaluating before training and after every epoch.

  With `sweep` ({setting: values}, see mnistjax.sweep), the product of the values
  are members trained together in one compiled program, each evaluated and
  reported on its own.

  Args:
    config: the run's settings (validated here).
    workdir: where every result is written (None: nowhere, and no checkpoints).
    dataset: data to use instead of loading config.dataset (tests, notebooks).
    resume: continue from the workdir's last checkpoint, if it has one.
    log: where the printed lines go (they are also appended to workdir/log.txt).
    sweep: settings to sweep, each with its values.

  Returns:
    The summary (as in summary.json) plus "state", the final TrainState.

  Raises:
    NonFiniteLoss: the loss became NaN/inf; the last good epoch's results are kept.
    Interrupted: Ctrl-C; the last finished epoch's checkpoint is kept for --resume.
  """
  wall_start = time.perf_counter()
  dp = parallel.make(config.validate().devices)  # before the data: a wrong count fails fast
  dataset, model, tx, norm = setup(config, dataset)
  init_key, dropout_key, shuffle_key = run_keys(config.seed)  # data order: the base seed's
  train_fn, eval_fn = make_steps(model, tx, norm, dp)
  group = sweep_lib.members(config, sweep) if sweep else None
  if group:
    state, dropout_key = sweep_lib.create_states(model, group, "dropout" in sweep,
                                                 len(dataset.train))
    train_fn = sweep_lib.make_sweep_step(model, tx, norm, dp)
  else:
    state = create_state(model, tx, init_key, config.l2)
  scanned = scanned_epochs(config)
  window_fn = (sweep_lib.make_window_step(model, tx, norm)
               if group and not scanned and sweep_lib.windowed(dp) else None)
  place = dp.put_replicated if dp else (lambda tree: tree)
  state, dropout_key = place(state), place(dropout_key)
  out = reporting.Workdir(workdir, log) if workdir else None
  log = out.log if out else log
  ckpt = Checkpoints(out.path / "checkpoints") if out and config.checkpoint else None

  start_epoch, examples_seen = 0, 0
  if resume and ckpt and ckpt.latest_epoch() is not None:
    fresh = state
    state, saved = ckpt.restore(ckpt.latest_epoch(), state)
    # Hyperparameters come from the config, also where the resumed run's flags changed them.
    alive = {"alive": state.hparams["alive"]} if group else {}  # frozen members stay frozen
    state = place(state.replace(hparams={**fresh.hparams, **alive}, opt_state=_with_hyperparams(
        state.opt_state, fresh.opt_state)))
    start_epoch, examples_seen = saved["epoch"], saved["examples_seen"]
    step = int(np.max(parallel.to_host(state.step)))  # members of a sweep share their step
    out.truncate_after(start_epoch, step)
    log(f"resumed from the checkpoint of epoch {start_epoch} (step {step})")
  elif out:
    out.reset()
  num_params = models.count_params(sweep_lib.unstack(state, 0).params if group
                                   else state.params)
  if out:
    out.write_config(config, model=model, normalization=norm, dataset_source=dataset.source,
                     num_params=num_params, sweep={k: list(v) for k, v in (sweep or {}).items()})
  log(f"{config.model} on {dataset.name} ({len(dataset.train)} train / {len(dataset.test)} test, "
      f"from {dataset.source}): {num_params:,} parameters, normalization mean {norm[0]:.4f} "
      f"std {norm[1]:.4f}, {config.optimizer} lr {config.lr:g}, {jax.default_backend()} backend"
      + (f", {dp.describe(config.batch_size)}" if dp else "")
      + (f"; sweep of {len(group)} members in one program" if group else ""))

  steps_per_epoch = data.num_train_steps(len(dataset.train), config.batch_size,
                                         config.drop_remainder)
  epoch_fn = resident = None
  if scanned:  # the dataset on the device, each epoch one program
    step = (functools.partial(sweep_lib.sweep_step, model=model, tx=tx, norm=norm) if group
            else functools.partial(train_step, model=model, tx=tx, norm=norm))
    epoch_fn = make_scan_epoch(step, config, dp)
    resident = place((jnp.asarray(dataset.train.images), jnp.asarray(dataset.train.labels)))
  timing = {"compile_seconds": 0.0, "train_seconds": 0.0, "train_images": 0, "shapes": set()}
  records: list[dict[str, Any]] = []
  with _StopRequest() as stop:
    try:
      if start_epoch == 0:
        records = _evaluate_members(config, eval_fn, state, group, dataset, 0, 0)
        _report(records, out, log, "  (untrained)")
      for epoch in range(start_epoch + 1, config.epochs + 1):
        start = time.perf_counter()
        if epoch_fn:
          state, examples_seen = _train_epoch_scanned(
              config, epoch_fn, state, resident, shuffle_key, dropout_key, epoch,
              steps_per_epoch, examples_seen, timing, out, group, log)
          stop.check()
        else:
          state, examples_seen = _train_epoch(config, train_fn, state, dataset, shuffle_key,
                                              dropout_key, epoch, steps_per_epoch,
                                              examples_seen, timing, out, stop, group, log,
                                              window_fn)
        train_seconds = time.perf_counter() - start
        records = _evaluate_members(config, eval_fn, state, group, dataset, epoch,
                                    examples_seen)
        for record in records:
          record.update(train_seconds=train_seconds, seconds=time.perf_counter() - start)
        _report(records, out, log)
        if ckpt:
          ckpt.save(epoch, state, {"epoch": epoch, "examples_seen": examples_seen,
                                   "config": config.to_dict(),
                                   "dropout_key": np.asarray(jax.random.key_data(
                                       dropout_key)).tolist()})
    except KeyboardInterrupt:
      raise Interrupted(_stopped("interrupted", ckpt, out)) from None
    except NonFiniteLoss as e:
      raise NonFiniteLoss(f"{e}; {_stopped('stopped', ckpt, out)}") from None
    finally:
      if ckpt:
        ckpt.close()

  if not records:  # resumed at the last epoch: nothing left to train
    records = _evaluate_members(config, eval_fn, state, group, dataset, start_epoch,
                                examples_seen)
  summary = {
      "final": records[-1] if not group else None,
      "num_params": num_params, "wall_seconds": time.perf_counter() - wall_start,
      "compile_seconds": timing["compile_seconds"],
      "train_images_per_second": (timing["train_images"] / timing["train_seconds"]
                                  if timing["train_seconds"] else None),
      "backend": jax.default_backend(), "devices": dp.size if dp else 1}
  if group:
    rows = [{"member": m.name, "settings": m.settings, "test_accuracy": r["test_accuracy"],
             "test_loss": r["test_loss"], "train_accuracy": r.get("train_accuracy"),
             "diverged": not bool(alive)}
            for m, r, alive in zip(group, records, np.asarray(state.hparams["alive"]))]
    summary.update(members=rows, by_setting=sweep_lib.aggregate(rows),
                   member_images_per_second=(summary["train_images_per_second"] or 0) * len(group))
    log(sweep_lib.format_table(rows))
    if out and out.primary:
      out.write_json("summary.json", summary)
      plots.sweep(out.read("metrics.jsonl"), sweep, out.path)
  else:
    final = evaluate(eval_fn, state, dataset.test, config.eval_batch(jax.default_backend()),
                     return_predictions=True)
    if out and out.primary:
      summary["best_test_accuracy"] = max(r["test_accuracy"] for r in out.read("metrics.jsonl"))
      _write_results(out, dataset, final["predictions"], summary)
    log(f"final test accuracy {records[-1]['test_accuracy']:.2f}%, wall "
        f"{summary['wall_seconds']:.1f}s" + (f", results in {out.path}" if out else ""))
  return {**summary, "state": state}


def _evaluate_members(config, eval_fn, state, group, dataset, epoch, examples_seen):
  """Per-epoch records: one for a single run, one per member (tagged) for a sweep."""
  if not group:
    return [_evaluate_epoch(config, eval_fn, state, dataset, epoch, examples_seen)]
  return [{"member": m.name, **m.settings, **_evaluate_epoch(
      config, eval_fn, sweep_lib.unstack(state, k), dataset, epoch, examples_seen)}
          for k, m in enumerate(group)]


def _report(records, out, log, suffix: str = "") -> None:
  for record in records:
    prefix = f"[{record['member']}] " if "member" in record else ""
    log(prefix + reporting.epoch_line(record) + suffix)
    if out:
      out.append("metrics.jsonl", record)


def _train_epoch(config, train_fn, state, dataset, shuffle_key, dropout_key, epoch,
                 steps_per_epoch, examples_seen, timing, out, stop, group=None, log=print,
                 window_fn=None):
  """Trains one epoch; pulls the losses to the host once per log interval. With window_fn
  (a sweep on CPU, see sweep.windowed), the batches go in windows of sweep.WINDOW_STEPS."""
  pending: list[tuple[int, int, jax.Array]] = []  # (step, examples seen, loss on device)
  # Masked batches, the last one padded: one compiled step for the epoch, not two.
  batches = data.train_batches(dataset.train, config.batch_size, shuffle_key, epoch,
                               config.drop_remainder, masked=True)
  if window_fn:
    units = sweep_lib.windows(batches, sweep_lib.WINDOW_STEPS)
  else:
    units = ((batch, None) for batch in batches)
  t_steady, images_steady, i = time.perf_counter(), 0, 0
  with reporting.progress(steps_per_epoch, f"epoch {epoch}/{config.epochs}") as bar:
    for unit, real in units:  # a batch, or a window of `real` batches and padding
      shape = unit["label"].shape
      compiles = shape not in timing["shapes"]  # the first call of each shape compiles
      if compiles:
        jax.block_until_ready(state)
        t0 = time.perf_counter()
        timing["train_seconds"] += t0 - t_steady
      if real is None:
        state, step_metrics = train_fn(state, unit, dropout_key)
        sizes, losses = [int(unit["mask"].sum())], [step_metrics["loss"]]
      else:
        state, step_metrics = window_fn(state, unit, dropout_key)  # metrics K x W
        sizes = unit["mask"][:real].sum(axis=1).tolist()
        losses = [step_metrics["loss"][:, j] for j in range(real)]
      if compiles:  # its time is reported apart from the steady-state throughput
        jax.block_until_ready(state)
        timing["shapes"].add(shape)
        timing["compile_seconds"] += time.perf_counter() - t0
        t_steady = time.perf_counter()
      else:
        images_steady += sum(sizes)
      for size, loss in zip(sizes, losses):
        i += 1
        examples_seen += size
        pending.append((i + (epoch - 1) * steps_per_epoch, examples_seen, loss))
        bar.update(1)
        if i % config.log_every == 0 or i == steps_per_epoch:
          losses_host = np.asarray(parallel.to_host([loss for _, _, loss in pending]))
          rows = [{"epoch": epoch, "step": s, "examples_seen": n} for s, n, _ in pending]
          pending = []
          _log_interval(losses_host, rows, state, group, timing, epoch, out, log, bar)
      stop.check()
  jax.block_until_ready(state)
  timing["train_seconds"] += time.perf_counter() - t_steady
  timing["train_images"] += images_steady
  return state, examples_seen


def _log_interval(losses, rows, state, group, timing, epoch, out, log, bar) -> None:
  """One log interval's training losses (n steps [x K members]): NaN check or freeze report,
  progress-bar text, a train_log.jsonl row."""
  if group:
    _freeze_report(losses, rows, state, group, timing.setdefault("frozen", set()), epoch, log)
    finite = np.isfinite(losses)
    count = finite.sum(0)
    mean = np.where(count > 0, np.where(finite, losses, 0).sum(0) / np.maximum(count, 1),
                    np.nan)  # per member, over its finite steps
    bar.set_postfix(loss=f"{mean[np.isfinite(mean)].mean():.4f}")
  else:
    if not np.all(np.isfinite(losses)):
      bad = int(np.argmin(np.isfinite(losses)))
      raise NonFiniteLoss(f"the training loss became {losses[bad]} at step "
                          f"{rows[bad]['step']} (epoch {epoch}); lower --lr or check the data")
    mean = losses.mean()
    bar.set_postfix(loss=f"{mean:.4f}")
  if out:
    out.append("train_log.jsonl", {**rows[-1], "interval": len(rows),
                                   "loss": np.asarray(mean).tolist()})


def scan_epoch(state, images, labels, epoch, shuffle_key, dropout_key, *, step_fn: Callable,
               batch_size: int, drop_remainder: bool, batch_sharding=None):
  """One epoch as one program (the accelerator path): the dataset lives on the device as uint8,
  the epoch is shuffled there (the order of data.epoch_permutation), and `lax.scan` runs
  step_fn over its batches, the last one padded and masked as data.train_batches(masked=True)
  does. Returns the final state and the loss of every step."""
  n = images.shape[0]
  steps = data.num_train_steps(n, batch_size, drop_remainder)
  order = jax.random.permutation(jax.random.fold_in(shuffle_key, epoch), n)
  total = steps * batch_size
  order = jnp.concatenate([order, jnp.zeros(max(total - n, 0), order.dtype)])[:total]
  idx = order.reshape(steps, batch_size)
  mask = (jnp.arange(total) < n).reshape(steps, batch_size)

  def body(state, xs):
    idx_t, mask_t = xs
    batch = {"image": images[idx_t], "label": labels[idx_t].astype(jnp.int32), "mask": mask_t}
    if batch_sharding is not None:  # data-parallel: each device gathers its own rows
      batch = jax.lax.with_sharding_constraint(batch, batch_sharding)
    state, metrics = step_fn(state, batch, dropout_key)
    return state, metrics["loss"]

  return jax.lax.scan(body, state, (idx, mask))


def make_scan_epoch(step_fn: Callable, config: Config, dp: parallel.DataParallel | None):
  """scan_epoch jitted for a run (the state donated; epoch a traced value: one compile)."""
  return jax.jit(functools.partial(
      scan_epoch, step_fn=step_fn, batch_size=config.batch_size,
      drop_remainder=config.drop_remainder,
      batch_sharding=dp.batch_sharding if dp else None), donate_argnums=0)


def _train_epoch_scanned(config, epoch_fn, state, resident, shuffle_key, dropout_key, epoch,
                         steps_per_epoch, examples_seen, timing, out, group=None, log=print):
  """Trains one epoch with the scanned program; logs its losses afterwards, interval by
  interval, as the Python loop does."""
  args = (state, *resident, jnp.asarray(epoch, jnp.int32), shuffle_key, dropout_key)
  if "scan" not in timing:  # compiled ahead of the first epoch, so it is timed on its own
    start = time.perf_counter()
    timing["scan"] = epoch_fn.lower(*args).compile()
    timing["compile_seconds"] += time.perf_counter() - start
  start = time.perf_counter()
  state, losses = timing["scan"](*args)
  losses = np.asarray(parallel.to_host(losses))  # waits for the epoch
  n = len(resident[1])
  trained = steps_per_epoch * config.batch_size if config.drop_remainder else n
  timing["train_seconds"] += time.perf_counter() - start
  timing["train_images"] += trained
  with reporting.progress(steps_per_epoch, f"epoch {epoch}/{config.epochs}") as bar:
    bar.update(steps_per_epoch)
    for first in range(0, steps_per_epoch, config.log_every):
      last = min(first + config.log_every, steps_per_epoch)
      rows = [{"epoch": epoch, "step": (epoch - 1) * steps_per_epoch + s + 1,
               "examples_seen": examples_seen + min((s + 1) * config.batch_size, trained)}
              for s in range(first, last)]
      _log_interval(losses[first:last], rows, state, group, timing, epoch, out, log, bar)
  return state, examples_seen + trained


def _freeze_report(losses, rows, state, group, frozen: set, epoch, log) -> None:
  """Logs the members whose loss became NaN or infinite in this interval (losses: n steps x K
  members), with the step; raises if no member is left alive."""
  for k in np.flatnonzero(~np.isfinite(losses).all(axis=0)):
    if k not in frozen:
      frozen.add(k)
      j = int(np.argmin(np.isfinite(losses[:, k])))  # its first non-finite step
      log(f"member {group[k].name}: the training loss became {losses[j, k]} at step "
          f"{rows[j]['step']} (epoch {epoch}); frozen, the other members go on")
  if not parallel.to_host(state.hparams["alive"]).any():
    step = int(np.max(parallel.to_host(state.step)))
    raise NonFiniteLoss(f"every member of the sweep diverged by step {step} (epoch {epoch}); "
                        "lower --lr")


def _stopped(what: str, ckpt: Checkpoints | None, out) -> str:
  if ckpt is None or ckpt.latest_epoch() is None:
    return f"{what} before any epoch was saved"
  ckpt.wait()
  return (f"{what}; the checkpoint of epoch {ckpt.latest_epoch()} and the metrics up to it are "
          f"in {out.path}: continue with --resume")


def _write_results(out, dataset: data.Dataset, predictions: np.ndarray,
                   summary: dict[str, Any]) -> None:
  """summary.json, the classification report, the confusion matrix and the plots."""
  labels = dataset.test.labels
  names = dataset.class_names
  confusion = metrics.confusion_matrix(labels, predictions)
  report = metrics.classification_report(confusion, names)
  summary["classification_report"] = report
  out.write_json("summary.json", summary)
  out.write_text("classification_report.txt", metrics.format_report(report))
  out.write_text("confusion_matrix.csv", "true\\predicted," + ",".join(names) + "\n" + "\n".join(
      f"{name}," + ",".join(map(str, row)) for name, row in zip(names, confusion)) + "\n")
  epochs = out.read("metrics.jsonl")
  plots.loss_curves(out.read("train_log.jsonl"), epochs,
                    out.path / "loss.png")
  plots.error_curves(epochs, out.path / "error.png")
  plots.prediction_grid(dataset.test.images, labels, predictions, names,
                        out.path / "predictions.png")
  plots.confusion(confusion, names, out.path / "confusion_matrix.png")

