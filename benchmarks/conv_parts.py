"""Where a model's training step goes: each convolution's forward pass, input gradient and
kernel gradient, timed apart, for each implementation of a convolution (layers.CONV_IMPLS).

  python benchmarks/conv_parts.py [--model=cnn3] [--batch_size=64] [--impls=patches,lax,...]
      [--repeats=5]

For each convolution of the model at the batch size (shapes found by tracing the model), and
each implementation (default: what layers.conv_rule runs for that shape, whole-batch patches
and lax.conv), it times four programs on random inputs: the forward pass, the gradient with
respect to the input alone, the one with respect to the kernel alone, and all three together
(what a training step runs: the gradients of the forward's own output, so the backward waits
for it as in a step; given an independent cotangent, XLA runs forward and backward side by
side on the two cores and their sum measured up to 1.5x more). Each program runs twice
inside a `lax.scan`, as a step ran inside a window until CPU runs stepped one batch per call
(XLA:CPU runs some forms of a convolution much slower in a loop, jax-ml/jax#12868: the
figures are a loop's, an upper bound on a run's), on random arguments, never constants
(which XLA would fold while compiling), and the best of --repeats calls (fewer past 10 s) is
printed in ms per iteration: this VM's bursts of slowness (2x for a second or so) only ever
lengthen a call. The first line names the machine.
"""

from __future__ import annotations

import contextlib
import time

import jax
import jax.numpy as jnp
from absl import app, flags

from mnistjax import layers, machine, models

flags.DEFINE_string("model", "cnn3", "model whose convolutions are timed")
flags.DEFINE_integer("batch_size", 64, "training batch size")
flags.DEFINE_list("impls", [], "implementations to time (default: the rule's for each shape, "
                  "patches and lax)")
flags.DEFINE_integer("repeats", 5, "timed calls of each program (the best is printed)")
FLAGS = flags.FLAGS


@contextlib.contextmanager
def recording(shapes: list[tuple[str, tuple, tuple]]):
  """Notes (layer, x shape, kernel shape) of every convolution a model traces meanwhile (the
  models name their convolutions conv1, conv2, ... in the order they run)."""
  real = layers.conv2d

  def spy(x, kernel, impl="lax"):
    shapes.append((f"conv{len(shapes) + 1}", x.shape, kernel.shape))
    return real(x, kernel, impl)

  layers.conv2d = spy
  try:
    yield
  finally:
    layers.conv2d = real


def looped(part, shapes: tuple):
  """build() -> run: part(*args) twice inside a lax.scan, compiled for random float32 args of
  these shapes (arguments: XLA would fold constants while compiling)."""
  def build():
    keys = jax.random.split(jax.random.key(0), len(shapes))
    args = tuple(jax.random.normal(k, s, jnp.float32) for k, s in zip(keys, shapes))

    def program(x, *rest):
      def body(carry, _):
        return carry + 1e-6 * jnp.sum(part(x + carry, *rest)), None
      return jax.lax.scan(body, jnp.zeros((), x.dtype), None, length=2)[0]
    compiled = jax.jit(program).lower(*args).compile()
    return lambda: compiled(*args).block_until_ready()
  return build


def parts(impl: str, x_shape: tuple, k_shape: tuple, y_shape: tuple) -> list:
  """The four programs of one implementation."""
  def conv(x, k):
    return layers.conv2d(x, k, impl)

  def forward_and_backward(x, k):
    # The gradients of the forward's own output, so the backward waits for it as in a step.
    y, vjp = jax.vjp(conv, x, k)
    return sum(jnp.sum(g) for g in vjp(y))

  shapes = (x_shape, k_shape, y_shape)
  return [
      looped(lambda x, k, dy: conv(x, k), shapes),
      looped(lambda x, k, dy: jax.vjp(lambda a: conv(a, k), x)[1](dy)[0], shapes),
      looped(lambda x, k, dy: jax.vjp(lambda b: conv(x, b), k)[1](dy)[0], shapes),
      looped(forward_and_backward, (x_shape, k_shape)),
  ]


def best_ms(build) -> float:
  run = build()
  run()
  best, spent = float("inf"), 0.0
  for _ in range(FLAGS.repeats):
    start = time.perf_counter()
    run()
    seconds = time.perf_counter() - start
    best, spent = min(best, seconds / 2), spent + seconds  # 2 iterations a call
    if spent > 10:  # lax.conv's kernel gradient in a loop: seconds a call
      break
  return best * 1e3


def main(_):
  model = models.build(FLAGS.model)
  variables = models.init(model, jax.random.key(0))
  shapes: list[tuple[str, tuple, tuple]] = []
  with recording(shapes):
    jax.eval_shape(lambda v: model.apply(v, jnp.zeros((FLAGS.batch_size, 28, 28, 1)), train=True,
                                         rngs={"dropout": jax.random.key(0)},
                                         mutable=["batch_stats"]), variables)
  print(f"{machine.line()}; {FLAGS.model} at batch {FLAGS.batch_size}: best of "
        f"{FLAGS.repeats}, ms per iteration of a 2-step lax.scan", flush=True)
  names = ("forward", "input grad", "kernel grad", "all")
  print(f"{'layer':<7} {'input':<16} {'kernel':<12} {'impl':<11}" + "".join(
      f"{n:>12}" for n in names) + f"{'GFLOP/s':>9}")
  for layer, x_shape, k_shape in shapes:
    y_shape = (x_shape[0], x_shape[1] - k_shape[0] + 1, x_shape[2] - k_shape[1] + 1, k_shape[3])
    flops = 2 * y_shape[0] * y_shape[1] * y_shape[2] * k_shape[0] * k_shape[1] * k_shape[2] \
        * k_shape[3]  # one pass; the step runs three (forward, input and kernel gradient)
    impls = FLAGS.impls or list(dict.fromkeys(
        [layers.conv_rule(x_shape, k_shape, 4, True), "patches", "lax"]))
    for impl in impls:
      times = [best_ms(build) for build in parts(impl, x_shape, k_shape, y_shape)]
      print(f"{layer:<7} {'x'.join(map(str, x_shape)):<16} {'x'.join(map(str, k_shape)):<12} "
            f"{impl:<11}" + "".join(f"{t:12.1f}" for t in times)
            + f"{3 * flops / times[-1] / 1e6:9.0f}", flush=True)


if __name__ == "__main__":
  app.run(main)
