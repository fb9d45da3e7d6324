"""Each convolution's and pooling's implementation, chosen by timing the candidates on this CPU.

XLA:CPU runs the same convolution several ways at very different speeds, and which
is fastest depends on the CPU (its caches and vector width) as much as on the shape:
a rule tuned on one machine lost to PyTorch on another. So, like
`torch.backends.cudnn.benchmark`, a run times each candidate once per shape
(forward and backward, inside a `lax.scan` as the training step runs it), keeps
the fastest, and caches the choice on disk, keyed by CPU model, jax version and
shape: the next run on this machine reads it and times nothing.

  with autotune.scope(True):                      # a run: tuning on (driver.train does this)
    report = autotune.prepare(fn, *abstract_args) # trace fn once, time what it asks for
    ...                                           # fn's real traces now use the choices

Each layer's candidates are timed on their own; then the program that matters (the
training step, the evaluation pass) confirms them in place, starting from the fixed
rules and keeping a layer's own fastest only where the program gets faster (XLA fuses
a layer with its neighbours, so alone and in place can disagree). Layers ask
`choose(op, signature, candidates, rule, label)`: inside a scope that tunes, the
tuned choice; else (or before `prepare`) `rule`, the fixed rule. The
cache is `$MNISTJAX_CACHE_DIR/autotune.json` (default `~/.cache/mnistjax`); a
corrupt one is ignored with a warning. `MNISTJAX_AUTOTUNE=0` turns tuning off for
every run of the process (the test suite does: it would time each tiny shape).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import contextvars
import dataclasses
import json
import os
import pathlib
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import jax

from mnistjax import machine
# One cache folder for downloads and choices (ENV_CACHE_DIR: re-exported, the benchmarks set it).
from mnistjax.data import ENV_CACHE_DIR, cache_dir  # noqa: F401

ENV_AUTOTUNE = "MNISTJAX_AUTOTUNE"
CACHE_FILE = "autotune.json"
CACHE_VERSION = 1

# A candidate: build() -> run, where run() executes the candidate once and blocks on its result.
Candidate = Callable[[], Callable[[], Any]]


def allowed() -> bool:
  """False where MNISTJAX_AUTOTUNE is 0/false/off: every run of the process keeps the rules."""
  return os.environ.get(ENV_AUTOTUNE, "1").strip().lower() not in ("0", "false", "off", "no")


def machine_key() -> str:
  """What a timing depends on besides the shape: CPU model, jax version, backend."""
  return f"{machine.cpu_model()} | jax {jax.__version__} | {jax.default_backend()}"


def time_candidate(run: Callable[[], Any], budget_seconds: float = 0.5, repeats: int = 3
                   ) -> float:
  """The fastest of up to `repeats` timed calls of run (compiled and called once already:
  Tuner.interleaved), stopping early once budget_seconds are spent."""
  best, spent = float("inf"), 0.0
  for _ in range(repeats):
    start = time.perf_counter()
    run()
    seconds = time.perf_counter() - start
    best, spent = min(best, seconds), spent + seconds
    if spent > budget_seconds:
      break
  return best


def _seconds(value: Any) -> dict[str, float]:
  """A cache entry's time per candidate; {} where the file holds something else."""
  if isinstance(value, dict) and all(isinstance(k, str) and isinstance(v, (int, float))
                                     for k, v in value.items()):
    return {k: float(v) for k, v in value.items()}
  return {}


class Cache:
  """The choices measured on this machine, as one JSON file; every write is atomic."""

  def __init__(self, path: pathlib.Path | str | None = None):
    self.path = pathlib.Path(path) if path else cache_dir() / CACHE_FILE

  def load(self) -> dict[str, dict[str, Any]]:
    try:
      data = json.loads(self.path.read_text())
      if data.get("version") != CACHE_VERSION or not isinstance(data.get("choices"), dict):
        raise ValueError("not an autotune cache of this version")
      return data["choices"]
    except FileNotFoundError:
      return {}
    except (OSError, ValueError, AttributeError) as e:
      warnings.warn(f"mnistjax: ignoring the autotune cache {self.path} ({e}); the kernels "
                    "are timed again and the file rewritten", stacklevel=2)
      return {}

  def store(self, key: str, entry: dict[str, Any]) -> None:
    """Adds one choice (merged with what other processes wrote meanwhile). A cache that
    can't be written only costs the next run its timing again."""
    with contextlib.suppress(OSError):
      self.path.parent.mkdir(parents=True, exist_ok=True)
      with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a corrupt file was reported when it was read
        choices = self.load()
      choices[key] = entry
      with tempfile.NamedTemporaryFile("w", dir=self.path.parent, prefix=".autotune.",
                                       suffix=".tmp", delete=False) as f:
        try:
          json.dump({"version": CACHE_VERSION, "choices": choices}, f, indent=1,
                    sort_keys=True)
          f.flush()
          os.replace(f.name, self.path)
        except OSError:  # a full disk, say: no half-written file left behind
          os.unlink(f.name)
          raise


@dataclasses.dataclass
class Decision:
  """One shape's choice: which layers use it, and how it was made."""
  op: str
  signature: str
  choice: str  # what the layer runs
  source: str  # "timed" (now), "cache" (the file) or "process" (an earlier run of this process)
  rule: str = ""  # what the fixed rule would run
  fastest_alone: str = ""  # the fastest candidate timed on its own
  layers: list[str] = dataclasses.field(default_factory=list)
  seconds: dict[str, float] = dataclasses.field(default_factory=dict)  # per candidate, alone
  tuning_seconds: float = 0.0  # compiling and timing every candidate

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


class Tuner:
  """Chooses by timing, remembering every choice in the process and in the cache."""

  def __init__(self, cache: Cache | None = None, timer: Callable[..., float] = time_candidate):
    self.cache = cache or Cache()
    self.timer = timer
    self.choices: dict[str, Decision] = {}

  def key(self, op: str, signature: str) -> str:
    return f"{machine_key()} | {op} {signature}"

  def tune(self, op: str, signature: str, candidates: dict[str, Candidate], rule: str = ""
           ) -> Decision:
    """The fastest candidate for this shape: from the process, the cache, or timed now."""
    key = self.key(op, signature)
    if key in self.choices:
      return self.choices[key]
    entry = self.cache.load().get(key)
    choice = entry.get("choice") if isinstance(entry, dict) else None
    if isinstance(choice, str) and choice in candidates:  # else (another version's): timed
      decision = Decision(op, signature, choice, "cache", rule, choice,
                          seconds=_seconds(entry.get("seconds")))
    else:
      start = time.perf_counter()
      # Compiling dominates the cost and runs on one core: compile side by side, then time
      # one candidate after another (nothing else running).
      with concurrent.futures.ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        runs = dict(zip(candidates, pool.map(lambda build: build(), candidates.values())))
      seconds = self.interleaved(runs)
      fastest = min(seconds, key=seconds.get)
      decision = Decision(op, signature, fastest, "timed", rule, fastest, seconds=seconds,
                          tuning_seconds=time.perf_counter() - start)
      self.cache.store(key, {"choice": decision.choice, "seconds": seconds})
    self.choices[key] = decision
    return decision

  def interleaved(self, runs: dict[str, Callable[[], Any]]) -> dict[str, float]:
    """Each run's best time over TIMING_ROUNDS rounds, the runs taking turns (a, b, a, b):
    this VM has bursts of a second or so in which everything runs up to 2x slower, and a
    burst only ever lengthens a time, so the best of interleaved rounds compares the runs
    at the same speed of the machine, where timing one after the other could not."""
    for run in runs.values():
      run()  # untimed: a program's first call allocates its buffers
    seconds = {name: float("inf") for name in runs}
    for _ in range(TIMING_ROUNDS):
      for name, run in runs.items():
        seconds[name] = min(seconds[name], self.timer(run))
    return seconds

  def known(self, op: str, signature: str) -> Decision | None:
    return self.choices.get(self.key(op, signature))

  def settle(self, decisions: list[Decision], program: Candidate, name: str = "") -> float:
    """Confirms the choices in the whole program (a training step, say): a layer timed fastest
    on its own can be slower in place, where XLA fuses it with its neighbours. From the
    fixed rules, each layer whose own fastest differs is switched in turn and kept only if
    the program gets faster by more than SETTLE_MARGIN. So the result is never slower than
    the rules by more than the timing's noise. Cached as one entry for the program (name: what
    else than its layers' shapes tells it apart, e.g. the model) and its layers; returns the
    seconds spent (0 when cached)."""
    key = self.key("program", f"{name} | " + " + ".join(f"{d.op} {d.signature}"
                                                         for d in decisions))
    entry = self.cache.load().get(key)
    cached = entry.get("choices") if isinstance(entry, dict) else None
    if isinstance(cached, list) and len(cached) == len(decisions) and all(
        isinstance(c, str) and (c == d.rule or c in d.seconds)
        for c, d in zip(cached, decisions)):
      for d, choice in zip(decisions, cached):
        d.choice = choice
      return 0.0
    start = time.perf_counter()
    try:
      trials = self._settle(decisions, program)
    except BaseException:
      for d in decisions:  # never leave a layer on a choice that was not confirmed
        d.choice = d.rule
      raise
    self.cache.store(key, {"choices": [d.choice for d in decisions], "seconds": trials})
    return time.perf_counter() - start

  def _settle(self, decisions: list[Decision], program: Candidate) -> dict[str, Any]:
    for d in decisions:
      d.choice = d.rule
    best_run = program()
    trials = {}
    for d in decisions:
      alone, rule = d.seconds.get(d.fastest_alone), d.seconds.get(d.rule)
      if d.fastest_alone == d.rule or (rule is not None and alone is not None
                                       and rule < alone * (1 + SETTLE_ALONE_MARGIN)):
        continue  # not worth a compile of the program: within noise of the rule alone
      d.choice = d.fastest_alone
      trial_run = program()
      # The program so far against it with this layer switched, side by side (interleaved):
      # compared with a time taken earlier, a burst of slowness then makes the trial win.
      times = self.interleaved({"best": best_run, "trial": trial_run})
      name = f"{'+'.join(d.layers) or d.op} {d.choice}"
      trials[name] = {"without": times["best"], "with": times["trial"]}
      if times["trial"] < times["best"] * (1 - SETTLE_MARGIN):
        best_run = trial_run
      else:
        d.choice = d.rule
    return trials


# A layer's own fastest replaces the rule's choice only where the whole program gets faster by
# more than this: less is within the noise of a timing on a shared machine.
SETTLE_MARGIN = 0.03
# Rounds of interleaved timing (Tuner.interleaved): each candidate's time is its best of these.
TIMING_ROUNDS = 3
# Only a layer whose own fastest beats the rule's by more than this, timed alone, is tried in
# the program (each trial compiles the program once).
SETTLE_ALONE_MARGIN = 0.10


@dataclasses.dataclass
class _Scope:
  tuner: Tuner | None  # None: the fixed rules
  requests: dict[tuple[str, str], tuple[dict[str, Candidate], str, list[str]]] | None = None


_SCOPE: contextvars.ContextVar[_Scope | None] = contextvars.ContextVar("autotune", default=None)
_TUNER: Tuner | None = None  # the process's, made on first use (its cache path read then)


def tuner() -> Tuner:
  global _TUNER
  if _TUNER is None:
    _TUNER = Tuner()
  return _TUNER


@contextlib.contextmanager
def scope(enabled: bool, tuner_: Tuner | None = None) -> Iterator[None]:
  """Within it, layers use the tuned choices (enabled, on CPU, in a job of one process, and
  allowed()) or the fixed rules. Programs traced inside it keep their choice: a jitted
  function traced earlier is not traced again.

  A job of several processes keeps the rules: every process must compile the same program
  (its collectives pair up across hosts), and each would time its own CPU and could choose
  otherwise."""
  on = (enabled and allowed() and jax.default_backend() == "cpu"
        and jax.process_count() == 1)
  token = _SCOPE.set(_Scope((tuner_ or tuner()) if on else None))
  try:
    yield
  finally:
    _SCOPE.reset(token)


def active() -> bool:
  current = _SCOPE.get()
  return current is not None and current.tuner is not None


def choose(op: str, signature: str, candidates: Callable[[], dict[str, Candidate]], rule: str,
           label: str | None = None) -> str:
  """The implementation a layer of this op and shape uses: the tuned one inside a scope that
  tunes and after `prepare`, else `rule`. While `prepare` traces, the request is noted."""
  current = _SCOPE.get()
  if current is None or current.tuner is None:
    return rule
  if current.requests is not None:
    _, _, labels = current.requests.setdefault((op, signature), (candidates(), rule, []))
    if label and label not in labels:
      labels.append(label)
  decision = current.tuner.known(op, signature)
  return decision.choice if decision else rule


def prepare(fn: Callable[..., Any], *args: Any, program: Candidate | None = None,
            name: str = "") -> list[Decision]:
  """Traces fn(*args) (args may be jax.ShapeDtypeStruct; nothing runs) and tunes every
  convolution and pooling it asks for, each on its own, then (given program: builds the
  program that matters, traced with the choices of the moment) confirms them in place
  (Tuner.settle; name tells the program apart in the cache). Returns what was decided, in
  the order asked (copies: a later prepare of this process reports its own "process" source
  and cost); [] outside a scope that tunes."""
  current = _SCOPE.get()
  if current is None or current.tuner is None:
    return []
  current.requests = {}
  try:
    # A fresh function: jax's trace cache must not skip the trace that notes the requests.
    jax.eval_shape(lambda *a: fn(*a), *args)
    requests = current.requests
  finally:
    current.requests = None
  decisions, earlier = [], []
  for (op, signature), (candidates, rule, labels) in requests.items():
    earlier.append(current.tuner.known(op, signature) is not None)
    decision = current.tuner.tune(op, signature, candidates, rule)
    decision.layers = sorted(set(decision.layers) | set(labels))
    decisions.append(decision)
  spent = 0.0
  if program is not None and decisions:
    spent = current.tuner.settle(decisions, program, name)
  reports = [dataclasses.replace(d, source="process", tuning_seconds=0.0) if known
             else dataclasses.replace(d) for d, known in zip(decisions, earlier)]
  if reports:
    reports[0].tuning_seconds += spent  # confirming in place: the program's, not one layer's
  return reports


def describe(decisions: list[Decision]) -> str:
  """One line: "autotune: conv1 rows, conv2 patches/16, ... (timed 5 in 3.2 s; cache PATH)"."""
  if not decisions:
    return "autotune: off (fixed rules)"
  parts = [f"{'+'.join(d.layers) or d.op}{' (eval)' if 'eval' in d.signature else ''} "
           f"{d.choice}" for d in decisions]
  timed = sum(d.source == "timed" for d in decisions)
  spent = sum(d.tuning_seconds for d in decisions)
  how = (f"timed {timed} shapes in {spent:.1f} s" if timed else
         f"confirmed in place in {spent:.1f} s" if spent else "all from the cache")
  return f"autotune: {', '.join(parts)} ({how}; cache {tuner().cache.path})"
