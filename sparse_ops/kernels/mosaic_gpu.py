"""Block-sparse flash attention in Pallas with the Mosaic GPU lowering (Hopper): WORK IN PROGRESS.

Forward only so far, checked in Mosaic GPU interpret mode on CPU (`plgpu.InterpretGPUParams`);
never lowered on a GPU yet. Not registered with `sparse_ops.attention`.

Same contract as ``sparse_ops.kernels.triton``: a ``BlockLayout`` lists, per (batch or 1, head or
1, q-block), the partial kv-blocks (masked elementwise by ``layout.mask`` and the key length)
and the full ones (unmasked). One program per (64-row q tile, batch, q-head), two warpgroups:

  memory wg   copies the tile's list row into shared memory, then issues TMA loads of the
              listed K and V blocks into a ring of `stages` slots, each slot reused once the
              compute wg has arrived on its "consumed" barrier;
  compute wg  Q·Kᵀ by wgmma, online softmax in the log2 domain, P·V by wgmma; the partial
              blocks first (masked), then the full ones; out and the log-sum-exp (+inf on rows
              with no allowed key, which are written as zeros) through shared memory.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu

from sparse_ops.kernels.common import partial_block_mask
from sparse_ops.layout import BlockLayout

_LOG2E = math.log2(math.e)
_NEG = -0.7 * float(np.finfo(np.float32).max)  # finite "-inf", as in the Triton kernel
TQ = 64  # q rows per program: one wgmma M tile per compute warpgroup
_HEAD = 4  # list row: [partial count, full count, pad, pad, indices...] (16-byte TMA rows)


@dataclasses.dataclass(frozen=True)
class _Geo:
  b: int
  t: int  # padded q length
  s: int  # padded kv length
  hq: int
  group: int
  bq: int
  bk: int
  d: int
  kv_len: int
  stages: int
  slots: int  # index slots per list row (partial + full, padded)


def list_rows(layout: BlockLayout, num_q_heads: int, batch: int) -> jax.Array:
  """The forward lists as one int32 row per (batch, q-head, q-block): [pc, fc, 0, 0, partial
  indices..., full indices..., 0...] (partial first, so the kernel masks a prefix of its steps),
  padded to a multiple of 4 ints (TMA copies whole 16-byte units)."""
  pc, pi = layout.kv_num_blocks, layout.kv_indices
  fc, fi = layout.full_kv_num_blocks, layout.full_kv_indices
  bl, hl, nq, ps = pi.shape
  fs = fi.shape[-1]
  j = jnp.broadcast_to(jnp.arange(ps + fs), (bl, hl, nq, ps + fs))
  take = lambda idx, at, n: (jnp.take_along_axis(idx, jnp.clip(at, 0, n - 1), -1) if n
                             else jnp.zeros_like(at))
  merged = jnp.where(j < pc[..., None], take(pi, j, ps),
                     jnp.where(j < (pc + fc)[..., None], take(fi, j - pc[..., None], fs), 0))
  width = -(-(_HEAD + ps + fs) // 4) * 4
  rows = jnp.concatenate([pc[..., None], fc[..., None], jnp.zeros((bl, hl, nq, 2), pc.dtype),
                          merged.astype(pc.dtype),
                          jnp.zeros((bl, hl, nq, width - _HEAD - ps - fs), pc.dtype)], -1)
  if hl not in (1, num_q_heads):  # per kv-head lists: each q-head of a group reads its kv-head's
    rows = jnp.repeat(rows, num_q_heads // hl, axis=1)
  rows = jnp.broadcast_to(rows, (batch, num_q_heads, nq, width))
  return rows.astype(jnp.int32).reshape(batch * num_q_heads * nq, width)


def forward(q, k, v, layout: BlockLayout, scale: float, *, stages: int = 2,
            interpret: bool = False):
  """q [B, T, Hq, D], k/v [B, S, Hkv, D] (bf16 or f16) -> (out [B, T, Hq, D], lse [B, Hq, T]
  in the log2 domain, +inf on rows with no allowed key)."""
  b, t, hq, d = q.shape
  hkv = k.shape[2]
  bq, bk = layout.block_q, layout.block_kv
  if bq % TQ or bk % 64 or d % 64:
    raise ValueError(f"pallas_mosaic_gpu needs block_q a multiple of {TQ}, block_kv and D "
                     f"multiples of 64; got block_q={bq}, block_kv={bk}, D={d}")
  tp, sp = layout.num_q_blocks * bq, layout.num_kv_blocks * bk
  pad = lambda x, n: jnp.pad(x, ((0, 0), (0, n - x.shape[1]), (0, 0), (0, 0)))
  qp, kp, vp = pad(q, tp), pad(k, sp), pad(v, sp)
  rows = list_rows(layout, hq, b)
  geo = _Geo(b=b, t=tp, s=sp, hq=hq, group=hq // hkv, bq=bq, bk=bk, d=d, kv_len=layout.kv_len,
             stages=stages, slots=rows.shape[1])
  mask_fn = partial_block_mask(layout, hq)
  c = float(scale) * _LOG2E
  dtype = q.dtype

  def kernel(q_ref, k_ref, v_ref, rows_ref, out_ref, lse_ref, scratch):
    (q_smem, k_smem, v_smem, p_smem, row_smem, lse_smem), (row_bar, q_bar, k_bar, v_bar), \
        (k_done, v_done) = scratch
    tile, bi, h = lax.axis_index("q"), lax.axis_index("b"), lax.axis_index("h")
    wg = lax.axis_index("wg")
    r = lax.div(tile, bq // TQ)
    flat = (bi * hq + h) * layout.num_q_blocks + r

    @pl.when(wg == 1)
    def _memory():
      plgpu.copy_gmem_to_smem(rows_ref.at[pl.ds(flat, 1)], row_smem, row_bar.at[0])
      plgpu.barrier_wait(row_bar.at[0])
      n = row_smem[0, 0] + row_smem[0, 1]
      kvh = lax.div(h, geo.group)

      def load(j, _):
        slot = lax.rem(j, stages)

        @pl.when(j >= stages)
        def _():  # the slot's previous block must be consumed first
          plgpu.barrier_wait(k_done.at[slot])
          plgpu.barrier_wait(v_done.at[slot])
        blk = row_smem[0, _HEAD + j]
        src = (bi, pl.ds(blk * bk, bk), kvh)
        plgpu.copy_gmem_to_smem(k_ref.at[src], k_smem.at[slot], k_bar.at[slot])
        plgpu.copy_gmem_to_smem(v_ref.at[src], v_smem.at[slot], v_bar.at[slot])
      lax.fori_loop(0, n, load, None)

      def drain(j, _):  # observe the last blocks' "consumed" phases too
        plgpu.barrier_wait(k_done.at[lax.rem(j, stages)])
        plgpu.barrier_wait(v_done.at[lax.rem(j, stages)])
      lax.fori_loop(jnp.maximum(n - stages, 0), n, drain, None)

    @pl.when(wg == 0)
    def _compute():
      q0 = tile * TQ
      plgpu.copy_gmem_to_smem(q_ref.at[bi, pl.ds(q0, TQ), h], q_smem, q_bar.at[0])
      plgpu.barrier_wait(row_bar.at[0])
      plgpu.barrier_wait(q_bar.at[0])
      pc, fc = row_smem[0, 0], row_smem[0, 1]
      q_pos = q0 + plgpu.broadcasted_iota(jnp.int32, (TQ, bk), 0, layout=plgpu.Layout.WGMMA)
      k_off = plgpu.broadcasted_iota(jnp.int32, (TQ, bk), 1, layout=plgpu.Layout.WGMMA)

      def step(masked: bool):
        def fn(j, carry):
          acc, m, l = carry
          slot = lax.rem(j, stages)
          plgpu.barrier_wait(k_bar.at[slot])

          def qk(acc_ref):
            plgpu.wgmma(acc_ref, q_smem, k_smem.at[slot].T)
            return acc_ref[...]
          sc = pl.run_scoped(qk, plgpu.ACC((TQ, bk), jnp.float32)) * c
          plgpu.barrier_arrive(k_done.at[slot])
          if masked:
            k_pos = row_smem[0, _HEAD + j] * bk + k_off
            sc = jnp.where(mask_fn(q_pos, k_pos, h), sc, _NEG)
          m_new = jnp.maximum(m, sc.max(axis=1))
          alpha = jnp.exp2(m - m_new)
          p = jnp.exp2(sc - lax.broadcast_in_dim(m_new, sc.shape, [0]))
          l = l * alpha + p.sum(axis=1)
          acc = acc * lax.broadcast_in_dim(alpha, acc.shape, [0])
          plgpu.barrier_wait(v_bar.at[slot])

          # P goes through shared memory: the interpreter's wgmma reads its left operand from
          # there only (registers would save the store on the GPU; not measured yet).
          p_smem[...] = p.astype(dtype)
          plgpu.commit_smem()

          def pv(acc_ref):
            plgpu.wgmma(acc_ref, p_smem, v_smem.at[slot])
            return acc_ref[...]
          acc = acc + pl.run_scoped(pv, plgpu.ACC((TQ, d), jnp.float32))
          plgpu.barrier_arrive(v_done.at[slot])
          return acc, m_new, l
        return fn

      carry = (plgpu.layout_cast(jnp.zeros((TQ, d), jnp.float32), plgpu.Layout.WGMMA),
               plgpu.layout_cast(jnp.full((TQ,), _NEG, jnp.float32),
                                 plgpu.Layout.WGMMA.reduce(1)),
               plgpu.layout_cast(jnp.zeros((TQ,), jnp.float32), plgpu.Layout.WGMMA.reduce(1)))
      carry = lax.fori_loop(0, pc, step(True), carry)
      acc, m, l = lax.fori_loop(pc, pc + fc, step(False), carry)
      empty = m <= _NEG  # no allowed key in the row: zeros, lse = +inf
      inv = jnp.where(empty, 0.0, 1.0 / jnp.where(empty, 1.0, l))
      q_smem[...] = (acc * lax.broadcast_in_dim(inv, acc.shape, [0])).astype(dtype)
      lse_smem[...] = jnp.where(empty, jnp.inf, m + jnp.log2(jnp.where(empty, 1.0, l)))
      plgpu.commit_smem()
      plgpu.copy_smem_to_gmem(q_smem, out_ref.at[bi, pl.ds(q0, TQ), h])
      plgpu.copy_smem_to_gmem(lse_smem, lse_ref.at[bi, h, pl.ds(q0, TQ)])
      plgpu.wait_smem_to_gmem(0)

  def entry(q_ref, k_ref, v_ref, rows_ref, out_ref, lse_ref):
    tiled = (plgpu.TilingTransform((8, 64)), plgpu.SwizzleTransform(128))
    pl.run_scoped(
        lambda *scratch: kernel(q_ref, k_ref, v_ref, rows_ref, out_ref, lse_ref, scratch),
        (plgpu.SMEM((TQ, d), dtype, transforms=tiled),
         plgpu.SMEM((stages, bk, d), dtype, transforms=tiled),
         plgpu.SMEM((stages, bk, d), dtype, transforms=tiled),
         plgpu.SMEM((TQ, bk), dtype, transforms=tiled),
         plgpu.SMEM((1, geo.slots), jnp.int32),
         plgpu.SMEM((TQ,), jnp.float32)),
        (plgpu.Barrier(num_barriers=1), plgpu.Barrier(num_barriers=1),
         plgpu.Barrier(num_barriers=stages), plgpu.Barrier(num_barriers=stages)),
        (plgpu.Barrier(num_barriers=stages), plgpu.Barrier(num_barriers=stages)),
        collective_axes="wg")

  out, lse = plgpu.kernel(
      entry,
      out_type=(jax.ShapeDtypeStruct((b, tp, hq, d), dtype),
                jax.ShapeDtypeStruct((b, hq, tp), jnp.float32)),
      grid=(tp // TQ, b, hq), grid_names=("q", "b", "h"), num_threads=2, thread_name="wg",
      interpret=plgpu.InterpretGPUParams() if interpret else False,
  )(qp, kp, vp, rows)
  return out[:, :t], lse
