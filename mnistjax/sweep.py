"""Members: the K >= 1 variants of a config that a run trains together, in one program.

Every run is a sweep: a plain run is K = 1 member with no swept setting. Members are
stacked along a leading axis of the train state and run through the ordinary
`step.train_step`; every member sees the same data batches. On accelerators
`lock_step` vmaps the step: all members take each step together. On CPU
`window_step` takes WINDOW_STEPS batches at a time and trains the members one after
another over them (see `windowed`). What a member may vary lives in its state as
arrays: the learning rate, momentum and weight decay in the optimiser's injected
hyperparameters, the L2 coefficient and the dropout rate as state fields, the seed
in its init and dropout keys. A member whose loss or parameters stop being finite
is frozen (its state stops changing at its last finite step) and reported; the
others go on.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from mnistjax import parallel, step
from mnistjax.config import Config
from mnistjax.errors import ConfigError

SWEEPABLE = {"dropout": float, "lr": float, "weight_decay": float, "momentum": float,
             "l2": float, "seed": int}


@dataclasses.dataclass(frozen=True)
class Member:
  name: str  # "dropout=0.25,seed=0"; "" for a plain run's one member
  settings: dict[str, Any]  # the swept values
  config: Config


@flax.struct.dataclass
class Members:
  """The stacked states of a run's members and which of them are still training."""
  state: step.TrainState  # every leaf with a leading member axis
  alive: jax.Array  # (K,) bool: False once the member's loss or parameters were not finite

  @property
  def size(self) -> int:
    return self.alive.shape[0]


def parse(specs: list[str]) -> dict[str, tuple]:
  """["dropout=0.25,0.5", "seed=0,1"] -> {"dropout": (0.25, 0.5), "seed": (0, 1)}."""
  axes: dict[str, tuple] = {}
  for spec in specs:
    key, sep, values = spec.partition("=")
    if not sep or not values:
      raise ConfigError(f"--sweep={spec}: write --sweep=SETTING=V1,V2,... "
                        f"(settings: {', '.join(SWEEPABLE)})")
    if key not in SWEEPABLE:
      raise ConfigError(f"--sweep={spec}: {key!r} can't be swept; choose one of: "
                        f"{', '.join(SWEEPABLE)}")
    if key in axes:
      raise ConfigError(f"--sweep={spec}: {key} is swept twice")
    try:
      axes[key] = tuple(SWEEPABLE[key](v) for v in values.split(","))
    except ValueError:
      raise ConfigError(f"--sweep={spec}: values of {key} must be "
                        f"{SWEEPABLE[key].__name__}s") from None
  return axes


def members(config: Config, axes: dict[str, tuple] | None = None) -> list[Member]:
  """The product of the axes, each member's config validated; without axes, the config's
  one member."""
  if not axes:
    return [Member("", {}, config.validate())]
  out = []
  for values in itertools.product(*axes.values()):
    settings = dict(zip(axes, values))
    name = ",".join(f"{k}={v}" for k, v in settings.items())
    out.append(Member(name, settings, config.replace(**settings).validate()))
  return out


def stack(trees: list[Any]) -> Any:
  return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def unstack(tree: Any, k: int) -> Any:
  """Member k of a stacked tree."""
  return jax.tree.map(lambda a: a[k], tree)


def init(model, group: list[Member], num_train: int) -> tuple[Members, jax.Array]:
  """The members' initial states, stacked (each from its own seed and hyperparameters), and
  their dropout keys. num_train: training examples per epoch (the schedule's length)."""
  sweeps_dropout = any("dropout" in m.settings for m in group)
  states, keys = [], []
  for member in group:
    cfg = member.config
    init_key, dropout_key, _ = step.run_keys(cfg.seed)
    # The member's own optimiser holds its hyperparameters in the state it initialises; the
    # shared `tx` then updates every member with the values found there.
    tx = step.make_optimizer(cfg, num_train)
    states.append(step.create_state(model, tx, init_key, cfg.l2,
                                    (cfg.dropout or 0.0) if sweeps_dropout else None))
    keys.append(dropout_key)
  return Members(stack(states), jnp.ones(len(group), bool)), jnp.stack(keys)


# Batches per window of the CPU sweep (see `windowed`): fewer spend more of the window on
# moving member states, more pad the epoch's last window with more skipped steps
# (benchmarks/sweep.py --window=N measures the trade).
WINDOW_STEPS = 16


def member_loop() -> bool:
  """Whether members run one after another inside the program (lax.map) rather than vmapped.

  On XLA:CPU a step's speed depends on its working set staying in cache, and vmapped
  members multiply it by K (benchmarks/sweep.py); on GPU/TPU vmap gives the accelerator
  the wide work it needs.
  """
  return jax.default_backend() == "cpu"


def windowed(dp=None) -> bool:
  """Whether the members train in windows of WINDOW_STEPS batches, member after member
  (`window_step`), rather than all members step by step (`lock_step`).

  On CPU, a step that cycles through K members' parameters and optimiser states touches K
  times the memory of a single member's step, which keeps its state in cache from one step
  to the next (README, Sweeps). Members are independent, so the order changes nothing but
  speed. A window of one member also spends one dispatch on WINDOW_STEPS batches.
  Data-parallel runs (dp) keep the lock-step program.
  """
  return member_loop() and (dp is None or dp.size == 1)


def _all_finite(tree) -> jax.Array:
  return jnp.all(jnp.asarray([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def member_step(state: step.TrainState, alive: jax.Array, batch, key, *, model, tx, norm):
  """train_step for one member: (state, alive, metrics, "alive" among them). A step whose
  loss, parameters or BatchNorm statistics are not finite is not taken and the member is
  frozen (alive False), so a frozen member keeps its last finite state; a batch with no
  example (a window's padding) changes nothing."""
  new, metrics = step.train_step(state, batch, key, model=model, tx=tx, norm=norm)
  active = jnp.any(batch["mask"]) if "mask" in batch else jnp.asarray(True)
  finite = (jnp.isfinite(metrics["loss"]) & _all_finite(new.params)
            & _all_finite(new.batch_stats))
  alive = alive & (finite | ~active)
  new = jax.tree.map(lambda n, o: jnp.where(alive & active, n, o), new, state)
  return new, alive, {**metrics, "alive": alive}


def lock_step(members: Members, batch, keys, *, model, tx, norm, per_member: bool = False
              ) -> tuple[Members, dict]:
  """One step of every member (vmapped; on CPU a loop over members): metrics with a leading
  member axis. per_member: the batch has a leading member axis, each member its own batch."""
  one = functools.partial(member_step, model=model, tx=tx, norm=norm)
  if member_loop():
    def member(args):
      state, alive, key, *own = args
      return one(state, alive, own[0] if per_member else batch, key)
    args = (members.state, members.alive, keys) + ((batch,) if per_member else ())
    state, alive, metrics = jax.lax.map(member, args)
  else:
    state, alive, metrics = jax.vmap(one, in_axes=(0, 0, 0 if per_member else None, 0))(
        members.state, members.alive, batch, keys)
  return Members(state, alive), metrics


def window_step(members: Members, batches, keys, *, model, tx, norm, per_member: bool = False
                ) -> tuple[Members, dict]:
  """Every member over a window of batches (each leaf W x ..., or W x K x ... with
  per_member, each member its own batches), member after member: metrics K x W. Each
  member's steps are those lock_step would take."""
  one = functools.partial(member_step, model=model, tx=tx, norm=norm)

  def member(args):
    state, alive, key, *own = args

    def body(carry, batch):
      state, alive = carry
      state, alive, metrics = one(state, alive, batch, key)
      return (state, alive), metrics

    (state, alive), metrics = jax.lax.scan(body, (state, alive),
                                           own[0] if per_member else batches)
    return state, alive, metrics

  args = (members.state, members.alive, keys)
  if per_member:  # W x K x ... -> K x W x ...: each member scans over its own window
    args += (jax.tree.map(lambda a: jnp.swapaxes(a, 0, 1), batches),)
  state, alive, metrics = jax.lax.map(member, args)
  return Members(state, alive), metrics


def make_lock_step(model, tx: optax.GradientTransformation, norm, dp=None,
                   per_member: bool = False):
  """lock_step jitted, the members donated; with dp (a parallel.DataParallel), members x
  data: every member runs data-parallel over dp's devices."""
  return parallel.jit_step(functools.partial(lock_step, model=model, tx=tx, norm=norm,
                                             per_member=per_member), dp,
                           donate_state=True, replicate_outputs=True, member_axis=per_member)


def make_window_step(model, tx: optax.GradientTransformation, norm, per_member: bool = False):
  """window_step jitted, the members donated."""
  return jax.jit(functools.partial(window_step, model=model, tx=tx, norm=norm,
                                   per_member=per_member), donate_argnums=0)


def windows(batches, size: int):
  """Groups host batches (each with a "mask") into windows of `size`, stacked: yields
  (window, number of real batches). The last window is padded with batches that have no
  example, which window_step skips."""
  def stacked(group):
    return {k: np.stack([b[k] for b in group]) for k in group[0]}

  group: list[dict] = []
  for batch in batches:
    group.append(batch)
    if len(group) == size:
      yield stacked(group), size
      group = []
  if group:
    real = len(group)
    group += [{**group[-1], "mask": np.zeros_like(group[-1]["mask"])}] * (size - real)
    yield stacked(group), real


def aggregate(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
  """Mean and std of the final test accuracy over seeds, per setting of the other axes."""
  groups: dict[str, list[float]] = {}
  for row in rows:
    key = ",".join(f"{k}={v}" for k, v in row["settings"].items() if k != "seed") or "all"
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
