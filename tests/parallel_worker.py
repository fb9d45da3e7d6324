"""Runs in a subprocess of tests/test_parallel.py, started with 4 fake CPU devices
(XLA_FLAGS=--xla_force_host_platform_device_count=4): trains the same configs on one
device and on four, and prints what the tests compare as one JSON line."""

from __future__ import annotations

import json
import sys

import jax
import numpy as np

from mnistjax import config as config_lib
from mnistjax import driver, parallel
from mnistjax.errors import ConfigError
from conftest import quiet, synthetic

BASE = config_lib.Config(epochs=1, batch_size=32, eval_train=False, checkpoint=False,
                         eval_batch_size=30)


def max_diff(a, b) -> float:
  """Largest |a - b| relative to (1 + |b|) over every leaf."""
  return max(float(np.max(np.abs(x - y) / (1 + np.abs(y))))
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def compare(config, dataset, sweep_axes=None):
  """One device against four: parameter / BatchNorm-state differences and accuracies."""
  runs = {n: driver.train(config.replace(devices=n), sweep_axes, dataset=dataset, **quiet())
          for n in (1, 4)}
  one, four = runs[1].state, runs[4].state
  acc = ([r["test_accuracy"] for r in runs[n].final] for n in (1, 4))
  return {"params": max_diff(four.params, one.params),
          "batch_stats": max_diff(four.batch_stats, one.batch_stats) if one.batch_stats else 0.0,
          "accuracy": list(acc), "devices": [runs[n].summary["devices"] for n in (1, 4)],
          "sharding": str(jax.tree.leaves(four.params)[0].sharding.spec)}


def main() -> None:
  out: dict = {"device_count": jax.device_count()}
  ds = synthetic(n_train=250, n_test=100)  # 250 = 7 batches of 32 + one of 26 (padded to 28)
  out["lenet_dropout"] = compare(BASE.replace(dropout=0.25), ds)
  out["cnn3_batchnorm"] = compare(BASE.replace(model="cnn3", lr=0.05), synthetic(96, 40))
  # 30 over 4 devices: every batch padded with 2 masked examples; BatchNorm must ignore them.
  out["uneven_batchnorm"] = compare(BASE.replace(batch_size=30, batchnorm=True), ds)
  # Members x data, each seed its own data order: batches with a member axis, split over the
  # devices along the examples.
  out["sweep_x_data"] = compare(BASE, ds, {"dropout": (0.25, 0.5), "seed": (1, 2)})

  dp = parallel.make(4)
  for n in (32, 30):
    batch = dp.put_batch({"image": ds.train.images[:n],
                          "label": ds.train.labels[:n].astype(np.int32)})
    out[f"shards_{n}"] = {k: [list(s.data.shape) for s in v.addressable_shards]
                          for k, v in batch.items()}
    if "mask" in batch:
      out[f"mask_{n}"] = np.asarray(batch["mask"]).tolist()
  try:
    parallel.make(8)
  except ConfigError as e:
    out["too_many"] = str(e)
  print(json.dumps(out))


if __name__ == "__main__":
  sys.exit(main())
