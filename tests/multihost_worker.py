"""One process of a two-process job on this machine (tests/test_parallel.py starts two, each
with 2 fake CPU devices and JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID set,
or one alone): trains LeNet with dropout for an epoch of the synthetic data and saves this
process's view of the parameters and the test accuracy in OUT/process_<i>.npz."""

from __future__ import annotations

import pathlib
import sys

from mnistjax import parallel

parallel.initialize_distributed()  # before anything else touches JAX

import jax  # noqa: E402
import numpy as np  # noqa: E402

from mnistjax import config as config_lib  # noqa: E402
from mnistjax import driver  # noqa: E402
from conftest import quiet, synthetic  # noqa: E402


def main(out: str) -> None:
  cfg = config_lib.Config(epochs=1, batch_size=32, eval_train=False, eval_batch_size=30,
                          dropout=0.25)
  result = driver.train(cfg, None, str(pathlib.Path(out) / "workdir"), synthetic(250, 100),
                        **quiet())
  leaves = parallel.to_host(jax.tree.leaves(result.state.params))
  np.savez(pathlib.Path(out) / f"process_{jax.process_index()}.npz", *leaves,
           accuracy=result.final[0]["test_accuracy"], devices=jax.device_count(),
           processes=jax.process_count())


if __name__ == "__main__":
  main(sys.argv[1])
