"""Block-sparse flash attention in Pallas for TPUs (Mosaic), forward and backward.

Same semantics as ``sparse_ops.xla`` (the contract): a ``BlockLayout`` names, per
(batch or 1, head or 1, q-block), the partial and the full kv-blocks to visit; partial blocks apply
``layout.mask(q, k) & (k < kv_len)`` elementwise, full blocks nothing; rows with no allowed key
give zeros. Ragged lengths are zero-padded to block multiples outside the kernels.

Why our own kernel and not splash attention's: splash takes its block metadata as a *dense*
[heads, q-blocks, kv-blocks] grid (``MaskInfo.data_next`` / ``block_mask``) and its grid walks
every kv-block of a row, skipping the empty ones, so both the metadata and the grid grow as
(T / block)²: at T=128k with 128-blocks that is 1M entries per head, beyond the ~1 MiB of scalar
memory, whatever the sparsity. Our layouts are compacted lists (the kept blocks of each row), so
the kernels here take those lists as they are, as scalar-prefetch operands, and their innermost
grid axis runs over a row's *slots*: the pipeline fetches only listed kv-blocks, and padded slots
(which repeat the last valid block, the layout's own convention) cost no DMA and are skipped.
Metadata is O(batch · heads · q-blocks · kept blocks) int32 (``metadata_bytes``): at T=128k
with 128-blocks and 17 + 17 slots a row, one head's forward lists take 147,456 bytes and its
dK/dV pairs 430,080, inside the 512 KiB a call may use (``SMEM_BUDGET_BYTES``); more heads with
their own lists are refused with the size, until the call is split over heads (not done yet). The only splash-like piece kept is
the (rows, 128)-lane shape of the running max / sum and of the saved log-sum-exp (the layout
Mosaic wants for per-row scalars).

Three kernels, grids (outer to inner; the last axis is the sequential reduction):

  forward   (B, Hq, nq, Mp + Mf)   out, lse over the forward lists (partial slots, then full)
  dQ        (B, Hq, nq, Mp + Mf)   over the forward lists
  dK/dV     (B, Hkv, P, Gi)        over the forward pairs sorted by kv-block ("pairs" below)

The dK/dV pass cannot take the layout's transposed lists as they are: padded to the longest
column, they are as long as the q-blocks that visit the busiest kv-block, and a sink or a
causal diagonal is visited by every row, so nk × that is O((T / block)²) again. It takes the
forward lists' (q-block, kv-block) pairs instead, sorted by kv-block inside jit (P = every slot
of every row, plus one placeholder per kv-block so each kv-block's dK/dV is written even when
no row visits it). Consecutive pairs of one kv-block accumulate into one resident dK/dV tile,
written when the next pair moves on; Gi is the GQA group when the heads of a group share their
lists (the q-heads of the group then run inside each pair), else 1 and the heads' pairs are
merged into one sorted sequence per kv-head.

On CPU the kernels run in Pallas's TPU interpret mode when asked, ``attention(..., interpret=True)``
(tests); ``sparse_ops.attention(implementation="pallas_tpu")`` raises anywhere but on a TPU.
What a CPU cannot check: Mosaic's compile-time VMEM/SMEM limits on a real chip and the speed
(``jax.export(..., platforms=["tpu"])`` checks that the kernels lower).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from sparse_ops.kernels.common import check_call, partial_block_mask, with_kernel_vjp
from sparse_ops.layout import BlockLayout

_LANES = 128  # per-row scalars (max, sum, lse, delta) are kept as (rows, 128) lanes
_NEG = -0.7 * float(np.finfo(np.float32).max)  # finite "-inf": see kernels.triton
_MIN_BLOCK = 8  # sublane tile: q and kv blocks must be multiples of 8
# Scalar memory for the block lists of one call. TPU generations up to v6e have about 1 MiB of
# SMEM per core; the lists of one call must leave room for the kernel's own scalars.
SMEM_BUDGET_BYTES = 512 * 1024


# -------------------------------------------------------------------------------- availability

_INTERPRETED = [False]  # set by `interpreted()`


@contextlib.contextmanager
def interpreted():
  """Within this context (while tracing), ``implementation="pallas_tpu"`` runs its kernels in
  Pallas's TPU interpret mode on any backend: how the tests run a model or a trainer with it on
  a CPU. Explicit and test-only; outside it, a backend without a TPU raises."""
  previous, _INTERPRETED[0] = _INTERPRETED[0], True
  try:
    yield
  finally:
    _INTERPRETED[0] = previous


def default_blocks(t: int, s: int, d: int) -> tuple[int, int]:
  """Layout blocks for ``sparse_ops.attention(mask=...)``: 128 (the MXU's side), shrunk to a
  power of two >= 8 for short sequences so padding stays small."""
  del d
  fit = lambda n: min(128, max(_MIN_BLOCK, 1 << (max(n, 1) - 1).bit_length()))
  return fit(t), fit(s)


def unavailable() -> str | None:
  """None if the TPU kernels can run on the default backend (or `interpreted()` is on), else
  why not."""
  if _INTERPRETED[0]:
    return None
  try:
    platform = jax.devices()[0].platform
  except RuntimeError as e:
    return f"implementation='pallas_tpu' needs a TPU: {e}"
  if platform != "tpu":
    return (f"implementation='pallas_tpu' needs a TPU; the default backend here is "
            f"{jax.default_backend()!r} (on CPU, tests call sparse_ops.kernels.tpu.attention("
            f"..., interpret=True); use implementation='xla' to run anywhere)")
  return None


def metadata_bytes(layout: BlockLayout, num_q_heads: int | None = None,
                   num_kv_heads: int | None = None) -> int:
  """Scalar-memory bytes of the block lists one kernel call reads, int32: the larger of the
  forward lists (forward and dQ: counts and slots of every row) and the dK/dV pairs (three
  words a pair: kv-block, q-block, head and kind). Heads default to the layout's own."""
  bl, hl, nq = layout.kv_num_blocks.shape
  slots = layout.kv_indices.shape[-1] + layout.full_kv_indices.shape[-1]
  fwd = bl * hl * nq * (2 + slots)
  hq = num_q_heads or hl
  hkv = num_kv_heads or hq
  seqs, per_seq = _pair_shape(hl, hq, hkv, nq, slots, layout.num_kv_blocks)
  return 4 * max(fwd, 3 * bl * seqs * per_seq)


def _pair_shape(hl: int, hq: int, hkv: int, nq: int, slots: int, nk: int) -> tuple[int, int]:
  """(pair sequences per batch row, pairs per sequence) of the dK/dV pass."""
  group = hq // hkv
  if hl == hq and group > 1:  # per-q-head lists: the group's heads merged per kv-head
    return hkv, group * nq * slots + nk
  return hl, nq * slots + nk


# ------------------------------------------------------------------------------------ public


def attention(q, k, v, layout: BlockLayout, scale: float | None = None, *,
              interpret: bool = False) -> jax.Array:
  """q [B, T, Hq, D], k [B, S, Hkv, D], v [B, S, Hkv, Dv] -> [B, T, Hq, Dv]; custom VJP.

  ``interpret=True`` runs the kernels in Pallas's TPU interpret mode on any backend (slow; for
  tests). Without it, raises on anything but a TPU: there is no silent fallback.
  """
  interpret = interpret or _INTERPRETED[0]
  check_call(q, k, layout, unavailable=unavailable, interpret=interpret,
             block_ok=lambda n: n % _MIN_BLOCK == 0,
             block_rule=f"a multiple of {_MIN_BLOCK} for implementation='pallas_tpu' (TPU "
                        "sublanes); e.g. 128", name="pallas_tpu")
  hq, d, hkv = q.shape[2], q.shape[3], k.shape[2]
  size = metadata_bytes(layout, hq, hkv)
  if size > SMEM_BUDGET_BYTES:
    raise ValueError(
        f"the layout's block lists take {size:,} bytes of TPU scalar memory; at most "
        f"{SMEM_BUDGET_BYTES:,} fit in one call (lists are batch x heads x q-blocks x kept "
        f"blocks int32): use larger blocks, a smaller kept-block budget, or fewer heads per call")
  if scale is None:
    scale = d ** -0.5
  return _attention(q, k, v, layout, float(scale), bool(interpret))


# Late-bound (lambdas), so the kernels can be swapped or spied on in tests.
_attention = with_kernel_vjp(lambda *a: _forward(*a), lambda *a: _backward(*a))


# ------------------------------------------------------------------------------------ geometry


@dataclasses.dataclass(frozen=True)
class _Geo:
  """Static shapes of one call, shared by the three kernels."""
  b: int
  hq: int
  hkv: int
  group: int
  bq: int
  bk: int
  nq: int
  nk: int
  kv_len: int


@dataclasses.dataclass(frozen=True)
class _Lists:
  """A (partial, full) pair of block lists, flattened to 1-D int32 for scalar memory, with the
  static shape needed to index them: ``bl`` batch rows (1 or B), ``hl`` heads (1, Hkv or Hq),
  ``rows`` block rows, and ``mp`` / ``mf`` slots of the partial / full list."""
  bl: int
  hl: int
  rows: int
  mp: int
  mf: int

  @property
  def slots(self) -> int:
    return self.mp + self.mf

  def row(self, b, h, r, hq: int, group: int):
    """Flat row of (batch b, q-head h, block row r); broadcasts Bl = 1 and Hl in {1, Hkv}."""
    bl = b if self.bl > 1 else 0
    hl = 0 if self.hl == 1 else (h if self.hl == hq else lax.div(h, group))
    return (bl * self.hl + hl) * self.rows + r

  def block(self, row, j, pidx, fidx):
    """Block index of slot j of `row`: partial slots first, then full ones (clamped, so padded
    and out-of-list slots read a valid entry, which the kernels then skip)."""
    part = pidx[row * self.mp + jnp.minimum(j, self.mp - 1)] if self.mp else None
    full = fidx[row * self.mf + jnp.clip(j - self.mp, 0, self.mf - 1)] if self.mf else None
    if part is None:
      return full
    if full is None:
      return part
    return jnp.where(j < self.mp, part, full)

  def run_listed(self, row, j, pcnt, fcnt, step) -> None:
    """step(masked=True) if slot j holds a listed partial block, step(False) a full one;
    padded slots run nothing."""
    if self.mp:
      pl.when(j < pcnt[row])(lambda: step(True))
    if self.mf:
      pl.when((j >= self.mp) & (j - self.mp < fcnt[row]))(lambda: step(False))


def _lists(counts, idx, full_counts, full_idx):
  """-> (_Lists, the four flat int32 operands). An empty list keeps one dummy slot out of the
  operands (scalar memory cannot hold zero-size arrays); it never runs a step."""
  spec = _Lists(bl=counts.shape[0], hl=counts.shape[1], rows=counts.shape[2], mp=idx.shape[3],
                mf=full_idx.shape[3])
  flat = lambda x: jnp.asarray(x, jnp.int32).reshape(-1)
  ops = [flat(counts), flat(idx) if spec.mp else jnp.zeros(1, jnp.int32),
         flat(full_counts), flat(full_idx) if spec.mf else jnp.zeros(1, jnp.int32)]
  return spec, ops


def _geometry(q, k, layout) -> _Geo:
  b, _, hq, _ = q.shape
  hkv = k.shape[2]
  return _Geo(b=b, hq=hq, hkv=hkv, group=hq // hkv, bq=layout.block_q, bk=layout.block_kv,
              nq=layout.num_q_blocks, nk=layout.num_kv_blocks, kv_len=layout.kv_len)


def _heads_major(x, length: int):
  """[B, L, H, D] -> [B, H, length, D], zero-padded along L."""
  x = jnp.swapaxes(x, 1, 2)
  return jnp.pad(x, ((0, 0), (0, 0), (0, length - x.shape[2]), (0, 0)))


def _positions(q_block, k_block, geo: _Geo):
  """Absolute (q, k) positions of one (q-block, kv-block) tile, each [bq, bk]."""
  shape = (geo.bq, geo.bk)
  return (q_block * geo.bq + lax.broadcasted_iota(jnp.int32, shape, 0),
          k_block * geo.bk + lax.broadcasted_iota(jnp.int32, shape, 1))


def _dot(a, b, dims):
  """f32-accumulating dot; f32 inputs at full precision (interpret mode and the TPU's f32)."""
  return lax.dot_general(a, b, (dims, ((), ())), preferred_element_type=jnp.float32,
                         precision=lax.Precision.HIGHEST)


_NT = ((1,), (1,))  # a @ b.T
_NN = ((1,), (0,))  # a @ b
_TN = ((0,), (0,))  # a.T @ b


def _interpret(interpret: bool):
  return pltpu.InterpretParams() if interpret else False


def _lanes(x):
  """[rows] -> [rows, 128] (the per-row scalar layout)."""
  return jnp.broadcast_to(x[:, None], (x.shape[0], _LANES))


def _row_maps(lists: _Lists, geo: _Geo):
  """BlockSpec index maps of the forward and dQ grids (b, q-head, q-block, slot): the q-side
  block of the row, and the kv-block its slot lists (of the q-head's kv-head)."""
  def kv_map(b, h, i, j, pcnt, pidx, fcnt, fidx):
    row = lists.row(b, h, i, geo.hq, geo.group)
    return (b, lax.div(h, geo.group), lists.block(row, j, pidx, fidx), 0)

  return (lambda b, h, i, j, *_: (b, h, i, 0)), kv_map


# -------------------------------------------------------------------------------------- forward


def _fwd_kernel(pcnt, pidx, fcnt, fidx, q_ref, k_ref, v_ref, o_ref, lse_ref, m_scr, l_scr,
                acc_scr, *, geo: _Geo, lists: _Lists, scale: float, mask_fn):
  b, h, i, j = (pl.program_id(n) for n in range(4))
  row = lists.row(b, h, i, geo.hq, geo.group)

  @pl.when(j == 0)
  def _init():
    m_scr[...] = jnp.full_like(m_scr, _NEG)
    l_scr[...] = jnp.zeros_like(l_scr)
    acc_scr[...] = jnp.zeros_like(acc_scr)

  def step(masked: bool):
    s = _dot(q_ref[...], k_ref[...], _NT) * scale  # [bq, bk]
    if masked:
      qp, kp = _positions(i, lists.block(row, j, pidx, fidx), geo)
      s = jnp.where(mask_fn(qp, kp, h), s, _NEG)
    m_prev = m_scr[...]  # [bq, 128], lanes equal
    m_next = jnp.maximum(m_prev, _lanes(s.max(-1)))
    p = jnp.exp(s - m_next[:, :1])
    alpha = jnp.exp(m_prev - m_next)
    l_scr[...] = alpha * l_scr[...] + _lanes(p.sum(-1))
    m_scr[...] = m_next
    v = v_ref[...]
    acc_scr[...] = alpha[:, :1] * acc_scr[...] + _dot(p.astype(v.dtype), v, _NN)

  lists.run_listed(row, j, pcnt, fcnt, step)

  @pl.when(j == lists.slots - 1)
  def _finish():
    m, l = m_scr[...], l_scr[...]
    empty = m < 0.5 * _NEG  # never saw an allowed key
    l_safe = jnp.where(empty, 1.0, l)
    o_ref[...] = jnp.where(empty[:, :1], 0.0, acc_scr[...] / l_safe[:, :1]).astype(o_ref.dtype)
    lse_ref[...] = jnp.where(empty, jnp.inf, m + jnp.log(l_safe))


def _forward(q, k, v, layout, scale: float, interpret: bool):
  geo = _geometry(q, k, layout)
  t, d, dv = q.shape[1], q.shape[3], v.shape[3]
  tp, sp = geo.nq * geo.bq, geo.nk * geo.bk
  qh, kh, vh = _heads_major(q, tp), _heads_major(k, sp), _heads_major(v, sp)
  lists, ops = _lists(layout.kv_num_blocks, layout.kv_indices, layout.full_kv_num_blocks,
                      layout.full_kv_indices)
  q_map, kv_map = _row_maps(lists, geo)
  out, lse = pl.pallas_call(
      functools.partial(_fwd_kernel, geo=geo, lists=lists, scale=scale,
                        mask_fn=partial_block_mask(layout, geo.hq)),
      grid_spec=pltpu.PrefetchScalarGridSpec(
          num_scalar_prefetch=4,
          grid=(geo.b, geo.hq, geo.nq, lists.slots),
          in_specs=[pl.BlockSpec((None, None, geo.bq, d), q_map),
                    pl.BlockSpec((None, None, geo.bk, d), kv_map),
                    pl.BlockSpec((None, None, geo.bk, dv), kv_map)],
          out_specs=[pl.BlockSpec((None, None, geo.bq, dv), q_map),
                     pl.BlockSpec((None, None, geo.bq, _LANES), q_map)],
          scratch_shapes=[pltpu.VMEM((geo.bq, _LANES), jnp.float32),
                          pltpu.VMEM((geo.bq, _LANES), jnp.float32),
                          pltpu.VMEM((geo.bq, dv), jnp.float32)]),
      out_shape=[jax.ShapeDtypeStruct((geo.b, geo.hq, tp, dv), q.dtype),
                 jax.ShapeDtypeStruct((geo.b, geo.hq, tp, _LANES), jnp.float32)],
      compiler_params=pltpu.CompilerParams(
          dimension_semantics=("parallel", "parallel", "parallel", "arbitrary")),
      interpret=_interpret(interpret),
      name="sparse_attention_fwd_tpu",
  )(*ops, qh, kh, vh)
  return jnp.swapaxes(out[:, :, :t], 1, 2), lse


# ------------------------------------------------------------------------------------- backward


def _dq_kernel(pcnt, pidx, fcnt, fidx, q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, dq_ref,
               acc_scr, *, geo: _Geo, lists: _Lists, scale: float, mask_fn):
  b, h, i, j = (pl.program_id(n) for n in range(4))
  row = lists.row(b, h, i, geo.hq, geo.group)

  @pl.when(j == 0)
  def _init():
    acc_scr[...] = jnp.zeros_like(acc_scr)

  def step(masked: bool):
    kt = k_ref[...]
    s = _dot(q_ref[...], kt, _NT) * scale
    p = jnp.exp(s - lse_ref[...][:, :1])  # lse = +inf on empty rows: p = 0
    if masked:
      qp, kp = _positions(i, lists.block(row, j, pidx, fidx), geo)
      p = jnp.where(mask_fn(qp, kp, h), p, 0.0)
    dp = _dot(do_ref[...], v_ref[...], _NT)
    ds = p * (dp - delta_ref[...][:, :1])
    acc_scr[...] += _dot(ds.astype(kt.dtype), kt, _NN)

  lists.run_listed(row, j, pcnt, fcnt, step)

  @pl.when(j == lists.slots - 1)
  def _finish():
    dq_ref[...] = (acc_scr[...] * scale).astype(dq_ref.dtype)


def _dkv_kernel(kb_ref, qb_ref, code_ref, q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref,
                dk_ref, dv_ref, dk_scr, dv_scr, *, geo: _Geo, pairs: _Pairs, scale: float,
                mask_fn):
  b, hk, p, gi = (pl.program_id(n) for n in range(4))
  at = pairs.at(b, hk, p)
  kb, qb, code = kb_ref[at], qb_ref[at], code_ref[at]
  h = pairs.head(hk, code, gi, geo)
  first = (p == 0) | (kb != kb_ref[pairs.at(b, hk, jnp.maximum(p - 1, 0))])
  last = (p == pairs.length - 1) | (kb != kb_ref[pairs.at(b, hk, jnp.minimum(
      p + 1, pairs.length - 1))])

  @pl.when(first & (gi == 0))
  def _init():
    dk_scr[...] = jnp.zeros_like(dk_scr)
    dv_scr[...] = jnp.zeros_like(dv_scr)

  def step(masked: bool):
    qt, do = q_ref[...], do_ref[...]
    s = _dot(qt, k_ref[...], _NT) * scale  # [bq, bk]
    p = jnp.exp(s - lse_ref[...][:, :1])
    if masked:
      qp, kp = _positions(qb, kb, geo)
      p = jnp.where(mask_fn(qp, kp, h), p, 0.0)
    dv_scr[...] += _dot(p.astype(do.dtype), do, _TN)
    dp = _dot(do, v_ref[...], _NT)
    ds = p * (dp - delta_ref[...][:, :1])
    dk_scr[...] += _dot(ds.astype(qt.dtype), qt, _TN)

  kind = lax.rem(code, 4)
  pl.when(kind == _PARTIAL)(lambda: step(True))
  pl.when(kind == _FULL)(lambda: step(False))

  @pl.when(last & (gi == pairs.inner_group - 1))
  def _finish():
    dk_ref[...] = (dk_scr[...] * scale).astype(dk_ref.dtype)
    dv_ref[...] = dv_scr[...].astype(dv_ref.dtype)


_SKIP, _PARTIAL, _FULL = 0, 1, 2  # a pair's kind (the low 2 bits of its code)


@dataclasses.dataclass(frozen=True)
class _Pairs:
  """The dK/dV pass's (kv-block, q-block, code) sequences: ``bl`` batch rows × ``seqs``
  sequences of ``length`` pairs, flat; code = 4 · (q-head within the group) + kind. With
  ``inner_group`` > 1 a sequence is shared by the group's q-heads (the grid's last axis)."""
  bl: int
  seqs: int
  length: int
  inner_group: int

  def at(self, b, hk, p):
    bl = b if self.bl > 1 else 0
    seq = hk if self.seqs > 1 else 0
    return (bl * self.seqs + seq) * self.length + p

  def head(self, hk, code, gi, geo: _Geo):
    """The q-head of this grid step."""
    if self.inner_group > 1:
      return hk * geo.group + gi
    return hk * geo.group + lax.div(code, 4)


def _pairs(layout: BlockLayout, geo: _Geo):
  """Sorts the forward lists' (q-block, kv-block) pairs by kv-block (inside jit) ->
  (_Pairs, [kv-block, q-block, code] flat int32)."""
  cnt, idx = layout.kv_num_blocks, layout.kv_indices
  fcnt, fidx = layout.full_kv_num_blocks, layout.full_kv_indices
  bl, hl, nq = cnt.shape
  mp, mf = idx.shape[-1], fidx.shape[-1]
  slot = jnp.arange(mp + mf)
  kb = jnp.concatenate([idx, fidx], -1).astype(jnp.int32)  # [bl, hl, nq, S]
  kind = jnp.where(slot < mp, jnp.where(slot < cnt[..., None], _PARTIAL, _SKIP),
                   jnp.where(slot - mp < fcnt[..., None], _FULL, _SKIP)).astype(jnp.int32)
  qb = jnp.broadcast_to(jnp.arange(nq, dtype=jnp.int32)[:, None], kb.shape)
  g = geo.group
  merged = hl == geo.hq and g > 1
  if merged:  # [bl, hkv, G · nq · S]: the group's heads in one sequence per kv-head
    code = kind + 4 * (jnp.arange(hl, dtype=jnp.int32) % g)[None, :, None, None]
    flat = lambda x: x.reshape(bl, geo.hkv, -1)
    kb, qb, code = flat(kb), flat(qb), flat(code)
  else:
    flat = lambda x: x.reshape(bl, hl, -1)
    kb, qb, code = flat(kb), flat(qb), flat(kind)
  seqs = kb.shape[1]
  # One placeholder per kv-block (kind _SKIP), so every kv-block's tile is written (as zeros
  # when no row visits it); unused slots move to the end, on the last kv-block.
  nk = geo.nk
  kb = jnp.where(lax.rem(code, 4) == _SKIP, nk - 1, kb)
  hold = jnp.broadcast_to(jnp.arange(nk, dtype=jnp.int32), (bl, seqs, nk))
  key = jnp.concatenate([2 * kb + (lax.rem(code, 4) == _SKIP), 2 * hold], -1)
  kb = jnp.concatenate([kb, hold], -1)
  qb = jnp.concatenate([qb, jnp.zeros_like(hold)], -1)
  code = jnp.concatenate([code, jnp.zeros_like(hold)], -1)
  order = jnp.argsort(key, axis=-1, stable=True)
  take = lambda x: jnp.take_along_axis(x, order, -1).reshape(-1)
  spec = _Pairs(bl=bl, seqs=seqs, length=kb.shape[-1],
                inner_group=1 if merged else g)
  assert (seqs, spec.length) == _pair_shape(hl, geo.hq, geo.hkv, nq, mp + mf, nk)
  return spec, [take(kb), take(qb), take(code)]


def _backward_inputs(q_map, k_map, geo: _Geo, d: int, dv: int) -> list[pl.BlockSpec]:
  """The block specs of both backward kernels' inputs: q, k, v, dO, lse, delta."""
  q_side = lambda width: pl.BlockSpec((None, None, geo.bq, width), q_map)
  k_side = lambda width: pl.BlockSpec((None, None, geo.bk, width), k_map)
  return [q_side(d), k_side(d), k_side(dv), q_side(dv), q_side(_LANES), q_side(_LANES)]


def _backward(q, k, v, layout, scale: float, interpret: bool, out, lse, dout):
  geo = _geometry(q, k, layout)
  t, s, d, dv = q.shape[1], k.shape[1], q.shape[3], v.shape[3]
  tp, sp = geo.nq * geo.bq, geo.nk * geo.bk
  qh, kh, vh = _heads_major(q, tp), _heads_major(k, sp), _heads_major(v, sp)
  doh = _heads_major(dout.astype(q.dtype), tp)
  # delta_i = sum_d dO_i O_i, the softmax-backward row term (f32; a cheap fused XLA reduction).
  delta = (dout.astype(jnp.float32) * out.astype(jnp.float32)).sum(-1)
  delta = jnp.broadcast_to(_heads_major(delta[..., None], tp), (geo.b, geo.hq, tp, _LANES))
  mask_fn = partial_block_mask(layout, geo.hq)
  params = pltpu.CompilerParams(
      dimension_semantics=("parallel", "parallel", "parallel", "arbitrary"))

  lists, ops = _lists(layout.kv_num_blocks, layout.kv_indices, layout.full_kv_num_blocks,
                      layout.full_kv_indices)

  q_map, kv_map = _row_maps(lists, geo)
  dq = pl.pallas_call(
      functools.partial(_dq_kernel, geo=geo, lists=lists, scale=scale, mask_fn=mask_fn),
      grid_spec=pltpu.PrefetchScalarGridSpec(
          num_scalar_prefetch=4,
          grid=(geo.b, geo.hq, geo.nq, lists.slots),
          in_specs=_backward_inputs(q_map, kv_map, geo, d, dv),
          out_specs=pl.BlockSpec((None, None, geo.bq, d), q_map),
          scratch_shapes=[pltpu.VMEM((geo.bq, d), jnp.float32)]),
      out_shape=jax.ShapeDtypeStruct((geo.b, geo.hq, tp, d), q.dtype),
      compiler_params=params,
      interpret=_interpret(interpret),
      name="sparse_attention_dq_tpu",
  )(*ops, qh, kh, vh, doh, lse, delta)

  # dK, dV over the forward pairs sorted by kv-block (see the module docstring).
  pairs, ops = _pairs(layout, geo)

  def q_of(b, hk, p, gi, kb_ref, qb_ref, code_ref):
    at = pairs.at(b, hk, p)
    return (b, pairs.head(hk, code_ref[at], gi, geo), qb_ref[at], 0)

  def k_of(b, hk, p, gi, kb_ref, qb_ref, code_ref):
    return (b, hk, kb_ref[pairs.at(b, hk, p)], 0)

  dk, dvv = pl.pallas_call(
      functools.partial(_dkv_kernel, geo=geo, pairs=pairs, scale=scale, mask_fn=mask_fn),
      grid_spec=pltpu.PrefetchScalarGridSpec(
          num_scalar_prefetch=3,
          grid=(geo.b, geo.hkv, pairs.length, pairs.inner_group),
          in_specs=_backward_inputs(q_of, k_of, geo, d, dv),
          out_specs=[pl.BlockSpec((None, None, geo.bk, d), k_of),
                     pl.BlockSpec((None, None, geo.bk, dv), k_of)],
          scratch_shapes=[pltpu.VMEM((geo.bk, d), jnp.float32),
                          pltpu.VMEM((geo.bk, dv), jnp.float32)]),
      out_shape=[jax.ShapeDtypeStruct((geo.b, geo.hkv, sp, d), k.dtype),
                 jax.ShapeDtypeStruct((geo.b, geo.hkv, sp, dv), v.dtype)],
      compiler_params=pltpu.CompilerParams(
          dimension_semantics=("parallel", "parallel", "arbitrary", "arbitrary")),
      interpret=_interpret(interpret),
      name="sparse_attention_dkv_tpu",
  )(*ops, qh, kh, vh, doh, lse, delta)
  back = lambda x, n: jnp.swapaxes(x[:, :, :n], 1, 2)
  return back(dq, t), back(dk, s), back(dvv, s)
