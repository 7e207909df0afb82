"""FLOP counts and sparsity against hand-derived formulas."""

import jax
import numpy as np
import pytest

import sparse_ops as so
from sparse_ops import masks as M


def test_model_flops_hand_formulas():
  t, h, d, b = 1000, 4, 64, 3
  causal = t * (t + 1) // 2
  assert so.flops.model_flops(M.Causal(), t, t, num_heads=h, head_dim=d, batch=b) == \
      2 * (d + d) * h * b * causal
  assert so.flops.model_flops(M.Causal(), t, t, num_heads=h, head_dim=d, batch=b,
                              backward=True) == 3 * 2 * (d + d) * h * b * causal
  w = 100  # Local(w): rows q >= w-1 see w keys, row q < w-1 sees q+1
  local = (t - (w - 1)) * w + (w - 1) * w // 2
  assert M.Local(w).nnz(t, t) == local
  assert so.flops.model_flops(M.Local(w), t, t, num_heads=h, head_dim=d, v_head_dim=32) == \
      2 * (d + 32) * h * local
  # per-head masks sum their heads; a mask over Hkv heads stands for G query heads each
  mh = M.MultiHead([M.Causal(), M.Local(w)])
  assert so.flops.mask_nnz(mh, t, t, num_heads=4) == 2 * (causal + local)


def test_executed_flops_count_whole_blocks():
  t, blk, h, d = 1024, 128, 2, 64
  n = t // blk
  layout = so.BlockLayout.from_mask(M.Causal(), t, t, block_q=blk, block_kv=blk)
  blocks = n * (n + 1) // 2
  assert so.flops.executed_flops(layout, num_heads=h, head_dim=d) == blocks * blk * blk * 4 * d * h
  assert so.flops.executed_flops(layout, num_heads=h, head_dim=d, batch=2, backward=True) == \
      int(3.5 * 2 * blocks * blk * blk * 4 * d * h)
  # A per-batch layout (Bl=2) already holds both elements: same count as batch=2 above.
  stacked = jax.tree.map(lambda x: np.concatenate([x, x]), layout)
  assert so.flops.executed_flops(stacked, num_heads=h, head_dim=d, backward=True) == \
      int(3.5 * 2 * blocks * blk * blk * 4 * d * h)
  with pytest.raises(ValueError, match="batch=3"):
    so.flops.executed_flops(stacked, num_heads=h, head_dim=d, batch=3)
  local = so.BlockLayout.from_mask(M.Local(256), t, t, block_q=blk, block_kv=blk)
  # each q-block i sees blocks i-2..i (window 256 reaches into the second previous block)
  assert int(np.asarray(local.visited_blocks()).sum()) == 1 + 2 + 3 * (n - 2)


def test_sparsity_element_and_block_level():
  t = 4096
  assert so.flops.sparsity(M.Causal(), t) == 0.0
  assert so.flops.sparsity(M.Local(t), t) == 0.0
  assert so.flops.sparsity(M.Local(512), t) == pytest.approx(
      1 - (512 * t - 512 * 511 // 2) / (t * (t + 1) / 2))
  causal = so.BlockLayout.from_mask(M.Causal(), t, t)
  assert so.flops.block_sparsity(causal) == 0.0
  assert so.flops.causal_blocks(t, t, 128, 128) == 32 * 33 // 2
  local = so.BlockLayout.from_mask(M.Local(512), t, t)
  # q-block i sees i-4..i: the window of 512 reaches one element into block i-4
  assert so.flops.block_sparsity(local) == pytest.approx(1 - (1 + 2 + 3 + 4 + 5 * 28) / 528)
  assert so.flops.density(causal) == pytest.approx(528 / 1024)
