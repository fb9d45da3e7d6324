"""The autotuner: it keeps the fastest candidate, remembers it on disk, and every
implementation it may pick computes the same convolution and pooling (float64)."""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import F64_ATOL, F64_RTOL
from mnistjax import autotune, layers, models


def sleeper(seconds: float, calls: list[str], name: str) -> autotune.Candidate:
  def build():
    def run():
      calls.append(name)
      time.sleep(seconds)
    return run
  return build


@pytest.mark.parametrize("slow", ["a", "b"])
def test_the_tuner_keeps_the_faster_candidate_and_reuses_the_cached_choice(tmp_path, slow):
  calls: list[str] = []
  fast = "b" if slow == "a" else "a"
  candidates = {n: sleeper(0.05 if n == slow else 0.0, calls, n) for n in ("a", "b")}
  cache = autotune.Cache(tmp_path / "autotune.json")
  decision = autotune.Tuner(cache).tune("conv", "train x8", candidates)
  assert decision.choice == fast and decision.source == "timed"
  assert decision.seconds[slow] >= 0.05 > decision.seconds[fast]
  assert set(calls) == {"a", "b"}

  # A new process (a new Tuner) on this machine: the cached choice, nothing compiled or timed.
  calls.clear()
  untimed = {n: sleeper(1.0, calls, n) for n in ("a", "b")}
  again = autotune.Tuner(autotune.Cache(tmp_path / "autotune.json")).tune(
      "conv", "train x8", untimed)
  assert again.choice == fast and again.source == "cache" and calls == []
  # Another shape is timed anew.
  other = autotune.Tuner(cache).tune("conv", "train x16", candidates)
  assert other.source == "timed"


def test_in_place_a_layer_keeps_the_rule_unless_the_program_gets_faster(tmp_path):
  """A layer fastest on its own can slow the program it sits in (XLA fuses it with its
  neighbours): settle keeps the rule's choice there, and the faster choice elsewhere."""
  def decisions():
    return [autotune.Decision(op, sig, "own", "timed", rule="rule", fastest_alone="own",
                              layers=[layer], seconds={"rule": 1.0, "own": 0.5})
            for op, sig, layer in (("conv", "x1", "conv1"), ("pool", "x2", "pool1"))]

  in_place = {"conv1": +0.3, "pool1": -0.3}  # conv1's own fastest slows the program down

  def program(ds):
    def build():  # a program is compiled with the choices of the moment
      seconds = 1.0 + sum(in_place[d.layers[0]] for d in ds if d.choice == "own")
      return lambda: seconds
    return build

  cache = autotune.Cache(tmp_path / "autotune.json")
  first = decisions()
  assert autotune.Tuner(cache, timer=lambda run: run()).settle(first, program(first)) > 0
  assert [d.choice for d in first] == ["rule", "own"]

  def not_again():
    raise AssertionError("timed again")

  again = decisions()
  assert autotune.Tuner(cache, timer=lambda run: run()).settle(again, not_again) == 0.0
  assert [d.choice for d in again] == ["rule", "own"]


def burst_at_first_call() -> Callable[[Callable[[], float]], float]:
  """A timer for runs that return their own time, the first call falling in a burst of
  slowness (this VM's are 2x for a second or so)."""
  calls = itertools.count()
  return lambda run: run() * (2.0 if next(calls) == 0 else 1.0)


def test_a_burst_of_slowness_does_not_pick_the_slower_candidate(tmp_path):
  candidates = {"a": lambda: lambda: 1.0, "b": lambda: lambda: 1.05}
  decision = autotune.Tuner(autotune.Cache(tmp_path / "autotune.json"),
                            timer=burst_at_first_call()).tune("conv", "x", candidates)
  assert decision.choice == "a" and decision.seconds == {"a": 1.0, "b": 1.05}


def test_a_burst_of_slowness_does_not_make_a_layer_switch_win(tmp_path):
  """The program with and without a layer's switch are timed side by side: a burst during
  the first timing of the program (the rules) must not make the switch look faster."""
  d = autotune.Decision("conv", "x1", "own", "timed", rule="rule", fastest_alone="own",
                        layers=["conv1"], seconds={"rule": 1.0, "own": 0.5})

  def program():
    seconds = 1.02 if d.choice == "own" else 1.0  # in place, the layer's own fastest is slower
    return lambda: seconds

  autotune.Tuner(autotune.Cache(tmp_path / "autotune.json"),
                 timer=burst_at_first_call()).settle([d], program)
  assert d.choice == "rule"


def test_a_corrupt_cache_is_ignored_with_a_warning_and_rewritten(tmp_path):
  path = tmp_path / "autotune.json"
  path.write_text("{not json")
  calls: list[str] = []
  with pytest.warns(UserWarning, match="ignoring the autotune cache"):
    decision = autotune.Tuner(autotune.Cache(path)).tune(
        "pool", "x1", {"only": sleeper(0.0, calls, "only")})
  assert decision.choice == "only" and calls
  entries = json.loads(path.read_text())["choices"]
  assert [k.endswith("pool x1") for k in entries] == [True]


def test_a_cache_entry_of_the_wrong_types_is_timed_again(tmp_path):
  """A hand-edited or foreign file: a choice that is not a name, times that are not numbers."""
  path = tmp_path / "autotune.json"
  tuner = autotune.Tuner(autotune.Cache(path))
  key = tuner.key("conv", "x")
  program_key = tuner.key("program", " | conv x")
  path.write_text(json.dumps({"version": autotune.CACHE_VERSION, "choices": {
      key: {"choice": ["a"], "seconds": [1]}, program_key: {"choices": [["a"]]}}}))
  calls: list[str] = []
  decision = tuner.tune("conv", "x", {"a": sleeper(0.0, calls, "a")}, rule="a")
  assert decision.source == "timed" and set(decision.seconds) == {"a"}
  path.write_text(json.dumps({"version": autotune.CACHE_VERSION, "choices": {
      key: {"choice": "a", "seconds": "fast"}, program_key: {"choices": [["a"]]}}}))
  cached = autotune.Tuner(autotune.Cache(path), timer=lambda run: 1.0).tune(
      "conv", "x", {"a": sleeper(0.0, calls, "a")}, rule="a")
  assert cached.source == "cache" and cached.seconds == {}
  assert autotune.Tuner(autotune.Cache(path)).settle([cached], lambda: lambda: None) >= 0


def test_settle_is_cached_per_program_and_never_leaves_an_unconfirmed_choice(tmp_path):
  cache = autotune.Cache(tmp_path / "autotune.json")

  def decision():
    return autotune.Decision("conv", "x1", "own", "timed", rule="rule", fastest_alone="own",
                             layers=["conv1"], seconds={"rule": 1.0, "own": 0.5})

  def program(d, own_seconds):
    def build():
      seconds = own_seconds if d.choice == "own" else 1.0
      return lambda: seconds
    return build

  relu = decision()
  autotune.Tuner(cache, timer=lambda run: run()).settle([relu], program(relu, 0.5), "relu")
  assert relu.choice == "own"
  # Another program with the same layer shapes is confirmed on its own, not read back.
  sigmoid = decision()
  assert autotune.Tuner(cache, timer=lambda run: run()).settle(
      [sigmoid], program(sigmoid, 2.0), "sigmoid") > 0
  assert sigmoid.choice == "rule"

  failing = decision()

  def breaks():
    if failing.choice == "own":
      raise KeyboardInterrupt  # Ctrl-C while the trial compiles
    return lambda: 1.0

  with pytest.raises(KeyboardInterrupt):
    autotune.Tuner(cache, timer=lambda run: run()).settle([failing], breaks, "other")
  assert failing.choice == "rule"


def test_a_cached_choice_that_is_no_longer_a_candidate_is_timed_again(tmp_path):
  cache = autotune.Cache(tmp_path / "autotune.json")
  calls: list[str] = []
  autotune.Tuner(cache).tune("conv", "x", {"old": sleeper(0.0, calls, "old")})
  decision = autotune.Tuner(cache).tune("conv", "x", {"new": sleeper(0.0, calls, "new")})
  assert decision.choice == "new" and decision.source == "timed"


def test_a_model_traced_in_a_tuning_scope_uses_the_tuned_choices(tmp_path, monkeypatch):
  """prepare times what the model asks for (conv and pooling layers, train and eval shapes);
  the model traced afterwards runs the choices; outside a scope, the fixed rules."""
  monkeypatch.setenv(autotune.ENV_AUTOTUNE, "1")
  order = itertools.count()
  # Each candidate timed faster than the one before: the last wins, whatever its speed.
  tuner = autotune.Tuner(autotune.Cache(tmp_path / "autotune.json"),
                         timer=lambda run: -next(order))
  # Nothing compiled (test_the_candidates_of_a_real_shape_compile_and_run builds real ones).
  monkeypatch.setattr(layers, "_tuning_program", lambda *a: lambda: lambda: None)
  monkeypatch.setattr(layers, "PATCH_WHOLE_BYTES", 1 << 40)  # the rule: whole patches, any CPU
  model = models.build("lenet")
  variables = models.init(model, jax.random.key(0))
  sliced: list[int] = []
  real = layers._sliced_patch_conv

  def spy(x, kernel, n):
    sliced.append(n)
    return real(x, kernel, n)

  monkeypatch.setattr(layers, "_sliced_patch_conv", spy)

  def trace():
    sliced.clear()
    jax.eval_shape(lambda v: model.apply(v, jnp.zeros((8, 28, 28, 1)), train=True,
                                         mutable=["batch_stats"]), variables)
    return list(sliced)

  with autotune.scope(True, tuner):
    assert trace() == []  # before tuning: the rule (whole patches)
    decisions = models.tune(model, 8, 20)
    assert [d.layers for d in decisions] == [["conv1"], ["pool1"], ["conv2"], ["pool2"]] * 2
    assert [d.signature.split()[0] for d in decisions] == ["train"] * 4 + ["eval"] * 4
    assert all(d.source == "timed" for d in decisions)
    assert [d.choice for d in decisions[:4]] == ["patches/1", "window"] * 2
    assert "autotune: conv1 patches/1, pool1 window" in autotune.describe(decisions)
    assert trace() == [1, 1]  # both convolutions one example at a time, as tuned
    # Again in this process (a notebook's second run): nothing compiled or timed, and the
    # report says so.
    def untouchable(*a):
      raise AssertionError("compiled or timed again")
    monkeypatch.setattr(layers, "_tuning_program", lambda *a: untouchable)  # its build()
    tuner.timer = untouchable
    again = models.tune(model, 8, 20)
    assert [d.choice for d in again] == [d.choice for d in decisions]
    assert {d.source for d in again} == {"process"} and sum(d.tuning_seconds for d in again) == 0
    assert "all from the cache" in autotune.describe(again) and trace() == [1, 1]
  with autotune.scope(False, tuner):
    assert models.tune(model, 8, 20) == [] and trace() == []


def test_the_candidates_of_a_real_shape_compile_and_run(tmp_path, monkeypatch):
  monkeypatch.setenv(autotune.ENV_AUTOTUNE, "1")
  tuner = autotune.Tuner(autotune.Cache(tmp_path / "autotune.json"))
  with autotune.scope(True, tuner):
    decisions = autotune.prepare(
        lambda x, k: layers.max_pool(layers.conv2d(x, k, "auto", train=True), 2, train=True),
        jax.ShapeDtypeStruct((4, 10, 10, 2), jnp.float32),
        jax.ShapeDtypeStruct((3, 3, 2, 4), jnp.float32))
  conv, pool = decisions
  assert conv.choice in layers.conv_candidates((4, 10, 10, 2), (3, 3, 2, 4), 4, True)
  assert set(conv.seconds) == set(layers.conv_candidates((4, 10, 10, 2), (3, 3, 2, 4), 4, True))
  assert set(pool.seconds) == {"reshape", "separable", "window"}
  assert all(0 < t < 5 for d in decisions for t in d.seconds.values())


def test_autotune_is_off_where_the_environment_says_so(tmp_path, monkeypatch):
  monkeypatch.setenv(autotune.ENV_AUTOTUNE, "0")
  with autotune.scope(True, autotune.Tuner(autotune.Cache(tmp_path / "c.json"))):
    assert not autotune.active()


def test_a_job_of_several_processes_keeps_the_fixed_rules(tmp_path, monkeypatch):
  """Each process would time its own CPU and could choose another implementation: their
  programs, whose collectives pair up across processes, must be the same."""
  monkeypatch.setenv(autotune.ENV_AUTOTUNE, "1")
  tuner = autotune.Tuner(autotune.Cache(tmp_path / "c.json"))
  with autotune.scope(True, tuner):
    assert autotune.active()
  monkeypatch.setattr(jax, "process_count", lambda: 2)
  with autotune.scope(True, tuner):
    assert not autotune.active()


# ----------------------------------------------------------------------------
# Every implementation the tuner may pick: the same values and gradients as lax.conv


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("shape,kernel", [((16, 12, 12, 3), (5, 5, 3, 6)),
                                          ((8, 9, 9, 2), (3, 3, 2, 4))])
def test_every_convolution_candidate_equals_lax_conv_with_gradients(x64, shape, kernel, train):
  x = jax.random.normal(jax.random.key(0), shape)
  k = jax.random.normal(jax.random.key(1), kernel) / 9.0
  impls = layers.conv_candidates(shape, kernel, 8, train) + ["patches/1"]
  assert {"patches", "rows"} <= set(impls) and any(i.startswith("patches/") for i in impls)

  def loss(impl):
    return lambda x, k: jnp.sum(jnp.sin(layers.conv2d(x, k, impl)))

  reference = layers.conv2d(x, k, "lax")
  reference_grads = jax.grad(loss("lax"), (0, 1))(x, k)
  for impl in impls:
    np.testing.assert_allclose(layers.conv2d(x, k, impl), reference, rtol=F64_RTOL,
                               atol=F64_ATOL, err_msg=impl)
    for ours, ref in zip(jax.jit(jax.grad(loss(impl), (0, 1)))(x, k), reference_grads):
      np.testing.assert_allclose(ours, ref, rtol=F64_RTOL, atol=F64_ATOL, err_msg=impl)


@pytest.mark.parametrize("window,stride,size", [(2, 2, 24), (3, 1, 14), (2, 2, 7), (3, 2, 9)])
def test_every_pooling_candidate_equals_reduce_window_with_gradients(window, stride, size):
  x = jax.random.normal(jax.random.key(0), (2, size, size, 3))  # no ties
  impls = ["separable", "window"] + (["reshape"] if layers._tiles(x.shape, window, stride)
                                     else [])
  flax = lambda x: nn.max_pool(x, (window, window), strides=(stride, stride))  # noqa: E731
  weights = jax.random.normal(jax.random.key(1), flax(x).shape)
  reference = jax.grad(lambda x: jnp.sum(flax(x) * weights))(x)
  for impl in impls:
    ours = lambda x, impl=impl: layers.max_pool(x, window, stride, impl)  # noqa: E731
    np.testing.assert_array_equal(ours(x), flax(x), err_msg=impl)
    # Exact: each gradient is one weight routed to its window's maximum (and sums of them).
    grad = jax.grad(lambda x, ours=ours: jnp.sum(ours(x) * weights))(x)
    np.testing.assert_allclose(grad, reference, rtol=1e-6, atol=1e-6, err_msg=impl)


def test_an_unknown_implementation_is_refused():
  x = jnp.zeros((4, 8, 8, 1))
  with pytest.raises(ValueError, match="patches/3"):
    layers.conv2d(x, jnp.zeros((3, 3, 1, 2)), "patches/3")  # 3 does not divide 4
  with pytest.raises(ValueError, match="pooling impl 'reshape'"):
    layers.max_pool(jnp.zeros((1, 7, 7, 1)), 2, 2, "reshape")
