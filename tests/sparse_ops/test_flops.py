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


# ------------------------------------------------------------- one counter: mask, layout, budget
COMPOSITES = {
    "local_sink": M.Local(40) | (M.Sink(5) & M.Causal()),
    "strided": M.Causal() & (M.Local(6) | M.Strided(9)),
    "random": M.Causal() & (M.BlockRandom(0.4, 3, 16) | M.Local(1)),
    "per_head": M.MultiHead([M.Causal(), M.Local(17), M.Causal() & M.Strided(5)]),
}


@pytest.mark.parametrize("name", sorted(COMPOSITES))
@pytest.mark.parametrize("t, s, blocks", [(128, 128, (16, 16)), (100, 100, (32, 16)),
                                          (96, 130, (16, 32))])
def test_pairs_of_a_mask_and_of_its_layout_are_the_elementwise_count(name, t, s, blocks):
  mask = COMPOSITES[name]
  brute = int(M.dense(mask, t, s).sum())
  assert so.flops.pairs(mask, t, s) == brute
  layout = so.BlockLayout.from_mask(mask, t, s, block_q=blocks[0], block_kv=blocks[1])
  assert so.flops.pairs(layout) == int(np.asarray(layout.to_dense()).sum()) == brute
  assert so.flops.sparsity(layout) == pytest.approx(so.flops.sparsity(mask, t, s), abs=1e-15)
  h, d = 6, 8  # a 3-head mask stands for 2 query heads each: both ways count the same FLOPs
  assert so.flops.model_flops(layout, num_heads=h, head_dim=d) == \
      so.flops.model_flops(mask, t, s, num_heads=h, head_dim=d)


@pytest.mark.parametrize("t, blk", [(128, 16), (200, 32), (64, 128)])
def test_block_pairs_is_the_one_elementwise_counter(t, blk):
  """nnz's fallback (`_count_by_blocks`) and the layout builder's refinement both count through
  `masks.block_pairs`; its counts are the brute-force ones, block by block."""
  mask = COMPOSITES["strided"]
  nb = -(-t // blk)
  qi, ki = (a.ravel() for a in np.meshgrid(np.arange(nb), np.arange(nb), indexing="ij"))
  allowed, valid = M.block_pairs(mask, np.zeros(len(qi), np.int64), qi, ki, t, t, blk, blk)
  dense = np.zeros((nb * blk, nb * blk), bool)
  dense[:t, :t] = M.dense(mask, t, t)
  want = dense.reshape(nb, blk, nb, blk).sum((1, 3)).ravel()
  np.testing.assert_array_equal(allowed, want)
  assert valid.sum() == t * t and M._count_by_blocks(mask, t, t, blk) == want.sum()


@pytest.mark.parametrize("budget", [so.Budget.density(0.3), so.Budget.blocks(3),
                                    so.Budget.adaptive(1.0, 0.5)])
@pytest.mark.parametrize("dense_before", [None, 37])
def test_a_selection_budget_counts_what_any_selected_layout_holds(budget, dense_before):
  t, b, hkv, blk = 128, 2, 2, 16
  sel = so.flops.Selected(budget, blk, blk, sink_blocks=1, dense_before=dense_before)
  assert (so.flops.pairs(sel, t), so.flops.visited_blocks(sel, t)) == so.selected_pairs(
      t, t, block_q=blk, block_kv=blk, budget=budget, sink_blocks=1, dense_before=dense_before)
  kq, kk = jax.random.split(jax.random.PRNGKey(np.random.randint(1 << 30)))
  q, k = jax.random.normal(kq, (b, t, 4, 8)), jax.random.normal(kk, (b, t, hkv, 8))
  layout = so.select_blocks(q, k, block_q=blk, block_kv=blk, budget=budget, sink_blocks=1,
                            dense_before=dense_before)
  assert so.flops.pairs(layout) == b * hkv * so.flops.pairs(sel, t)
  assert so.flops.sparsity(layout) == pytest.approx(so.flops.sparsity(sel, t), abs=1e-15)
  assert so.flops.block_sparsity(layout) == pytest.approx(so.flops.block_sparsity(sel, t),
                                                          abs=1e-15)
  kw = dict(num_heads=4, head_dim=8)
  assert so.flops.model_flops(layout, **kw) == so.flops.model_flops(sel, t, batch=b, **kw)
  assert so.flops.executed_flops(layout, **kw) == so.flops.executed_flops(sel, q_len=t, batch=b,
                                                                          **kw)


def test_counter_errors_name_the_bad_value():
  layout = so.BlockLayout.from_mask(M.Causal(), 64, 64, block_q=16, block_kv=16)
  with pytest.raises(ValueError, match=r"q_len=32, kv_len=None do not match the layout's 64×64"):
    so.flops.pairs(layout, 32)
  with pytest.raises(TypeError, match=r"cannot count a str: give a sparse_ops Mask"):
    so.flops.pairs("causal", 64)
  with pytest.raises(TypeError, match="a Mask visits no blocks by itself"):
    so.flops.block_sparsity(M.Causal(), 64)
  with pytest.raises(ValueError, match="q_len=None: counting a Causal needs its lengths"):
    so.flops.pairs(M.Causal())
  with pytest.raises(ValueError, match="batch=3 does not match the layout's per-batch size 2"):
    so.flops.model_flops(jax.tree.map(lambda x: np.concatenate([x, x]), layout), num_heads=1,
                         head_dim=8, batch=3)
