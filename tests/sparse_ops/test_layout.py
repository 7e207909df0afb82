"""BlockLayout: equals its mask elementwise, jittable construction, compaction invariants."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import sparse_ops as so
from sparse_ops import masks as M
from test_masks import any_mask

import kernel_cases  # tests/sparse_ops/kernel_cases.py


def _masks():
  return st.one_of(any_mask(), st.builds(lambda a, b: M.MultiHead([a, b]), any_mask(depth=1),
                                         any_mask(depth=1)))


@settings(max_examples=40)
@given(_masks(), st.integers(1, 150), st.integers(1, 150), st.sampled_from([8, 16, 32]),
       st.sampled_from([8, 16, 64]))
def test_layout_equals_mask(m, t, s, bq, bk):
  layout = so.BlockLayout.from_mask(m, t, s, block_q=bq, block_kv=bk)
  dense = np.asarray(layout.to_dense())
  expected = M.dense(m, t, s)
  np.testing.assert_array_equal(dense[0], np.broadcast_to(expected, dense.shape[1:]))
  _check_lists(layout)


def _check_lists(layout):
  """Counts match, indices ascending, padded slots repeat the last valid index."""
  for count, idx in ((layout.kv_num_blocks, layout.kv_indices),
                     (layout.full_kv_num_blocks, layout.full_kv_indices),
                     (layout.q_num_blocks, layout.q_indices),
                     (layout.full_q_num_blocks, layout.full_q_indices)):
    count, idx = np.asarray(count), np.asarray(idx)
    slots = np.arange(idx.shape[-1])
    valid = slots < count[..., None]
    diffs = np.diff(idx, axis=-1)
    assert (diffs[valid[..., 1:]] > 0).all()
    last = np.take_along_axis(idx, np.maximum(count - 1, 0)[..., None], -1)
    assert (np.where(valid, idx, last) == idx).all()
  partial, full = (np.asarray(x) for x in layout.block_masks())
  assert not (partial & full).any()
  # the transposed lists describe the same blocks
  nq, nk = layout.num_q_blocks, layout.num_kv_blocks
  from sparse_ops.layout import _expand
  tp = np.asarray(_expand(layout.q_num_blocks, layout.q_indices, nq)).swapaxes(-1, -2)
  tf = np.asarray(_expand(layout.full_q_num_blocks, layout.full_q_indices, nq)).swapaxes(-1, -2)
  np.testing.assert_array_equal(tp, partial)
  np.testing.assert_array_equal(tf, full)


def test_padded_keys_are_never_full_blocks():
  layout = so.BlockLayout.from_mask(M.Full(), 10, 20, block_q=8, block_kv=16)
  partial, full = (np.asarray(x)[0, 0] for x in layout.block_masks())
  assert full[:, 0].all() and not full[:, 1].any() and partial[:, 1].all()


@settings(max_examples=10)
@given(st.integers(1, 3), st.integers(1, 3), st.integers(1, 100), st.integers(1, 100),
       st.sampled_from([8, 16]), st.integers(0, 2**31))
def test_from_blocks_inside_jit_matches_numpy_path(b, h, t, s, blk, seed):
  rng = np.random.default_rng(seed)
  nq, nk = -(-t // blk), -(-s // blk)
  keep = rng.random((b, h, nq, nk)) < 0.5
  full = keep & (rng.random(keep.shape) < 0.5)

  @jax.jit
  def build(keep, full):
    return so.BlockLayout.from_blocks(keep, full, block_q=blk, block_kv=blk, q_len=t, kv_len=s,
                                      mask=M.Causal())

  layout = build(keep, full)
  partial_got, full_got = (np.asarray(x) for x in layout.block_masks())
  full_expected = full & ((np.arange(nk) + 1) * blk <= s)
  np.testing.assert_array_equal(full_got, full_expected)
  np.testing.assert_array_equal(partial_got, keep & ~full_expected)
  _check_lists(layout)
  dense = np.asarray(layout.to_dense())
  blocks = np.repeat(np.repeat(keep, blk, -2), blk, -1)[..., :t, :s]
  fblocks = np.repeat(np.repeat(full_expected, blk, -2), blk, -1)[..., :t, :s]
  np.testing.assert_array_equal(dense, fblocks | (blocks & M.dense(M.Causal(), t, s)))


def test_numpy_compaction_general_and_contiguous_paths_agree():
  from sparse_ops.layout import _compact_jnp, _compact_np
  rng = np.random.default_rng(0)
  for sel in (rng.random((3, 9, 13)) < 0.4, np.tril(np.ones((2, 9, 9), bool)),
              np.zeros((1, 4, 5), bool)):
    c_np, i_np = _compact_np(sel)
    c_j, i_j = _compact_jnp(jnp.asarray(sel), sel.shape[-1])
    np.testing.assert_array_equal(c_np, np.asarray(c_j))
    np.testing.assert_array_equal(i_np, np.asarray(i_j)[..., :i_np.shape[-1]])


def test_layout_is_a_pytree_and_validates():
  layout = so.BlockLayout.from_mask(M.Causal(), 64, 64, block_q=16, block_kv=16)
  leaves, treedef = jax.tree.flatten(layout)
  assert len(leaves) == 8
  again = jax.tree.unflatten(treedef, leaves)
  assert again.block_q == 16 and again.mask == M.Causal()
  with pytest.raises(ValueError, match="block_q=0 must be a positive integer"):
    so.BlockLayout.from_mask(M.Causal(), 64, 64, block_q=0)
  with pytest.raises(ValueError, match="block_kv=-16"):
    so.BlockLayout.from_mask(M.Causal(), 64, 64, block_kv=-16)
  with pytest.raises(ValueError, match="max_blocks=1 is below the 2 blocks a row keeps"):
    so.BlockLayout.from_blocks(np.ones((1, 1, 2, 2), bool), block_q=8, block_kv=8, q_len=16,
                               kv_len=16, max_blocks=1)
  with pytest.raises(ValueError, match=r"keep.shape=\(1, 1, 3, 3\) must be \[Bl, Hl, 4, 4\]"):
    so.BlockLayout.from_blocks(np.ones((1, 1, 3, 3), bool), block_q=16, block_kv=16, q_len=64,
                               kv_len=64)


def test_long_causal_layout_is_block_proportional():
  """T=2**18 with 128×128 blocks, from closed forms (T=2**20 is timed in benchmarks/layout.py)."""
  t = 1 << 18
  layout = so.BlockLayout.from_mask(M.Causal(), t, t)
  n = t // 128
  assert layout.full_kv_indices.shape == (1, 1, n, n - 1)
  assert int(np.asarray(layout.visited_blocks())[0, 0]) == n * (n + 1) // 2
  np.testing.assert_array_equal(np.asarray(layout.kv_indices)[0, 0, :, 0], np.arange(n))


def _band_mask(depth=3):
  prim = st.one_of(st.just(M.Causal()), st.just(M.Full()), st.builds(M.Local, st.integers(1, 120)),
                   st.builds(M.Sink, st.integers(1, 120)),
                   st.builds(M.QueryPrefix, st.integers(0, 120)))

  @st.composite
  def build(draw):
    m = draw(prim)
    for _ in range(draw(st.integers(0, depth))):
      other = draw(prim)
      m = (m & other) if draw(st.booleans()) else (m | other)
    return m
  return build()


@settings(max_examples=300)
@given(_band_mask(), st.integers(1, 300), st.integers(1, 300), st.sampled_from([1, 3, 8, 16, 17, 64]),
       st.sampled_from([1, 5, 8, 16, 64]), st.sampled_from([1 << 26, 0, 64, 4096]))
def test_band_runs_equal_grid_path(m, t, s, bq, bk, budget):
  """The run-based build of banded masks is bit-identical to testing every block (both
  orientations, with and without the elementwise check of uncertain blocks)."""
  from sparse_ops import layout as L
  old, L._REFINE_BUDGET = L._REFINE_BUDGET, budget
  try:
    for transpose in (False, True):
      fast = L._band_lists(m, t, s, bq, bk, transpose)
      assert fast is not None
      grid = L._lists_from_mask(m, t, s, bq, bk, transpose)
      for a, b in zip(grid, fast):
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(a, b)
  finally:
    L._REFINE_BUDGET = old


def test_band_runs_decline_other_masks():
  from sparse_ops import layout as L
  for m in (M.Strided(4), M.Causal() & M.BlockRandom(0.5), M.MultiHead([M.Causal(), M.Local(8)]),
            M.VerticalSlash((3,), (0,)) | M.Local(16)):
    assert L._band_lists(m, 64, 64, 16, 16, False) is None


@pytest.mark.parametrize("case", kernel_cases.ROW_CASES, ids=lambda c: c.name)
def test_xla_runs_per_query_layouts_as_reference_does(case):
  """The kernel cases of per-query layouts (row_keep), on xla: forward and gradients."""
  kernel_cases.check(case, lambda q, k, v, layout, scale, case: so.xla.attention(
      q, k, v, layout, scale), seed=int.from_bytes(os.urandom(4), "little"))
