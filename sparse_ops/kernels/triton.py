"""Block-sparse flash attention in Pallas with the Triton lowering (NVIDIA GPUs, Ampere or newer).

Same semantics as ``sparse_ops.xla`` (the contract): a ``BlockLayout`` names, per
(batch or 1, head or 1, q-block), the partial and the full kv-blocks to visit; partial blocks apply
``layout.mask(q, k) & (k < kv_len)`` elementwise, full blocks nothing. Rows with no allowed key
give zeros (the saved log-sum-exp is +inf there, so the backward pass sees exactly zero
probability). Ragged lengths are zero-padded to block multiples outside the kernels.

Three kernels, each a grid over (tile, batch, head) whose programs read the layout's index lists
as ordinary int32 inputs (Triton has no scalar prefetch) and loop only over the listed blocks,
one ``fori_loop`` over partial blocks with masking and one over full blocks without. A layout
chosen per query (``row_keep``) adds one term to the partial blocks' mask: a tile's queries
load their keep flags for the block (one contiguous int32 vector) and drop it where unset.

  forward   grid (T/tq, B, Hq):  out and lse (log2 domain) per q tile
  dQ        grid (T/tq, B, Hq):  over the forward lists
  dK/dV     grid (S/tk, B, Hkv): over the transposed lists (q-blocks per kv-block), summing the
            GQA group's heads inside the program (no [B, S, Hq, D] partials, no reduction after)

Kernel tiles subdivide the layout's blocks (``tq | block_q``, ``tk | block_kv``), so the layout
keeps the sparsity granularity (128 × 128 by default) while each pass uses the tile shape that
is fastest for it (``Tiles``, tuned per head dim and dtype on an H100; see
benchmarks/results/attention_h100.md).

On CPU the kernels run only when asked for explicitly, ``attention(..., interpret=True)`` (Pallas
interpret mode, for tests); ``sparse_ops.attention(implementation="pallas_triton")`` raises there.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

from sparse_ops.kernels.common import check_call, partial_block_mask, with_kernel_vjp
from sparse_ops.layout import BlockLayout

_LOG2E = math.log2(math.e)
# Finite "minus infinity" for masked scores: a tile whose row is entirely masked then gives
# exp2(0) = 1 junk that the next real maximum rescales to zero (alpha = exp2(_NEG - m) = 0), never
# NaN; a row that only ever saw masked scores keeps m <= _NEG and is written as zeros.
_NEG = -0.7 * float(np.finfo(np.float32).max)
_MIN_BLOCK = 16  # tl.dot needs every matrix dimension >= 16


# --------------------------------------------------------------------------------------- tiles


@dataclasses.dataclass(frozen=True)
class PassTiles:
  """One kernel's tile: ``block_q`` q rows × ``block_kv`` kv rows per step, Triton launch knobs."""
  block_q: int
  block_kv: int
  num_warps: int = 4
  num_stages: int = 2
  # Load the next step's block index one step ahead (a loop-carried offset), so the tile loads
  # never wait on an index load issued in the same iteration.
  prefetch: bool = False


@dataclasses.dataclass(frozen=True)
class Tiles:
  fwd: PassTiles
  dq: PassTiles
  dkv: PassTiles


# Chosen by `python -m benchmarks.attention --tune` on an H100 (B=4, H=16, T=8192, dense causal,
# one pass swept at a time with the others fixed); sweeps under benchmarks/results/.
# bf16: attention_h100_tune.json, summarised in attention_h100.md. Index prefetch measured 4-8%
# faster in the bf16 D=128 forward on sparse layouts and is on there only (the backward showed
# no consistent gain; D=64 was not measured with it).
# f32 (TF32x3 dots): attention_h100_tune_f32_*.json, summarised in attention_h100_f32.md. At
# D=128 no tile above 64x32 fits in shared memory, and the dK/dV pass spills at 32x32 (fwd+bwd
# 1.64 s); 16x32 brings it to 0.17 s. The f32 D=64 passes were swept in two cut-short calls and
# their combination was not timed together. Keyed by (head dim <= 64, 2-byte dtype).
_TUNED: dict[tuple[bool, bool], Tiles] = {
    (False, True): Tiles(fwd=PassTiles(128, 128, 8, 3, prefetch=True),
                         dq=PassTiles(128, 128, 8, 2), dkv=PassTiles(64, 64, 4, 2)),
    (True, True): Tiles(fwd=PassTiles(64, 64, 4, 3), dq=PassTiles(64, 64, 4, 2),
                        dkv=PassTiles(128, 128, 8, 2)),
    (False, False): Tiles(fwd=PassTiles(64, 32, 4, 2), dq=PassTiles(32, 32, 4, 2),
                          dkv=PassTiles(16, 32, 4, 2)),
    (True, False): Tiles(fwd=PassTiles(128, 64, 8, 4), dq=PassTiles(128, 64, 8, 2),
                         dkv=PassTiles(64, 64, 4, 3)),
}


def default_tiles(head_dim: int, dtype) -> Tiles:
  """Tuned tiles for a head dim and dtype (before clipping to the layout's blocks)."""
  return _TUNED[(head_dim <= 64, jnp.dtype(dtype).itemsize <= 2)]


def default_blocks(t: int, s: int, d: int) -> tuple[int, int]:
  """Layout blocks for ``sparse_ops.attention(mask=...)``: 128 (FlexAttention's granularity),
  shrunk to a power of two >= 16 for short sequences so padding stays small."""
  del d
  fit = lambda n: min(128, max(_MIN_BLOCK, 1 << (max(n, 1) - 1).bit_length()))
  return fit(t), fit(s)


# -------------------------------------------------------------------------------- availability


def _block_ok(n: int) -> bool:
  return n >= _MIN_BLOCK and not n & (n - 1)


def takes_blocks(layout: BlockLayout) -> bool:
  """Whether the kernel can tile this layout's blocks (powers of two >= 16: a per-query
  selection's one-row q-blocks cannot be)."""
  return _block_ok(layout.block_q) and _block_ok(layout.block_kv)


def unavailable() -> str | None:
  """None if the Triton kernels can run on the default backend, else why not."""
  hint = ("; on CPU, tests call sparse_ops.kernels.triton.attention(..., interpret=True); "
          "use implementation='xla' to run anywhere")
  try:
    dev = jax.devices()[0]
  except RuntimeError as e:  # no backend at all
    return f"implementation='pallas_triton' needs an NVIDIA GPU: {e}{hint}"
  if dev.platform != "gpu":
    return (f"implementation='pallas_triton' needs an NVIDIA GPU (Ampere or newer); the default "
            f"backend here is {jax.default_backend()!r}{hint}")
  cc = getattr(dev, "compute_capability", None)
  if cc is None:
    return (f"implementation='pallas_triton' needs an NVIDIA GPU; {dev.device_kind!r} reports "
            f"no CUDA compute capability{hint}")
  if float(cc) < 8.0:
    return (f"implementation='pallas_triton' needs compute capability >= 8.0 (Ampere); "
            f"{dev.device_kind!r} has {cc}{hint}")
  return None


# ------------------------------------------------------------------------------------ public


def attention(q, k, v, layout: BlockLayout, scale: float | None = None, *,
              tiles: Tiles | None = None, interpret: bool = False) -> jax.Array:
  """q [B, T, Hq, D], k [B, S, Hkv, D], v [B, S, Hkv, Dv] -> [B, T, Hq, Dv]; custom VJP.

  ``interpret=True`` runs the kernels in Pallas interpret mode on any backend (slow; for tests).
  Without it, raises on anything but an NVIDIA GPU: there is no silent fallback.
  """
  check_call(q, k, layout, unavailable=unavailable, interpret=interpret,
             block_ok=_block_ok,
             block_rule=f"a power of two >= {_MIN_BLOCK} for implementation='pallas_triton' "
                        "(Triton tiles); build the layout with e.g. block_q=block_kv=128",
             name="pallas_triton", takes_rows=True)
  d = q.shape[3]
  if scale is None:
    scale = d ** -0.5
  if tiles is None:
    tiles = default_tiles(d, q.dtype)
  return _attention(q, k, v, layout, float(scale), _Static(tiles, bool(interpret)))


@dataclasses.dataclass(frozen=True)
class _Static:
  tiles: Tiles
  interpret: bool


# Late-bound (lambdas), so the kernels can be swapped or spied on in tests.
_attention = with_kernel_vjp(lambda *a: _forward(*a), lambda *a: _backward(*a))


# ------------------------------------------------------------------------------------ geometry


def _pow2(n: int) -> int:
  return max(_MIN_BLOCK, 1 << (n - 1).bit_length())


@dataclasses.dataclass(frozen=True)
class _Geo:
  """Static shapes of one call, shared by the three kernels."""
  b: int
  hq: int
  hkv: int
  group: int
  bq: int  # layout blocks
  bk: int
  nq: int
  nk: int
  d: int  # padded head dims
  dv: int
  kv_len: int
  dtype: np.dtype
  interpret: bool


def _geometry(q, k, v, layout, interpret: bool) -> _Geo:
  b, _, hq, d = q.shape
  hkv = k.shape[2]
  return _Geo(b=b, hq=hq, hkv=hkv, group=hq // hkv, bq=layout.block_q, bk=layout.block_kv,
              nq=layout.num_q_blocks, nk=layout.num_kv_blocks, d=_pow2(d), dv=_pow2(v.shape[3]),
              kv_len=layout.kv_len, dtype=jnp.dtype(q.dtype), interpret=interpret)


def _pad(x, length: int, dim: int):
  """[B, L, H, D] zero-padded to [B, length, H, dim]."""
  pl_, pd = length - x.shape[1], dim - x.shape[3]
  if pl_ or pd:
    x = jnp.pad(x, ((0, 0), (0, pl_), (0, 0), (0, pd)))
  return x


@dataclasses.dataclass(frozen=True)
class _Lists:
  """One (count, indices) pair flattened to 1-D int32, with the static shape to index it."""
  bl: int
  hl: int
  rows: int
  slots: int

  def row(self, b, h, r, geo: _Geo):
    """Flat row of (batch b, q-head h, block row r); broadcasts Bl = 1 and Hl in {1, Hkv}."""
    bl = b if self.bl > 1 else 0
    if self.hl == 1:
      hl = 0
    elif self.hl == geo.hq:
      hl = h
    else:  # per kv-head: every q-head of a group shares its kv-head's list
      hl = lax.div(h, geo.group)
    return (bl * self.hl + hl) * self.rows + r


def _flat_rows(layout: BlockLayout):
  """The layout's ``row_keep`` [Bl, Hl, nk, T_pad] flattened, with its shape as a ``_Lists``
  (rows = kv-blocks, slots = padded queries), or (None, a one-element stand-in) without one:
  the kernels then take no row term and never read it."""
  if layout.row_keep is None:
    return None, jnp.zeros((1,), jnp.int32)
  rk = jnp.asarray(layout.row_keep, jnp.int32)
  return _Lists(bl=rk.shape[0], hl=rk.shape[1], rows=rk.shape[2], slots=rk.shape[3]), rk.reshape(-1)


def _row_flags(rk_ref, rows: _Lists, b, h, kv_block, q0, n: int, geo: _Geo):
  """[n, 1] bool: whether queries q0 .. q0 + n - 1 keep ``kv_block`` (one vector load)."""
  off = pl.multiple_of(rows.row(b, h, kv_block, geo) * rows.slots + q0, n)
  return (rk_ref[pl.ds(off, n)] != 0)[:, None]


def _flat_lists(count, idx):
  count, idx = jnp.asarray(count, jnp.int32), jnp.asarray(idx, jnp.int32)
  spec = _Lists(bl=count.shape[0], hl=count.shape[1], rows=count.shape[2], slots=idx.shape[3])
  return spec, count.reshape(-1), idx.reshape(-1)


def _q_tile(geo: _Geo, tq: int):
  """The q tile of this program: last first. Causal rows grow with the tile index, so the
  longest programs start first and the short ones fill the tail of the last wave; the tile stays
  the fastest grid axis, so programs that run together share one head's K/V in L2."""
  return geo.nq * geo.bq // tq - 1 - pl.program_id(0)


def _q_map(n: int, kv_group: int | None = None):
  """BlockSpec index map of a [B, T, H, D] q tile matching ``_q_tile`` (n tiles), or with
  ``kv_group`` the whole-sequence K/V block of the q-head's kv-head."""
  if kv_group is None:
    return lambda i, b, h: (b, n - 1 - i, h, 0)
  return lambda i, b, h: (b, 0, h // kv_group, 0)


def _split(step, chunks: int):
  """Loop step -> (list slot, tile within the layout block). lax.div/rem, not jnp's floor
  versions: the Triton lowering rejects the sign fix-up those add (steps are >= 0 anyway)."""
  if chunks == 1:
    return step, 0
  return lax.div(step, chunks), lax.rem(step, chunks)


def _block_loop(count, idx_ref, row: int, lists: _Lists, blk: int, tile: int, fn, carry,
                prefetch: bool):
  """Runs ``carry = fn(start, carry)`` for every tile of the ``count`` listed blocks of ``row``;
  ``start`` is the tile's first position (block index * blk + tile offset inside the block)."""
  chunks = blk // tile
  base = row * lists.slots

  def start_of(step):
    slot, part = _split(step, chunks)
    if prefetch:  # one past the last step reads a clamped, valid slot (never used)
      slot = jnp.minimum(slot, lists.slots - 1)
    return idx_ref[base + slot] * blk + part * tile

  n = count * chunks
  if not prefetch:
    return lax.fori_loop(0, n, lambda step, c: fn(start_of(step), c), carry)

  def body(step, c):
    start, inner = c
    nxt = start_of(step + 1)
    return nxt, fn(start, inner)
  return lax.fori_loop(0, n, body, (start_of(0), carry))[1]


def _dot(a, b, geo: _Geo):
  """f32 inputs: three TF32 tensor-core products (≈ f32 accuracy). Precision.HIGHEST lowers to
  Triton's IEEE path, FMA loops off the tensor cores: measured at 0.5-1 TFLOP/s on an H100 for
  every tile tried. Interpret mode (CPU) computes plain f32, which has no TF32 algorithm."""
  if geo.dtype != jnp.float32:
    return pltriton.dot(a, b)
  prec = lax.Precision.HIGHEST if geo.interpret else lax.DotAlgorithmPreset.TF32_TF32_F32_X3
  return pltriton.dot(a, b, precision=prec)


def _clip(tile: PassTiles, geo: _Geo) -> PassTiles:
  return dataclasses.replace(tile, block_q=min(tile.block_q, geo.bq),
                             block_kv=min(tile.block_kv, geo.bk))


def _params(tile: PassTiles):
  return pltriton.CompilerParams(num_warps=tile.num_warps, num_stages=tile.num_stages)


_ANY = pl.BlockSpec(memory_space=pl.ANY)  # whole array, indexed by the kernel (the block lists)


# -------------------------------------------------------------------------------------- forward


def _fwd_kernel(pcnt_ref, pidx_ref, fcnt_ref, fidx_ref, rk_ref, q_ref, k_ref, v_ref, o_ref,
                lse_ref, *, geo: _Geo, tile: PassTiles, c: float, plist: _Lists, flist: _Lists,
                rows: _Lists | None, mask_fn):
  tq, tk = tile.block_q, tile.block_kv
  i, b, h = _q_tile(geo, tq), pl.program_id(1), pl.program_id(2)
  r = lax.div(i, geo.bq // tq)  # the layout's q-block holding this tile
  prow, frow = plist.row(b, h, r, geo), flist.row(b, h, r, geo)
  q = q_ref[...]
  q_pos = (i * tq + jnp.arange(tq, dtype=jnp.int32))[:, None]

  def step(masked: bool):
    def fn(start, carry):
      acc, m, l = carry
      ks = pl.ds(pl.multiple_of(start, tk), tk)
      kt, vt = k_ref[ks, :], v_ref[ks, :]
      s = _dot(q, kt.T, geo) * c  # [tq, tk], log2 domain
      if masked:
        k_pos = (start + jnp.arange(tk, dtype=jnp.int32))[None, :]
        ok = mask_fn(q_pos, k_pos, h)
        if rows is not None:
          ok = ok & _row_flags(rk_ref, rows, b, h, lax.div(start, geo.bk), i * tq, tq, geo)
        s = jnp.where(ok, s, _NEG)
      m_new = jnp.maximum(m, s.max(-1))
      alpha = jnp.exp2(m - m_new)
      p = jnp.exp2(s - m_new[:, None])
      l = l * alpha + p.sum(-1)
      acc = acc * alpha[:, None] + _dot(p.astype(vt.dtype), vt, geo)
      return acc, m_new, l
    return fn

  carry = (jnp.zeros((tq, geo.dv), jnp.float32), jnp.full((tq,), -jnp.inf, jnp.float32),
           jnp.zeros((tq,), jnp.float32))
  carry = _block_loop(pcnt_ref[prow], pidx_ref, prow, plist, geo.bk, tk, step(True), carry,
                      tile.prefetch)
  carry = _block_loop(fcnt_ref[frow], fidx_ref, frow, flist, geo.bk, tk, step(False), carry,
                      tile.prefetch)
  acc, m, l = carry
  empty = m < 0.5 * _NEG  # never saw an allowed key
  l_safe = jnp.where(empty, 1.0, l)
  o_ref[...] = jnp.where(empty[:, None], 0.0, acc / l_safe[:, None]).astype(o_ref.dtype)
  lse_ref[...] = jnp.where(empty, jnp.inf, m + jnp.log2(l_safe))


def _forward(q, k, v, layout, scale, static: _Static):
  geo = _geometry(q, k, v, layout, static.interpret)
  tile = _clip(static.tiles.fwd, geo)
  tq, tk = tile.block_q, tile.block_kv
  t, dv_true = q.shape[1], v.shape[3]
  tp, sp = geo.nq * geo.bq, geo.nk * geo.bk
  qp, kp, vp = _pad(q, tp, geo.d), _pad(k, sp, geo.d), _pad(v, sp, geo.dv)
  plist, pcnt, pidx = _flat_lists(layout.kv_num_blocks, layout.kv_indices)
  flist, fcnt, fidx = _flat_lists(layout.full_kv_num_blocks, layout.full_kv_indices)
  rows, rk = _flat_rows(layout)
  g, n = geo.group, tp // tq
  kernel = functools.partial(_fwd_kernel, geo=geo, tile=tile, c=scale * _LOG2E, plist=plist,
                             flist=flist, rows=rows, mask_fn=partial_block_mask(layout, geo.hq))
  out, lse = pl.pallas_call(
      kernel,
      grid=(n, geo.b, geo.hq),
      in_specs=[_ANY] * 5 + [
          pl.BlockSpec((None, tq, None, geo.d), _q_map(n)),
          pl.BlockSpec((None, sp, None, geo.d), _q_map(n, g)),
          pl.BlockSpec((None, sp, None, geo.dv), _q_map(n, g)),
      ],
      out_specs=[
          pl.BlockSpec((None, tq, None, geo.dv), _q_map(n)),
          pl.BlockSpec((None, None, tq), lambda i, b, h: (b, h, n - 1 - i)),
      ],
      out_shape=[jax.ShapeDtypeStruct((geo.b, tp, geo.hq, geo.dv), q.dtype),
                 jax.ShapeDtypeStruct((geo.b, geo.hq, tp), jnp.float32)],
      compiler_params=_params(tile),
      interpret=static.interpret,
      name="sparse_attention_fwd",
  )(pcnt, pidx, fcnt, fidx, rk, qp, kp, vp)
  return out[:, :t, :, :dv_true], lse  # lse [B, Hq, T_pad], log2 domain, +inf on empty rows


# ------------------------------------------------------------------------------------- backward


def _dq_kernel(pcnt_ref, pidx_ref, fcnt_ref, fidx_ref, rk_ref, q_ref, k_ref, v_ref, do_ref,
               lse_ref, delta_ref, dq_ref, *, geo: _Geo, tile: PassTiles, c: float, scale: float,
               plist: _Lists, flist: _Lists, rows: _Lists | None, mask_fn):
  tq, tk = tile.block_q, tile.block_kv
  i, b, h = _q_tile(geo, tq), pl.program_id(1), pl.program_id(2)
  r = lax.div(i, geo.bq // tq)
  prow, frow = plist.row(b, h, r, geo), flist.row(b, h, r, geo)
  q, do = q_ref[...], do_ref[...]
  lse, delta = lse_ref[...], delta_ref[...]
  q_pos = (i * tq + jnp.arange(tq, dtype=jnp.int32))[:, None]

  def step(masked: bool):
    def fn(start, dq):
      ks = pl.ds(pl.multiple_of(start, tk), tk)
      kt, vt = k_ref[ks, :], v_ref[ks, :]
      p = jnp.exp2(_dot(q, kt.T, geo) * c - lse[:, None])  # lse = +inf on empty rows: p = 0
      if masked:
        k_pos = (start + jnp.arange(tk, dtype=jnp.int32))[None, :]
        ok = mask_fn(q_pos, k_pos, h)
        if rows is not None:
          ok = ok & _row_flags(rk_ref, rows, b, h, lax.div(start, geo.bk), i * tq, tq, geo)
        p = jnp.where(ok, p, 0.0)
      ds = p * (_dot(do, vt.T, geo) - delta[:, None])
      return dq + _dot(ds.astype(kt.dtype), kt, geo)
    return fn

  dq = jnp.zeros((tq, geo.d), jnp.float32)
  dq = _block_loop(pcnt_ref[prow], pidx_ref, prow, plist, geo.bk, tk, step(True), dq,
                   tile.prefetch)
  dq = _block_loop(fcnt_ref[frow], fidx_ref, frow, flist, geo.bk, tk, step(False), dq,
                   tile.prefetch)
  dq_ref[...] = (dq * scale).astype(dq_ref.dtype)


def _dkv_kernel(pcnt_ref, pidx_ref, fcnt_ref, fidx_ref, rk_ref, q_ref, k_ref, v_ref, do_ref,
                lse_ref, delta_ref, dk_ref, dv_ref, *, geo: _Geo, tile: PassTiles, c: float,
                scale: float, plist: _Lists, flist: _Lists, rows: _Lists | None, mask_fn):
  tq, tk = tile.block_q, tile.block_kv
  j, b, hk = pl.program_id(0), pl.program_id(1), pl.program_id(2)
  r = lax.div(j, geo.bk // tk)  # the layout's kv-block holding this tile
  kt, vt = k_ref[...], v_ref[...]
  k_pos = (j * tk + jnp.arange(tk, dtype=jnp.int32))[None, :]

  def head(gi, carry):
    h = hk * geo.group + gi
    prow, frow = plist.row(b, h, r, geo), flist.row(b, h, r, geo)

    def step(masked: bool):
      def fn(start, carry):
        dk, dv = carry
        qs = pl.ds(pl.multiple_of(start, tq), tq)
        qt, do = q_ref[qs, gi, :], do_ref[qs, gi, :]
        lse, delta = lse_ref[gi, qs], delta_ref[gi, qs]
        p = jnp.exp2(_dot(qt, kt.T, geo) * c - lse[:, None])  # [tq, tk]
        if masked:
          q_pos = (start + jnp.arange(tq, dtype=jnp.int32))[:, None]
          ok = mask_fn(q_pos, k_pos, h)
          if rows is not None:
            ok = ok & _row_flags(rk_ref, rows, b, h, r, start, tq, geo)
          p = jnp.where(ok, p, 0.0)
        dv = dv + _dot(p.astype(do.dtype).T, do, geo)
        ds = p * (_dot(do, vt.T, geo) - delta[:, None])
        dk = dk + _dot(ds.astype(qt.dtype).T, qt, geo)
        return dk, dv
      return fn

    carry = _block_loop(pcnt_ref[prow], pidx_ref, prow, plist, geo.bq, tq, step(True), carry,
                        tile.prefetch)
    return _block_loop(fcnt_ref[frow], fidx_ref, frow, flist, geo.bq, tq, step(False), carry,
                       tile.prefetch)

  carry = (jnp.zeros((tk, geo.d), jnp.float32), jnp.zeros((tk, geo.dv), jnp.float32))
  if geo.group == 1:
    dk, dv = head(0, carry)
  else:
    dk, dv = lax.fori_loop(0, geo.group, head, carry)
  dk_ref[...] = (dk * scale).astype(dk_ref.dtype)
  dv_ref[...] = dv.astype(dv_ref.dtype)


def _backward(q, k, v, layout, scale, static: _Static, out, lse, dout):
  geo = _geometry(q, k, v, layout, static.interpret)
  t, s, d_true = q.shape[1], k.shape[1], q.shape[3]
  tp, sp = geo.nq * geo.bq, geo.nk * geo.bk
  g = geo.group
  qp, kp, vp = _pad(q, tp, geo.d), _pad(k, sp, geo.d), _pad(v, sp, geo.dv)
  dop = _pad(dout.astype(q.dtype), tp, geo.dv)
  # delta_i = sum_d dO_i O_i, the softmax-backward row term (f32; a cheap fused XLA reduction).
  delta = (dout.astype(jnp.float32) * out.astype(jnp.float32)).sum(-1).transpose(0, 2, 1)
  delta = jnp.pad(delta, ((0, 0), (0, 0), (0, tp - t)))  # [B, Hq, T_pad]
  c = scale * _LOG2E
  mask_fn = partial_block_mask(layout, geo.hq)
  rows, rk = _flat_rows(layout)

  # dQ over the forward lists.
  tile = _clip(static.tiles.dq, geo)
  tq, tk = tile.block_q, tile.block_kv
  n = tp // tq
  plist, pcnt, pidx = _flat_lists(layout.kv_num_blocks, layout.kv_indices)
  flist, fcnt, fidx = _flat_lists(layout.full_kv_num_blocks, layout.full_kv_indices)
  dq = pl.pallas_call(
      functools.partial(_dq_kernel, geo=geo, tile=tile, c=c, scale=scale, plist=plist,
                        flist=flist, rows=rows, mask_fn=mask_fn),
      grid=(n, geo.b, geo.hq),
      in_specs=[_ANY] * 5 + [
          pl.BlockSpec((None, tq, None, geo.d), _q_map(n)),
          pl.BlockSpec((None, sp, None, geo.d), _q_map(n, g)),
          pl.BlockSpec((None, sp, None, geo.dv), _q_map(n, g)),
          pl.BlockSpec((None, tq, None, geo.dv), _q_map(n)),
          pl.BlockSpec((None, None, tq), lambda i, b, h: (b, h, n - 1 - i)),
          pl.BlockSpec((None, None, tq), lambda i, b, h: (b, h, n - 1 - i)),
      ],
      out_specs=pl.BlockSpec((None, tq, None, geo.d), _q_map(n)),
      out_shape=jax.ShapeDtypeStruct((geo.b, tp, geo.hq, geo.d), q.dtype),
      compiler_params=_params(tile),
      interpret=static.interpret,
      name="sparse_attention_dq",
  )(pcnt, pidx, fcnt, fidx, rk, qp, kp, vp, dop, lse, delta)

  # dK, dV over the transposed lists; each program owns a kv tile of one kv-head and sums over
  # the q-heads of its group, read through a [B, T, Hkv, G, D] view (a free reshape).
  tile = _clip(static.tiles.dkv, geo)
  tq, tk = tile.block_q, tile.block_kv
  plist, pcnt, pidx = _flat_lists(layout.q_num_blocks, layout.q_indices)
  flist, fcnt, fidx = _flat_lists(layout.full_q_num_blocks, layout.full_q_indices)
  q5 = qp.reshape(geo.b, tp, geo.hkv, g, geo.d)
  do5 = dop.reshape(geo.b, tp, geo.hkv, g, geo.dv)
  lse4 = lse.reshape(geo.b, geo.hkv, g, tp)
  delta4 = delta.reshape(geo.b, geo.hkv, g, tp)
  dk, dv = pl.pallas_call(
      functools.partial(_dkv_kernel, geo=geo, tile=tile, c=c, scale=scale, plist=plist,
                        flist=flist, rows=rows, mask_fn=mask_fn),
      grid=(sp // tk, geo.b, geo.hkv),
      in_specs=[_ANY] * 5 + [
          pl.BlockSpec((None, tp, None, g, geo.d), lambda j, b, h: (b, 0, h, 0, 0)),
          pl.BlockSpec((None, tk, None, geo.d), lambda j, b, h: (b, j, h, 0)),
          pl.BlockSpec((None, tk, None, geo.dv), lambda j, b, h: (b, j, h, 0)),
          pl.BlockSpec((None, tp, None, g, geo.dv), lambda j, b, h: (b, 0, h, 0, 0)),
          pl.BlockSpec((None, None, g, tp), lambda j, b, h: (b, h, 0, 0)),
          pl.BlockSpec((None, None, g, tp), lambda j, b, h: (b, h, 0, 0)),
      ],
      out_specs=[
          pl.BlockSpec((None, tk, None, geo.d), lambda j, b, h: (b, j, h, 0)),
          pl.BlockSpec((None, tk, None, geo.dv), lambda j, b, h: (b, j, h, 0)),
      ],
      out_shape=[jax.ShapeDtypeStruct((geo.b, sp, geo.hkv, geo.d), k.dtype),
                 jax.ShapeDtypeStruct((geo.b, sp, geo.hkv, geo.dv), v.dtype)],
      compiler_params=_params(tile),
      interpret=static.interpret,
      name="sparse_attention_dkv",
  )(pcnt, pidx, fcnt, fidx, rk, q5, kp, vp, do5, lse4, delta4)
  return dq[:, :t, :, :d_true], dk[:, :s, :, :d_true], dv[:, :s, :, :v.shape[3]]
