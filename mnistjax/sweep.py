"""Sweeps: K variants of one config trained together, in one compiled program.

Members are stacked along a leading axis of the train state and run through the
ordinary `train_step`; every member sees the same data batches. On accelerators
`sweep_step` vmaps the step: all members take each step together. On CPU
`window_step` takes WINDOW_STEPS batches at a time and trains the members one
after another over them (see `windowed`). What a member may vary lives in its
state as arrays: the learning rate, momentum and weight decay in the optimiser's
injected hyperparameters, the L2 coefficient and the dropout rate in
`state.hparams`, the seed in its init and dropout keys. A member whose loss turns
NaN or infinite is frozen (its state stops changing) and reported; the others go
on.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mnistjax import parallel
from mnistjax.config import Config
from mnistjax.errors import ConfigError

SWEEPABLE = {"dropout": float, "lr": float, "weight_decay": float, "momentum": float,
             "l2": float, "seed": int}


@dataclasses.dataclass(frozen=True)
class Member:
  name: str  # "dropout=0.25,seed=0"
  settings: dict[str, Any]  # the swept values
  config: Config


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


def members(config: Config, axes: dict[str, tuple]) -> list[Member]:
  """The product of the axes, each member's config validated."""
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


def create_states(model, group: list[Member], sweep_dropout: bool, num_train: int):
  """Stacked initial states (each member from its own seed and hyperparameters), and the
  members' dropout keys. num_train: training examples per epoch (the schedule's length)."""
  from mnistjax import train  # pylint: disable=g-import-not-at-top

  states, keys = [], []
  for member in group:
    cfg = member.config
    init_key, dropout_key, _ = train.run_keys(cfg.seed)
    # The member's own optimiser holds its hyperparameters in the state it initialises; the
    # shared `tx` then updates every member with the values found there.
    member_tx = train.make_optimizer(cfg, num_train)
    state = train.create_state(model, member_tx, init_key, cfg.l2)
    hparams = {**state.hparams, "alive": jnp.asarray(True)}
    if sweep_dropout:
      hparams["dropout"] = jnp.asarray(cfg.dropout or 0.0, jnp.result_type(float))
    states.append(state.replace(hparams=hparams))
    keys.append(dropout_key)
  return stack(states), jnp.stack(keys)


# Batches per window of the CPU sweep (see `windowed`): benchmarks/sweep.py measured 8-60
# alike; fewer spend more of the window on moving member states, more pad the epoch's last
# window with more skipped steps.
WINDOW_STEPS = 16


def member_loop() -> bool:
  """Whether members run one after another inside the program (lax.map) rather than vmapped.

  On XLA:CPU a step's speed depends on its working set staying in cache: vmapped members
  multiply it by K (LeNet, K=4, dropout 0.25: 0.56x of sequential runs against 0.79x for a
  loop over members, benchmarks/sweep.py); on GPU/TPU vmap gives the accelerator the wide
  work it needs.
  """
  return jax.default_backend() == "cpu"


def windowed(dp=None) -> bool:
  """Whether a sweep trains in windows of WINDOW_STEPS batches, member after member
  (`window_step`), rather than all members step by step (`sweep_step`).

  On CPU, a step that cycles through K members' parameters and optimiser states touches K
  times the memory of a single run's step, which keeps its state in cache from one step to
  the next: a lock-step sweep ran at 0.40-0.95x of K sequential runs (mlp_deep K=8 .. LeNet
  b128 K=5), windows at 0.96-1.19x (benchmarks/sweep.py; README, Sweeps). Members are
  independent, so the order changes nothing but speed. Data-parallel sweeps (dp) keep the
  lock-step program.
  """
  return member_loop() and (dp is None or dp.size == 1)


def _member_step(state, batch, key, *, model, tx, norm):
  """train_step for one member. A member whose loss is not finite keeps its state and is
  marked dead (alive False); a batch with no example (a window's padding) changes nothing."""
  from mnistjax import train  # pylint: disable=g-import-not-at-top

  new, metrics = train.train_step(state, batch, key, model=model, tx=tx, norm=norm)
  active = jnp.any(batch["mask"]) if "mask" in batch else jnp.asarray(True)
  finite = jnp.isfinite(metrics["loss"])
  alive = state.hparams["alive"] & (finite | ~active)
  new = jax.tree.map(lambda n, o: jnp.where(alive & active, n, o), new, state)
  return new.replace(hparams={**new.hparams, "alive": alive}), metrics


def sweep_step(state, batch, keys, *, model, tx, norm):
  """One step of every member at once (vmapped; on CPU a loop over members): the stacked
  state and metrics with a leading member axis."""
  step = functools.partial(_member_step, model=model, tx=tx, norm=norm)
  if member_loop():
    return jax.lax.map(lambda sk: step(sk[0], batch, sk[1]), (state, keys))
  return jax.vmap(step, in_axes=(0, None, 0))(state, batch, keys)


def window_step(state, batches, keys, *, model, tx, norm):
  """Every member over a window of batches (each leaf W x ...), member after member: the
  stacked state, and metrics K x W. Each member's steps are those sweep_step would take."""
  step = functools.partial(_member_step, model=model, tx=tx, norm=norm)

  def member(state_key):
    state, key = state_key
    return jax.lax.scan(lambda s, batch: step(s, batch, key), state, batches)

  return jax.lax.map(member, (state, keys))


def make_sweep_step(model, tx: optax.GradientTransformation, norm, dp=None):
  """The jitted sweep step; with dp (a parallel.DataParallel), members x data: every member
  runs data-parallel over dp's devices."""
  return parallel.jit_step(functools.partial(sweep_step, model=model, tx=tx, norm=norm), dp,
                           donate_state=True, replicate_outputs=True)


def make_window_step(model, tx: optax.GradientTransformation, norm):
  """window_step jitted, the state donated."""
  return jax.jit(functools.partial(window_step, model=model, tx=tx, norm=norm),
                 donate_argnums=0)


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
    groups.setdefault(key, []).append(row["test_accuracy"])
  return [{"setting": k, "seeds": len(v), "test_accuracy_mean": float(np.mean(v)),
           "test_accuracy_std": float(np.std(v, ddof=1)) if len(v) > 1 else 0.0}
          for k, v in groups.items()]


def format_table(rows: list[dict[str, Any]]) -> str:
  """Final numbers per member, and mean +- std over seeds where seeds were swept."""
  width = max(len(r["member"]) for r in rows)
  lines = [f"{'member':<{width}}  test acc  test loss"]
  for r in rows:
    flag = "  (diverged, frozen)" if r["diverged"] else ""
    lines.append(f"{r['member']:<{width}}  {r['test_accuracy']:8.2f}  {r['test_loss']:9.4f}{flag}")
  if any("seed" in r["settings"] for r in rows):
    for g in aggregate(rows):
      lines.append(f"{g['setting']}: {g['test_accuracy_mean']:.2f} +- "
                   f"{g['test_accuracy_std']:.2f} over {g['seeds']} seeds")
  return "\n".join(lines)
