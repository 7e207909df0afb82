"""Content-based block selection: which kv-blocks each q-block attends to, chosen from q and k.

    layout = so.select_blocks(q, k, block_q=64, block_kv=64, budget=so.Budget.density(0.1))
    out = so.attention(q, k, v, layout=layout)

Per batch element and kv-head group (the layout has one head per kv-head, shared by the query
heads of its group, as in NSA/MoBA), every causal kv-block gets a score from pooled queries and
keys; each q-block keeps the sink block(s), its local (diagonal) block(s), and the best-scoring
rest up to its budget. Selection runs inside jit and is not differentiated (it returns integer
indices); attention over the chosen blocks is.

Selection is causal in what it reads, not only in what it picks, so it can be used in training:
a q-block is represented by the mean of the ``block_q`` queries *ending at its first position*
(the last ones every query of the block has seen), scored kv-blocks lie wholly at or before
that position (blocks the diagonal cuts are always kept, never scored, and left out of every
score's normalisation), and vertical-slash statistics are running means over earlier q-blocks.
No query's blocks depend on a later token. With wide q-blocks that rule chooses a question's
blocks from the queries before it; ``per_query=True`` lets every query choose from itself (the
selection of one-query blocks) and lays the choices out in ``block_q``-row tiles with per-query
flags (``BlockLayout.row_keep``), which the tiled kernels run.

Scorings:
  "mean":  mean-pooled query block · mean-pooled key block (MoBA, NSA's compressed scores).
  "quest": an upper bound of q·k over the key block from its per-channel min/max (Quest):
           sum_d max(q_d · kmax_d, q_d · kmin_d), with the mean-pooled query block.
  "vertical_slash": MInference's structure at block level, chosen from content: a column score
           per kv-block (the mean attention, softmax of mean scores, that q-blocks up to this
           one give it) plus a diagonal score per block offset (the same running mean along
           each block diagonal); each q-block ranks its kv-blocks by the sum, so the kept set
           is a few vertical lines and slashes that evolve along the sequence.

Budgets (``Budget``) give each q-block a number of blocks from its number ``n`` of causal
kv-blocks: fixed count, fixed density, length-adaptive ``c · n**alpha`` (longer contexts keep a
smaller fraction, the Sparse Frontier finding), or coverage-adaptive (FlexPrefill): the fewest
blocks whose estimated attention mass reaches a threshold.

Positions are raw indices (query i, key j; causal means j <= i), as everywhere in sparse_ops.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

from sparse_ops import masks as masks_lib
from sparse_ops.layout import BlockLayout

Scoring = Literal["mean", "quest", "vertical_slash"]


@dataclasses.dataclass(frozen=True)
class Budget:
  """How many kv-blocks a q-block keeps, given its number n of causal kv-blocks.

  Build with the constructors: ``Budget.blocks(k)``, ``Budget.density(d)``,
  ``Budget.adaptive(c, alpha)``, ``Budget.coverage(threshold)``. Sink and local blocks count
  toward the budget; a budget never drops them (so a row keeps at least those).

  ``budget.traced(value)``: the same kind with its value a jax scalar, so one jitted function
  serves every value of a kind (an evaluation's sparsities) and selects exactly what the
  constant budget would; its static bound on a row's blocks is then the whole row.
  """

  kind: Literal["blocks", "density", "adaptive", "coverage"]
  value: float
  alpha: float = 1.0

  @classmethod
  def blocks(cls, k: int) -> Budget:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k <= 0:
      raise ValueError(f"Budget.blocks(k={k!r}): k must be a positive integer")
    return cls("blocks", int(k))

  @classmethod
  def density(cls, d: float) -> Budget:
    if not (isinstance(d, (int, float)) and 0.0 < d <= 1.0):
      raise ValueError(f"Budget.density(d={d!r}): d must be in (0, 1]")
    return cls("density", float(d))

  @classmethod
  def adaptive(cls, c: float, alpha: float = 0.5) -> Budget:
    if not (c > 0):
      raise ValueError(f"Budget.adaptive(c={c!r}): c must be > 0")
    if not (0.0 <= alpha <= 1.0):
      raise ValueError(f"Budget.adaptive(alpha={alpha!r}): alpha must be in [0, 1]")
    return cls("adaptive", float(c), float(alpha))

  @classmethod
  def coverage(cls, threshold: float) -> Budget:
    if not (0.0 < threshold <= 1.0):
      raise ValueError(f"Budget.coverage(threshold={threshold!r}): threshold must be in (0, 1]")
    return cls("coverage", float(threshold))

  def traced(self, value: jax.Array) -> Budget:
    """This kind (and alpha) with ``value`` a jax scalar (checked by the caller: it may be a
    tracer). Counts are computed as for the constant (``counts`` in the same dtypes)."""
    return dataclasses.replace(self, value=jnp.asarray(value, jnp.float32))

  @property
  def is_traced(self) -> bool:
    return isinstance(self.value, jax.Array)

  def counts(self, n):
    """Blocks to keep for rows with n causal kv-blocks (int arrays; not for 'coverage')."""
    if self.kind == "blocks":
      k = (jnp.full_like(n, int(self.value)) if not self.is_traced
           else jnp.broadcast_to(self.value.astype(n.dtype), n.shape))
    elif self.kind == "density":
      k = jnp.ceil(self.value * n - 1e-6).astype(n.dtype)
    elif self.kind == "adaptive":
      k = jnp.ceil(self.value * n.astype(jnp.float32) ** self.alpha - 1e-6).astype(n.dtype)
    else:
      raise ValueError("coverage budgets depend on scores; use select_blocks")
    return jnp.clip(k, 1, n)

  def max_blocks(self, n_max: int) -> int:
    """A static bound on any row's kept blocks (sizes the layout's slot arrays)."""
    if self.is_traced:  # unknown at trace time: the whole row
      return n_max
    if self.kind == "blocks":
      return min(n_max, int(self.value))
    if self.kind == "density":
      return min(n_max, math.ceil(self.value * n_max))
    if self.kind == "adaptive":
      return min(n_max, math.ceil(self.value * n_max ** self.alpha))
    return n_max


def select_blocks(q: jax.Array, k: jax.Array, *, block_q: int, block_kv: int, budget: Budget,
                  scoring: Scoring = "mean", sink_blocks: int = 1, local_blocks: int = 1,
                  dense_before: jax.Array | int | None = None,
                  per_query: bool = False) -> BlockLayout:
  """A causal BlockLayout [B, Hkv, ...] of the best-scoring kv-blocks per q-block.

  Args:
    q: [B, T, Hq, D]; k: [B, S, Hkv, D] (Hq % Hkv == 0).
    block_q, block_kv: block sizes of the layout.
    budget: a ``Budget``; sink and local blocks count toward it and are always kept.
    scoring: "mean" or "quest".
    sink_blocks: leading kv-blocks every q-block keeps (>= 0).
    local_blocks: causal kv-blocks ending at the diagonal every q-block keeps (>= 1). Blocks the
      diagonal cuts (partially causal) are always kept too, so content-chosen blocks are full.
    dense_before: position, scalar or [B], before which queries attend densely (the "decode"
      phase of an evaluation: context queries dense, question/answer queries sparse). A q-block
      holding any query before it is dense. None: every q-block is sparse ("prefill").
    per_query: every query chooses its own kv-blocks, from itself (the selection of
      ``block_q=1``, the same allowed pairs), while the layout keeps ``block_q``-row q-blocks that
      visit the union of their queries' blocks, with each query's choice in ``row_keep``: the
      tiled kernels run it (one-row blocks are no tiles) at the cost of the union.
  """
  if per_query:  # the layout's block_q is checked by from_query_blocks
    t, s = q.shape[1], k.shape[1]
    rows = select_block_mask(q, k, block_q=1, block_kv=block_kv, budget=budget,
                             scoring=scoring, sink_blocks=sink_blocks,
                             local_blocks=local_blocks, dense_before=dense_before)
    return BlockLayout.from_query_blocks(rows, block_q=block_q, block_kv=block_kv, q_len=t,
                                         kv_len=s, mask=masks_lib.Causal())
  keep = select_block_mask(q, k, block_q=block_q, block_kv=block_kv, budget=budget,
                           scoring=scoring, sink_blocks=sink_blocks, local_blocks=local_blocks,
                           dense_before=dense_before)
  t, s = q.shape[1], k.shape[1]
  full = keep & _fully_causal(t, s, block_q, block_kv)
  # Slots must hold every kept block (every causal block when some rows are dense).
  slots = (int(_causal_counts(t, s, block_q, block_kv).max()) if dense_before is not None
           else _kept_bound(t, s, block_q, block_kv, budget, sink_blocks, local_blocks))
  return BlockLayout.from_blocks(keep, full, block_q=block_q, block_kv=block_kv, q_len=t,
                                 kv_len=s, mask=masks_lib.Causal(), max_blocks=slots)


def select_block_mask(q, k, *, block_q, block_kv, budget, scoring="mean", sink_blocks=1,
                      local_blocks=1, dense_before=None) -> jax.Array:
  """The kept-block booleans [B, Hkv, nq, nk] behind ``select_blocks``."""
  _validate(q, k, block_q, block_kv, budget, scoring, sink_blocks, local_blocks)
  q, k = jax.lax.stop_gradient(q), jax.lax.stop_gradient(k)
  b, t, hq, d = q.shape
  s, hkv = k.shape[1], k.shape[2]
  nq, nk = -(-t // block_q), -(-s // block_kv)
  scores = block_scores(q, k, block_q=block_q, block_kv=block_kv, scoring=scoring)
  causal = jnp.asarray(_causal_blocks(t, s, block_q, block_kv))  # [nq, nk]
  n = jnp.asarray(_causal_counts(t, s, block_q, block_kv))  # [nq]
  forced = jnp.asarray(_forced_blocks(t, s, block_q, block_kv, sink_blocks, local_blocks))
  ranked = jnp.where(forced, jnp.inf, jnp.where(causal, scores, -jnp.inf))
  if budget.kind == "coverage":
    order = jnp.argsort(-ranked, axis=-1, stable=True)
    counts = _coverage_counts(ranked, scores, order, causal, budget.value, block_kv, d)
  else:
    counts = jnp.broadcast_to(budget.counts(n), (b, hkv, nq))
  n_forced = forced.sum(-1)
  counts = jnp.clip(jnp.maximum(counts, n_forced), 0, n)
  if dense_before is not None:
    first_q = jnp.arange(nq) * block_q  # a q-block is dense if it holds a query before the bound
    bound = jnp.broadcast_to(jnp.asarray(dense_before), (b,))[:, None, None]
    counts = jnp.where(first_q[None, None, :] < bound, n, counts)
  k_max = _kept_bound(t, s, block_q, block_kv, budget, sink_blocks, local_blocks)
  return (_top_counts(ranked, counts, k_max) | (counts >= n)[..., None]) & causal


def _kept_bound(t, s, block_q, block_kv, budget, sink_blocks, local_blocks) -> int:
  """The most blocks a sparse row keeps (a static int): the budget's bound, or the forced blocks
  if more. Rows that keep every causal block (dense rows) are not bounded by it."""
  n_max = int(_causal_counts(t, s, block_q, block_kv).max())
  forced = int(_forced_blocks(t, s, block_q, block_kv, sink_blocks, local_blocks).sum(-1).max())
  return min(n_max, max(budget.max_blocks(n_max), forced))


def _top_counts(ranked, counts, k_max: int):
  """The ``counts`` [...] best of ``ranked`` [..., nk] per row, ties to the lower index: the
  blocks whose position in a stable descending sort is below the count, found from the
  count-th largest value (``lax.top_k`` over ``k_max`` >= every count below its row's length,
  ``_kept_bound``) instead of two argsorts of the whole row (per query: T rows a layer)."""
  top = jax.lax.top_k(ranked, k_max)[0]
  threshold = jnp.take_along_axis(top, jnp.clip(counts - 1, 0, k_max - 1)[..., None], axis=-1)
  above = ranked > threshold
  tied = ranked == threshold
  tie_rank = jnp.cumsum(tied, axis=-1) - 1  # among the row's ties, in index order
  room = counts[..., None] - above.sum(-1, keepdims=True)
  return above | (tied & (tie_rank < room))


def block_scores(q, k, *, block_q, block_kv, scoring="mean") -> jax.Array:
  """Estimated q-block × kv-block affinities [B, Hkv, nq, nk] (float32)."""
  b, t, hq, d = q.shape
  s, hkv = k.shape[1], k.shape[2]
  nq, nk = -(-t // block_q), -(-s // block_kv)
  qf = _pool_queries(q.astype(jnp.float32), nq, block_q)  # [B, nq, Hq, D]
  qf = qf.reshape(b, nq, hkv, hq // hkv, d).mean(3)  # the group shares one layout
  kf = k.astype(jnp.float32)
  if scoring in ("mean", "vertical_slash"):
    kp = _pool_mean(kf, nk, block_kv, s)  # [B, nk, Hkv, D]
    mean = jnp.einsum("bihd,bjhd->bhij", qf, kp) * d ** -0.5
    if scoring == "mean":
      return mean
    return _vertical_slash(mean, _fully_causal(t, s, block_q, block_kv), block_q, block_kv)
  kmax = _pool_extreme(kf, nk, block_kv, s, jnp.max, -jnp.inf)
  kmin = _pool_extreme(kf, nk, block_kv, s, jnp.min, jnp.inf)
  # sum_d max(q_d·kmax_d, q_d·kmin_d) = q·(kmax+kmin)/2 + |q|·(kmax-kmin)/2, because
  # max(x, y) = (x+y)/2 + |x-y|/2 and kmax >= kmin: two matmuls instead of a [.., nq, nk, D]
  # product (gigabytes when decode scores every query at T=8k).
  mid = jnp.einsum("bihd,bjhd->bhij", qf, (kmax + kmin) * 0.5)
  spread = jnp.einsum("bihd,bjhd->bhij", jnp.abs(qf), (kmax - kmin) * 0.5)
  return (mid + spread) * d ** -0.5


def _vertical_slash(mean, scored, block_q, block_kv):
  """[B, H, nq, nk] mean scores -> column score + diagonal score, both running means over rows.

  Row i's estimated attention p[i, :] is a softmax over the kv-blocks it scores: those wholly
  at or before its first query (`scored`, from `_fully_causal`). Blocks the diagonal cuts hold
  keys later than that query; they are kept anyway, and letting them into the softmax would make
  every row's scores depend on those keys (a later token changing earlier outputs). A row with
  no scored block (the first, or the first few when block_q < block_kv) has p = 0 and does not
  count in the means. Row i's column score for kv-block j is the mean of p[i', j] over rows
  i' <= i; its diagonal score for offset o is the mean of p along offset o over those rows
  (offsets in kv-blocks from the kv-block holding the q-block's first query, clipped at 0).
  """
  nq, nk = scored.shape
  has = scored.any(-1)  # [nq] numpy: rows with at least one scored block
  p = jax.nn.softmax(jnp.where(scored, mean, -jnp.inf), axis=-1)
  p = jnp.where(jnp.asarray(has)[:, None], p, 0.0)  # softmax of no block is NaN
  rows = jnp.asarray(np.maximum(np.cumsum(has), 1), jnp.float32)[:, None]
  column = jnp.cumsum(p, axis=-2) / rows
  off_np = np.clip((np.arange(nq)[:, None] * block_q) // block_kv - np.arange(nk)[None, :], 0,
                   nk - 1)
  off = jnp.asarray(off_np)
  # per row, scatter p into offset bins ([nq, nk] offsets), then running sums over rows
  per_row = jnp.zeros(p.shape, p.dtype).at[..., jnp.arange(nq)[:, None], off].add(p)
  hits = np.zeros((nq, nk))
  np.add.at(hits, (np.broadcast_to(np.arange(nq)[:, None], off_np.shape)[scored], off_np[scored]),
            1.0)
  diagonal = jnp.cumsum(per_row, axis=-2) / jnp.maximum(jnp.asarray(hits.cumsum(0)), 1.0)
  return column + jnp.take_along_axis(diagonal, jnp.broadcast_to(off, diagonal.shape), axis=-1)


def _pool_queries(q, n, blk):
  """[B, T, H, D] -> [B, n, H, D]: q-block i is the mean of queries (i·blk - blk, i·blk].

  The queries ending at the block's first position: every query of the block has seen them, so
  choosing blocks from them leaks nothing from the future into training.
  """
  c = jnp.cumsum(q, axis=1)
  c = jnp.concatenate([jnp.zeros_like(c[:, :1]), c], axis=1)  # c[:, m] = sum of q[:, :m]
  end = jnp.arange(n) * blk + 1  # exclusive end: through position i·blk
  start = jnp.maximum(end - blk, 0)
  size = (end - start).astype(q.dtype)[None, :, None, None]
  return (jnp.take(c, end, axis=1) - jnp.take(c, start, axis=1)) / size


def _pool_mean(x, n, blk, length):
  """[B, L, H, D] -> mean over each block of real positions [B, n, H, D]."""
  b, _, h, d = x.shape
  x = jnp.pad(x, ((0, 0), (0, n * blk - length), (0, 0), (0, 0)))
  sizes = jnp.minimum(blk, length - jnp.arange(n) * blk).astype(jnp.float32)
  return x.reshape(b, n, blk, h, d).sum(2) / sizes[None, :, None, None]


def _pool_extreme(x, n, blk, length, reduce, pad_value):
  b, _, h, d = x.shape
  x = jnp.pad(x, ((0, 0), (0, n * blk - length), (0, 0), (0, 0)), constant_values=pad_value)
  return reduce(x.reshape(b, n, blk, h, d), axis=2)


def _coverage_counts(ranked, scores, order, causal, threshold, block_kv, d):
  """Fewest blocks (in rank order) whose estimated softmax mass reaches ``threshold``.

  A block's mass is estimated as block_kv · exp(score): its keys' logits approximated by the
  pooled score. Forced blocks come first in the order, so they count toward the mass too.
  """
  logits = jnp.where(causal, scores + jnp.log(float(block_kv)), -jnp.inf)
  p = jax.nn.softmax(logits, axis=-1)
  p_sorted = jnp.take_along_axis(p, order, axis=-1)
  cum = jnp.cumsum(p_sorted, axis=-1)
  # count = 1 + number of leading blocks whose cumulative mass is still below the threshold
  return 1 + (cum < threshold - 1e-6).sum(-1).astype(jnp.int32)


def _forced_blocks(t, s, block_q, block_kv, sink_blocks, local_blocks) -> np.ndarray:
  """[nq, nk] bool: blocks every q-block keeps whatever the content.

  The first ``sink_blocks`` and last ``local_blocks`` causal kv-blocks, and every block that is
  causal but not fully causal (the diagonal region: one block when block_q == block_kv). So all
  content-chosen blocks are full, and the allowed pairs of a selection depend only on how many
  blocks each row keeps (``selected_pairs``), never on which.
  """
  causal = _causal_blocks(t, s, block_q, block_kv)
  n = causal.sum(-1)
  j = np.arange(causal.shape[1])[None, :]
  edge = (j < sink_blocks) | (j > n[:, None] - 1 - local_blocks)
  return causal & (edge | ~_fully_causal(t, s, block_q, block_kv))


def selected_pairs(q_len: int, kv_len: int, *, block_q: int, block_kv: int, budget: Budget,
                   sink_blocks: int = 1, local_blocks: int = 1,
                   dense_before: int | None = None) -> tuple[int, int]:
  """(allowed pairs, visited blocks) of any ``select_blocks`` layout with these arguments.

  Exact without any q or k: forced blocks are fixed, the others are full, and a row keeps as
  many as its budget says. ``dense_before`` (an int here: one bound for the whole batch) counts
  the decode variant: q-blocks holding a query before it keep every causal block, as
  ``select_blocks`` does. Per head (one layout head); multiply by heads and batch. Coverage
  budgets depend on the scores: they have no static count and raise.
  """
  if budget.kind == "coverage":
    raise ValueError("Budget.coverage keeps a content-dependent number of blocks: its pairs "
                     "are only known per input (count them on the layout)")
  if dense_before is not None and (isinstance(dense_before, bool) or
                                   not isinstance(dense_before, (int, np.integer)) or
                                   dense_before < 0):
    raise ValueError(f"dense_before={dense_before!r} must be None or an integer >= 0 (a "
                     "per-example bound has per-example counts: call once per bound)")
  forced = _forced_blocks(q_len, kv_len, block_q, block_kv, sink_blocks, local_blocks)
  n = _causal_counts(q_len, kv_len, block_q, block_kv)
  kept = np.maximum(np.asarray(budget.counts(jnp.asarray(n))), forced.sum(-1))
  first = np.arange(len(n)) * block_q
  rows = np.minimum(block_q, q_len - first)
  dense = first < (dense_before or 0)  # q-blocks with a query before the bound
  kept = np.where(dense, n, kept)
  sparse = ~dense
  pairs = int(((kept - forced.sum(-1)) * rows * block_kv)[sparse].sum())
  for i, j in zip(*np.nonzero(forced & sparse[:, None])):
    q0, k0 = int(i) * block_q, int(j) * block_kv
    hq, hk = int(rows[i]), min(block_kv, kv_len - k0)
    pairs += masks_lib._pairs_at_distance(hq, hk, k0 - q0, hq - 1)  # k <= q inside the block
  for i in np.nonzero(dense)[0]:  # every causal pair of the row: min(q + 1, kv_len) keys each
    q = np.arange(first[i], first[i] + rows[i])
    pairs += int(np.minimum(q + 1, kv_len).sum())
  return pairs, int(kept.sum())


def _causal_blocks(t, s, block_q, block_kv) -> np.ndarray:
  """[nq, nk] bool: kv-blocks holding at least one key <= some query of the q-block."""
  nq, nk = -(-t // block_q), -(-s // block_kv)
  q_last = np.minimum((np.arange(nq) + 1) * block_q, t) - 1
  return (np.arange(nk) * block_kv)[None, :] <= q_last[:, None]


def _causal_counts(t, s, block_q, block_kv) -> np.ndarray:
  return _causal_blocks(t, s, block_q, block_kv).sum(-1).astype(np.int32)


def _fully_causal(t, s, block_q, block_kv) -> np.ndarray:
  """[nq, nk] bool: every (q, k) pair of the block satisfies k <= q."""
  nq, nk = -(-t // block_q), -(-s // block_kv)
  k_last = (np.arange(nk) + 1) * block_kv - 1
  return k_last[None, :] <= (np.arange(nq) * block_q)[:, None]


def _validate(q, k, block_q, block_kv, budget, scoring, sink_blocks, local_blocks) -> None:
  if q.ndim != 4 or k.ndim != 4:
    raise ValueError(f"q.shape={q.shape} and k.shape={k.shape} must be [B, T, Hq, D] and "
                     "[B, S, Hkv, D]")
  if q.shape[0] != k.shape[0] or q.shape[3] != k.shape[3]:
    raise ValueError(f"q.shape={q.shape} and k.shape={k.shape} must share B and D")
  if q.shape[2] % k.shape[2]:
    raise ValueError(f"Hq={q.shape[2]} must be a multiple of Hkv={k.shape[2]}")
  for name, v in (("block_q", block_q), ("block_kv", block_kv)):
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v <= 0:
      raise ValueError(f"{name}={v!r} must be a positive integer")
  if not isinstance(budget, Budget):
    raise ValueError(f"budget={budget!r} must be a sparse_ops.Budget (Budget.blocks(k), "
                     "Budget.density(d), Budget.adaptive(c, alpha), Budget.coverage(threshold))")
  if scoring not in ("mean", "quest", "vertical_slash"):
    raise ValueError(f"scoring={scoring!r}; valid: 'mean', 'quest', 'vertical_slash'")
  if isinstance(sink_blocks, bool) or not isinstance(sink_blocks, int) or sink_blocks < 0:
    raise ValueError(f"sink_blocks={sink_blocks!r} must be an integer >= 0")
  if isinstance(local_blocks, bool) or not isinstance(local_blocks, int) or local_blocks < 1:
    raise ValueError(f"local_blocks={local_blocks!r} must be an integer >= 1 (every row keeps "
                     "its diagonal block)")
