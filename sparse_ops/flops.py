"""Exact attention FLOP accounting and sparsity, for masks and layouts.

*Model* FLOPs count the allowed (q, k) pairs: ``2·(Dqk + Dv)`` per pair and head forward (one
multiply-add for q·k, one for p·v). *Executed* FLOPs count whole visited blocks, which is what a
block-sparse kernel does. Backward: the model count is 2× forward (dQ, dK, dV, dP matmuls), so
forward+backward is 3×; the executed count adds the QKᵀ recompute of FlashAttention-2, 3.5×.

Sparsity is always against dense causal attention over the same queries: ``1 - nnz / (T(T+1)/2)``
per head, element-level; block-level uses the blocks a causal layout with the same block sizes
visits.
"""

from __future__ import annotations

import numpy as np

from sparse_ops import masks as masks_lib
from sparse_ops.layout import BlockLayout

MODEL_FWD_BWD = 3.0  # forward + backward matmuls, per forward FLOP
EXECUTED_FWD_BWD = 3.5  # ... plus recomputing QKᵀ in the backward pass


def per_pair(head_dim: int, v_head_dim: int | None = None) -> int:
  """Forward FLOPs per allowed (q, k) pair and head: 2·(Dqk + Dv)."""
  return 2 * (head_dim + (head_dim if v_head_dim is None else v_head_dim))


def _heads_factor(defined: int | None, num_heads: int) -> int:
  """How many query heads each head of a mask/layout stands for."""
  if defined in (None, 1):
    return num_heads
  if num_heads % defined:
    raise ValueError(f"num_heads={num_heads} must be a multiple of the {defined} heads given")
  return num_heads // defined


def mask_nnz(mask: masks_lib.Mask, q_len: int, kv_len: int, num_heads: int) -> int:
  """Allowed pairs summed over ``num_heads`` query heads."""
  return mask.nnz(q_len, kv_len) * _heads_factor(mask.num_heads, num_heads)


def model_flops(mask: masks_lib.Mask, q_len: int, kv_len: int, *, num_heads: int, head_dim: int,
                v_head_dim: int | None = None, batch: int = 1, backward: bool = False) -> int:
  """FLOPs of the allowed pairs (what the math needs), forward or forward+backward."""
  fwd = batch * per_pair(head_dim, v_head_dim) * mask_nnz(mask, q_len, kv_len, num_heads)
  return int(fwd * MODEL_FWD_BWD) if backward else fwd


def executed_flops(layout: BlockLayout, *, num_heads: int, head_dim: int,
                   v_head_dim: int | None = None, batch: int | None = None,
                   backward: bool = False):
  """FLOPs of the visited blocks (what a block-sparse kernel runs), forward or fwd+bwd.

  batch: the call's batch size. A layout shared by the batch (Bl=1) counts once per element;
  a per-batch layout (Bl=B) already holds every element, so batch must be None or B.
  """
  visited = np.asarray(layout.visited_blocks(), np.int64)  # [Bl, Hl]
  total = int(visited.sum()) * _heads_factor(layout.num_heads, num_heads)
  if layout.batch_size > 1:
    if batch not in (None, layout.batch_size):
      raise ValueError(f"batch={batch} does not match the layout's per-batch size "
                       f"{layout.batch_size}; pass batch=None or {layout.batch_size}")
  else:
    total *= 1 if batch is None else batch
  fwd = total * layout.block_q * layout.block_kv * per_pair(head_dim, v_head_dim)
  return int(fwd * EXECUTED_FWD_BWD) if backward else fwd


def sparsity(mask: masks_lib.Mask, q_len: int, kv_len: int | None = None) -> float:
  """Element-level sparsity against dense causal: 1 - nnz / (T(T+1)/2), averaged over heads."""
  kv_len = q_len if kv_len is None else kv_len
  heads = mask.num_heads or 1
  return 1.0 - mask.nnz(q_len, kv_len) / (heads * masks_lib.causal_pairs(q_len))


def causal_blocks(q_len: int, kv_len: int, block_q: int, block_kv: int) -> int:
  """Blocks a dense causal layout visits at these block sizes (the block-level baseline)."""
  q0 = np.arange(-(-q_len // block_q))[:, None] * block_q
  k0 = np.arange(-(-kv_len // block_kv))[None, :] * block_kv
  q1 = np.minimum(q0 + block_q, q_len)
  k1 = np.minimum(k0 + block_kv, kv_len)
  return int(masks_lib.Causal().block_bounds(q0, q1, k0, k1)[0].sum())


def block_sparsity(layout: BlockLayout) -> float:
  """Block-level sparsity against dense causal at the same block sizes, averaged over [B, H]."""
  visited = np.asarray(layout.visited_blocks(), np.float64).mean()
  base = causal_blocks(layout.q_len, layout.kv_len, layout.block_q, layout.block_kv)
  return float(1.0 - visited / base)


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
