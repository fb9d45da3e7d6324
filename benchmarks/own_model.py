"""A model of your own under mnistjax.train against a plain jitted loop over the same batches.

  MNISTJAX_DATA_DIR=../shared/data python benchmarks/own_model.py [--rounds=3] [--epochs=2]

The models are stock Flax modules written as Flax's docs write them (nn.Conv, nn.Dense,
nn.avg_pool), not mnistjax's layers: a CNN and an MLP. The plain loop is what a Flax user
writes: one `jax.jit` step (the same optimiser, loss and normalisation) called once per
batch over the epoch's batches, shuffled on the host as the engine shuffles them. Both train
the same examples for the same epochs; each reports training images per second in steady
state (the first, compiling, call left out; the engine's figure is its summary's
train_images_per_second). Rounds are interleaved (plain, engine, plain, engine...) and the
median ratio engine / plain is reported, with the CPU.
"""

from __future__ import annotations

import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags

import mnistjax
from mnistjax import data, machine

flags.DEFINE_integer("rounds", 3, "interleaved rounds (median reported)")
flags.DEFINE_integer("epochs", 2, "epochs per measurement")
flags.DEFINE_integer("train_examples", 8192, "training examples (the first N of MNIST)")
flags.DEFINE_integer("batch_size", 64, "batch size")
flags.DEFINE_list("models", ["cnn", "mlp"], "which stock models to time")
FLAGS = flags.FLAGS


class CNN(nn.Module):
  """The CNN of Flax's docs."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.relu(nn.Conv(features=32, kernel_size=(3, 3))(x))
    x = nn.avg_pool(x, window_shape=(2, 2), strides=(2, 2))
    x = nn.relu(nn.Conv(features=64, kernel_size=(3, 3))(x))
    x = nn.avg_pool(x, window_shape=(2, 2), strides=(2, 2))
    x = nn.relu(nn.Dense(features=256)(x.reshape((x.shape[0], -1))))
    return nn.Dense(features=10)(x)


class MLP(nn.Module):
  """A stock MLP: two hidden layers of 512."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = x.reshape((x.shape[0], -1))
    x = nn.relu(nn.Dense(512)(x))
    x = nn.relu(nn.Dense(512)(x))
    return nn.Dense(10)(x)


def optimizer(learning_rate):
  return optax.sgd(learning_rate, momentum=0.9)


def plain_loop(model, dataset: data.Dataset, norm, epochs: int, batch_size: int) -> float:
  """A Flax user's loop: jit one step, call it per batch. Returns images per second after
  the first (compiling) step."""
  tx = optimizer(0.01)
  params = model.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))["params"]
  opt_state = tx.init(params)

  @jax.jit
  def train_step(params, opt_state, images, labels):
    x = data.normalize(images, *norm)

    def loss_fn(params):
      logits = model.apply({"params": params}, x, train=True)
      return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  key = jax.random.key(1)
  images, start = 0, None
  for epoch in range(1, epochs + 1):
    for batch in data.train_batches(dataset.train, batch_size, key, epoch, drop_remainder=True):
      params, opt_state, loss = train_step(params, opt_state, batch["image"], batch["label"])
      if start is None:  # the first call compiles
        jax.block_until_ready(loss)
        start = time.perf_counter()
      else:
        images += len(batch["label"])
  jax.block_until_ready(params)
  return images / (time.perf_counter() - start)


def engine(model, dataset: data.Dataset, epochs: int, batch_size: int) -> float:
  config = mnistjax.Config(epochs=epochs, batch_size=batch_size, drop_remainder=True,
                           eval_train=False, checkpoint=False, log_every=10**6)
  result = mnistjax.train(config, dataset=dataset, model=model, optimizer=optimizer,
                          log=lambda line: None)
  return result.summary["train_images_per_second"]


def main(_):
  full = data.load("mnist")
  dataset = data.Dataset("mnist", full.train.take(FLAGS.train_examples), full.test.take(500),
                         full.source)
  norm = data.normalization("mnist")
  print(f"{machine.line()}; {FLAGS.train_examples} images, batch {FLAGS.batch_size}, "
        f"{FLAGS.epochs} epochs, median of {FLAGS.rounds} interleaved rounds")
  for name in FLAGS.models:
    model = {"cnn": CNN, "mlp": MLP}[name]()
    ratios, plains, engines = [], [], []
    for _ in range(FLAGS.rounds):
      plains.append(plain_loop(model, dataset, norm, FLAGS.epochs, FLAGS.batch_size))
      engines.append(engine(model, dataset, FLAGS.epochs, FLAGS.batch_size))
      ratios.append(engines[-1] / plains[-1])
    print(f"{name:<4} plain jit loop {np.median(plains):8.0f} img/s   mnistjax.train "
          f"{np.median(engines):8.0f} img/s   ratio {np.median(ratios):.3f} "
          f"(rounds {', '.join(f'{r:.3f}' for r in ratios)})")


if __name__ == "__main__":
  app.run(main)
