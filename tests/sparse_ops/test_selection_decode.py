"""selected_pairs with dense_before (the decode phase) counts the layout select_blocks builds."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sparse_ops as so


@pytest.mark.parametrize("t, s, bq, bk, budget, sink, bound", [
    (64, 64, 8, 8, so.Budget.density(0.25), 0, 37),
    (64, 64, 1, 8, so.Budget.adaptive(0.8), 1, 50),  # one-query q-blocks (evaluation decode)
    (72, 40, 16, 8, so.Budget.blocks(2), 2, 16),  # bound on a block edge; S < T
    (40, 72, 8, 16, so.Budget.density(0.5), 1, 0),  # bound 0: no dense row (= prefill)
    (33, 33, 8, 8, so.Budget.blocks(1), 0, 100),  # bound past the end: all dense; ragged T
])
def test_decode_counts_equal_the_selected_layout(t, s, bq, bk, budget, sink, bound):
  rng = np.random.default_rng()
  q = jnp.asarray(rng.normal(size=(2, t, 4, 8)), jnp.float32)
  k = jnp.asarray(rng.normal(size=(2, s, 2, 8)), jnp.float32)
  layout = jax.jit(lambda q, k: so.select_blocks(  # jit: one dispatch instead of many ops
      q, k, block_q=bq, block_kv=bk, budget=budget, sink_blocks=sink, dense_before=bound))(q, k)
  pairs, visited = so.selected_pairs(t, s, block_q=bq, block_kv=bk, budget=budget,
                                     sink_blocks=sink, dense_before=bound)
  dense = np.asarray(layout.to_dense())  # [B, Hkv, T, S]
  assert (dense.sum((2, 3)) == pairs).all()
  assert (np.asarray(layout.visited_blocks()) == visited).all()
  # queries of q-blocks before the bound see every causal key; none sees a future one
  causal = np.arange(s)[None, :] <= np.arange(t)[:, None]
  assert not (dense & ~causal).any()
  rows = -(-min(bound, t) // bq) * bq
  assert (dense[:, :, :rows] == causal[:rows]).all()
  if bound == 0:
    assert (pairs, visited) == so.selected_pairs(t, s, block_q=bq, block_kv=bk, budget=budget,
                                                 sink_blocks=sink)


@pytest.mark.parametrize("bound", [-1, 2.5, True])
def test_bad_dense_before_is_named(bound):
  with pytest.raises(ValueError, match=f"dense_before={bound!r}"):
    so.selected_pairs(64, 64, block_q=8, block_kv=8, budget=so.Budget.blocks(2),
                      dense_before=bound)
