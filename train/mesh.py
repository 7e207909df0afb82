"""Processes, devices and shardings: a (data, fsdp) mesh.

The batch is split over both axes (every device gets different rows). Each parameter and
optimizer-state array is split over `fsdp` along its largest axis that the fsdp size divides
(replicated if none does): ZeRO-3 style, with XLA inserting the all-gathers in the step. The rule
depends on shapes only, so parameters and their Adam moments always shard alike.
"""

from __future__ import annotations

import os

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from train.config import DistributedConfig, MeshConfig, mesh_shape

BATCH_AXES = ("data", "fsdp")


def initialize(cfg: DistributedConfig) -> None:
  """Starts jax.distributed when launched on several processes (idempotent)."""
  if jax.distributed.is_initialized():
    return
  if cfg.num_processes > 1:
    jax.distributed.initialize(coordinator_address=cfg.coordinator or None,
                               num_processes=cfg.num_processes, process_id=cfg.process_id)
  elif cfg.auto and _cluster_launch():
    jax.distributed.initialize()  # SLURM / Open MPI / cloud TPU: everything auto-detected


def _cluster_launch() -> bool:
  if int(os.environ.get("SLURM_NTASKS", "1")) > 1:
    return True
  if int(os.environ.get("OMPI_COMM_WORLD_SIZE", "1")) > 1:
    return True
  return bool(os.environ.get("JAX_COORDINATOR_ADDRESS"))


def make_mesh(cfg: MeshConfig) -> Mesh:
  data, fsdp = mesh_shape(cfg, jax.device_count())
  devices = np.asarray(jax.devices()).reshape(data, fsdp)
  return Mesh(devices, ("data", "fsdp"))


def param_spec(shape: tuple[int, ...], fsdp: int) -> P:
  if fsdp == 1 or not shape:
    return P()
  for axis in sorted(range(len(shape)), key=lambda a: -shape[a]):
    if shape[axis] % fsdp == 0:
      return P(*[("fsdp" if a == axis else None) for a in range(len(shape))])
  return P()


def state_shardings(abstract_tree, mesh: Mesh):
  """NamedSharding for every leaf of a (train-state) pytree, by `param_spec`."""
  fsdp = mesh.shape["fsdp"]
  return jax.tree.map(lambda x: NamedSharding(mesh, param_spec(tuple(x.shape), fsdp)),
                      abstract_tree)


def batch_sharding(mesh: Mesh, calls: bool = False) -> NamedSharding:
  """For [A, B/A, T] microbatched batches (`calls`: [K, A, B/A, T], K steps of one call): rows
  split over every device."""
  return NamedSharding(mesh, P(*((None,) if calls else ()), None, BATCH_AXES))


def global_batch(local: dict[str, np.ndarray], mesh: Mesh,
                 calls: bool = False) -> dict[str, jax.Array]:
  """This process's rows [(K,) A, B_local/A, T] -> global arrays [(K,) A, B/A, T] split over the
  devices (process p's rows are the p-th slice of the rows axis)."""
  sharding = batch_sharding(mesh, calls)
  return {k: jax.make_array_from_process_local_data(sharding, x) for k, x in local.items()}
