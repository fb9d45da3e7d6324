"""What one training step does: the optimiser, the train state, and the pure jitted steps.

`train_step(state, batch, key) -> (state, metrics)`: the step's dropout key is
`fold_in(key, state.step)`, so the loop passes one key and never threads keys by
hand. Images arrive as uint8 and are normalised inside the step. Values a sweep
varies are arrays in the state, not constants of the compiled program: the
learning rate, momentum and weight decay in the optimiser's injected
hyperparameters (`optax.inject_hyperparams`), the L2 coefficient and (when swept)
the dropout rate as fields; so one compiled step serves every member of a sweep.

The optimisers are optax chains with PyTorch's update semantics. Weight decay is
PyTorch's coupled form for every optimiser: `wd * param` is added to the gradient
before the optimiser sees it; the S4 notebook's L2 penalty lives in the loss
instead (`l2_penalty`).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Callable
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from mnistjax import data, models
from mnistjax.errors import ConfigError

Batch = dict[str, Any]


# ----------------------------------------------------------------------------- optimisers

def _sgd(learning_rate, momentum, weight_decay, nesterov=False):
  # PyTorch SGD: buf = momentum * buf + g (buf = g at the first step), p -= lr * buf;
  # optax.trace starts from zeros, which gives the same first step.
  return optax.chain(optax.add_decayed_weights(weight_decay),
                     optax.sgd(learning_rate, momentum, nesterov=nesterov))


def _rmsprop(learning_rate, alpha, eps, weight_decay):
  # PyTorch RMSprop (and the S2 notebook): v = alpha v + (1 - alpha) g^2,
  # p -= lr g / (sqrt(v) + eps), v starting at zero.
  return optax.chain(optax.add_decayed_weights(weight_decay),
                     optax.rmsprop(learning_rate, decay=alpha, eps=eps, eps_in_sqrt=False))


def _adam(learning_rate, beta1, beta2, eps, weight_decay):
  # PyTorch Adam: bias-corrected moments, eps outside the square root, coupled decay.
  return optax.chain(optax.add_decayed_weights(weight_decay),
                     optax.adam(learning_rate, b1=beta1, b2=beta2, eps=eps))


def _adamw(learning_rate, beta1, beta2, eps, weight_decay):
  # PyTorch AdamW: decoupled decay, p -= lr * (adam step + wd * p).
  return optax.adamw(learning_rate, b1=beta1, b2=beta2, eps=eps, weight_decay=weight_decay)


@dataclasses.dataclass(frozen=True)
class Optimizer:
  build: Callable[..., optax.GradientTransformation]
  hparams: tuple[str, ...]  # the Config fields it reads, by the names `build` takes
  static: tuple[str, ...] = ()  # hyperparameters that change the program, not a value


# The one list of optimisers.
OPTIMIZERS: dict[str, Optimizer] = {
    "sgd": Optimizer(_sgd, ("learning_rate", "momentum", "weight_decay", "nesterov"),
                     ("nesterov",)),
    "rmsprop": Optimizer(_rmsprop, ("learning_rate", "alpha", "eps", "weight_decay")),
    "adam": Optimizer(_adam, ("learning_rate", "beta1", "beta2", "eps", "weight_decay")),
    "adamw": Optimizer(_adamw, ("learning_rate", "beta1", "beta2", "eps", "weight_decay")),
}

SCHEDULES = ("constant", "linear", "cosine")


def lr_multiplier(schedule: str, total_steps: int, warmup_steps: int = 0) -> optax.Schedule:
  """The factor on the learning rate at each step: a linear warm-up from 0 over warmup_steps,
  then 1 ("constant") or a decay to 0 at total_steps ("linear", "cosine")."""
  if schedule not in SCHEDULES:
    raise ConfigError(f"unknown schedule {schedule!r}; choose one of: {', '.join(SCHEDULES)}")
  decay_steps = max(total_steps - warmup_steps, 1)
  after = {"constant": lambda: optax.constant_schedule(1.0),
           "linear": lambda: optax.linear_schedule(1.0, 0.0, decay_steps),
           "cosine": lambda: optax.cosine_decay_schedule(1.0, decay_steps)}[schedule]()
  if warmup_steps <= 0:
    return after
  return optax.join_schedules([optax.linear_schedule(0.0, 1.0, warmup_steps), after],
                              [warmup_steps])


def running_sum() -> optax.GradientTransformation:
  """The sum of every gradient so far: what PyTorch's .grad holds when a loop never calls
  zero_grad() (the S2 notebook), and so what its optimiser sees."""
  def init(params):
    return jax.tree.map(jnp.zeros_like, params)

  def update(updates, total, params=None):
    del params
    total = jax.tree.map(jnp.add, total, updates)
    return total, total
  return optax.GradientTransformation(init, update)


def make(name: str, schedule: optax.Schedule | None = None, zero_grad: bool = True, **hparams
         ) -> optax.GradientTransformation:
  """The optimiser registered under name, built from the hyperparameters it uses; with
  schedule, its updates are scaled by schedule(step) (PyTorch's LR schedulers: the momentum
  buffer holds unscaled gradients, the step is lr * factor * buffer). zero_grad=False feeds
  it the running sum of the gradients (`running_sum`), weight decay added after the sum as
  PyTorch does."""
  if name not in OPTIMIZERS:
    raise ConfigError(f"unknown optimizer {name!r}; choose one of: {', '.join(OPTIMIZERS)}")
  spec = OPTIMIZERS[name]
  missing = [k for k in spec.hparams if k not in hparams]
  if missing:
    raise ConfigError(f"optimizer {name!r} needs {', '.join(missing)}")
  build = spec.build
  if not zero_grad:
    @functools.wraps(spec.build)  # inject_hyperparams reads the build's parameters
    def build(**kwargs):  # the sum first, inside: the injected state keeps its structure
      return optax.chain(running_sum(), spec.build(**kwargs))
  tx = optax.inject_hyperparams(build, static_args=spec.static)(
      **{k: hparams[k] for k in spec.hparams})
  return tx if schedule is None else optax.chain(tx, optax.scale_by_schedule(schedule))


# A Config's optimiser settings by the names an optimiser's function takes them.
_HPARAMS = {"learning_rate": "lr", "momentum": "momentum", "nesterov": "nesterov",
            "weight_decay": "weight_decay", "alpha": "alpha", "eps": "eps", "beta1": "beta1",
            "beta2": "beta2"}


@dataclasses.dataclass(frozen=True)
class Own:
  """An optimiser of your own: an optax.GradientTransformation (`make`, used as it is), or a
  function returning one, given the Config settings it takes (its parameter -> the field)."""
  make: Any
  settings: tuple[tuple[str, str], ...] = ()


def own_optimizer(optimizer, config, swept=()) -> Own:
  """Own of a transformation or an optimiser function: the function's `learning_rate` (or
  `lr`) is config.lr; its `momentum` and `weight_decay`, where it takes them, the config's
  where they are swept or set (else the function's own defaults hold)."""
  if is_transformation(optimizer):
    return Own(optimizer)
  params = parameters(optimizer)
  lr_name = next((n for n in ("learning_rate", "lr") if n in params), None)
  if lr_name is None:
    raise ConfigError(f"optimizer={_name(optimizer)}: a function giving the optimiser must "
                      "take `learning_rate` (or `lr`), e.g. lambda learning_rate: "
                      "optax.adamw(learning_rate); or give an optax.GradientTransformation")
  default = type(config)()
  return Own(optimizer, ((lr_name, "lr"), *(
      (k, k) for k in ("momentum", "weight_decay")
      if k in params and (k in swept or getattr(config, k) != getattr(default, k)))))


def make_optimizer(config, steps_per_epoch: int, optimizer: Own | None = None
                   ) -> optax.GradientTransformation:
  """The optimiser of a config.Config (config.py reads this module's lists, so it is not
  imported here): its learning rate `config.lr`, its schedule over the run's steps.
  optimizer, where given, replaces config.optimizer; a function's values are injected
  (`optax.inject_hyperparams`) so that they can be swept and changed on resume."""
  schedule = None
  if config.schedule != "constant" or config.warmup_epochs:
    schedule = lr_multiplier(config.schedule, config.epochs * steps_per_epoch,
                             round(config.warmup_epochs * steps_per_epoch))
  if optimizer is None:
    hparams = {name: getattr(config, field) for name, field in _HPARAMS.items()}
    return make(config.optimizer, schedule=schedule, zero_grad=config.zero_grad, **hparams)
  if is_transformation(optimizer.make):
    tx = optimizer.make
  else:
    tx = optax.inject_hyperparams(optimizer.make)(
        **{param: getattr(config, field) for param, field in optimizer.settings})
  return tx if schedule is None else optax.chain(tx, optax.scale_by_schedule(schedule))


def is_transformation(optimizer) -> bool:
  return isinstance(optimizer, optax.GradientTransformation)


# The Config settings of the built-in optimisers besides lr: an optimiser of your own takes
# momentum and weight_decay as parameters of its function, the others not at all.
OPTIMIZER_SETTINGS = ("momentum", "nesterov", "zero_grad", "weight_decay", "alpha", "eps",
                      "beta1", "beta2")


def parameters(factory: Callable) -> tuple[str, ...]:
  try:
    return tuple(inspect.signature(factory).parameters)
  except (TypeError, ValueError):  # no signature to read
    return ()


def _name(obj) -> str:
  return getattr(obj, "__qualname__", None) or type(obj).__name__


def injected(opt_state):
  """The state of the injected hyperparameters (`.hyperparams`) inside an optimiser state of
  `make` or `make_optimizer`, with or without a schedule; None for an optimiser given as a
  transformation (nothing injected)."""
  for candidate in (opt_state, opt_state[0] if isinstance(opt_state, tuple) and opt_state
                    else None):
    if hasattr(candidate, "hyperparams"):
      return candidate
  return None


def l2_penalty(params, l2: float | jax.Array, batch_size: int | jax.Array) -> jax.Array:
  """The S4 notebook's L2 term, l2 / (2 m) * sum of squared weights (kernels, not biases)."""
  kernels = [leaf for path, leaf in jax.tree_util.tree_leaves_with_path(params)
             if "kernel" in jax.tree_util.keystr(path)]
  return l2 / (2 * batch_size) * sum(jnp.sum(jnp.square(k)) for k in kernels)


# ----------------------------------------------------------------------------- the state

@flax.struct.dataclass
class TrainState:
  step: jax.Array  # int32: optimisation steps taken
  params: Any
  batch_stats: Any  # BatchNorm running statistics ({} for models without BatchNorm)
  opt_state: Any  # the optimiser's state, its hyperparameters injected (`make`)
  l2: jax.Array  # the S4 notebook's L2 coefficient (`l2_penalty`)
  dropout: jax.Array | None = None  # a swept dropout rate; None: the model's own, static


def create_state(model: nn.Module, tx: optax.GradientTransformation, key: jax.Array,
                 l2: float = 0.0, dropout: float | None = None,
                 image_shape: tuple[int, ...] = (28, 28, 1)) -> TrainState:
  """Initial parameters (from key), BatchNorm statistics and optimiser state."""
  variables_ = models.init(model, key, image_shape)
  params = variables_["params"]
  dtype = jnp.result_type(float)
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    batch_stats=variables_.get("batch_stats", {}), opt_state=tx.init(params),
                    l2=jnp.asarray(l2, dtype),
                    dropout=None if dropout is None else jnp.asarray(dropout, dtype))


def variables(state: TrainState) -> dict[str, Any]:
  """The model's variables in `state`, ready for `model.apply`."""
  if state.batch_stats:
    return {"params": state.params, "batch_stats": state.batch_stats}
  return {"params": state.params}


def run_keys(seed: int) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(init, dropout, shuffle) keys, all derived from the seed."""
  init_key, dropout_key, shuffle_key = jax.random.split(jax.random.key(seed), 3)
  return init_key, dropout_key, shuffle_key


def with_hyperparameters(state: TrainState, source: TrainState) -> TrainState:
  """state with the hyperparameters of source (the same optimiser and model, other values):
  a resumed run takes its learning rate, L2 or dropout from its config, not its checkpoint."""
  hyper = injected(state.opt_state)
  if hyper is not None:
    hyper = hyper._replace(hyperparams=injected(source.opt_state).hyperparams)
    opt_state = hyper if hasattr(state.opt_state, "hyperparams") else (hyper,
                                                                        *state.opt_state[1:])
    state = state.replace(opt_state=opt_state)
  return state.replace(l2=source.l2, dropout=source.dropout)


# ----------------------------------------------------------------------------- the steps

def nll(logp_BxK: jax.Array, labels_B: jax.Array) -> jax.Array:
  """Per-example negative log-likelihood of integer labels."""
  return -jnp.take_along_axis(logp_BxK, labels_B[:, None], axis=-1)[:, 0]


def cross_entropy(logits_BxK: jax.Array, labels_B: jax.Array) -> jax.Array:
  """Per-example softmax cross-entropy of integer labels: the loss unless one is given."""
  return nll(jax.nn.log_softmax(logits_BxK), labels_B)


@dataclasses.dataclass(frozen=True)
class Model:
  """What a step needs of the network: the module, how its input is normalised, whether it
  takes the batch's `mask`, the loss it trains on (per example: B logits x K, B labels -> B),
  and the metrics its evaluation reports, by name (each per example, like the loss)."""
  module: nn.Module
  norm: tuple[float, ...]  # data.Normalization
  mask: bool = True
  loss: Callable[[jax.Array, jax.Array], jax.Array] | None = None  # None: cross_entropy
  metrics: tuple[tuple[str, Callable], ...] = ()
  l2: bool = True  # whether a member has an L2 term (state.l2); else the step computes none

  def apply(self, variables_, batch: Batch, train: bool, **kwargs):
    """The module's output (logits) for a batch of stored images."""
    x = data.normalize(batch["image"], *self.norm)
    if self.mask and "mask" in batch:
      kwargs["mask"] = batch["mask"]
    return self.module.apply(variables_, x, **models.mode(self.module, train), **kwargs)


def train_step(state: TrainState, batch: Batch, key: jax.Array, *, model: Model,
               tx: optax.GradientTransformation) -> tuple[TrainState, dict[str, jax.Array]]:
  """One optimisation step on a batch of stored images; returns the new state and batch
  metrics."""
  labels = batch["label"]
  step_key = jax.random.fold_in(key, state.step)
  if state.dropout is not None:  # a sweep member's own rate, a traced value
    model = dataclasses.replace(model, module=model.module.clone(dropout=state.dropout))

  # A padded batch has a mask; its padding carries no weight anywhere.
  mask = batch.get("mask")
  dtype = jnp.result_type(float)
  weight = None if mask is None else mask.astype(dtype)
  count = labels.shape[0] if mask is None else jnp.sum(weight)

  def mean(values_B):
    return values_B.mean() if weight is None else jnp.sum(values_B * weight) / count

  def loss_fn(params):
    logits, updates = model.apply(variables(state.replace(params=params)), batch, train=True,
                                  rngs={"dropout": step_key}, mutable=["batch_stats"])
    per_example = (cross_entropy if model.loss is None else model.loss)(logits, labels)
    data_loss = mean(per_example)
    loss = data_loss + l2_penalty(params, state.l2, count) if model.l2 else data_loss
    return loss, (data_loss, logits, updates.get("batch_stats", {}))

  (loss, (data_loss, logits, batch_stats)), grads = jax.value_and_grad(
      loss_fn, has_aux=True)(state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  step_metrics = {"loss": loss, "data_loss": data_loss,
                  "accuracy": mean((jnp.argmax(logits, -1) == labels).astype(dtype)),
                  "grad_norm": optax.tree.norm(grads)}
  return state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                       opt_state=opt_state), step_metrics


def _all_finite(tree) -> jax.Array:
  return jnp.all(jnp.asarray([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def member_step(state: TrainState, alive: jax.Array, batch: Batch, key: jax.Array, *,
                model: Model, tx: optax.GradientTransformation
                ) -> tuple[TrainState, jax.Array, dict[str, jax.Array]]:
  """train_step for one member of a run: (state, alive, metrics). A step whose loss,
  parameters or BatchNorm statistics are not finite is not taken and the member is frozen
  (alive False), so a frozen member keeps its last finite state and the run can say where it
  diverged; a batch with no example changes nothing."""
  new, metrics = train_step(state, batch, key, model=model, tx=tx)
  active = jnp.any(batch["mask"]) if "mask" in batch else jnp.asarray(True)
  finite = (jnp.isfinite(metrics["loss"]) & _all_finite(new.params)
            & _all_finite(new.batch_stats))
  alive = alive & (finite | ~active)
  new = jax.tree.map(lambda n, o: jnp.where(alive & active, n, o), new, state)
  return new, alive, metrics


def eval_step(state: TrainState, batch: Batch, *, model: Model) -> dict[str, jax.Array]:
  """Summed cross-entropy, correct count and (per name) summed metrics over the batch's
  unmasked examples, and the predictions. The training loss, where one was given, is a
  metric "objective"."""
  logits = model.apply(variables(state), {"image": batch["image"]}, train=False)
  mask, labels = batch["mask"], batch["label"]
  prediction = jnp.argmax(logits, -1)

  def total(values_B):
    return jnp.sum(jnp.where(mask, values_B, 0.0))

  return {"loss_sum": total(cross_entropy(logits, labels)),
          "correct": jnp.sum(mask & (prediction == labels)),
          "prediction": prediction,
          **{f"{name}_sum": total(fn(logits, labels)) for name, fn in model.metrics}}


# ----------------------------------------------------------------------------- members

@flax.struct.dataclass
class Members:
  """The train states of a run's K >= 1 members stacked along a leading axis, and which of
  them are still training (a checkpoint holds exactly this)."""
  state: TrainState  # every leaf with a leading member axis
  alive: jax.Array  # (K,) bool: False once the member's loss or parameters were not finite

  @property
  def size(self) -> int:
    return self.alive.shape[0]


def stack(trees: list[Any]) -> Any:
  return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def unstack(tree: Any, k: int) -> Any:
  """Member k of a stacked tree."""
  return jax.tree.map(lambda a: a[k], tree)


def init_members(model: nn.Module, group: list, steps_per_epoch: int,
                 optimizer: Own | None = None,
                 image_shape: tuple[int, ...] = (28, 28, 1)) -> tuple[Members, jax.Array]:
  """The initial states of a run's members (config.Member), stacked, each from its own seed
  and hyperparameters, and their dropout keys. optimizer: make_optimizer's."""
  sweeps_dropout = (any("dropout" in m.settings for m in group)
                    and models.traced_dropout(model))
  states, keys = [], []
  for member in group:
    cfg = member.config
    init_key, dropout_key, _ = run_keys(cfg.seed)
    # The member's own optimiser puts its hyperparameters into the state it initialises.
    tx = make_optimizer(cfg, steps_per_epoch, optimizer)
    states.append(create_state(model, tx, init_key, cfg.l2,
                               (cfg.dropout or 0.0) if sweeps_dropout else None, image_shape))
    keys.append(dropout_key)
  return Members(stack(states), jnp.ones(len(group), bool)), jnp.stack(keys)
