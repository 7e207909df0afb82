"""BlockLayout: which kv-blocks each q-block visits (and the transpose), as a JAX pytree.

Like PyTorch FlexAttention's BlockMask, visited blocks are split into *full* blocks (every pair
allowed: no elementwise masking) and *partial* blocks (the layout's ``mask`` predicate and the
key-length bound are applied elementwise). Kernels loop over the two lists separately, so the
inner loop over full blocks carries no masking work.

Arrays (leading ``[Bl, Hl]`` with ``Bl`` in {1, B} and ``Hl`` in {1, Hkv, Hq}, broadcast by the
attention implementations):

  kv_num_blocks [Bl, Hl, nq]         partial kv-blocks of each q-block
  kv_indices    [Bl, Hl, nq, Mp]     their indices, ascending; padded slots repeat the last valid
  full_kv_num_blocks / full_kv_indices   the same for full blocks
  q_num_blocks / q_indices / full_q_num_blocks / full_q_indices  [Bl, Hl, nk, ...]: the transpose
                                     (q-blocks that visit each kv-block), for the dK/dV pass
  row_keep      [Bl, Hl, nk, nq * block_q] int32, or None: per query, whether it keeps kv-block
                j. One more term of the partial blocks' elementwise mask, for selections made per
                query (``from_query_blocks``): a q-block visits the union of its queries' blocks
                (as tiles a kernel can run) and each query still attends only to its own.

Static fields: block sizes, true lengths and the elementwise ``mask`` (None: partial blocks are
partial only because they hold padded keys past ``kv_len``).

Three constructors, one compaction rule: ``from_mask`` (static masks, numpy, at trace time; cost
grows with the number of blocks, never T×S), ``from_blocks`` (block-level booleans, jnp,
usable inside jit, e.g. from content-based selection) and ``from_query_blocks`` (the same per
query: q-blocks of the union, plus ``row_keep``).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from sparse_ops import masks as masks_lib

# Above this many elements, uncertain blocks of a composite mask stay "partial" rather than
# being checked elementwise: still exact results (the kernel masks them), only some wasted work.
_REFINE_BUDGET = 1 << 26


def _check_sizes(**sizes) -> None:
  for name, value in sizes.items():
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
      raise ValueError(f"{name}={value!r} must be a positive integer")


@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=["kv_num_blocks", "kv_indices", "full_kv_num_blocks", "full_kv_indices",
                 "q_num_blocks", "q_indices", "full_q_num_blocks", "full_q_indices",
                 "row_keep"],
    meta_fields=["block_q", "block_kv", "q_len", "kv_len", "mask"],
)
@dataclasses.dataclass(frozen=True)
class BlockLayout:
  kv_num_blocks: jax.Array
  kv_indices: jax.Array
  full_kv_num_blocks: jax.Array
  full_kv_indices: jax.Array
  q_num_blocks: jax.Array
  q_indices: jax.Array
  full_q_num_blocks: jax.Array
  full_q_indices: jax.Array
  block_q: int
  block_kv: int
  q_len: int
  kv_len: int
  mask: masks_lib.Mask | None
  row_keep: jax.Array | None = None

  # ------------------------------------------------------------------ derived static properties
  @property
  def num_q_blocks(self) -> int:
    return -(-self.q_len // self.block_q)

  @property
  def num_kv_blocks(self) -> int:
    return -(-self.kv_len // self.block_kv)

  @property
  def batch_size(self) -> int:
    return self.kv_num_blocks.shape[0]

  @property
  def num_heads(self) -> int:
    return self.kv_num_blocks.shape[1]

  def __repr__(self) -> str:
    return (f"BlockLayout(q_len={self.q_len}, kv_len={self.kv_len}, block_q={self.block_q}, "
            f"block_kv={self.block_kv}, batch={self.batch_size}, heads={self.num_heads}, "
            f"partial_slots={self.kv_indices.shape[-1]}, full_slots={self.full_kv_indices.shape[-1]}, "
            f"mask={self.mask!r}{', per-query rows' if self.row_keep is not None else ''})")

  # ------------------------------------------------------------------------------ constructors
  @classmethod
  def from_mask(cls, mask: masks_lib.Mask, q_len: int, kv_len: int, *, block_q: int = 128,
                block_kv: int = 128) -> BlockLayout:
    """The layout of a static mask; numpy work proportional to the number of blocks."""
    if not isinstance(mask, masks_lib.Mask):
      raise ValueError(f"mask={mask!r} must be a sparse_ops.masks.Mask")
    _check_sizes(q_len=q_len, kv_len=kv_len, block_q=block_q, block_kv=block_kv)
    return _layout_from_mask(mask, int(q_len), int(kv_len), int(block_q), int(block_kv))

  @classmethod
  def from_blocks(cls, keep: jax.Array, full: jax.Array | None = None, *, block_q: int,
                  block_kv: int, q_len: int, kv_len: int, mask: masks_lib.Mask | None = None,
                  max_blocks: int | None = None) -> BlockLayout:
    """Builds a layout from block booleans ``keep [Bl, Hl, nq, nk]``; works inside jit.

    ``full`` (same shape) marks kept blocks that need no elementwise ``mask``; by default a kept
    block is full when ``mask`` is None and partial otherwise. Blocks holding padded keys past
    ``kv_len`` are always partial. ``max_blocks`` (static; default nk) sizes the slot arrays of
    the forward lists: it must be at least the most blocks any row keeps in either list, or the
    extra blocks are dropped (inside jit this cannot be checked; callers derive it from their
    budget, as ``select_blocks`` does).
    """
    _check_sizes(q_len=q_len, kv_len=kv_len, block_q=block_q, block_kv=block_kv)
    nq, nk = -(-q_len // block_q), -(-kv_len // block_kv)
    if keep.ndim != 4 or keep.shape[-2:] != (nq, nk):
      raise ValueError(f"keep.shape={keep.shape} must be [Bl, Hl, {nq}, {nk}] for q_len={q_len}, "
                       f"kv_len={kv_len}, block_q={block_q}, block_kv={block_kv}")
    keep = jnp.asarray(keep, bool)
    if full is None:
      full = keep if mask is None else jnp.zeros_like(keep)
    elif full.shape != keep.shape:
      raise ValueError(f"full.shape={full.shape} must equal keep.shape={keep.shape}")
    full = jnp.asarray(full, bool) & keep & _unpadded_kv_blocks(nk, block_kv, kv_len, jnp)
    partial = keep & ~full
    m = nk if max_blocks is None else int(max_blocks)
    if not isinstance(keep, jax.core.Tracer):  # concrete input: a too-small bound is an error
      most = int(jnp.maximum(partial.sum(-1), full.sum(-1)).max())
      if most > m:
        raise ValueError(f"max_blocks={max_blocks} is below the {most} blocks a row keeps")
    pn, pi = _compact_jnp(partial, m)
    fn, fi = _compact_jnp(full, m)
    tpn, tpi = _compact_jnp(jnp.swapaxes(partial, -1, -2), nq)
    tfn, tfi = _compact_jnp(jnp.swapaxes(full, -1, -2), nq)
    return cls(pn, pi, fn, fi, tpn, tpi, tfn, tfi, block_q=int(block_q), block_kv=int(block_kv),
               q_len=int(q_len), kv_len=int(kv_len), mask=mask)

  @classmethod
  def from_query_blocks(cls, keep: jax.Array, *, block_q: int, block_kv: int, q_len: int,
                        kv_len: int, mask: masks_lib.Mask | None = None) -> BlockLayout:
    """A layout from per-query block booleans ``keep [Bl, Hl, q_len, nk]``; works inside jit.

    Query i attends to the keys of the kv-blocks it keeps, ∧ ``mask`` elementwise: the pairs of
    one-query blocks (``from_blocks(keep, block_q=1)``), while kernels run ``block_q``-row tiles.
    Each q-block visits the union of its queries' blocks, all as partial blocks (``row_keep``
    and the mask applied). None is full, even where every query keeps it: a full block is
    visited in another loop, so which blocks are full (the other queries' choices) would change
    the order a query's sum is taken in, and a later token its earlier neighbours' outputs in
    the last bits. Visits a query's flags exclude add exact zeros, so each query's result is
    bitwise independent of the others' choices.
    """
    _check_sizes(q_len=q_len, kv_len=kv_len, block_q=block_q, block_kv=block_kv)
    nq, nk = -(-q_len // block_q), -(-kv_len // block_kv)
    if keep.ndim != 4 or keep.shape[-2:] != (q_len, nk):
      raise ValueError(f"keep.shape={keep.shape} must be [Bl, Hl, {q_len}, {nk}] for "
                       f"q_len={q_len}, kv_len={kv_len}, block_kv={block_kv}")
    keep = jnp.asarray(keep, bool)
    pad = nq * block_q - q_len
    rows = jnp.pad(keep, ((0, 0), (0, 0), (0, pad), (0, 0)))  # padded queries keep nothing
    grouped = rows.reshape(keep.shape[:2] + (nq, block_q, nk))
    union = grouped.any(3)
    layout = cls.from_blocks(union, jnp.zeros_like(union), block_q=block_q, block_kv=block_kv,
                             q_len=q_len, kv_len=kv_len, mask=mask)
    return dataclasses.replace(layout, row_keep=jnp.swapaxes(rows, -1, -2).astype(jnp.int32))

  # ------------------------------------------------------------------------------------ views
  def block_masks(self) -> tuple[jax.Array, jax.Array]:
    """(partial, full) block booleans [Bl, Hl, nq, nk], from the forward lists."""
    nk = self.num_kv_blocks
    return (_expand(self.kv_num_blocks, self.kv_indices, nk),
            _expand(self.full_kv_num_blocks, self.full_kv_indices, nk))

  def to_dense(self) -> jax.Array:
    """Allowed pairs as bool [Bl, Hl, q_len, kv_len]; the ground truth the kernels must match."""
    return _to_dense(self)

  def _to_dense(self) -> jax.Array:
    partial, full = self.block_masks()
    expand = lambda b: jnp.repeat(jnp.repeat(b, self.block_q, -2), self.block_kv, -1)
    partial = expand(partial)[..., :self.q_len, :self.kv_len]
    full = expand(full)[..., :self.q_len, :self.kv_len]
    q = jnp.arange(self.q_len)[:, None]
    k = jnp.arange(self.kv_len)[None, :]
    if self.mask is None:
      elem = jnp.ones((1, 1, self.q_len, self.kv_len), bool)
    elif self.mask.num_heads is None:
      elem = jnp.broadcast_to(jnp.asarray(self.mask(q, k)), (self.q_len, self.kv_len))[None, None]
    else:
      elem = jnp.asarray(self.mask(q, k))[None]  # [1, Hm, T, S]
    if self.row_keep is not None:  # [Bl, Hl, nk, T_pad] -> [Bl, Hl, T, S]
      rows = jnp.repeat(jnp.swapaxes(self.row_keep, -1, -2) != 0, self.block_kv, -1)
      elem = elem & rows[..., :self.q_len, :self.kv_len]
    return full | (partial & elem)

  def visited_blocks(self) -> jax.Array:
    """Visited (partial + full) blocks per [Bl, Hl]."""
    return self.kv_num_blocks.sum(-1) + self.full_kv_num_blocks.sum(-1)


# ------------------------------------------------------------------------------------ internals


_to_dense = jax.jit(BlockLayout._to_dense)  # one compile per layout shape, not one per op


def _unpadded_kv_blocks(nk: int, block_kv: int, kv_len: int, xp):
  """[nk] bool: blocks that hold no padded key (only those may be full)."""
  return (xp.arange(nk) + 1) * block_kv <= kv_len


def _block_grid(n: int, block: int, length: int):
  start = np.arange(n, dtype=np.int64) * block
  return start, np.minimum(start + block, length)


@functools.lru_cache(maxsize=64)
def _layout_from_mask(mask, q_len, kv_len, block_q, block_kv) -> BlockLayout:
  # The transpose is classified again with swapped broadcasting rather than transposing the
  # [nq, nk] arrays: a strided transpose costs more than the closed-form bounds themselves.
  # Banded masks skip the [nq, nk] grid altogether (``_band_lists``); others test every block.
  lists = []
  for transpose in (False, True):
    band = _band_lists(mask, q_len, kv_len, block_q, block_kv, transpose)
    lists += band or _lists_from_mask(mask, q_len, kv_len, block_q, block_kv, transpose)
  pn, pi, fn, fi, tpn, tpi, tfn, tfi = lists
  arrays = (a[None] for a in (pn, pi, fn, fi, tpn, tpi, tfn, tfi))
  return BlockLayout(*arrays, block_q=block_q, block_kv=block_kv, q_len=q_len, kv_len=kv_len,
                     mask=mask)


def _lists_from_mask(mask, q_len, kv_len, block_q, block_kv, transpose):
  """(partial count, indices, full count, indices) of one orientation, in row chunks.

  Chunks of about 4M blocks keep the block booleans small and their memory reused: at T=1M a
  whole [nq, nk] array is 67 MB, and fresh pages, not arithmetic, dominated the build. Row
  counts come first (to size each index array once), then the fill: pure arithmetic for chunks
  whose rows are each one contiguous run; the others keep their booleans for a general fill.
  """
  nq, nk = -(-q_len // block_q), -(-kv_len // block_kv)
  rows = nk if transpose else nq
  step = max(1, (1 << 22) // (nq if transpose else nk))
  spans = [(r0, min(rows, r0 + step)) for r0 in range(0, rows, step)]

  def classes(r0, r1):
    return _block_classes(mask, q_len, kv_len, block_q, block_kv, transpose, r0, r1,
                          budget=_REFINE_BUDGET * (r1 - r0) // rows)

  stats = []  # per chunk and part: (count, first, the booleans if some row is not one run)
  for r0, r1 in spans:
    chunk = []
    for sel in classes(r0, r1):
      count, first, contiguous = _row_stats(sel)
      chunk.append((count, first, None if contiguous else sel))
    stats.append(chunk)
  out = []
  for part in (0, 1):  # partial, full
    count = np.concatenate([st[part][0] for st in stats], axis=-1)
    idx = np.empty(count.shape + (max(1, int(count.max(initial=0))),), np.int32)
    for (r0, r1), chunk in zip(spans, stats):
      _fill(idx[:, r0:r1], *chunk[part])
    out += [count, idx]
  return tuple(out)


# ------------------------------------------------------------------------- banded masks: runs
# Causal, Local, Sink, Full, QueryPrefix and their &/| combinations keep, in each row of blocks,
# a few contiguous runs of columns. Their runs come from binary search over the (monotone) block
# starts and ends, and the lists are written run by run: work proportional to rows × runs plus
# the bytes of the lists, where the grid path spends ~20 passes over all nq × nk blocks (T=1M:
# 67M blocks) and rebuilds each list with nonzero/take_along_axis when a row has two runs.
#
# A set of runs is (starts, ends) int64 [rows, K], half-open [s, e), normalized: ascending,
# disjoint and non-adjacent, empty runs stored as (cols, cols) after the others.


def _band_lists(mask, q_len, kv_len, block_q, block_kv, transpose):
  """``_lists_from_mask``'s exact output from runs, or None when the mask has no band form."""
  if mask.num_heads is not None:
    return None
  nq, nk = -(-q_len // block_q), -(-kv_len // block_kv)
  q0, q1 = _block_grid(nq, block_q, q_len)
  k0, k1 = _block_grid(nk, block_kv, kv_len)
  terms = dict(q0=q0, q1=q1, k0=k0, k1=k1)
  rows, cols = (nk, nq) if transpose else (nq, nk)
  runs = _mask_runs(mask, terms, transpose, rows, cols)
  if runs is None:
    return None
  any_, all_ = runs
  if isinstance(mask, (masks_lib.And, masks_lib.Or)):
    any_, all_ = _band_refine(mask, any_, all_, q_len, kv_len, block_q, block_kv, transpose,
                              rows, cols)
  if transpose:  # only kv-blocks without padded keys may be full: whole rows here
    unpadded = _runs_const(_unpadded_kv_blocks(nk, block_kv, kv_len, np), rows, cols)
  else:
    n = kv_len // block_kv
    unpadded = (np.zeros((rows, 1), np.int64), np.full((rows, 1), n, np.int64))
  full = _runs_and(all_, unpadded, cols)
  partial = _runs_minus(any_, full, cols)
  out = []
  for s, e in (partial, full):
    count, idx = _fill_runs(s, e)
    out += [count[None], idx[None]]
  return out


def _mask_runs(mask, terms, transpose, rows, cols):
  """(any, all) runs of a head-uniform mask, mirroring ``block_bounds`` and its algebra."""
  if isinstance(mask, (masks_lib.And, masks_lib.Or)):
    a = _mask_runs(mask.a, terms, transpose, rows, cols)
    b = a and _mask_runs(mask.b, terms, transpose, rows, cols)
    if b is None:
      return None
    op = _runs_and if isinstance(mask, masks_lib.And) else _runs_or
    return op(a[0], b[0], cols), op(a[1], b[1], cols)
  cons = mask._band_constraints()
  if cons is None:
    return None
  out = []
  for conj in cons:
    lo, hi = np.zeros(rows, np.int64), np.full(rows, cols, np.int64)
    for kterm, qterm, op, c in conj:
      # kterm - qterm op c, as "column value op bound" with the bound from the row's block.
      col, row = (qterm, kterm) if transpose else (kterm, qterm)
      sign = -1 if transpose else 1  # transpose: q op' k - c, with op reversed
      rowv = terms[row] if row is not None else 0
      bound = rowv - c if transpose else rowv + c
      le = (op == "<=") == (sign == 1)  # the column term's direction
      if col is None:
        ok = np.broadcast_to((0 <= bound) if le else (0 >= bound), (rows,))
        hi = np.where(ok, hi, 0)
      elif le:
        hi = np.minimum(hi, np.searchsorted(terms[col], bound, "right"))
      else:
        lo = np.maximum(lo, np.searchsorted(terms[col], bound, "left"))
    lo = np.broadcast_to(lo, (rows,))
    hi = np.broadcast_to(hi, (rows,))
    out.append(_runs_normalize(lo[:, None].copy(), hi[:, None].copy(), cols))
  return tuple(out)


def _runs_const(ok, rows, cols):
  """Whole rows where ok [rows], else empty."""
  return (np.where(ok, 0, cols)[:, None].astype(np.int64),
          np.full((rows, 1), cols, np.int64))


def _runs_normalize(s, e, cols):
  """Sorts runs, merges overlapping or adjacent ones, moves empty ones last, drops empty slots."""
  empty = s >= e
  s, e = np.where(empty, cols, s), np.where(empty, cols, e)
  if s.shape[1] > 1:
    order = np.argsort(s, axis=1, kind="stable")
    s, e = np.take_along_axis(s, order, 1), np.take_along_axis(e, order, 1)
    reach = np.maximum.accumulate(e, axis=1)
    lead = np.ones_like(empty)
    lead[:, 1:] = s[:, 1:] > reach[:, :-1]
    ends = np.empty_like(e)
    g = reach[:, -1].copy()
    for k in range(s.shape[1] - 1, -1, -1):  # a leader's run ends where its group's reach does
      ends[:, k] = g
      if k:
        g = np.where(lead[:, k], reach[:, k - 1], g)
    keep = lead & (s < ends)
    s, e = np.where(keep, s, cols), np.where(keep, ends, cols)
    order = np.argsort(~keep, axis=1, kind="stable")
    s, e = np.take_along_axis(s, order, 1), np.take_along_axis(e, order, 1)
  width = max(1, int((s < e).sum(1).max(initial=0)))
  return s[:, :width], e[:, :width]


def _runs_and(a, b, cols):
  s = np.maximum(a[0][:, :, None], b[0][:, None, :]).reshape(len(a[0]), -1)
  e = np.minimum(a[1][:, :, None], b[1][:, None, :]).reshape(len(a[0]), -1)
  return _runs_normalize(s, e, cols)


def _runs_or(a, b, cols):
  return _runs_normalize(np.concatenate([a[0], b[0]], 1), np.concatenate([a[1], b[1]], 1), cols)


def _runs_minus(a, b, cols):
  """a \\ b: a and the gaps of (normalized) b."""
  zero, end = np.zeros((len(b[0]), 1), np.int64), np.full((len(b[0]), 1), cols, np.int64)
  gaps = np.concatenate([zero, b[1]], 1), np.concatenate([b[0], end], 1)
  return _runs_and(a, gaps, cols)


def _runs_points(r, c, rows, cols):
  """Single blocks (r, c) (sorted by r, then c) as runs."""
  count = np.bincount(r, minlength=rows)
  width = max(1, int(count.max(initial=0)))
  start = np.zeros(rows + 1, np.int64)
  np.cumsum(count, out=start[1:])
  s = np.full((rows, width), cols, np.int64)
  s[r, np.arange(len(r)) - start[r]] = c
  return _runs_normalize(s, np.where(s < cols, s + 1, cols), cols)


def _runs_cells(s, e, r0, r1):
  """(row, col) of every block in runs of rows r0:r1, row-major."""
  s, e = s[r0:r1], e[r0:r1]
  n = np.maximum(e - s, 0)
  rr = np.repeat(np.broadcast_to(np.arange(r0, r1)[:, None], s.shape).ravel(), n.ravel())
  ss = np.repeat(s.ravel(), n.ravel())
  first = np.repeat(np.cumsum(n.ravel()) - n.ravel(), n.ravel())
  return rr, ss + np.arange(len(ss)) - first


def _band_refine(mask, any_, all_, q_len, kv_len, block_q, block_kv, transpose, rows, cols):
  """``_block_classes``'s elementwise check of uncertain blocks, with the same chunks and budget
  (the budget decides per chunk whether blocks are checked, so it must match exactly)."""
  unc = _runs_minus(any_, all_, cols)
  per_row = np.maximum(unc[1] - unc[0], 0).sum(1)
  if not per_row.any():
    return any_, all_
  step = max(1, (1 << 22) // cols)
  cells = []
  for r0 in range(0, rows, step):
    r1 = min(rows, r0 + step)
    if int(per_row[r0:r1].sum()) * block_q * block_kv <= _REFINE_BUDGET * (r1 - r0) // rows:
      cells.append(_runs_cells(*unc, r0, r1))
  if not cells:
    return any_, all_
  r = np.concatenate([x[0] for x in cells])
  c = np.concatenate([x[1] for x in cells])
  qi, ki = (c, r) if transpose else (r, c)
  ok_any, ok_all = _refine_blocks(mask, np.zeros(len(r), np.int64), qi, ki, q_len, kv_len,
                                  block_q, block_kv)
  gone = ~ok_any  # uncertain blocks are in any_ and not in all_ until checked
  any_ = _runs_minus(any_, _runs_points(r[gone], c[gone], rows, cols), cols)
  all_ = _runs_or(all_, _runs_points(r[ok_all], c[ok_all], rows, cols), cols)
  return any_, all_


def _fill_runs(s, e):
  """(count int32 [rows], indices int32 [rows, max(1, max count)]) from normalized runs, with
  ``_fill``'s padding (repeat the last valid index; 0 for empty rows)."""
  n = np.maximum(e - s, 0)
  count = n.sum(1).astype(np.int32)
  rows, width = len(count), max(1, int(count.max(initial=0)))
  idx = np.empty((rows, width), np.int32)
  if (n[:, 1:] == 0).all():  # one run per row: start + min(slot, count - 1), in cache-sized rows
    first = np.where(count > 0, s[:, 0], 0).astype(np.int32)
    clip = np.maximum(count - 1, 0)
    slots = np.arange(width, dtype=np.int32)
    step = max(1, (1 << 18) // width)
    for r0 in range(0, rows, step):
      blk = idx[r0:r0 + step]
      np.minimum(slots, clip[r0:r0 + step, None], out=blk)
      blk += first[r0:r0 + step, None]
    return count, idx
  ar = np.arange(int(e.max(initial=1)), dtype=np.int32)
  for r, (rs, re, rn, c) in enumerate(zip(s.tolist(), e.tolist(), n.tolist(), count.tolist())):
    row, pos = idx[r], 0
    for a, b, k in zip(rs, re, rn):
      if k:
        row[pos:pos + k] = ar[a:b]
        pos += k
    row[c:] = row[c - 1] if c else 0
  return count, idx


def _row_stats(sel: np.ndarray):
  """sel [..., r, m] bool -> (count int32, first kept index int32, all rows one run?)."""
  count = sel.sum(-1, dtype=np.int32)
  first = np.argmax(sel, -1).astype(np.int32)  # 0 for empty rows
  last = (sel.shape[-1] - 1 - np.argmax(sel[..., ::-1], -1)).astype(np.int32)
  return count, first, bool(np.all((count == 0) | (last - first + 1 == count)))


def _fill(out: np.ndarray, count, first, sel) -> None:
  """Writes ascending kept indices into out [..., r, W]; padded slots repeat the last valid index
  (0 for empty rows), so a kernel that prefetches the next slot never fetches a new block.
  ``sel`` None: every row is one contiguous run starting at ``first``."""
  slots = np.arange(out.shape[-1], dtype=np.int32)
  clip = np.maximum(count - 1, 0)[..., None]
  if sel is None:
    np.minimum(slots, clip, out=out)
    out += first[..., None]
    return
  flat = out.reshape(-1, out.shape[-1])
  r, c = np.nonzero(sel.reshape(-1, sel.shape[-1]))
  start = np.zeros(flat.shape[0] + 1, np.int64)
  np.cumsum(count.reshape(-1), out=start[1:])
  flat[:] = 0
  flat[r, np.arange(len(r)) - start[r]] = c
  out[...] = np.take_along_axis(flat, np.minimum(slots[None, :], clip.reshape(-1, 1)),
                                axis=1).reshape(out.shape)


def _block_classes(mask, q_len, kv_len, block_q, block_kv, transpose, r0, r1, budget):
  """(partial, full) block booleans [H, r1 - r0, cols] for rows r0:r1 (q-blocks, or kv-blocks
  with transpose)."""
  nq, nk = -(-q_len // block_q), -(-kv_len // block_kv)
  q0, q1 = _block_grid(nq, block_q, q_len)
  k0, k1 = _block_grid(nk, block_kv, kv_len)
  if transpose:
    k0, k1 = k0[r0:r1, None], k1[r0:r1, None]
    q0, q1 = q0[None, :], q1[None, :]
  else:
    q0, q1 = q0[r0:r1, None], q1[r0:r1, None]
    k0, k1 = k0[None, :], k1[None, :]
  any_, all_ = mask.block_bounds(q0, q1, k0, k1)
  shape = (mask.num_heads or 1, r1 - r0, nq if transpose else nk)
  if any_.shape != shape:
    any_ = np.broadcast_to(any_, shape)
  if all_.shape != shape:
    all_ = np.broadcast_to(all_, shape)
  if isinstance(mask, (masks_lib.And, masks_lib.Or, masks_lib.MultiHead)):
    uncertain = any_ & ~all_
    if int(uncertain.sum()) * block_q * block_kv <= budget:
      any_, all_ = _refine(mask, any_, all_, uncertain, q_len, kv_len, block_q, block_kv,
                           transpose, r0)
  unpadded = _unpadded_kv_blocks(nk, block_kv, kv_len, np)
  unpadded = unpadded[r0:r1, None] if transpose else unpadded[None, :]
  full = np.logical_and(all_, unpadded, out=all_ if all_.flags.writeable else None)
  partial = np.greater(any_, full, out=any_ if any_.flags.writeable else None)  # any & ~full
  return partial, full


def _refine(mask, any_, all_, uncertain, q_len, kv_len, block_q, block_kv, transpose, r0):
  """Checks blocks that algebraic bounds leave uncertain elementwise (bounded total work)."""
  any_, all_ = any_.copy(), all_.copy()
  hs, ri, ci = np.nonzero(uncertain)
  qi, ki = (ci, ri + r0) if transpose else (ri + r0, ci)
  any_[hs, ri, ci], all_[hs, ri, ci] = _refine_blocks(mask, hs, qi, ki, q_len, kv_len, block_q,
                                                      block_kv)
  return any_, all_


def _refine_blocks(mask, hs, qi, ki, q_len, kv_len, block_q, block_kv):
  """(any, all) of blocks (head hs, q-block qi, kv-block ki), from their elementwise counts."""
  allowed, valid = masks_lib.block_pairs(mask, hs, qi, ki, q_len, kv_len, block_q, block_kv)
  return allowed > 0, allowed == valid


def _compact_np(sel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """sel [..., n, m] bool -> (count [..., n], indices [..., n, max(1, max count)]), int32."""
  count, first, contiguous = _row_stats(sel)
  idx = np.empty(count.shape + (max(1, int(count.max(initial=0))),), np.int32)
  _fill(idx, count, first, None if contiguous else sel)
  return count, idx


def _compact_jnp(sel: jax.Array, width: int) -> tuple[jax.Array, jax.Array]:
  """The jit-friendly twin of ``_compact_np`` with a static slot count ``width``."""
  count = sel.sum(-1, dtype=jnp.int32)
  m = sel.shape[-1]
  width = max(1, min(width, m))
  # Stable order of kept blocks first, ascending index: sort keys (not kept, index).
  key = jnp.where(sel, 0, m) + jnp.arange(m, dtype=jnp.int32)
  idx = jnp.sort(key, axis=-1)[..., :width]
  idx = jnp.where(idx >= m, idx - m, idx).astype(jnp.int32)
  clip = jnp.maximum(jnp.minimum(count, width) - 1, 0)[..., None]
  idx = jnp.take_along_axis(idx, jnp.minimum(jnp.arange(width), clip), axis=-1)
  idx = jnp.where(count[..., None] > 0, idx, 0)
  return jnp.minimum(count, width), idx


def _expand(count: jax.Array, indices: jax.Array, n: int) -> jax.Array:
  """(count [..., r], indices [..., r, M]) -> bool [..., r, n]."""
  slots = jnp.arange(indices.shape[-1])
  valid = slots < count[..., None]
  onehot = (indices[..., None] == jnp.arange(n)) & valid[..., None]
  return onehot.any(-2)
