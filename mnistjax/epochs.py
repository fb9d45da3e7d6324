"""Epoch runners and the evaluator: the objects that own a run's compiled programs.

A runner holds the members' state and trains it an epoch at a time, yielding its
progress: steps taken and, once per log interval, the training losses (pulled to
the host then, not per step). `PythonEpochs` calls a jitted step per batch (or per
window of batches, on CPU); `ScannedEpochs` keeps the dataset on the device and
runs each epoch as one `lax.scan` program (the accelerator path). Both take the
same steps on the same batches in the same order (a test), and both time their
compiles apart from their steady state.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Iterator
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from mnistjax import data, parallel, step, sweep
from mnistjax.config import Config


@dataclasses.dataclass(frozen=True)
class Plan:
  """A run's constants: what every part of the loop reads and none changes."""
  config: Config
  model: nn.Module
  tx: optax.GradientTransformation
  norm: tuple[float, float]
  dataset: data.Dataset
  group: list[sweep.Member]  # K >= 1 members
  dp: parallel.DataParallel | None = None

  @property
  def steps_per_epoch(self) -> int:
    return data.num_train_steps(len(self.dataset.train), self.config.batch_size,
                                self.config.drop_remainder)

  @property
  def per_member_data(self) -> bool:
    """Whether each member has its own data order: where the members' seeds differ (the seed
    sets initialisation, dropout and shuffling); else they share every batch."""
    return len({m.config.seed for m in self.group}) > 1

  @property
  def shuffle_keys(self) -> jax.Array:
    """The data-order key of every member (K x key), from its seed."""
    return jnp.stack([step.run_keys(m.config.seed)[2] for m in self.group])

  @property
  def eval_batch_size(self) -> int:
    return self.config.eval_batch(jax.default_backend())

  def place(self, tree: Any) -> Any:
    """tree on the run's devices: replicated over them where data-parallel."""
    return self.dp.put_replicated(tree) if self.dp else tree


@dataclasses.dataclass
class Timing:
  """Seconds spent compiling and in steady-state training, and the images trained."""
  compile_seconds: float = 0.0
  train_seconds: float = 0.0
  train_images: int = 0

  @property
  def images_per_second(self) -> float | None:
    return self.train_images / self.train_seconds if self.train_seconds else None


@dataclasses.dataclass(frozen=True)
class Interval:
  """One log interval of an epoch: its steps (epoch, global step, examples seen), and the
  training loss of every step and member and whether the member took the step (each steps x
  K, on the host; a member stops taking steps once its loss or parameters are not finite)."""
  rows: list[dict[str, int]]
  losses: np.ndarray
  alive: np.ndarray


@dataclasses.dataclass(frozen=True)
class Progress:
  steps: int  # steps taken since the last Progress
  intervals: tuple[Interval, ...] = ()  # log intervals completed with them


class _Runner:
  """What both runners share: the members' state, the keys, the count of examples seen."""

  def __init__(self, plan: Plan, members: sweep.Members, keys: jax.Array,
               examples_seen: int = 0):
    self.plan = plan
    self.members, self.keys = plan.place(members), plan.place(keys)
    self.per_member = plan.per_member_data
    self.shuffle_keys = plan.shuffle_keys
    self.examples_seen = examples_seen
    self.timing = Timing()

  def freeze(self, members: np.ndarray) -> None:
    """Marks members (a K bool mask) as diverged: they take no more steps."""
    if members.any():
      alive = self.members.alive & jnp.asarray(~members)
      self.members = self.members.replace(alive=self.plan.place(alive))

  def _rows(self, epoch: int, first: int, sizes: list[int]) -> list[dict[str, int]]:
    """Rows of the steps first+1 .. first+len(sizes) of an epoch, counting examples seen."""
    rows = []
    for i, size in enumerate(sizes, first + 1):
      self.examples_seen += size
      rows.append({"epoch": epoch, "step": (epoch - 1) * self.plan.steps_per_epoch + i,
                   "examples_seen": self.examples_seen})
    return rows


class PythonEpochs(_Runner):
  """An epoch as a Python loop over jitted steps: a window of sweep.WINDOW_STEPS batches per
  call where sweep.windowed (CPU), else one batch of every member (sweep.lock_step)."""

  def __init__(self, *args, **kwargs):
    super().__init__(*args, **kwargs)
    p = self.plan
    self.windowed = sweep.windowed(p.dp)
    self._step = (sweep.make_window_step(p.model, p.tx, p.norm, self.per_member)
                  if self.windowed
                  else sweep.make_lock_step(p.model, p.tx, p.norm, p.dp, self.per_member))
    self._compiled: set[tuple[int, ...]] = set()

  def _batches(self, epoch: int) -> Iterator[dict[str, np.ndarray]]:
    """The epoch's host batches: masked, the last one padded (one compiled step for the
    epoch, not two); with per-member data, every leaf K x ..., each member its own order."""
    cfg = self.plan.config
    streams = [data.train_batches(self.plan.dataset.train, cfg.batch_size, key, epoch,
                                  cfg.drop_remainder, masked=True)
               for key in (self.shuffle_keys if self.per_member else self.shuffle_keys[:1])]
    if not self.per_member:
      return streams[0]
    return ({k: np.stack([b[k] for b in group]) for k in group[0]} for group in zip(*streams))

  def train(self, epoch: int) -> Iterator[Progress]:
    """Trains one epoch, yielding after every call of the step."""
    cfg = self.plan.config
    batches = self._batches(epoch)
    units = (sweep.windows(batches, sweep.WINDOW_STEPS) if self.windowed
             else ((batch, None) for batch in batches))
    pending_rows, pending_losses, done = [], [], 0
    t_steady, images_steady = time.perf_counter(), 0
    for unit, real in units:  # a batch, or a window of `real` batches and padding
      compiles = unit["label"].shape not in self._compiled  # a new shape compiles
      if compiles:
        jax.block_until_ready(self.members)
        t0 = time.perf_counter()
        self.timing.train_seconds += t0 - t_steady
      self.members, metrics = self._step(self.members, unit, self.keys)
      # Every member's batches hold the same number of examples: count the first member's.
      mask = unit["mask"][..., 0, :] if self.per_member else unit["mask"]
      if real is None:
        sizes, losses = [int(mask.sum())], [(metrics["loss"], metrics["alive"])]
      else:
        sizes = mask[:real].sum(axis=1).tolist()
        losses = [(metrics["loss"][:, j], metrics["alive"][:, j]) for j in range(real)]
      if compiles:  # its time is reported apart from the steady-state throughput
        jax.block_until_ready(self.members)
        self._compiled.add(unit["label"].shape)
        self.timing.compile_seconds += time.perf_counter() - t0
        t_steady = time.perf_counter()
      else:
        images_steady += sum(sizes)
      intervals = []
      for size, loss in zip(sizes, losses):
        pending_rows += self._rows(epoch, done, [size])
        pending_losses.append(loss)
        done += 1
        if done % cfg.log_every == 0 or done == self.plan.steps_per_epoch:
          losses_host, alive_host = zip(*parallel.to_host(pending_losses))
          intervals.append(Interval(pending_rows, np.stack(losses_host), np.stack(alive_host)))
          pending_rows, pending_losses = [], []
      yield Progress(len(sizes), tuple(intervals))
    jax.block_until_ready(self.members)
    self.timing.train_seconds += time.perf_counter() - t_steady
    self.timing.train_images += images_steady


def scan_epoch(members, images, labels, epoch, shuffle_keys, keys, *, step_fn,
               batch_size: int, drop_remainder: bool, per_member: bool = False,
               batch_sharding=None):
  """One epoch as one program (the accelerator path): the dataset lives on the device as uint8,
  the epoch is shuffled there (the order of data.epoch_permutation, from each member's key
  with per_member, else from the first), and `lax.scan` runs step_fn over its batches, the
  last one padded and masked as data.train_batches(masked=True) does. Returns the final
  members, and the losses and alive flags, each steps x K."""
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
    members, metrics = step_fn(members, batch, keys)
    return members, (metrics["loss"], metrics["alive"])

  return jax.lax.scan(body, members, (idx, mask))


class ScannedEpochs(_Runner):
  """Each epoch one compiled program (`scan_epoch`), the dataset resident on the device; the
  losses are logged afterwards, interval by interval, as PythonEpochs logs them."""

  def __init__(self, *args, **kwargs):
    super().__init__(*args, **kwargs)
    p = self.plan
    self._epoch_fn = jax.jit(functools.partial(
        scan_epoch, step_fn=functools.partial(sweep.lock_step, model=p.model, tx=p.tx,
                                              norm=p.norm, per_member=self.per_member),
        batch_size=p.config.batch_size, drop_remainder=p.config.drop_remainder,
        per_member=self.per_member,
        batch_sharding=p.dp.batch_sharding_of(self.per_member) if p.dp else None),
        donate_argnums=0)
    self._resident = p.place((jnp.asarray(p.dataset.train.images),
                              jnp.asarray(p.dataset.train.labels)))
    self._compiled = None

  def train(self, epoch: int) -> Iterator[Progress]:
    cfg, steps = self.plan.config, self.plan.steps_per_epoch
    args = (self.members, *self._resident, jnp.asarray(epoch, jnp.int32),
            self.plan.place(self.shuffle_keys), self.keys)
    if self._compiled is None:  # compiled ahead of the first epoch, so it is timed on its own
      start = time.perf_counter()
      self._compiled = self._epoch_fn.lower(*args).compile()
      self.timing.compile_seconds += time.perf_counter() - start
    start = time.perf_counter()
    self.members, (losses, alive) = self._compiled(*args)
    losses, alive = map(np.asarray, parallel.to_host((losses, alive)))  # waits for the epoch
    n = len(self.plan.dataset.train)
    trained = steps * cfg.batch_size if cfg.drop_remainder else n
    self.timing.train_seconds += time.perf_counter() - start
    self.timing.train_images += trained
    sizes = [min(cfg.batch_size, trained - s * cfg.batch_size) for s in range(steps)]
    intervals = tuple(
        Interval(self._rows(epoch, first, sizes[first:first + cfg.log_every]),
                 losses[first:first + cfg.log_every], alive[first:first + cfg.log_every])
        for first in range(0, steps, cfg.log_every))
    yield Progress(steps, intervals)


def make_runner(plan: Plan, members: sweep.Members, keys: jax.Array,
                examples_seen: int = 0) -> PythonEpochs | ScannedEpochs:
  """The run's epoch runner: --epoch_loop, "auto" choosing the scanned program on GPU/TPU
  (on XLA:CPU the Python loop of jitted steps is faster)."""
  loop = plan.config.epoch_loop
  if loop == "auto":
    loop = "python" if jax.default_backend() == "cpu" else "scan"
  runner = ScannedEpochs if loop == "scan" else PythonEpochs
  return runner(plan, members, keys, examples_seen)


class Evaluator:
  """Scores members on whole splits in evaluation mode, each example exactly once."""

  def __init__(self, plan: Plan):
    self.plan = plan
    self._step = parallel.jit_step(
        functools.partial(step.eval_step, model=plan.model, norm=plan.norm), plan.dp)

  def split(self, state: step.TrainState, split: data.Split,
            predictions: bool = False) -> dict[str, Any]:
    """Mean loss and accuracy (in %) of one member's state on split; with predictions, the
    predicted class of every example too."""
    sums, predicted = [], []
    for batch in data.eval_batches(split, self.plan.eval_batch_size):
      out = self._step(state, batch)
      sums.append((out["loss_sum"], out["correct"]))
      if predictions:  # [:n]: a data-parallel batch may come back padded
        n = len(batch["mask"])
        predicted.append(parallel.to_host(out["prediction"])[:n][batch["mask"]])
    loss_sum, correct = np.sum(np.asarray(parallel.to_host(sums), np.float64), axis=0)
    result = {"loss": float(loss_sum / len(split)),
              "accuracy": float(100.0 * correct / len(split))}
    if predictions:
      result["predictions"] = np.concatenate(predicted)
    return result

  def members(self, members: sweep.Members, epoch: int, examples_seen: int,
              predictions: bool = False) -> list[dict[str, Any]]:
    """One epoch record per member (its test, and train, loss and accuracy); with predictions,
    each record carries the member's test predictions under "predictions"."""
    cfg, dataset = self.plan.config, self.plan.dataset
    steps = np.atleast_1d(parallel.to_host(members.state.step))
    records = []
    for k in range(members.size):
      state = sweep.unstack(members.state, k)
      record: dict[str, Any] = {"epoch": epoch, "step": int(steps[k]),
                                "examples_seen": examples_seen}
      if cfg.eval_train:
        train = self.split(state, dataset.train)
        record.update(train_loss=train["loss"], train_accuracy=train["accuracy"])
      test = self.split(state, dataset.test, predictions)
      record.update(test_loss=test["loss"], test_accuracy=test["accuracy"])
      if predictions:
        record["predictions"] = test["predictions"]
      records.append(record)
    return records
