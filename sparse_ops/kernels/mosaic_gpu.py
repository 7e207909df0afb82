"""Block-sparse flash attention in Pallas with the Mosaic GPU lowering (Hopper): WORK IN PROGRESS.

Forward, dQ and dK/dV passes with their custom VJP (`attention`), checked in Mosaic GPU interpret
mode on CPU (`plgpu.InterpretGPUParams`). The first real lowering (one H200, session 10) died
with CUDA_ERROR_MISALIGNED_ADDRESS on its first check; after list rows were padded to 128 bytes
(`_ROW_ALIGN`) every check passed with the real lowering on one H100 (session 18,
`benchmarks/results/mosaic_gpu_cases_h100.md`: forward and gradients, 6 layouts, each check
alone with CUDA_LAUNCH_BLOCKING=1; session 19: a plain `pytest -m gpu` of the test file, 14 of 14,
`mosaic_gpu_pytest_h100.txt`). Registered with `sparse_ops.attention` as
`implementation="pallas_mosaic_gpu"`, asked for by name only: its speed is not measured yet, so
`implementation=None` keeps the Triton kernel.

Same contract as ``sparse_ops.kernels.triton``: a ``BlockLayout`` lists, per (batch or 1, head or
1, q-block), the partial kv-blocks (masked elementwise by ``layout.mask`` and the key length)
and the full ones (unmasked). One program per (64-row q tile, batch, q-head), two warpgroups:

  memory wg   copies the tile's list row into shared memory, then issues TMA loads of the
              listed K and V blocks into a ring of `stages` slots, each slot reused once the
              compute wg has arrived on its "consumed" barrier;
  compute wg  Q·Kᵀ by wgmma, online softmax in the log2 domain, P·V by wgmma; the partial
              blocks first (masked), then the full ones; out and the log-sum-exp (+inf on rows
              with no allowed key, which are written as zeros) through shared memory.

`compute_wgs=2` runs the forward and dQ passes with two compute warpgroups of 64 rows per 128-row
program, sharing each K/V stage (as JAX's `attention_mgpu` does); checked in interpret mode only,
not yet on a GPU.

The backward: dQ over the forward lists with the same split of work (K held until dS·K), and
dK/dV per (64-row kv tile, batch, kv-head) over the transposed lists, the GQA group's q-heads
summed inside the program (deterministic, no atomics), Pᵀ computed as exp2(K·Qᵀ·c − lse).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu

from sparse_ops.kernels.common import check_call, partial_block_mask, with_kernel_vjp
from sparse_ops.layout import BlockLayout

_LOG2E = math.log2(math.e)
_NEG = -0.7 * float(np.finfo(np.float32).max)  # finite "-inf", as in the Triton kernel
TQ = 64  # q rows per program: one wgmma M tile per compute warpgroup
_HEAD = 4  # list row: [partial count, full count, pad, pad, indices...]
# Rows padded to 32 ints (128 bytes): the dK/dV pass copies a GQA group's rows into one shared
# buffer, row g at g · width · 4 bytes, and a TMA copy's shared-memory destination must be
# 128-byte aligned (with 16-byte rows, g = 1 would not be). With 16-byte rows the first real
# lowering died with CUDA_ERROR_MISALIGNED_ADDRESS; with these, every GPU check passes (H100,
# session 18), though that run is not proof this was the only cause.
_ROW_ALIGN = 32


def list_rows(layout: BlockLayout, num_q_heads: int, batch: int, *,
              transposed: bool = False) -> jax.Array:
  """The forward lists (or with `transposed` the q-block lists of each kv-block) as one int32
  row per (batch, q-head, block): [partial count, full count, 0, 0, partial indices..., full
  indices..., 0...] (partial first, so the kernel masks a prefix of its steps), padded to a
  multiple of `_ROW_ALIGN` ints."""
  if transposed:
    pc, pi = layout.q_num_blocks, layout.q_indices
    fc, fi = layout.full_q_num_blocks, layout.full_q_indices
  else:
    pc, pi = layout.kv_num_blocks, layout.kv_indices
    fc, fi = layout.full_kv_num_blocks, layout.full_kv_indices
  bl, hl, nq, ps = pi.shape
  fs = fi.shape[-1]
  j = jnp.broadcast_to(jnp.arange(ps + fs), (bl, hl, nq, ps + fs))
  take = lambda idx, at, n: (jnp.take_along_axis(idx, jnp.clip(at, 0, n - 1), -1) if n
                             else jnp.zeros_like(at))
  merged = jnp.where(j < pc[..., None], take(pi, j, ps),
                     jnp.where(j < (pc + fc)[..., None], take(fi, j - pc[..., None], fs), 0))
  width = -(-(_HEAD + ps + fs) // _ROW_ALIGN) * _ROW_ALIGN
  rows = jnp.concatenate([pc[..., None], fc[..., None], jnp.zeros((bl, hl, nq, 2), pc.dtype),
                          merged.astype(pc.dtype),
                          jnp.zeros((bl, hl, nq, width - _HEAD - ps - fs), pc.dtype)], -1)
  if hl not in (1, num_q_heads):  # per kv-head lists: each q-head of a group reads its kv-head's
    rows = jnp.repeat(rows, num_q_heads // hl, axis=1)
  rows = jnp.broadcast_to(rows, (batch, num_q_heads, nq, width))
  return rows.astype(jnp.int32).reshape(batch * num_q_heads * nq, width)


def _produce_kv(row_src, row_smem, row_bar, gmem, smem, ready, done, bi, kvh, bk: int,
                stages: int) -> None:
  """The memory warpgroup: the program's list row into shared memory, then each listed kv-block
  of K and V (`gmem`) into a ring of `stages` slots (`smem`), signalling `ready` per slot and
  reusing a slot once the compute warpgroup has arrived on its `done` barriers."""
  plgpu.copy_gmem_to_smem(row_src, row_smem, row_bar.at[0])
  plgpu.barrier_wait(row_bar.at[0])
  n = row_smem[0, 0] + row_smem[0, 1]

  def load(j, _):
    slot = lax.rem(j, stages)

    @pl.when(j >= stages)
    def _():  # the slot's previous block must be consumed first
      for bar in done:
        plgpu.barrier_wait(bar.at[slot])
    src = (bi, pl.ds(row_smem[0, _HEAD + j] * bk, bk), kvh)
    for ref, buf, bar in zip(gmem, smem, ready):
      plgpu.copy_gmem_to_smem(ref.at[src], buf.at[slot], bar.at[slot])
  lax.fori_loop(0, n, load, None)

  def drain(j, _):  # observe the last blocks' "consumed" phases too
    for bar in done:
      plgpu.barrier_wait(bar.at[lax.rem(j, stages)])
  lax.fori_loop(jnp.maximum(n - stages, 0), n, drain, None)


def forward(q, k, v, layout: BlockLayout, scale: float, *, stages: int = 2,
            compute_wgs: int = 1, interpret: bool = False):
  """q [B, T, Hq, D], k/v [B, S, Hkv, D] (bf16 or f16) -> (out [B, T, Hq, D], lse [B, Hq, T]
  in the log2 domain, +inf on rows with no allowed key).

  compute_wgs = 2: one program per 128 q rows, two compute warpgroups of 64 rows sharing each
  K/V stage (the layout of JAX's `attention_mgpu`): half the K/V shared-memory loads per row, and
  one warpgroup's softmax can run under the other's wgmma. Needs block_q a multiple of 128. Not
  yet timed or run on a GPU (benchmarks/results/attention_mosaic_gpu_plan.md). 1 is the default,
  the variant every GPU check ran, though its Q, P and lse buffers have since gained a leading
  axis of one (indexed by the warpgroup, offset 0): the GPU checks have not re-run since."""
  b, t, hq, d = q.shape
  hkv = k.shape[2]
  bq, bk = layout.block_q, layout.block_kv
  _check_blocks(bq, bk, d)
  cw, rows_per = compute_wgs, _rows_per_program(compute_wgs, bq)
  tp, sp = layout.num_q_blocks * bq, layout.num_kv_blocks * bk
  qp, kp, vp = _pad(q, tp), _pad(k, sp), _pad(v, sp)
  rows = list_rows(layout, hq, b)
  group = hq // hkv
  mask_fn = partial_block_mask(layout, hq)
  c = float(scale) * _LOG2E
  dtype = q.dtype

  def kernel(q_ref, k_ref, v_ref, rows_ref, out_ref, lse_ref, scratch):
    (q_smem2, k_smem, v_smem, p_smem2, row_smem, lse_smem2), (row_bar, q_bar, k_bar, v_bar), \
        (k_done, v_done) = scratch
    tile, bi, h = lax.axis_index("q"), lax.axis_index("b"), lax.axis_index("h")
    wg = lax.axis_index("wg")  # 0 .. cw - 1 compute, cw moves memory
    r = lax.div(tile, bq // rows_per)
    flat = (bi * hq + h) * layout.num_q_blocks + r

    @pl.when(wg == cw)
    def _memory():
      _produce_kv(rows_ref.at[pl.ds(flat, 1)], row_smem, row_bar, (k_ref, v_ref), (k_smem, v_smem),
                  (k_bar, v_bar), (k_done, v_done), bi, lax.div(h, group), bk, stages)

    @pl.when(wg < cw)
    def _compute():
      q_smem, p_smem, lse_smem = q_smem2.at[wg], p_smem2.at[wg], lse_smem2.at[wg]
      q0 = tile * rows_per + wg * TQ
      plgpu.copy_gmem_to_smem(q_ref.at[bi, pl.ds(q0, TQ), h], q_smem, q_bar.at[wg])
      plgpu.barrier_wait(row_bar.at[0])
      plgpu.barrier_wait(q_bar.at[wg])
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

  out, lse = _launch(
      kernel,
      ((_smem((cw, TQ, d), dtype), _smem((stages, bk, d), dtype), _smem((stages, bk, d), dtype),
        _smem((cw, TQ, bk), dtype), plgpu.SMEM((1, rows.shape[1]), jnp.int32),
        plgpu.SMEM((cw, TQ), jnp.float32)),
       (plgpu.Barrier(num_barriers=1), plgpu.Barrier(num_barriers=cw),
        plgpu.Barrier(num_barriers=stages), plgpu.Barrier(num_barriers=stages)),
       _consumed(cw, stages)),
      (jax.ShapeDtypeStruct((b, tp, hq, d), dtype), jax.ShapeDtypeStruct((b, hq, tp), jnp.float32)),
      (tp // rows_per, b, hq), ("q", "b", "h"), interpret, compute_wgs=cw)(qp, kp, vp, rows)
  return out[:, :t], lse


def dq(q, k, v, do, lse, delta, layout: BlockLayout, scale: float, *, stages: int = 2,
       compute_wgs: int = 1, interpret: bool = False):
  """The dQ pass over the forward lists: q, do [B, T, Hq, D]; k, v [B, S, Hkv, D]; lse, delta
  [B, Hq, T_pad] f32 (the forward's log2 log-sum-exp; rowsum(out * do)) -> dq [B, T, Hq, D].
  Per listed block: P = exp2(S·c − lse) (0 where masked, and on empty rows where lse = +inf),
  dS = P ⊙ (dO·Vᵀ − delta), dQ += dS·K; K is held until the last of its products.
  `compute_wgs` as in `forward` (2: two 64-row warpgroups per 128 q rows sharing each K/V stage;
  interpret mode only so far)."""
  b, t, hq, d = q.shape
  hkv = k.shape[2]
  bq, bk = layout.block_q, layout.block_kv
  _check_blocks(bq, bk, d)
  cw, rows_per = compute_wgs, _rows_per_program(compute_wgs, bq)
  tp, sp = layout.num_q_blocks * bq, layout.num_kv_blocks * bk
  qp, dop, kp, vp = _pad(q, tp), _pad(do, tp), _pad(k, sp), _pad(v, sp)
  rows = list_rows(layout, hq, b)
  group, mask_fn, c, dtype = hq // hkv, partial_block_mask(layout, hq), scale * _LOG2E, q.dtype

  def kernel(q_ref, do_ref, k_ref, v_ref, lse_ref, delta_ref, rows_ref, dq_ref, scratch):
    (q_smem2, do_smem2, k_smem, v_smem, ds_smem2, row_smem, lse_smem2, delta_smem2), \
        (row_bar, q_bar, k_bar, v_bar), (k_done, v_done) = scratch
    tile, bi, h = lax.axis_index("q"), lax.axis_index("b"), lax.axis_index("h")
    wg = lax.axis_index("wg")  # 0 .. cw - 1 compute, cw moves memory
    flat = (bi * hq + h) * layout.num_q_blocks + lax.div(tile, bq // rows_per)

    @pl.when(wg == cw)
    def _memory():
      _produce_kv(rows_ref.at[pl.ds(flat, 1)], row_smem, row_bar, (k_ref, v_ref), (k_smem, v_smem),
                  (k_bar, v_bar), (k_done, v_done), bi, lax.div(h, group), bk, stages)

    @pl.when(wg < cw)
    def _compute():
      q_smem, do_smem, ds_smem = q_smem2.at[wg], do_smem2.at[wg], ds_smem2.at[wg]
      lse_smem, delta_smem = lse_smem2.at[wg], delta_smem2.at[wg]
      q0 = tile * rows_per + wg * TQ
      rows_q = pl.ds(q0, TQ)
      copies = ((q_ref.at[bi, rows_q, h], q_smem), (do_ref.at[bi, rows_q, h], do_smem),
                (lse_ref.at[bi, h, rows_q], lse_smem), (delta_ref.at[bi, h, rows_q], delta_smem))
      for i, (src, dst) in enumerate(copies):
        plgpu.copy_gmem_to_smem(src, dst, q_bar.at[wg * len(copies) + i])
      plgpu.barrier_wait(row_bar.at[0])
      for i in range(len(copies)):
        plgpu.barrier_wait(q_bar.at[wg * len(copies) + i])
      lse = plgpu.load(lse_smem, (), layout=plgpu.Layout.WGMMA.reduce(1))
      delta = plgpu.load(delta_smem, (), layout=plgpu.Layout.WGMMA.reduce(1))
      pc, fc = row_smem[0, 0], row_smem[0, 1]
      q_pos = q0 + plgpu.broadcasted_iota(jnp.int32, (TQ, bk), 0, layout=plgpu.Layout.WGMMA)
      k_off = plgpu.broadcasted_iota(jnp.int32, (TQ, bk), 1, layout=plgpu.Layout.WGMMA)
      rows_of = lambda x: lax.broadcast_in_dim(x, (TQ, bk), [0])

      def step(masked: bool):
        def fn(j, acc):
          slot = lax.rem(j, stages)
          plgpu.barrier_wait(k_bar.at[slot])
          sc = _matmul(q_smem, k_smem.at[slot].T, (TQ, bk))
          p = jnp.exp2(sc * c - rows_of(lse))
          if masked:
            p = jnp.where(mask_fn(q_pos, row_smem[0, _HEAD + j] * bk + k_off, h), p, 0.0)
          plgpu.barrier_wait(v_bar.at[slot])
          dp = _matmul(do_smem, v_smem.at[slot].T, (TQ, bk))
          plgpu.barrier_arrive(v_done.at[slot])
          ds_smem[...] = (p * (dp - rows_of(delta))).astype(dtype)
          plgpu.commit_smem()
          acc = acc + _matmul(ds_smem, k_smem.at[slot], (TQ, d))
          plgpu.barrier_arrive(k_done.at[slot])
          return acc
        return fn

      acc = plgpu.layout_cast(jnp.zeros((TQ, d), jnp.float32), plgpu.Layout.WGMMA)
      acc = lax.fori_loop(0, pc, step(True), acc)
      acc = lax.fori_loop(pc, pc + fc, step(False), acc)
      q_smem[...] = (acc * scale).astype(dtype)
      plgpu.commit_smem()
      plgpu.copy_smem_to_gmem(q_smem, dq_ref.at[bi, rows_q, h])
      plgpu.wait_smem_to_gmem(0)

  out = _launch(
      kernel,
      ((_smem((cw, TQ, d), dtype), _smem((cw, TQ, d), dtype), _smem((stages, bk, d), dtype),
        _smem((stages, bk, d), dtype), _smem((cw, TQ, bk), dtype),
        plgpu.SMEM((1, rows.shape[1]), jnp.int32), plgpu.SMEM((cw, TQ), jnp.float32),
        plgpu.SMEM((cw, TQ), jnp.float32)),
       (plgpu.Barrier(num_barriers=1), plgpu.Barrier(num_barriers=4 * cw),
        plgpu.Barrier(num_barriers=stages), plgpu.Barrier(num_barriers=stages)),
       _consumed(cw, stages)),
      jax.ShapeDtypeStruct((b, tp, hq, d), dtype), (tp // rows_per, b, hq), ("q", "b", "h"),
      interpret, compute_wgs=cw)(qp, dop, kp, vp, lse, delta, rows)
  return out[:, :t]


def _rows_per_program(compute_wgs: int, block_q: int) -> int:
  """q rows a forward or dQ program takes with `compute_wgs` warpgroups of TQ rows, checked."""
  if compute_wgs not in (1, 2) or block_q % (TQ * compute_wgs):
    raise ValueError(f"compute_wgs={compute_wgs!r} must be 1, or 2 with block_q a multiple of "
                     f"{2 * TQ}; block_q={block_q}")
  return TQ * compute_wgs


def _consumed(compute_wgs: int, stages: int) -> tuple:
  """The K and V "consumed" barriers of a ring of `stages` slots: a slot is free again once
  every compute warpgroup has arrived."""
  return tuple(plgpu.Barrier(num_arrivals=compute_wgs, num_barriers=stages) for _ in "kv")


def _launch(kernel, scratch, out_type, grid, grid_names, interpret: bool, compute_wgs: int = 1):
  """plgpu.kernel over `grid` with `compute_wgs` compute warpgroups and one that moves memory
  (axis "wg", numbered last), calling kernel(*refs, scratch) with the `scratch` buffers and
  barriers allocated for all of them."""
  def entry(*refs):
    pl.run_scoped(lambda *allocated: kernel(*refs, allocated), *scratch, collective_axes="wg")
  return plgpu.kernel(entry, out_type=out_type, grid=grid, grid_names=grid_names,
                      num_threads=compute_wgs + 1,
                      thread_name="wg",
                      interpret=plgpu.InterpretGPUParams() if interpret else False)


def _smem(shape, dtype):
  """A wgmma operand buffer: 8 × 64 tiles, 128-byte swizzle (64 two-byte elements a row)."""
  return plgpu.SMEM(shape, dtype, transforms=(plgpu.TilingTransform((8, 64)),
                                              plgpu.SwizzleTransform(128)))


def _matmul(a_smem, b_smem, shape):
  """a @ b by wgmma from shared memory into a fresh f32 accumulator of `shape`."""
  def mm(acc_ref):
    plgpu.wgmma(acc_ref, a_smem, b_smem)
    return acc_ref[...]
  return pl.run_scoped(mm, plgpu.ACC(shape, jnp.float32))


def _pad(x, n: int):
  return jnp.pad(x, ((0, 0), (0, n - x.shape[1]), (0, 0), (0, 0)))


def _check_blocks(bq: int, bk: int, d: int) -> None:
  if bq % TQ or bk % 64 or d % 64:
    raise ValueError(f"pallas_mosaic_gpu needs block_q a multiple of {TQ}, block_kv and D "
                     f"multiples of 64; got block_q={bq}, block_kv={bk}, D={d}")


def dkv(q, k, v, do, lse, delta, layout: BlockLayout, scale: float, *, stages: int = 2,
        interpret: bool = False):
  """The dK/dV pass over the transposed lists (the q-blocks of each kv-block), one program per
  (64-row kv tile, batch, kv-head) summing its GQA group's q-heads inside the program: per
  listed q-block, Pᵀ = exp2(K·Qᵀ·c − lse), dV += Pᵀ·dO, dSᵀ = Pᵀ ⊙ (V·dOᵀ − delta),
  dK += dSᵀ·Q. -> (dk, dv) [B, S, Hkv, D]."""
  b, t, hq, d = q.shape
  s, hkv = k.shape[1], k.shape[2]
  bq, bk = layout.block_q, layout.block_kv
  _check_blocks(bq, bk, d)
  tp, sp = layout.num_q_blocks * bq, layout.num_kv_blocks * bk
  qp, dop, kp, vp = _pad(q, tp), _pad(do, tp), _pad(k, sp), _pad(v, sp)
  rows = list_rows(layout, hq, b, transposed=True)
  group, mask_fn, c, dtype = hq // hkv, partial_block_mask(layout, hq), scale * _LOG2E, q.dtype
  nk = layout.num_kv_blocks
  tk = TQ  # kv rows per program

  def kernel(q_ref, do_ref, k_ref, v_ref, lse_ref, delta_ref, rows_ref, dk_ref, dv_ref, scratch):
    (k_smem, v_smem, q_smem, do_smem, lse_smem, delta_smem, p_smem, row_smem), \
        (row_bar, kv_bar, ready), (done,) = scratch
    tile, bi, kvh = lax.axis_index("k"), lax.axis_index("b"), lax.axis_index("h")
    r = lax.div(tile, bk // tk)
    flat = lambda g: (bi * hq + kvh * group + g) * nk + r
    count = lambda g: row_smem[g, 0] + row_smem[g, 1]

    @pl.when(lax.axis_index("wg") == 1)
    def _memory():
      for g in range(group):  # the group's list rows (the compute warpgroup waits for them too)
        plgpu.copy_gmem_to_smem(rows_ref.at[pl.ds(flat(g), 1)], row_smem.at[pl.ds(g, 1)],
                                row_bar.at[g])
      for g in range(group):
        plgpu.barrier_wait(row_bar.at[g])
      base = 0
      for g in range(group):
        h = kvh * group + g

        def load(j, _, g=g, h=h, base=base):
          step = base + j
          slot = lax.rem(step, stages)

          @pl.when(step >= stages)
          def _():
            plgpu.barrier_wait(done.at[slot])
          rows_q = pl.ds(row_smem[g, _HEAD + j] * bq, bq)
          for i, (ref, buf) in enumerate(((q_ref.at[bi, rows_q, h], q_smem),
                                          (do_ref.at[bi, rows_q, h], do_smem),
                                          (lse_ref.at[bi, h, rows_q], lse_smem),
                                          (delta_ref.at[bi, h, rows_q], delta_smem))):
            plgpu.copy_gmem_to_smem(ref, buf.at[slot], ready.at[slot * 4 + i])
        lax.fori_loop(0, count(g), load, None)
        base = base + count(g)

      def drain(j, _):
        plgpu.barrier_wait(done.at[lax.rem(j, stages)])
      lax.fori_loop(jnp.maximum(base - stages, 0), base, drain, None)

    @pl.when(lax.axis_index("wg") == 0)
    def _compute():
      k0 = tile * tk
      plgpu.copy_gmem_to_smem(k_ref.at[bi, pl.ds(k0, tk), kvh], k_smem, kv_bar.at[0])
      plgpu.copy_gmem_to_smem(v_ref.at[bi, pl.ds(k0, tk), kvh], v_smem, kv_bar.at[1])
      for g in range(group):
        plgpu.barrier_wait(row_bar.at[g])
      plgpu.barrier_wait(kv_bar.at[0])
      plgpu.barrier_wait(kv_bar.at[1])
      k_pos = k0 + plgpu.broadcasted_iota(jnp.int32, (tk, bq), 0, layout=plgpu.Layout.WGMMA)
      q_off = plgpu.broadcasted_iota(jnp.int32, (tk, bq), 1, layout=plgpu.Layout.WGMMA)
      cols_of = lambda x: lax.broadcast_in_dim(x, (tk, bq), [1])
      zeros = lambda: plgpu.layout_cast(jnp.zeros((tk, d), jnp.float32), plgpu.Layout.WGMMA)
      acc, base = (zeros(), zeros()), 0
      for g in range(group):
        h = kvh * group + g

        def step(masked: bool, g=g, h=h, base=base):
          def fn(j, acc):
            dk, dv = acc
            slot = lax.rem(base + j, stages)
            for i in range(4):
              plgpu.barrier_wait(ready.at[slot * 4 + i])
            lse = plgpu.load(lse_smem.at[slot], (), layout=plgpu.Layout.WGMMA.reduce(0))
            delta = plgpu.load(delta_smem.at[slot], (), layout=plgpu.Layout.WGMMA.reduce(0))
            st = _matmul(k_smem, q_smem.at[slot].T, (tk, bq))
            pt = jnp.exp2(st * c - cols_of(lse))
            if masked:
              q_pos = row_smem[g, _HEAD + j] * bq + q_off
              pt = jnp.where(mask_fn(q_pos, k_pos, h), pt, 0.0)
            p_smem[...] = pt.astype(dtype)
            plgpu.commit_smem()
            dv = dv + _matmul(p_smem, do_smem.at[slot], (tk, d))
            dpt = _matmul(v_smem, do_smem.at[slot].T, (tk, bq))
            p_smem[...] = (pt * (dpt - cols_of(delta))).astype(dtype)
            plgpu.commit_smem()
            dk = dk + _matmul(p_smem, q_smem.at[slot], (tk, d))
            plgpu.barrier_arrive(done.at[slot])
            return dk, dv
          return fn
        pc, n = row_smem[g, 0], count(g)
        acc = lax.fori_loop(0, pc, step(True), acc)
        acc = lax.fori_loop(pc, n, step(False), acc)
        base = base + n
      dk, dv = acc
      k_smem[...] = (dk * scale).astype(dtype)
      v_smem[...] = dv.astype(dtype)
      plgpu.commit_smem()
      plgpu.copy_smem_to_gmem(k_smem, dk_ref.at[bi, pl.ds(k0, tk), kvh])
      plgpu.copy_smem_to_gmem(v_smem, dv_ref.at[bi, pl.ds(k0, tk), kvh])
      plgpu.wait_smem_to_gmem(0)

  dk, dv = _launch(
      kernel,
      ((_smem((tk, d), dtype), _smem((tk, d), dtype), _smem((stages, bq, d), dtype),
        _smem((stages, bq, d), dtype), plgpu.SMEM((stages, bq), jnp.float32),
        plgpu.SMEM((stages, bq), jnp.float32), _smem((tk, bq), dtype),
        plgpu.SMEM((group, rows.shape[1]), jnp.int32)),
       (plgpu.Barrier(num_barriers=group), plgpu.Barrier(num_barriers=2),
        plgpu.Barrier(num_barriers=4 * stages)),
       (plgpu.Barrier(num_barriers=stages),)),
      (jax.ShapeDtypeStruct((b, sp, hkv, d), dtype),) * 2, (sp // tk, b, hkv), ("k", "b", "h"),
      interpret)(qp, dop, kp, vp, lse, delta, rows)
  return dk[:, :s], dv[:, :s]


# ------------------------------------------------------------------------------- the VJP'd op


def unavailable() -> str | None:
  """None if the Mosaic GPU kernels can run on the default backend (Hopper), else why not."""
  hint = ("; on CPU, tests call sparse_ops.kernels.mosaic_gpu.attention(..., interpret=True); "
          "use implementation='xla' to run anywhere")
  dev = jax.devices()[0]
  cc = getattr(dev, "compute_capability", None)
  if dev.platform != "gpu" or cc is None or not 9.0 <= float(cc) < 10.0:
    return (f"implementation='pallas_mosaic_gpu' needs a Hopper GPU (compute capability 9.x); "
            f"the default device here is {dev.device_kind!r}{hint}")
  return None


def default_blocks(t: int, s: int, d: int) -> tuple[int, int]:
  """128 × 128, or 64 for a length of 64 or less (wgmma tiles are 64 rows)."""
  del d
  return (64 if t <= 64 else 128), (64 if s <= 64 else 128)


def _block_ok(n: int) -> bool:
  return n % TQ == 0  # whole wgmma tiles


def takes_blocks(layout: BlockLayout) -> bool:
  """Whether the kernels tile this layout: blocks in multiples of 64, no per-query rows."""
  return layout.row_keep is None and _block_ok(layout.block_q) and _block_ok(layout.block_kv)


def attention(q, k, v, layout: BlockLayout, scale: float | None = None, *,
              interpret: bool = False, compute_wgs: int = 1) -> jax.Array:
  """q [B, T, Hq, D], k/v [B, S, Hkv, D] (bf16 or f16) -> [B, T, Hq, D], with the custom VJP
  of the dQ and dK/dV passes. `interpret=True`: Mosaic GPU interpret mode on any backend.
  `compute_wgs=2` runs the forward and dQ passes with two compute warpgroups (`forward`); the
  dK/dV pass is the same either way. Checked in interpret mode only; the default is 1."""
  check_call(q, k, layout, unavailable=unavailable, interpret=interpret,
             block_ok=_block_ok,
             block_rule="a multiple of 64 for the Mosaic GPU kernels (wgmma tiles)",
             name="pallas_mosaic_gpu")
  if q.dtype not in (jnp.bfloat16, jnp.float16) or v.shape[3] != q.shape[3]:
    raise ValueError(f"the Mosaic GPU kernels take bf16 or f16 with Dv = D; got {q.dtype}, "
                     f"D={q.shape[3]}, Dv={v.shape[3]}")
  _rows_per_program(compute_wgs, layout.block_q)  # refused before tracing the passes
  scale = q.shape[3] ** -0.5 if scale is None else float(scale)
  return _attention(q, k, v, layout, scale, (bool(interpret), compute_wgs))


def _fwd(q, k, v, layout, scale, static):
  interpret, compute_wgs = static
  return forward(q, k, v, layout, scale, interpret=interpret, compute_wgs=compute_wgs)


def _bwd(q, k, v, layout, scale, static, out, lse, dout):
  interpret, compute_wgs = static
  delta = jnp.einsum("bthd,bthd->bht", out.astype(jnp.float32), dout.astype(jnp.float32))
  delta = jnp.pad(delta, ((0, 0), (0, 0), (0, lse.shape[-1] - q.shape[1])))
  dq_ = dq(q, k, v, dout, lse, delta, layout, scale, interpret=interpret,
           compute_wgs=compute_wgs)
  dk, dv = dkv(q, k, v, dout, lse, delta, layout, scale, interpret=interpret)
  return dq_, dk, dv


_attention = with_kernel_vjp(_fwd, _bwd)
