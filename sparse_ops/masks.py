"""Attention masks as composable elementwise predicates.

A mask says which (query position, key position) pairs may attend: ``m(q_idx, kv_idx) -> bool``
over numpy or jnp integer arrays with broadcasting. Masks are frozen dataclasses (hashable, so they
can be static arguments of ``jax.jit``) and combine with ``&`` and ``|``; ``MultiHead`` gives each
head its own mask.

Besides the predicate, every mask answers two questions in closed form, so that block layouts and
exact counts never need a T×S array:

- ``block_bounds(q0, q1, k0, k1)``: for rectangles ``[q0, q1) × [k0, k1)`` (broadcast arrays), is
  *any* pair allowed, and are *all* pairs allowed. Primitives answer exactly. ``A & B`` and
  ``A | B`` combine the answers, which is exact except where both operands are partial in a block;
  there the block layout builder checks the block elementwise (see ``layout.py``).
- ``nnz(T, S)``: the exact number of allowed pairs in ``[0, T) × [0, S)``, summed over the heads
  the mask defines (one for a head-uniform mask).

Positions are raw indices: query ``i`` is position ``i`` and key ``j`` is position ``j``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np

Array = Any  # np.ndarray or jax.Array


def _check_positive_int(name: str, value: Any) -> None:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
    raise ValueError(f"{name}={value!r} must be a positive integer")


def _check_nonnegative_int(name: str, value: Any) -> None:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
    raise ValueError(f"{name}={value!r} must be a non-negative integer")


class Mask:
  """Base class. Subclasses implement ``__call__``, ``block_bounds`` and, if they can, ``_nnz``."""

  num_heads: int | None = None  # None: the same mask for every head.

  def __call__(self, q_idx: Array, kv_idx: Array) -> Array:
    raise NotImplementedError

  def block_bounds(self, q0: Array, q1: Array, k0: Array, k1: Array) -> tuple[Array, Array]:
    """(any allowed, all allowed) for each rectangle [q0, q1) × [k0, k1); numpy arrays."""
    raise NotImplementedError

  def head(self, h: int) -> Mask:
    """The head-uniform mask that head ``h`` uses."""
    return self

  def nnz(self, q_len: int, kv_len: int) -> int:
    """Exact allowed pairs in [0, q_len) × [0, kv_len), summed over this mask's heads."""
    _check_positive_int("q_len", q_len)
    _check_positive_int("kv_len", kv_len)
    if self.num_heads is not None:
      return sum(self.head(h).nnz(q_len, kv_len) for h in range(self.num_heads))
    exact = self._nnz(q_len, kv_len)
    if exact is not None:
      return int(exact)
    return _count_by_blocks(self, q_len, kv_len)

  def _nnz(self, q_len: int, kv_len: int) -> int | None:
    return None

  def _band_constraints(self):
    """Closed-form block bounds as linear constraints, or None when there are none.

    ``(any, all)``: each a tuple of ``(kterm, qterm, op, c)`` meaning ``kterm - qterm op c``,
    with kterm in ("k0", "k1", None), qterm in ("q0", "q1", None) (None: 0) and op "<=" or ">=";
    a tuple is their conjunction (empty: always). Each term is monotone in the block index, so a
    row of blocks satisfies it on one contiguous run: ``layout.py`` finds the runs with binary
    search instead of testing every block. Must agree exactly with ``block_bounds``.
    """
    return None

  def __and__(self, other: Mask) -> Mask:
    other = _as_mask(other)
    # Known containments keep block bounds exact without elementwise refinement (the common
    # ``Local(w) & Causal()`` is just ``Local(w)``).
    if _contains(other, self):
      return self
    if _contains(self, other):
      return other
    return And(self, other)

  def __or__(self, other: Mask) -> Mask:
    other = _as_mask(other)
    # The same containments: a causal mask adds nothing to Causal() (a dense pattern's sink,
    # ``Causal() | (Sink(n) & Causal())``, is Causal(), which cuDNN's dense check and the
    # compiled-program caches recognise), and nothing adds to Full().
    if _contains(self, other):
      return self
    if _contains(other, self):
      return other
    return Or(self, other)


def _as_mask(m: Any) -> Mask:
  if not isinstance(m, Mask):
    raise TypeError(f"can only combine a Mask with a Mask, got {type(m).__name__}")
  return m


def _contains(big: Mask, small: Mask) -> bool:
  """True when every pair `small` allows is known to be in `big` (Full, or Causal over a
  causal mask): then ``big & small`` is `small` and ``big | small`` is `big`."""
  return isinstance(big, Full) or (isinstance(big, Causal) and _is_causal(small))


def _is_causal(m: Mask) -> bool:
  """True when m is known to allow only k <= q (so m & Causal == m)."""
  if isinstance(m, (Causal, Local, VerticalSlash)):
    return True
  if isinstance(m, And):
    return _is_causal(m.a) or _is_causal(m.b)
  if isinstance(m, Or):
    return _is_causal(m.a) and _is_causal(m.b)
  if isinstance(m, MultiHead):
    return all(_is_causal(x) for x in m.masks)
  return False


def _count_by_blocks(mask: Mask, q_len: int, kv_len: int, block: int = 128) -> int:
  """Counts allowed pairs: full blocks by area, partial blocks elementwise (never T×S at once)."""
  nq, nk = -(-q_len // block), -(-kv_len // block)
  q0 = (np.arange(nq) * block)[:, None]
  k0 = (np.arange(nk) * block)[None, :]
  q1 = np.minimum(q0 + block, q_len)
  k1 = np.minimum(k0 + block, kv_len)
  any_, all_ = mask.block_bounds(q0, q1, k0, k1)
  any_, all_ = np.broadcast_to(any_, (nq, nk)), np.broadcast_to(all_, (nq, nk))
  total = int(((q1 - q0) * (k1 - k0))[all_].sum())
  qi, ki = np.nonzero(any_ & ~all_)
  allowed, _ = block_pairs(mask, np.zeros(len(qi), np.int64), qi, ki, q_len, kv_len, block, block)
  return total + int(allowed.sum())


def block_pairs(mask: Mask | None, hs, qi, ki, q_len: int, kv_len: int, block_q: int,
                block_kv: int, rows=None) -> tuple[np.ndarray, np.ndarray]:
  """(allowed pairs, in-bounds pairs) of each block (head hs, q-block qi, kv-block ki), counted
  elementwise, 256 blocks at a time: the one elementwise counter behind ``nnz``'s fallback, the
  layout builder's refinement of uncertain blocks and ``flops.pairs`` of a layout. ``mask``
  None allows every pair; ``rows`` [blocks, block_q] bool (a layout's ``row_keep``) narrows each
  block's allowed pairs to the queries that keep it."""
  allowed = np.zeros(len(hs), np.int64)
  valid_n = np.zeros(len(hs), np.int64)
  qo, ko = np.arange(block_q), np.arange(block_kv)
  for start in range(0, len(hs), 256):  # bounded memory: 256 blocks at a time
    sl = np.s_[start:start + 256]
    q = qi[sl][:, None, None] * block_q + qo[None, :, None]
    k = ki[sl][:, None, None] * block_kv + ko[None, None, :]
    valid = (q < q_len) & (k < kv_len)
    if mask is None:
      ok = np.ones((1, 1, 1), bool)
    elif mask.num_heads is None:
      ok = np.asarray(mask(q, k), bool)
    else:  # evaluate each block with its own head's mask
      ok = np.stack([np.asarray(mask.head(int(h))(q[j], k[j]), bool)
                     for j, h in enumerate(hs[sl])])
    ok = np.broadcast_to(ok, valid.shape)
    if rows is not None:
      ok = ok & np.asarray(rows[sl], bool)[:, :, None]
    allowed[sl] = (ok & valid).sum((1, 2))
    valid_n[sl] = valid.sum((1, 2))
  return allowed, valid_n


def _pairs_at_distance(q_len: int, kv_len: int, lo: int, hi: int) -> int:
  """Number of (q, k) in [0,q_len)×[0,kv_len) with lo <= q - k <= hi."""
  # Sum over q of |{k : q - hi <= k <= q - lo} ∩ [0, kv_len)|, in O(1) via arithmetic series.
  def count_le(d: int) -> int:  # pairs with q - k <= d, i.e. k >= q - d
    total = 0
    # for each q: number of k in [max(0, q - d), kv_len) = kv_len - max(0, q-d), clipped at 0
    # q - d <= 0 for q <= d: kv_len each
    n_full = max(0, min(q_len, d + 1))
    total += n_full * kv_len
    # q in [max(0,d+1), q_len): count = kv_len - (q - d) when positive, i.e. q < kv_len + d
    a, b = max(0, d + 1), min(q_len, kv_len + d)
    if b > a:
      # sum_{q=a}^{b-1} (kv_len + d - q)
      n = b - a
      first, last = kv_len + d - a, kv_len + d - (b - 1)
      total += n * (first + last) // 2
    return total
  return count_le(hi) - count_le(lo - 1)


# ----------------------------------------------------------------------------------- primitives


@dataclasses.dataclass(frozen=True)
class Full(Mask):
  """Every pair allowed (bidirectional)."""

  def __call__(self, q_idx, kv_idx):
    return (q_idx >= 0) | (kv_idx >= 0)

  def block_bounds(self, q0, q1, k0, k1):
    t = np.ones(np.broadcast_shapes(np.shape(q0), np.shape(k0)), bool)
    return t, t

  def _nnz(self, q_len, kv_len):
    return q_len * kv_len

  def _band_constraints(self):
    return (), ()


@dataclasses.dataclass(frozen=True)
class Causal(Mask):
  """Key position <= query position."""

  def __call__(self, q_idx, kv_idx):
    return kv_idx <= q_idx

  def block_bounds(self, q0, q1, k0, k1):
    return k0 <= q1 - 1, k1 - 1 <= q0

  def _nnz(self, q_len, kv_len):
    return _pairs_at_distance(q_len, kv_len, 0, q_len)

  def _band_constraints(self):  # k0 <= q1 - 1; k1 - 1 <= q0
    return (("k0", "q1", "<=", -1),), (("k1", "q0", "<=", 1),)


@dataclasses.dataclass(frozen=True)
class Local(Mask):
  """Causal sliding window: ``q - window < k <= q`` (the query sees itself and window-1 before)."""

  window: int

  def __post_init__(self):
    _check_positive_int("window", self.window)

  def __call__(self, q_idx, kv_idx):
    return (kv_idx <= q_idx) & (kv_idx > q_idx - self.window)

  def block_bounds(self, q0, q1, k0, k1):
    w = self.window
    any_ = (k0 <= q1 - 1) & (k1 - 1 >= q0 - w + 1)
    all_ = (k1 - 1 <= q0) & (k0 >= q1 - w)
    return any_, all_

  def _nnz(self, q_len, kv_len):
    return _pairs_at_distance(q_len, kv_len, 0, self.window - 1)

  def _band_constraints(self):  # the four inequalities of block_bounds
    w = self.window
    return ((("k0", "q1", "<=", -1), ("k1", "q0", ">=", 2 - w)),
            (("k1", "q0", "<=", 1), ("k0", "q1", ">=", -w)))


def _prefix_bounds(n, start, end, other):
  """(any, all) of "position < n" along one axis of blocks [start, end), broadcast against the
  other axis: Sink bounds keys, QueryPrefix bounds queries."""
  shape = np.broadcast_shapes(np.shape(start), np.shape(other))
  return (np.broadcast_to(np.asarray(start) < n, shape),
          np.broadcast_to(np.asarray(end) <= n, shape))


@dataclasses.dataclass(frozen=True)
class Sink(Mask):
  """The first ``n`` keys (attention sinks), for every query. Combine with Causal."""

  n: int

  def __post_init__(self):
    _check_positive_int("n", self.n)

  def __call__(self, q_idx, kv_idx):
    return (kv_idx < self.n) & (q_idx >= 0)

  def block_bounds(self, q0, q1, k0, k1):
    return _prefix_bounds(self.n, k0, k1, q0)

  def _nnz(self, q_len, kv_len):
    return q_len * min(self.n, kv_len)

  def _band_constraints(self):  # k0 < n; k1 <= n
    return (("k0", None, "<=", self.n - 1),), (("k1", None, "<=", self.n),)


@dataclasses.dataclass(frozen=True)
class Strided(Mask):
  """Keys at distances that are multiples of ``stride`` (Sparse Transformer's strided head).

  Allows ``(q - k) % stride == 0`` in both directions; combine with Causal for a decoder.
  """

  stride: int

  def __post_init__(self):
    _check_positive_int("stride", self.stride)

  def __call__(self, q_idx, kv_idx):
    return (q_idx - kv_idx) % self.stride == 0

  def block_bounds(self, q0, q1, k0, k1):
    s = self.stride
    lo, hi = q0 - (k1 - 1), (q1 - 1) - k0  # q - k ranges over every integer in [lo, hi]
    any_ = np.floor_divide(hi, s) * s >= lo
    all_ = (s == 1) | ((lo == hi) & (lo % s == 0))
    return any_, np.broadcast_to(all_, np.shape(any_))

  def _nnz(self, q_len, kv_len):
    # pairs with q - k = m*stride, for m over the reachable multiples
    lo, hi = -(kv_len - 1), q_len - 1
    m = np.arange(-(-lo // self.stride), hi // self.stride + 1) * self.stride
    per_d = np.minimum(q_len, kv_len + m) - np.maximum(0, m)
    return int(np.clip(per_d, 0, None).sum())


def _hash_u32(a: Array, b: Array, seed: int) -> Array:
  """A stateless integer hash of (a, b, seed) in [0, 2**32), same on numpy and jnp.

  Integer multiply/xor/shift only (murmur3 finaliser), so the predicate is identical inside XLA,
  Pallas kernels and numpy.
  """
  a = a.astype(np.uint32) if hasattr(a, "astype") else np.uint32(a)
  b = b.astype(np.uint32) if hasattr(b, "astype") else np.uint32(b)
  h = a * np.uint32(0x9E3779B1) ^ (b * np.uint32(0x85EBCA77)) ^ np.uint32(seed & 0xFFFFFFFF)
  h = h ^ (h >> np.uint32(16))
  h = h * np.uint32(0x7FEB352D)
  h = h ^ (h >> np.uint32(15))
  h = h * np.uint32(0x846CA68B)
  h = h ^ (h >> np.uint32(16))
  return h


@dataclasses.dataclass(frozen=True)
class BlockRandom(Mask):
  """Random ``block × block`` tiles, each kept with probability ``density`` (stateless in seed).

  Not causal by itself: combine with Causal (and usually Local) for a decoder.
  """

  density: float
  seed: int = 0
  block: int = 128

  def __post_init__(self):
    if not (isinstance(self.density, (int, float)) and 0.0 <= self.density <= 1.0):
      raise ValueError(f"density={self.density!r} must be in [0, 1]")
    _check_nonnegative_int("seed", self.seed)
    _check_positive_int("block", self.block)

  def _threshold(self) -> int:
    return min(int(round(self.density * 2.0**32)), 2**32 - 1) if self.density < 1 else None

  def _tile_kept(self, qt: Array, kt: Array) -> Array:
    thr = self._threshold()
    if thr is None:
      return (qt >= 0) | (kt >= 0)
    return _hash_u32(qt, kt, self.seed) < np.uint32(thr)

  def __call__(self, q_idx, kv_idx):
    return self._tile_kept(q_idx // self.block, kv_idx // self.block)

  def block_bounds(self, q0, q1, k0, k1):
    q0, q1, k0, k1 = np.broadcast_arrays(*(np.asarray(x) for x in (q0, q1, k0, k1)))
    r = self.block
    tq0, tq1 = q0 // r, (q1 - 1) // r + 1  # tile ranges [tq0, tq1) overlapping each rectangle
    tk0, tk1 = k0 // r, (k1 - 1) // r + 1
    nq, nk = int(tq1.max(initial=1)), int(tk1.max(initial=1))
    kept = self._tile_kept(np.arange(nq)[:, None], np.arange(nk)[None, :]).astype(np.int64)
    sat = np.zeros((nq + 1, nk + 1), np.int64)  # summed-area table: O(tiles), any rectangle in O(1)
    sat[1:, 1:] = kept.cumsum(0).cumsum(1)
    count = sat[tq1, tk1] - sat[tq0, tk1] - sat[tq1, tk0] + sat[tq0, tk0]
    return count > 0, count == (tq1 - tq0) * (tk1 - tk0)

  def _nnz(self, q_len, kv_len):
    r = self.block
    nq, nk = -(-q_len // r), -(-kv_len // r)
    kept = self._tile_kept(np.arange(nq)[:, None], np.arange(nk)[None, :])
    hq = np.minimum(r, q_len - np.arange(nq) * r)
    hk = np.minimum(r, kv_len - np.arange(nk) * r)
    return int((kept * hq[:, None] * hk[None, :]).sum())


@dataclasses.dataclass(frozen=True)
class VerticalSlash(Mask):
  """Fixed key columns (vertical lines) and fixed diagonals ``q - k = d`` (slashes).

  ``columns``: key positions every query may see; ``diagonals``: offsets ``d >= 0``. Causal by
  construction (a column is only visible from queries at or after it).
  """

  columns: tuple[int, ...] = ()
  diagonals: tuple[int, ...] = (0,)

  def __post_init__(self):
    object.__setattr__(self, "columns", tuple(sorted({int(c) for c in self.columns})))
    object.__setattr__(self, "diagonals", tuple(sorted({int(d) for d in self.diagonals})))
    if any(c < 0 for c in self.columns):
      raise ValueError(f"columns={self.columns} must be non-negative key positions")
    if any(d < 0 for d in self.diagonals):
      raise ValueError(f"diagonals={self.diagonals} must be non-negative offsets q - k")
    if not self.columns and not self.diagonals:
      raise ValueError("VerticalSlash needs at least one column or diagonal")

  def __call__(self, q_idx, kv_idx):
    ok = (q_idx < 0) & (kv_idx < 0)  # all-False of the broadcast shape, numpy or jnp
    for c in self.columns:
      ok = ok | ((kv_idx == c) & (q_idx >= c))
    for d in self.diagonals:
      ok = ok | (q_idx - kv_idx == d)
    return ok

  def block_bounds(self, q0, q1, k0, k1):
    shape = np.broadcast_shapes(np.shape(q0), np.shape(k0))
    any_ = np.zeros(shape, bool)
    cols = np.asarray(self.columns, np.int64)
    if cols.size:
      # a column c in [k0, k1) that some query q >= c sees: the smallest such c is the witness
      first = np.searchsorted(cols, k0)
      c = cols[np.minimum(first, cols.size - 1)]
      any_ |= (first < cols.size) & (c < k1) & (c <= q1 - 1)
    for d in self.diagonals:
      any_ |= (q0 - (k1 - 1) <= d) & (d <= (q1 - 1) - k0)
    # "all" needs every pair allowed: only 1×1 rectangles (or tiny ones) can be; be exact cheaply
    one = ((q1 - q0) == 1) & ((k1 - k0) == 1)
    all_ = one & np.asarray(self(q0, k0), bool)
    return any_, np.broadcast_to(all_, shape)

  def _nnz(self, q_len, kv_len):
    total = sum(max(0, min(q_len, kv_len + d) - d) for d in self.diagonals)
    for c in self.columns:
      if c < kv_len:
        # queries q >= c, minus those already counted on a diagonal (q - c = d)
        qs = max(0, q_len - c)
        total += qs - sum(1 for d in self.diagonals if c + d < q_len)
    return total


@dataclasses.dataclass(frozen=True)
class QueryPrefix(Mask):
  """Queries at positions < n see every key; later queries see none. Combine with Causal.

  For phases: ``sparse | (QueryPrefix(p) & Causal())`` keeps the first p queries dense (a
  context read densely) and makes the rest follow the sparse pattern (decoding-time sparsity).
  """

  n: int

  def __post_init__(self):
    _check_nonnegative_int("n", self.n)

  def __call__(self, q_idx, kv_idx):
    return (q_idx < self.n) & (kv_idx >= 0)

  def block_bounds(self, q0, q1, k0, k1):
    return _prefix_bounds(self.n, q0, q1, k0)

  def _nnz(self, q_len, kv_len):
    return min(self.n, q_len) * kv_len

  def _band_constraints(self):  # q0 < n; q1 <= n
    return ((None, "q0", ">=", 1 - self.n),), ((None, "q1", ">=", -self.n),)


# ------------------------------------------------------------------------------------- algebra


@dataclasses.dataclass(frozen=True)
class And(Mask):
  a: Mask
  b: Mask

  def __post_init__(self):
    object.__setattr__(self, "num_heads", _combined_heads(self.a, self.b))

  def __call__(self, q_idx, kv_idx):
    return self.a(q_idx, kv_idx) & self.b(q_idx, kv_idx)

  def block_bounds(self, q0, q1, k0, k1):
    any_a, all_a = self.a.block_bounds(q0, q1, k0, k1)
    any_b, all_b = self.b.block_bounds(q0, q1, k0, k1)
    # any(A&B) <= any(A)&any(B); exact when either operand is full there.
    return any_a & any_b, all_a & all_b

  def head(self, h):
    return And(self.a.head(h), self.b.head(h))


@dataclasses.dataclass(frozen=True)
class Or(Mask):
  a: Mask
  b: Mask

  def __post_init__(self):
    object.__setattr__(self, "num_heads", _combined_heads(self.a, self.b))

  def __call__(self, q_idx, kv_idx):
    return self.a(q_idx, kv_idx) | self.b(q_idx, kv_idx)

  def block_bounds(self, q0, q1, k0, k1):
    any_a, all_a = self.a.block_bounds(q0, q1, k0, k1)
    any_b, all_b = self.b.block_bounds(q0, q1, k0, k1)
    # all(A|B) >= all(A)|all(B); exact when either operand is empty there.
    return any_a | any_b, all_a | all_b

  def head(self, h):
    return Or(self.a.head(h), self.b.head(h))


@dataclasses.dataclass(frozen=True)
class MultiHead(Mask):
  """One mask per head: ``MultiHead([Local(64), Local(256), Causal(), ...])``."""

  masks: tuple[Mask, ...]

  def __init__(self, masks: Sequence[Mask]):
    masks = tuple(masks)
    if not masks:
      raise ValueError("MultiHead needs at least one mask")
    for i, m in enumerate(masks):
      if not isinstance(m, Mask) or m.num_heads is not None:
        raise ValueError(f"MultiHead masks[{i}]={m!r} must be a head-uniform Mask")
    object.__setattr__(self, "masks", masks)
    object.__setattr__(self, "num_heads", len(masks))

  def head(self, h):
    if not 0 <= h < len(self.masks):
      raise ValueError(f"head={h} must be in [0, {len(self.masks)})")
    return self.masks[h]

  def __call__(self, q_idx, kv_idx):
    """[H, *broadcast(q_idx, kv_idx)]."""
    outs = [m(q_idx, kv_idx) for m in self.masks]
    xp = _array_module(outs[0])
    return xp.stack([xp.broadcast_to(o, xp.broadcast_shapes(*[x.shape for x in outs]))
                     for o in outs])

  def block_bounds(self, q0, q1, k0, k1):
    """[H, *broadcast shape]."""
    bounds = [m.block_bounds(q0, q1, k0, k1) for m in self.masks]
    shape = np.broadcast_shapes(np.shape(q0), np.shape(k0))
    return (np.stack([np.broadcast_to(a, shape) for a, _ in bounds]),
            np.stack([np.broadcast_to(b, shape) for _, b in bounds]))


def _combined_heads(a: Mask, b: Mask) -> int | None:
  if a.num_heads is not None and b.num_heads is not None and a.num_heads != b.num_heads:
    raise ValueError(f"cannot combine masks over {a.num_heads} and {b.num_heads} heads")
  return a.num_heads if a.num_heads is not None else b.num_heads


def _array_module(x):
  if isinstance(x, np.ndarray) or np.isscalar(x):
    return np
  import jax.numpy as jnp  # only when given jax arrays
  return jnp


def dense(mask: Mask, q_len: int, kv_len: int, q_start: int = 0) -> np.ndarray:
  """The mask as a numpy bool array over queries q_start..q_len-1: [T - q_start, S], or
  [H, T - q_start, S] for MultiHead. For tests, small T, or a few rows of a long one."""
  q = np.arange(q_start, q_len)[:, None]
  k = np.arange(kv_len)[None, :]
  out = np.asarray(mask(q, k), bool)
  return np.broadcast_to(out, out.shape[:-2] + (q_len - q_start, kv_len)).copy()


def causal_pairs(q_len: int) -> int:
  """Allowed pairs of dense causal attention over q_len positions: T(T+1)/2."""
  return q_len * (q_len + 1) // 2


__all__ = [
    "Mask", "Full", "Causal", "Local", "Sink", "Strided", "BlockRandom", "VerticalSlash",
    "QueryPrefix",
    "And", "Or", "MultiHead", "dense", "causal_pairs",
]
