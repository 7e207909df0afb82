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

Static fields: block sizes, true lengths and the elementwise ``mask`` (None: partial blocks are
partial only because they hold padded keys past ``kv_len``).

Two constructors, one compaction rule: ``from_mask`` (static masks, numpy, at trace time; cost
grows with the number of blocks, never T×S) and ``from_blocks`` (block-level booleans, jnp,
usable inside jit, e.g. from content-based selection).
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


def _check_block(name: str, value) -> None:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
    raise ValueError(f"{name}={value!r} must be a positive integer")


@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=["kv_num_blocks", "kv_indices", "full_kv_num_blocks", "full_kv_indices",
                 "q_num_blocks", "q_indices", "full_q_num_blocks", "full_q_indices"],
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
            f"mask={self.mask!r})")

  # ------------------------------------------------------------------------------ constructors
  @classmethod
  def from_mask(cls, mask: masks_lib.Mask, q_len: int, kv_len: int, *, block_q: int = 128,
                block_kv: int = 128) -> BlockLayout:
    """The layout of a static mask; numpy work proportional to the number of blocks."""
    if not isinstance(mask, masks_lib.Mask):
      raise ValueError(f"mask={mask!r} must be a sparse_ops.masks.Mask")
    for name, v in (("q_len", q_len), ("kv_len", kv_len), ("block_q", block_q),
                    ("block_kv", block_kv)):
      _check_block(name, v)
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
    for name, v in (("q_len", q_len), ("kv_len", kv_len), ("block_q", block_q),
                    ("block_kv", block_kv)):
      _check_block(name, v)
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
  pn, pi, fn, fi = _lists_from_mask(mask, q_len, kv_len, block_q, block_kv, transpose=False)
  tpn, tpi, tfn, tfi = _lists_from_mask(mask, q_len, kv_len, block_q, block_kv, transpose=True)
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
  qo, ko = np.arange(block_q), np.arange(block_kv)
  for start in range(0, len(hs), 256):
    sl = np.s_[start:start + 256]
    h = hs[sl]
    q = qi[sl][:, None, None] * block_q + qo[None, :, None]
    k = ki[sl][:, None, None] * block_kv + ko[None, None, :]
    valid = (q < q_len) & (k < kv_len)
    if mask.num_heads is None:
      ok = np.asarray(mask(q, k), bool)
    else:  # evaluate each block with its own head's mask
      ok = np.stack([np.asarray(mask.head(int(hh))(q[j], k[j]), bool) for j, hh in enumerate(h)])
    ok = np.broadcast_to(ok, valid.shape)
    any_[h, ri[sl], ci[sl]] = (ok & valid).any((1, 2))
    all_[h, ri[sl], ci[sl]] = (ok | ~valid).all((1, 2))
  return any_, all_


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
