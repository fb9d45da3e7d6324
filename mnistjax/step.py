"""The train state and the pure, jit-compiled steps that update and score it.

`train_step(state, batch, key) -> (state, metrics)`: the step's dropout key is
`fold_in(key, state.step)`, so the loop passes one key and never threads keys by
hand. Images arrive as uint8 and are normalised inside the step. Values a sweep
varies are arrays in the state, not constants of the compiled program: the
learning rate, momentum and weight decay in the optimiser's injected
hyperparameters, the L2 coefficient and (when swept) the dropout rate as fields.
"""

from __future__ import annotations

from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from mnistjax import data, models, optim
from mnistjax.config import Config

Batch = dict[str, Any]


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # int32: optimisation steps taken
  params: Any
  batch_stats: Any  # BatchNorm running statistics ({} for models without BatchNorm)
  opt_state: Any  # the optimiser's state, its hyperparameters injected (optim.make)
  l2: jax.Array  # the S4 notebook's L2 coefficient (optim.l2_penalty)
  dropout: jax.Array | None = None  # a swept dropout rate; None: the model's own, static


def create_state(model: nn.Module, tx: optax.GradientTransformation, key: jax.Array,
                 l2: float = 0.0, dropout: float | None = None) -> TrainState:
  """Initial parameters (from key), BatchNorm statistics and optimiser state."""
  variables = models.init(model, key)
  params = variables["params"]
  dtype = jnp.result_type(float)
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    batch_stats=variables.get("batch_stats", {}), opt_state=tx.init(params),
                    l2=jnp.asarray(l2, dtype),
                    dropout=None if dropout is None else jnp.asarray(dropout, dtype))


def variables(state: TrainState) -> dict[str, Any]:
  """The model's variables in `state`, ready for `model.apply`."""
  if state.batch_stats:
    return {"params": state.params, "batch_stats": state.batch_stats}
  return {"params": state.params}


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
  if state.dropout is not None:  # a sweep member's own rate, a traced value
    model = model.clone(dropout=state.dropout)

  # A padded batch has a mask; its padding carries no weight anywhere.
  mask = batch.get("mask")
  weight = None if mask is None else mask.astype(x.dtype)
  count = labels.shape[0] if mask is None else jnp.sum(weight)

  def mean(values_B):
    return values_B.mean() if weight is None else jnp.sum(values_B * weight) / count

  def loss_fn(params):
    logp, updates = model.apply(variables(state.replace(params=params)), x, train=True,
                                mask=mask, rngs={"dropout": step_key}, mutable=["batch_stats"])
    data_loss = mean(nll(logp, labels))
    loss = data_loss + optim.l2_penalty(params, state.l2, count)
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
  logp = model.apply(variables(state), x, train=False)
  mask = batch["mask"]
  prediction = jnp.argmax(logp, -1)
  return {"loss_sum": jnp.sum(jnp.where(mask, nll(logp, batch["label"]), 0.0)),
          "correct": jnp.sum(mask & (prediction == batch["label"])),
          "prediction": prediction}


def run_keys(seed: int) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(init, dropout, shuffle) keys, all derived from the seed."""
  init_key, dropout_key, shuffle_key = jax.random.split(jax.random.key(seed), 3)
  return init_key, dropout_key, shuffle_key


def make_optimizer(config: Config, num_train: int) -> optax.GradientTransformation:
  """The config's optimiser, with its learning-rate schedule over the run's steps."""
  if config.schedule == "constant" and not config.warmup_epochs:
    return optim.make(config.optimizer, zero_grad=config.zero_grad,
                      **config.optimizer_hparams())
  steps_per_epoch = data.num_train_steps(num_train, config.batch_size, config.drop_remainder)
  schedule = optim.lr_multiplier(config.schedule, config.epochs * steps_per_epoch,
                                 round(config.warmup_epochs * steps_per_epoch))
  return optim.make(config.optimizer, schedule=schedule, zero_grad=config.zero_grad,
                    **config.optimizer_hparams())


def with_hyperparameters(state: TrainState, source: TrainState) -> TrainState:
  """state with the hyperparameters of source (the same optimiser and model, other values):
  a resumed run takes its learning rate, L2 or dropout from its config, not its checkpoint."""
  hyper = optim.injected(state.opt_state)._replace(
      hyperparams=optim.injected(source.opt_state).hyperparams)
  opt_state = hyper if hasattr(state.opt_state, "hyperparams") else (hyper,
                                                                      *state.opt_state[1:])
  return state.replace(opt_state=opt_state, l2=source.l2, dropout=source.dropout)
