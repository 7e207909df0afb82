"""Kernel test cases shared by the Pallas kernels' tests (Triton, TPU): masks, layouts built
inside jit, GQA, ragged lengths, empty rows; and the check against ``reference`` (outputs and
dq/dk/dv on fresh random inputs, under jit)."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

import sparse_ops as so
from sparse_ops import masks, reference


@dataclasses.dataclass(frozen=True)
class Case:
  name: str
  mask: masks.Mask | None  # None: a random per-batch layout from BlockLayout.from_blocks
  t: int
  s: int
  hq: int
  hkv: int
  d: int = 16
  dv: int | None = None
  dtype: str = "float32"
  b: int = 1
  block: int = 16
  tiles: Any = None  # kernel tiles (Triton's kt.Tiles); None: the kernel's defaults
  # mask None only: the random layout is chosen per query (BlockLayout.from_query_blocks,
  # row_keep), each query keeping its own kv-blocks ∧ causal
  per_query: bool = False


CASES = [
    Case("causal_ragged_f32", masks.Causal(), 40, 40, 2, 2),
    Case("local_gqa2_bf16", masks.Local(20), 48, 48, 4, 2, dtype="bfloat16"),
    Case("sink_or_local_gqa4_ragged", masks.Sink(3) | masks.Local(9), 37, 37, 4, 1),
    Case("multihead_over_hkv_gqa2",
         masks.MultiHead([masks.Causal(), masks.Local(7), masks.Sink(2) | masks.Local(5)]),
         32, 32, 6, 3),
    Case("blockrandom_causal_bf16", masks.BlockRandom(0.5, seed=3, block=16) & masks.Causal(),
         64, 64, 2, 2, dtype="bfloat16", block=16),
    Case("per_batch_from_blocks_gqa2", None, 40, 40, 4, 2, b=2),
    Case("t_ne_s_dv_ne_d", masks.Full(), 24, 56, 2, 1, dv=24),
    Case("causal_t_gt_s", masks.Causal(), 56, 24, 2, 2),
    # Rows q >= 6 allow no key: zeros inside a partial block (q < 16) and rows with no block.
    Case("empty_rows", masks.Local(4) & masks.Sink(2), 40, 40, 2, 1),
]

# Layouts chosen per query (row_keep), for the implementations that take them (Triton, xla):
# ragged lengths, GQA, per-batch lists, q-blocks wider than kv-blocks.
ROW_CASES = [
    Case("per_query_gqa2_ragged", None, 45, 45, 4, 2, b=2, per_query=True),
    Case("per_query_bf16_wide_q", None, 64, 64, 2, 1, dtype="bfloat16", block=32,
         per_query=True),
]


def _layout_and_inputs(case: Case, key):
  kq, kk, kv, kg, kl = jax.random.split(key, 5)
  dtype = jnp.dtype(case.dtype)
  dv = case.dv or case.d
  q = jax.random.normal(kq, (case.b, case.t, case.hq, case.d), jnp.float32).astype(dtype)
  k = jax.random.normal(kk, (case.b, case.s, case.hkv, case.d), jnp.float32).astype(dtype)
  v = jax.random.normal(kv, (case.b, case.s, case.hkv, dv), jnp.float32).astype(dtype)
  g = jax.random.normal(kg, (case.b, case.t, case.hq, dv), jnp.float32).astype(dtype)
  if case.mask is not None:
    layout = so.BlockLayout.from_mask(case.mask, case.t, case.s, block_q=case.block,
                                      block_kv=case.block)
    return layout, (q, k, v, g), None
  nq, nk = -(-case.t // case.block), -(-case.s // case.block)
  if case.per_query:
    keep = jax.random.bernoulli(kl, 0.4, (case.b, case.hkv, case.t, nk))
    # one q-block of one head whose queries keep nothing, and one query alone with nothing
    keep = keep.at[0, 0, case.block:2 * case.block].set(False).at[0, 0, 3].set(False)
    return None, (q, k, v, g), keep
  keep = jax.random.bernoulli(kl, 0.5, (case.b, case.hkv, nq, nk))
  keep = keep.at[0, 0, 1].set(False)  # one q-block of one head with no block at all
  return None, (q, k, v, g), keep


def check(case: Case, kernel: Callable, seed: int):
  """``kernel(q, k, v, layout, scale, case)`` against ``reference``, forward and vjp, under jit."""
  key = jax.random.PRNGKey(seed)
  layout, (q, k, v, g), keep = _layout_and_inputs(case, key)
  scale = case.d ** -0.5

  def build(keep):
    if keep is None:
      return layout
    if case.per_query:
      return so.BlockLayout.from_query_blocks(keep, block_q=case.block, block_kv=case.block,
                                              q_len=case.t, kv_len=case.s, mask=masks.Causal())
    # Per-batch, per-kv-head layout built inside jit; Causal on partial blocks.
    return so.BlockLayout.from_blocks(keep, block_q=case.block, block_kv=case.block,
                                      q_len=case.t, kv_len=case.s, mask=masks.Causal())

  def run(impl):
    def f(q, k, v, keep):
      lay = build(keep)
      if impl == "reference":
        return reference.attention(q, k, v, lay, scale)
      return kernel(q, k, v, lay, scale, case)

    def fwd_bwd(q, k, v, keep):
      out, vjp = jax.vjp(lambda q, k, v: f(q, k, v, keep), q, k, v)
      return (out,) + vjp(g)
    return jax.jit(fwd_bwd)(q, k, v, keep)

  got = run("kernel")
  want = run("reference")
  tol = 2e-5 if case.dtype == "float32" else 2e-2
  for name, a, b in zip(("out", "dq", "dk", "dv"), got, want):
    assert a.shape == b.shape and a.dtype == b.dtype, (name, a.shape, b.shape, a.dtype, b.dtype)
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    assert np.isfinite(a).all(), f"{case.name}: {name} has non-finite values"
    err = np.abs(a - b).max() / max(1.0, np.abs(b).max())
    assert err <= tol, f"{case.name}: {name} max error {err:.3g} (scaled) > {tol}"
  if case.name == "empty_rows":
    out = np.asarray(got[0])
    assert (out[:, 6:] == 0).all() and np.abs(out[:, :6]).max() > 0
  if keep is not None:  # the q-block with no kv-block of batch 0, kv-head 0 is exactly zero
    out = np.asarray(got[0])[0, case.block:2 * case.block, :case.hq // case.hkv]
    assert (out == 0).all()
  if case.per_query:  # ...and so is the lone query keeping nothing (query 3, in q-block 0)
    assert (np.asarray(got[0])[0, 3, :case.hq // case.hkv] == 0).all()


