"""Kernels that XLA cannot partition, run per shard of the context mesh.

XLA's SPMD partitioner sees a Pallas kernel as an opaque custom call. Handed q, k and v split
over devices, it all-gathers them, and every device computes the whole attention: the step is
correct but does not scale. So ``sparse_ops.attention`` runs such kernels under
``jax.shard_map`` over the mesh set by ``jax.set_mesh``. Each device computes the attention of
its own batch rows (and heads). Attention is independent per batch row and per kv-head group, so
the split changes no value, and nothing is gathered.

``partition`` says how q [B, T, Hq, D] is split: ``P(batch_axes, None, head_axes, None)``. The
default splits the batch over every mesh axis that is not already manual, i.e. pure data
parallelism or FSDP. k and v split alike (their heads by the same axes, so each shard keeps
whole GQA groups). The layout's arrays split where they have a batch or head dimension larger
than 1 and are replicated where they broadcast (size 1). The sequence and head dimensions stay
whole: a kernel needs every key of its rows.

Inside the caller's own ``shard_map`` the axes it made manual are already split: arrays there
are per-device, so only the remaining (automatic) axes are split again, and with none left the
kernel runs on the arrays as they are.
"""

from __future__ import annotations

import math
from typing import Callable

import jax
from jax.sharding import PartitionSpec as P

from sparse_ops.layout import BlockLayout


def per_shard(run: Callable, q, k, v, layout: BlockLayout, scale: float,
              partition: P | None, *, partitionable: bool = False) -> jax.Array:
  """``run(q, k, v, layout, scale)``, on each device's shard of the context mesh.

  ``partitionable`` (``Implementation.partitionable``): XLA can partition ``run`` itself, as for
  ``xla`` and ``reference``. Then ``partition`` is only checked, so a bad spec fails on every
  backend, and XLA partitions the call from its inputs' shardings.
  """
  if partition is not None and not isinstance(partition, P):
    raise ValueError(f"partition={partition!r} must be a jax.sharding.PartitionSpec over q's "
                     "[B, T, Hq, D], e.g. P(('data', 'fsdp')) or P('data', None, 'model')")
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    if partition is not None and _axes(partition):
      raise ValueError(f"partition={partition} names mesh axes but no mesh is set; set one "
                       "with jax.set_mesh(mesh), or leave partition=None")
    return run(q, k, v, layout, scale)
  free = [a for a in mesh.axis_names if a not in mesh.manual_axes]
  spec = P(tuple(free) or None) if partition is None else partition
  batch_axes, head_axes = _check(spec, mesh, free, q.shape, k.shape[2], partition is None)
  if head_axes and layout.mask is not None and layout.mask.num_heads is not None:
    # The kernel indexes a per-head mask by its head within the call: inside a shard that is
    # the local head, and the shard would apply the first heads' masks to its own.
    raise ValueError(f"partition={spec} splits the heads, but layout.mask holds "
                     f"{layout.mask.num_heads} per-head masks; split only the batch, e.g. "
                     f"partition=P({batch_axes or None!r})")
  if partitionable or math.prod(mesh.shape[a] for a in batch_axes + head_axes) == 1:
    return run(q, k, v, layout, scale)
  qkv = P(batch_axes or None, None, head_axes or None, None)

  def leaf(x):  # [Bl, Hl, ...]: split the dimensions that are not broadcast (size 1)
    return P((batch_axes or None) if x.shape[0] > 1 else None,
             (head_axes or None) if x.shape[1] > 1 else None)

  # check_vma=False: pallas_call has no rule for how it changes replication. Gradients stay
  # exact: for mesh axes a spec leaves out (inputs replicated over them), shard_map's transpose
  # scales the cotangents and sums over those axes.
  fn = jax.shard_map(lambda q, k, v, layout: run(q, k, v, layout, scale),
                     in_specs=(qkv, qkv, qkv, jax.tree.map(leaf, layout)), out_specs=qkv,
                     axis_names=set(free), check_vma=False)
  return fn(q, k, v, layout)


def _dim_axes(spec: P, dim: int) -> tuple[str, ...]:
  """The mesh axes `spec` splits dimension `dim` over."""
  entry = spec[dim] if dim < len(spec) else None
  return () if entry is None else tuple(entry) if isinstance(entry, tuple) else (entry,)


def _axes(spec: P) -> tuple[str, ...]:
  """Every mesh axis `spec` names, in order."""
  return sum((_dim_axes(spec, dim) for dim in range(len(spec))), ())


def _check(spec: P, mesh, free, q_shape, hkv: int, default: bool) -> tuple[tuple, tuple]:
  """(batch axes, head axes) of a valid `spec`; otherwise a ValueError naming what is wrong."""
  if len(spec) > 4:
    raise ValueError(f"partition={spec} has {len(spec)} entries; q has 4 dimensions "
                     "[B, T, Hq, D]")
  names = _axes(spec)
  unknown = [a for a in names if a not in mesh.axis_names]
  if unknown or len(set(names)) != len(names):
    raise ValueError(f"partition={spec} names axes {list(names)}; each must be a distinct axis "
                     f"of the mesh, {tuple(mesh.axis_names)}")
  manual = [a for a in names if a not in free]
  if manual:
    raise ValueError(f"partition={spec} names {manual}, which the enclosing shard_map has "
                     f"already split (manual); name only the other axes, {tuple(free)}")
  for dim, what in ((1, "sequence (T)"), (3, "head-dim (D)")):
    if _dim_axes(spec, dim):
      raise ValueError(f"partition={spec} splits q's {what} dimension; the kernels need it "
                       "whole: split the batch (dimension 0) or the heads (dimension 2)")
  batch_axes, head_axes = _dim_axes(spec, 0), _dim_axes(spec, 2)
  nb = math.prod(mesh.shape[a] for a in batch_axes)
  nh = math.prod(mesh.shape[a] for a in head_axes)
  b, hq = q_shape[0], q_shape[2]
  if b % nb:
    hint = (" (the default splits the batch over every mesh axis)" if default else "")
    raise ValueError(f"batch B={b} cannot be split over axes {batch_axes} of {nb} devices"
                     f"{hint}; pass partition= naming the axes q's batch is split over, or "
                     "partition=P() to run the whole attention on every device")
  if hkv % nh or hq % nh:
    raise ValueError(f"Hq={hq} and Hkv={hkv} heads cannot both be split over axes {head_axes} "
                     f"of {nh} devices")
  return batch_axes, head_axes
