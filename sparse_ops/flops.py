"""Exact attention FLOP accounting and sparsity, for masks, layouts and selection budgets.

One counter: ``pairs(what, T, S)`` counts the allowed (q, k) pairs of a static ``Mask`` (its
exact ``nnz``), of a ``BlockLayout`` (full blocks by area, partial blocks elementwise against the
layout's mask), or of a content selection described by ``Selected`` (the count every
``select_blocks`` layout with those arguments has, known before any q or k). Every FLOP and
sparsity number below is that count times a constant.

*Model* FLOPs count the allowed (q, k) pairs: ``2·(Dqk + Dv)`` per pair and head forward (one
multiply-add for q·k, one for p·v). *Executed* FLOPs count whole visited blocks, which is what a
block-sparse kernel does. Backward: the model count is 2× forward (dQ, dK, dV, dP matmuls), so
forward+backward is 3×; the executed count adds the QKᵀ recompute of FlashAttention-2, 3.5×.

Sparsity is always against dense causal attention over the same queries: ``1 - nnz / (T(T+1)/2)``
per head, element-level; block-level uses the blocks a causal layout with the same block sizes
visits.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

from sparse_ops import masks as masks_lib
from sparse_ops import selection as selection_lib
from sparse_ops.layout import BlockLayout

MODEL_FWD_BWD = 3.0  # forward + backward matmuls, per forward FLOP
EXECUTED_FWD_BWD = 3.5  # ... plus recomputing QKᵀ in the backward pass


def per_pair(head_dim: int, v_head_dim: int | None = None) -> int:
  """Forward FLOPs per allowed (q, k) pair and head: 2·(Dqk + Dv)."""
  return 2 * (head_dim + (head_dim if v_head_dim is None else v_head_dim))


@dataclasses.dataclass(frozen=True)
class Selected:
  """A content selection before any content: the ``select_blocks`` arguments that fix how many
  blocks and pairs each of its rows keeps (``selected_pairs``). Counted per layout head, so it
  stands for every query head. dense_before: one int bound (decode: q-blocks holding a query
  before it keep every causal block), or None (every query selects)."""

  budget: selection_lib.Budget
  block_q: int
  block_kv: int
  sink_blocks: int = 1
  local_blocks: int = 1
  dense_before: int | None = None


@functools.lru_cache(maxsize=4096)  # a study asks for the same selection's count many times
def _selected(sel: Selected, q_len: int, kv_len: int) -> tuple[int, int]:
  return selection_lib.selected_pairs(
      q_len, kv_len, block_q=sel.block_q, block_kv=sel.block_kv, budget=sel.budget,
      sink_blocks=sel.sink_blocks, local_blocks=sel.local_blocks, dense_before=sel.dense_before)


def _lengths(what, q_len: int | None, kv_len: int | None) -> tuple[int, int]:
  """(q_len, kv_len): a layout's own (any given must match), else the given ones."""
  if isinstance(what, BlockLayout):
    if q_len not in (None, what.q_len) or kv_len not in (None, what.kv_len):
      raise ValueError(f"q_len={q_len}, kv_len={kv_len} do not match the layout's "
                       f"{what.q_len}×{what.kv_len}; pass None or those")
    return what.q_len, what.kv_len
  if q_len is None:
    raise ValueError(f"q_len=None: counting a {type(what).__name__} needs its lengths")
  return q_len, q_len if kv_len is None else kv_len


def _check(what) -> None:
  if not isinstance(what, (masks_lib.Mask, BlockLayout, Selected)):
    raise TypeError(f"cannot count a {type(what).__name__}: give a sparse_ops Mask, a "
                    "BlockLayout or a flops.Selected")


def _count_heads(what) -> int:
  """How many (batch, head) rows `pairs` sums over."""
  if isinstance(what, BlockLayout):
    return what.batch_size * what.num_heads
  return (what.num_heads or 1) if isinstance(what, masks_lib.Mask) else 1


def pairs(what, q_len: int | None = None, kv_len: int | None = None) -> int:
  """Allowed (q, k) pairs: the one counter every FLOP and sparsity number comes from.

  Mask: exact ``nnz`` over [0, q_len) × [0, kv_len), summed over the heads the mask defines.
  BlockLayout (lengths are its own): full blocks by area, partial blocks elementwise against
  its mask (all their in-bounds pairs when it has none), summed over [Bl, Hl].
  Selected: per head, of any ``select_blocks`` layout with those arguments (exact before any
  content). kv_len defaults to q_len.
  """
  _check(what)
  q_len, kv_len = _lengths(what, q_len, kv_len)
  if isinstance(what, masks_lib.Mask):
    return what.nnz(q_len, kv_len)
  if isinstance(what, Selected):
    return _selected(what, q_len, kv_len)[0]
  partial, full = (np.asarray(b) for b in what.block_masks())  # [Bl, Hl, nq, nk]
  q0 = np.arange(what.num_q_blocks) * what.block_q
  k0 = np.arange(what.num_kv_blocks) * what.block_kv
  area = ((np.minimum(q0 + what.block_q, q_len) - q0)[:, None]
          * (np.minimum(k0 + what.block_kv, kv_len) - k0)[None, :])
  total = int((full * area).sum())
  bs, hs, qi, ki = np.nonzero(partial)
  if what.mask is None and what.row_keep is None:
    return total + int(area[qi, ki].sum())
  rows = None
  if what.row_keep is not None:  # [Bl, Hl, nk, T_pad] -> each partial block's [block_q] rows
    keep = np.asarray(what.row_keep).reshape(what.row_keep.shape[:3] + (what.num_q_blocks,
                                                                        what.block_q))
    rows = keep[bs, hs, ki, qi] != 0
  allowed, _ = masks_lib.block_pairs(what.mask, hs, qi, ki, q_len, kv_len, what.block_q,
                                     what.block_kv, rows)
  return total + int(allowed.sum())


def visited_blocks(what, q_len: int | None = None, kv_len: int | None = None) -> float:
  """Visited (partial + full) blocks per (batch, head) row: a layout's mean over [Bl, Hl], or
  a selection's per head. A mask has no blocks until it has a layout."""
  _check(what)
  if isinstance(what, masks_lib.Mask):
    raise TypeError("a Mask visits no blocks by itself: build its BlockLayout.from_mask")
  if isinstance(what, Selected):
    return float(_selected(what, *_lengths(what, q_len, kv_len))[1])
  return float(np.asarray(what.visited_blocks(), np.float64).mean())


def _heads_factor(defined: int | None, num_heads: int) -> int:
  """How many query heads each head of a mask/layout stands for."""
  if defined in (None, 1):
    return num_heads
  if num_heads % defined:
    raise ValueError(f"num_heads={num_heads} must be a multiple of the {defined} heads given")
  return num_heads // defined


def _batch_factor(what, batch: int | None) -> int:
  """A per-batch layout (Bl=B) already holds every element, so batch must be None or B; a
  shared mask, layout or selection counts once per element."""
  if isinstance(what, BlockLayout) and what.batch_size > 1:
    if batch not in (None, what.batch_size):
      raise ValueError(f"batch={batch} does not match the layout's per-batch size "
                       f"{what.batch_size}; pass batch=None or {what.batch_size}")
    return 1
  return 1 if batch is None else batch


def mask_nnz(mask, q_len: int | None, kv_len: int | None, num_heads: int) -> int:
  """Allowed pairs summed over ``num_heads`` query heads."""
  return pairs(mask, q_len, kv_len) * _heads_factor(getattr(mask, "num_heads", None), num_heads)


def model_flops(what, q_len: int | None = None, kv_len: int | None = None, *, num_heads: int,
                head_dim: int, v_head_dim: int | None = None, batch: int | None = None,
                backward: bool = False) -> int:
  """FLOPs of the allowed pairs (what the math needs) of a mask, layout or selection, forward
  or forward+backward. batch: the call's batch size (see ``executed_flops``)."""
  fwd = (_batch_factor(what, batch) * per_pair(head_dim, v_head_dim)
         * mask_nnz(what, q_len, kv_len, num_heads))
  return int(fwd * MODEL_FWD_BWD) if backward else fwd


def executed_flops(what, *, num_heads: int, head_dim: int, v_head_dim: int | None = None,
                   batch: int | None = None, backward: bool = False, q_len: int | None = None,
                   kv_len: int | None = None):
  """FLOPs of the visited blocks (what a block-sparse kernel runs) of a layout or a selection
  (give its q_len), forward or fwd+bwd.

  batch: the call's batch size. A layout shared by the batch (Bl=1) counts once per element;
  a per-batch layout (Bl=B) already holds every element, so batch must be None or B.
  """
  if isinstance(what, Selected):
    blocks, heads = _selected(what, *_lengths(what, q_len, kv_len))[1], None
  else:
    blocks = int(np.asarray(what.visited_blocks(), np.int64).sum())  # over [Bl, Hl]
    heads = what.num_heads
  total = blocks * _heads_factor(heads, num_heads) * _batch_factor(what, batch)
  fwd = total * what.block_q * what.block_kv * per_pair(head_dim, v_head_dim)
  return int(fwd * EXECUTED_FWD_BWD) if backward else fwd


def sparsity(what, q_len: int | None = None, kv_len: int | None = None) -> float:
  """Element-level sparsity against dense causal: 1 - nnz / (T(T+1)/2), averaged over heads."""
  n = pairs(what, q_len, kv_len)
  q_len = _lengths(what, q_len, kv_len)[0]
  return 1.0 - n / (_count_heads(what) * masks_lib.causal_pairs(q_len))


def causal_blocks(q_len: int, kv_len: int, block_q: int, block_kv: int) -> int:
  """Blocks a dense causal layout visits at these block sizes (the block-level baseline)."""
  q0 = np.arange(-(-q_len // block_q))[:, None] * block_q
  k0 = np.arange(-(-kv_len // block_kv))[None, :] * block_kv
  q1 = np.minimum(q0 + block_q, q_len)
  k1 = np.minimum(k0 + block_kv, kv_len)
  return int(masks_lib.Causal().block_bounds(q0, q1, k0, k1)[0].sum())


def block_sparsity(what, q_len: int | None = None, kv_len: int | None = None) -> float:
  """Block-level sparsity of a layout (averaged over [B, H]) or a selection, against dense
  causal at the same block sizes."""
  visited = visited_blocks(what, q_len, kv_len)
  q_len, kv_len = _lengths(what, q_len, kv_len)
  return float(1.0 - visited / causal_blocks(q_len, kv_len, what.block_q, what.block_kv))


def density(layout: BlockLayout) -> float:
  """Visited blocks over all blocks (nq × nk), averaged over [B, H]."""
  visited = np.asarray(layout.visited_blocks(), np.float64).mean()
  return float(visited / (layout.num_q_blocks * layout.num_kv_blocks))


def selection_flops(q_len: int, kv_len: int, *, num_heads: int, num_kv_heads: int, head_dim: int,
                    block_q: int, block_kv: int, scoring: str = "mean", batch: int = 1) -> int:
  """Arithmetic of ``select_blocks``: pooling plus block scores (sorting is not counted).

  Part of the executed cost of a content-selected layout: add it to ``executed_flops``.
  """
  nq, nk = -(-q_len // block_q), -(-kv_len // block_kv)
  pool = batch * head_dim * (q_len * num_heads + kv_len * num_kv_heads * (1 if scoring == "mean"
                                                                          else 2))
  per_score = 2 * head_dim if scoring == "mean" else 4 * head_dim  # quest: two products, max, sum
  return int(pool + batch * num_kv_heads * nq * nk * per_score)
