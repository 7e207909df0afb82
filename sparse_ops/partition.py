"""Kernels that XLA cannot partition, run per shard of the context mesh.

XLA's SPMD partitioner sees a Pallas kernel as an opaque custom call. Handed q, k and v split
over devices, it all-gathers them, and every device computes the whole attention: the step is
correct but does not scale. So ``sparse_ops.attention`` runs such kernels under
``jax.shard_map`` over the mesh set by ``jax.set_mesh``. Each device computes the attention of
its own batch rows (and heads). Attention is independent per batch row and per kv-head group, so
the split changes no value, and nothing is gathered.

``partition`` says how q [B, T, Hq, D] is split: ``P(batch_axes, None, head_axes, None)``. The
default splits the batch over every axis of the mesh, i.e. pure data parallelism or FSDP. k and
v split alike (their heads by the same axes, so each shard keeps whole GQA groups). The layout's
arrays split where they have a batch or head dimension larger than 1 and are replicated where
they broadcast (size 1). The sequence and head dimensions stay whole: a kernel needs every key
of its rows.
"""

from __future__ import annotations

import math
from typing import Callable

import jax
from jax.sharding import PartitionSpec as P

from sparse_ops.layout import BlockLayout


def context_mesh():
  """The mesh set by ``jax.set_mesh`` (None if none is set or it has one device)."""
  mesh = jax.sharding.get_abstract_mesh()
  return None if mesh.empty or mesh.size == 1 else mesh


def per_shard(run: Callable, q, k, v, layout: BlockLayout, scale: float,
              partition: P | None) -> jax.Array:
  """``run(q, k, v, layout, scale)``, on each device's shard when a mesh is set."""
  mesh = context_mesh()
  if mesh is None:
    if partition is not None and _axes(partition):
      raise ValueError(f"partition={partition} names mesh axes but no mesh of several devices is "
                       "set; set one with jax.set_mesh(mesh), or leave partition=None")
    return run(q, k, v, layout, scale)
  spec = P(tuple(mesh.axis_names)) if partition is None else partition
  batch_axes, head_axes = _check(spec, mesh, q.shape, k.shape[2], partition is None)
  if not batch_axes and not head_axes:
    return run(q, k, v, layout, scale)  # P(): the caller asked for the whole call on each device
  qkv = P(batch_axes or None, None, head_axes or None, None)

  def leaf(x):  # [Bl, Hl, ...]: split the dimensions that are not broadcast (size 1)
    return P((batch_axes or None) if x.shape[0] > 1 else None,
             (head_axes or None) if x.shape[1] > 1 else None)

  layout_spec = jax.tree.map(leaf, layout)
  # check_vma=False: pallas_call has no rule for how it changes replication. Every float input
  # is split over the batch axes, so transposition adds no reduction to their gradients.
  fn = jax.shard_map(lambda q, k, v, layout: run(q, k, v, layout, scale),
                     in_specs=(qkv, qkv, qkv, layout_spec), out_specs=qkv, check_vma=False)
  return fn(q, k, v, layout)


def _axes(spec: P) -> tuple[str, ...]:
  out = []
  for entry in spec:
    out += [] if entry is None else list(entry) if isinstance(entry, tuple) else [entry]
  return tuple(out)


def _dim_axes(spec: P, dim: int) -> tuple[str, ...]:
  entry = spec[dim] if dim < len(spec) else None
  return () if entry is None else tuple(entry) if isinstance(entry, tuple) else (entry,)


def _check(spec, mesh, q_shape, hkv: int, default: bool) -> tuple[tuple, tuple]:
  """(batch axes, head axes) of a valid `spec`; otherwise a ValueError naming what is wrong."""
  if not isinstance(spec, P) or len(spec) > 4:
    raise ValueError(f"partition={spec!r} must be a jax.sharding.PartitionSpec over q's "
                     "[B, T, Hq, D], e.g. P(('data', 'fsdp')) or P('data', None, 'model')")
  names = _axes(spec)
  unknown = [a for a in names if a not in mesh.axis_names]
  if unknown or len(set(names)) != len(names):
    raise ValueError(f"partition={spec} names axes {list(names)}; each must be a distinct axis "
                     f"of the mesh, {tuple(mesh.axis_names)}")
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
