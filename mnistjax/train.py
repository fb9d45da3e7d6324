"""Pure, jit-compiled train and eval steps, and the epoch loop that drives them.

`train_step(state, batch, key) -> (state, metrics)`: the step's dropout key is
`fold_in(key, state.step)`, so the loop passes one key and never threads keys
by hand. Images arrive as uint8 and are normalised inside the step.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from mnistjax import data, models, optim, reporting
from mnistjax.config import Config

Batch = dict[str, Any]


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  batch_stats: Any  # BatchNorm running statistics ({} for models without BatchNorm)
  opt_state: Any


def create_state(model: nn.Module, tx: optax.GradientTransformation, key: jax.Array) -> TrainState:
  """Initial parameters (from key), BatchNorm statistics and optimiser state."""
  variables = models.init(model, key)
  params = variables["params"]
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    batch_stats=variables.get("batch_stats", {}), opt_state=tx.init(params))


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
  step_key = jax.random.fold_in(key, state.step)

  def loss_fn(params):
    logp, updates = model.apply(_variables(params, state.batch_stats), x, train=True,
                                rngs={"dropout": step_key}, mutable=["batch_stats"])
    return nll(logp, batch["label"]).mean(), (logp, updates.get("batch_stats", {}))

  (loss, (logp, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = {"loss": loss,
             "accuracy": jnp.mean(jnp.argmax(logp, -1) == batch["label"]),
             "grad_norm": optax.tree.norm(grads)}
  return state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                       opt_state=opt_state), metrics


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
    if return_predictions:
      predictions.append(out["prediction"][batch["mask"]])
  loss_sum, correct = np.sum(np.asarray(jax.device_get(sums), np.float64), axis=0)
  result = {"loss": float(loss_sum / len(split)), "accuracy": float(100.0 * correct / len(split))}
  if return_predictions:
    result["predictions"] = np.concatenate(jax.device_get(predictions))
  return result


def make_steps(config: Config, model: nn.Module, tx: optax.GradientTransformation,
               norm: tuple[float, float]) -> tuple[Callable, Callable]:
  """The jitted train step (state donated) and eval step of a run."""
  train_fn = jax.jit(functools.partial(train_step, model=model, tx=tx, norm=norm),
                     donate_argnums=0)
  eval_fn = jax.jit(functools.partial(eval_step, model=model, norm=norm))
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
  tx = optim.make(config.optimizer, learning_rate=config.lr, momentum=config.momentum,
                  weight_decay=config.weight_decay, nesterov=config.nesterov)
  norm = data.normalization(config.normalization, dataset)
  return dataset, model, tx, norm


def train_and_evaluate(config: Config, workdir: str | None = None,
                       dataset: data.Dataset | None = None,
                       log: Callable[[str], None] = print) -> dict[str, Any]:
  """Trains per config, evaluating after every epoch; returns the last epoch's metrics.

  Args:
    config: the run's settings (validated here).
    workdir: where config.json and metrics.jsonl are written (None: nowhere).
    dataset: data to use instead of loading config.dataset (tests, notebooks).
    log: where the per-epoch lines go.

  Returns:
    The final epoch's metrics record (as written to metrics.jsonl) plus "state".
  """
  dataset, model, tx, norm = setup(config, dataset)
  init_key, dropout_key, shuffle_key = run_keys(config.seed)
  state = create_state(model, tx, init_key)
  train_fn, eval_fn = make_steps(config, model, tx, norm)
  writer = reporting.Workdir(workdir) if workdir else None
  if writer:
    writer.write_config(config, model=model, normalization=norm, dataset_source=dataset.source,
                        num_params=models.count_params(state.params))
  log(f"{config.model} on {dataset.name} ({len(dataset.train)} train / {len(dataset.test)} test, "
      f"from {dataset.source}): {models.count_params(state.params):,} parameters, "
      f"normalization mean {norm[0]:.4f} std {norm[1]:.4f}, {jax.default_backend()} backend")

  steps_per_epoch = data.num_train_steps(len(dataset.train), config.batch_size,
                                         config.drop_remainder)
  record: dict[str, Any] = {}
  for epoch in range(1, config.epochs + 1):
    start = time.perf_counter()
    losses, running = [], []
    with reporting.progress(steps_per_epoch, f"epoch {epoch}/{config.epochs}") as bar:
      for i, batch in enumerate(data.train_batches(dataset.train, config.batch_size, shuffle_key,
                                                   epoch, config.drop_remainder)):
        state, metrics = train_fn(state, batch, dropout_key)
        losses.append(metrics["loss"])
        bar.update(1)
        if (i + 1) % config.log_every == 0 or i + 1 == steps_per_epoch:
          window = np.asarray(jax.device_get(losses))  # one host sync per log interval
          running.append(window)
          losses = []
          bar.set_postfix(loss=f"{window.mean():.4f}")
    train_seconds = time.perf_counter() - start
    record = {"epoch": epoch, "step": int(state.step),
              "train_loss_running": float(np.concatenate(running).mean())}
    if config.eval_train:
      train_eval = evaluate(eval_fn, state, dataset.train, config.eval_batch_size)
      record.update(train_loss=train_eval["loss"], train_accuracy=train_eval["accuracy"])
    test_eval = evaluate(eval_fn, state, dataset.test, config.eval_batch_size)
    record.update(test_loss=test_eval["loss"], test_accuracy=test_eval["accuracy"],
                  train_seconds=train_seconds, seconds=time.perf_counter() - start)
    log(reporting.epoch_line(record))
    if writer:
      writer.append_metrics(record)
  return {**record, "state": state}
