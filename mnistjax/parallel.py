"""Data parallelism over every local device (and every host): `jax.jit` with shardings.

The global batch is split along a 1-D mesh axis named "data"; parameters,
optimiser state and BatchNorm statistics are replicated. The train step is the
ordinary one: given a batch sharded over "data" and a replicated state, XLA's
SPMD partitioner runs each device on its slice and inserts the all-reduce that
averages the gradients (no pmap, no hand-written collectives).

BatchNorm statistics are global, as PyTorch's SyncBatchNorm: the mean and
variance of a step are taken over the whole global batch, so a run on N devices
computes what a run on one device computes (up to float summation order).
PyTorch's DataParallel/DistributedDataParallel default normalises each device's
slice on its own instead; that choice is not offered here.

A global batch that does not divide evenly over the devices is padded with
masked examples: they carry no weight in the loss, the accuracy or the
BatchNorm statistics, so the step equals the unpadded one. Evaluation batches
are padded and masked the same way and score every example exactly once.

Multi-host: `initialize_distributed()` calls `jax.distributed.initialize()` when
a launcher has set the standard variables (JAX_COORDINATOR_ADDRESS with
JAX_NUM_PROCESSES and JAX_PROCESS_ID, or a SLURM / Open MPI job of several
tasks). Every host computes the same batch indices from the seed and reads only
its own rows of each batch (`DataParallel.put_batch`).
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec

from mnistjax import data
from mnistjax.errors import ConfigError

DATA_AXIS = "data"
FAKE_DEVICES_HINT = "XLA_FLAGS=--xla_force_host_platform_device_count=N"


def initialize_distributed(environ: Mapping[str, str] = os.environ) -> bool:
  """Joins a multi-host job when the environment describes one; returns whether it did.

  Call before anything else touches JAX. With JAX_COORDINATOR_ADDRESS (host:port of
  process 0) set, JAX_NUM_PROCESSES and JAX_PROCESS_ID must be set too; under SLURM
  (srun with several tasks) or Open MPI (mpirun -n N) JAX reads its own variables.
  """
  if environ.get("JAX_COORDINATOR_ADDRESS"):
    missing = [v for v in ("JAX_NUM_PROCESSES", "JAX_PROCESS_ID") if not environ.get(v)]
    if missing:
      raise ConfigError(f"JAX_COORDINATOR_ADDRESS is set but {' and '.join(missing)} "
                        "is not: set all three on every host (see README, Scaling out)")
    try:
      num_processes, process_id = int(environ["JAX_NUM_PROCESSES"]), int(environ["JAX_PROCESS_ID"])
    except ValueError:
      raise ConfigError("JAX_NUM_PROCESSES and JAX_PROCESS_ID must be integers") from None
    if not 0 <= process_id < num_processes:
      raise ConfigError(f"JAX_PROCESS_ID={process_id} must be in [0, JAX_NUM_PROCESSES="
                        f"{num_processes})")
    jax.distributed.initialize(environ["JAX_COORDINATOR_ADDRESS"], num_processes, process_id)
    return True
  tasks = max(int(environ.get("SLURM_NTASKS", "1") or 1),
              int(environ.get("OMPI_COMM_WORLD_SIZE", "1") or 1))
  if tasks > 1:
    jax.distributed.initialize()
    return True
  return False


@dataclasses.dataclass(frozen=True)
class DataParallel:
  """A 1-D "data" mesh over the devices of the run, and how arrays are placed on it."""
  mesh: jax.sharding.Mesh

  @property
  def size(self) -> int:
    return self.mesh.size

  @property
  def replicated(self) -> NamedSharding:
    return NamedSharding(self.mesh, PartitionSpec())

  @property
  def batch_sharding(self) -> NamedSharding:
    return NamedSharding(self.mesh, PartitionSpec(DATA_AXIS))

  def put_replicated(self, tree: Any) -> Any:
    """Every leaf of tree copied to every device (the train state, keys); every host must
    pass the same values."""
    if jax.process_count() == 1:
      return jax.device_put(tree, self.replicated)

    def put(x):
      if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        return jax.random.wrap_key_data(put(jax.random.key_data(x)),
                                        impl=jax.random.key_impl(x))
      value = np.asarray(x)
      return jax.make_array_from_callback(value.shape, self.replicated, lambda idx: value[idx])
    return jax.tree.map(put, tree)

  def padded_size(self, batch_size: int) -> int:
    return -(-batch_size // self.size) * self.size

  def describe(self, batch_size: int) -> str:
    """"data-parallel over 4 devices (batch 30 padded to 32)", for the run's first line."""
    padded = self.padded_size(batch_size)
    return (f"data-parallel over {self.size} devices (batch {batch_size}"
            + (f" padded to {padded})" if padded != batch_size else ")"))

  def batch_sharding_of(self, member_axis: bool) -> NamedSharding:
    """How a batch is split: along its examples, axis 0, or axis 1 behind a member axis."""
    spec = PartitionSpec(None, DATA_AXIS) if member_axis else PartitionSpec(DATA_AXIS)
    return NamedSharding(self.mesh, spec)

  def put_batch(self, batch: dict[str, np.ndarray], member_axis: bool = False
                ) -> dict[str, jax.Array]:
    """A host batch (the same global batch on every host) as global arrays split over the
    devices along its examples (axis 0, or axis 1 where a sweep's members each have their
    own batch), padded with masked examples to a multiple of the device count.

    A batch that needs no padding and had no mask gets none, so the step it runs is the
    single-device one. Each host transfers only the rows its own devices hold.
    """
    if member_axis:  # examples first, for the padding
      batch = {k: np.moveaxis(v, 1, 0) for k, v in batch.items()}
    padded = self.padded_size(len(batch["label"]))
    if padded != len(batch["label"]):
      batch = data.pad_batch(batch, padded)
    rows = padded // jax.process_count()
    start = jax.process_index() * rows
    if member_axis:
      batch = {k: np.moveaxis(v, 0, 1) for k, v in batch.items()}
    sharding, axis = self.batch_sharding_of(member_axis), int(member_axis)
    return {k: jax.make_array_from_process_local_data(
        sharding, np.take(v, np.arange(start, start + rows), axis=axis), v.shape)
            for k, v in batch.items()}


def make(devices: int = 0) -> DataParallel | None:
  """The data-parallel layout of `--devices` (0: every device of every host); None for one
  device, where the plain single-device program runs."""
  available = jax.local_device_count()
  if devices < 0:
    raise ConfigError(f"--devices={devices}: must be >= 0 (0 = all {available} local devices)")
  if devices > available:
    raise ConfigError(
        f"--devices={devices}: only {available} local {jax.default_backend()} device(s); use "
        f"--devices={available} or fewer (for fake CPU devices start with {FAKE_DEVICES_HINT})")
  if jax.process_count() > 1:
    if devices not in (0, available):
      raise ConfigError(f"--devices={devices}: a multi-host run uses every local device; "
                        "leave --devices unset")
    device_list = jax.devices()
  else:
    device_list = jax.local_devices()[:devices or available]
  if len(device_list) == 1:
    return None
  # Auto axes: the compiler propagates the batch sharding and places the gradient all-reduce
  # (GSPMD), so the train step needs no sharding annotations of its own.
  return DataParallel(jax.make_mesh((len(device_list),), (DATA_AXIS,), devices=device_list,
                                    axis_types=(jax.sharding.AxisType.Auto,)))


def to_host(x: Any) -> Any:
  """A (global) array's value as numpy on this host, also where it spans several hosts."""
  def get(a):
    if not isinstance(a, jax.Array) or a.is_fully_addressable:
      return np.asarray(a)
    if a.sharding.is_fully_replicated:
      return np.asarray(a.addressable_data(0))
    return np.asarray(multihost_utils.process_allgather(a, tiled=True))
  return jax.tree.map(get, x)


def jit_step(fn, dp: DataParallel | None, *, donate_state: bool = False,
             replicate_outputs: bool = False, member_axis: bool = False):
  """`fn(state, batch, *rest)` jitted; with dp, each host batch is split over the devices
  (`put_batch`; member_axis: the batch has a leading member axis) and, where asked, the
  outputs are kept replicated (the next step's state). The state and keys passed in must
  already be replicated (`put_replicated`)."""
  donate = (0,) if donate_state else ()
  if dp is None:
    return jax.jit(fn, donate_argnums=donate)
  jitted = jax.jit(fn, donate_argnums=donate,
                   out_shardings=dp.replicated if replicate_outputs else None)

  # XLA:CPU runs the devices' programs on one shared thread pool; with many steps queued
  # (asynchronous dispatch), their all-reduces can wait on each other for good (seen with 4
  # fake devices on 2 cores). CPU devices gain nothing from running ahead, so each step is
  # waited for there.
  wait = jax.default_backend() == "cpu"

  @functools.wraps(fn)
  def step(state, batch, *rest):
    out = jitted(state, dp.put_batch(batch, member_axis), *rest)
    return jax.block_until_ready(out) if wait else out
  return step
