"""Content-based block selection: causal, forced blocks kept, exact budgets, equals brute force."""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import example, given, settings, strategies as st

import sparse_ops as so
from test_attention import _close, _inputs


def brute_force(q, k, blk_q, blk_kv, budget, scoring, sink, local):
  """A straightforward numpy re-implementation, loop over rows: the spec in code."""
  q, k = np.asarray(q, np.float64), np.asarray(k, np.float64)
  b, t, hq, d = q.shape
  s, hkv = k.shape[1], k.shape[2]
  g = hq // hkv
  nq, nk = math.ceil(t / blk_q), math.ceil(s / blk_kv)
  keep = np.zeros((b, hkv, nq, nk), bool)
  for bi in range(b):
    for h in range(hkv):
      vs = _vertical_slash_scores(q[bi, :, h * g:(h + 1) * g], k[bi, :, h], blk_q, blk_kv)
      for i in range(nq):
        # the block's representative: the blk_q queries ending at its first position
        qs = q[bi, max(0, i * blk_q - blk_q + 1):i * blk_q + 1, h * g:(h + 1) * g].mean((0, 1))
        q_last = min((i + 1) * blk_q, t) - 1
        cand = [j for j in range(nk) if j * blk_kv <= q_last]
        n = len(cand)
        scores = {}
        for j in cand:
          kb = k[bi, j * blk_kv:(j + 1) * blk_kv, h]
          if scoring == "mean":
            scores[j] = qs @ kb.mean(0) / math.sqrt(d)
          elif scoring == "vertical_slash":
            scores[j] = vs[i, j]
          else:
            scores[j] = np.maximum(qs * kb.max(0), qs * kb.min(0)).sum() / math.sqrt(d)
        # forced: sink, local, and blocks the diagonal cuts (some key after the first query)
        forced = [j for j in cand if j < sink or j > n - 1 - local
                  or (j + 1) * blk_kv - 1 > i * blk_q]
        rest = sorted((j for j in cand if j not in forced), key=lambda j: (-scores[j], j))
        if budget.kind == "blocks":
          want = min(n, int(budget.value))
        elif budget.kind == "density":
          want = min(n, max(1, math.ceil(budget.value * n - 1e-6)))
        elif budget.kind == "adaptive":
          want = min(n, max(1, math.ceil(budget.value * n ** budget.alpha - 1e-6)))
        else:  # coverage: softmax over (score + log block) in the forced-then-ranked order
          order = forced + rest
          logits = np.array([scores[j] + math.log(blk_kv) for j in order])
          p = np.exp(logits - logits.max()); p /= p.sum()
          want = 1 + int((np.cumsum(p) < budget.value - 1e-6).sum())
        chosen = forced + rest[:max(0, want - len(forced))]
        keep[bi, h, i, chosen] = True
  return keep


def _vertical_slash_scores(q, k, blk_q, blk_kv):
  """q [T, G, D], k [S, D] -> running column mean(j) + running diagonal mean(offset), loops only.

  A row's estimated attention is a softmax over the kv-blocks wholly at or before its first
  query (the ones it scores); a row with none (the first) has p = 0 and is not counted."""
  t, s, d = q.shape[0], k.shape[0], k.shape[-1]
  nq, nk = math.ceil(t / blk_q), math.ceil(s / blk_kv)
  scored = lambda i, j: (j + 1) * blk_kv - 1 <= i * blk_q
  p = np.zeros((nq, nk))
  rows_with = np.zeros(nq)
  for i in range(nq):
    qs = q[max(0, i * blk_q - blk_q + 1):i * blk_q + 1].mean((0, 1))
    cand = [j for j in range(nk) if scored(i, j)]
    if not cand:
      continue
    rows_with[i] = 1
    logits = np.array([qs @ k[j * blk_kv:(j + 1) * blk_kv].mean(0) / math.sqrt(d) for j in cand])
    e = np.exp(logits - logits.max())
    p[i, cand] = e / e.sum()
  offset = lambda i, j: min(max((i * blk_q) // blk_kv - j, 0), nk - 1)
  out = np.zeros((nq, nk))
  for i in range(nq):
    sums, counts = np.zeros(nk), np.zeros(nk)
    for r in range(i + 1):
      for j in range(nk):
        if scored(r, j):
          sums[offset(r, j)] += p[r, j]
          counts[offset(r, j)] += 1
    diag = sums / np.maximum(counts, 1)
    for j in range(nk):
      out[i, j] = p[:i + 1, j].sum() / max(1, rows_with[:i + 1].sum()) + diag[offset(i, j)]
  return out


budgets = st.one_of(st.integers(1, 6).map(so.Budget.blocks),
                    st.floats(0.05, 1.0).map(so.Budget.density),
                    st.tuples(st.floats(0.2, 2.0), st.floats(0.0, 1.0)).map(
                        lambda a: so.Budget.adaptive(*a)),
                    st.floats(0.05, 1.0).map(so.Budget.coverage))


@settings(max_examples=15)
@given(st.integers(0, 2**31), budgets, st.sampled_from(["mean", "quest", "vertical_slash"]),
       st.integers(0, 2), st.integers(1, 2), st.sampled_from([(1, 1), (4, 2), (2, 1)]),
       st.integers(20, 90), st.sampled_from([8, 16]), st.sampled_from([8, 16]))
# block_q > block_kv: the diagonal cuts two blocks, both forced beyond a budget of one
@example(0, so.Budget.blocks(1), "mean", 0, 1, (1, 1), 20, 16, 8)
def test_selection_equals_brute_force(seed, budget, scoring, sink, local, heads, t, bq, bk):
  q, k, _, _ = _inputs(seed, 2, t, t, heads[0], heads[1], 8, 8, jnp.float32)
  got = np.asarray(so.select_block_mask(q, k, block_q=bq, block_kv=bk, budget=budget,
                                        scoring=scoring, sink_blocks=sink, local_blocks=local))
  want = brute_force(q, k, bq, bk, budget, scoring, sink, local)
  np.testing.assert_array_equal(got, want)
  # the properties, stated directly
  nq, nk = got.shape[-2:]
  q_last = np.minimum((np.arange(nq) + 1) * bq, t) - 1
  causal = np.arange(nk)[None, :] * bk <= q_last[:, None]
  assert not (got & ~causal).any(), "selected a future block"
  n = causal.sum(-1)
  for i in range(nq):
    assert got[..., i, :min(sink, n[i])].all(), "dropped a sink block"
    assert got[..., i, max(0, n[i] - local):n[i]].all(), "dropped a local block"
  if budget.kind == "blocks":
    # Forced: sink, local, and the blocks the diagonal cuts (several when block_q > block_kv).
    j = np.arange(nk)[None, :]
    cut = (j + 1) * bk - 1 > (np.arange(nq) * bq)[:, None]
    forced = (causal & ((j < sink) | (j > n[:, None] - 1 - local) | cut)).sum(-1)
    # the count is the budget, or all forced blocks if they are more
    assert (got.sum(-1) <= np.maximum(np.minimum(n, budget.value), forced)).all()
    assert (got.sum(-1) >= np.minimum(n, budget.value)).all()


@pytest.mark.parametrize("budget", [so.Budget.blocks(3), so.Budget.density(0.3),
                                    so.Budget.coverage(0.5)])
@pytest.mark.parametrize("scoring", ["mean", "quest"])
def test_tied_scores_go_to_the_lower_block(budget, scoring):
  """Inputs in {-1, 0, 1} tie many blocks' scores: the kept ones are the lowest-indexed of each
  tie, exactly as a stable sort would keep them (the brute force's order)."""
  rng = np.random.default_rng(7)
  q = jnp.asarray(rng.integers(-1, 2, (2, 70, 2, 8)), jnp.float32)
  k = jnp.asarray(rng.integers(-1, 2, (2, 70, 1, 8)), jnp.float32).at[:, :24].set(1.0)
  for bq in (1, 8):
    got = np.asarray(so.select_block_mask(q, k, block_q=bq, block_kv=8, budget=budget,
                                          scoring=scoring, sink_blocks=0, local_blocks=1))
    np.testing.assert_array_equal(got, brute_force(q, k, bq, 8, budget, scoring, 0, 1))


@settings(max_examples=4)
@given(st.integers(0, 2**31), st.sampled_from([jnp.float32, jnp.bfloat16]))
def test_attention_over_selected_layout_matches_reference(seed, dtype):
  q, k, v, g = _inputs(seed, 2, 77, 77, 4, 2, 16, 16, dtype)

  @jax.jit
  def sparse(q, k, v):
    layout = so.select_blocks(q, k, block_q=16, block_kv=8, budget=so.Budget.density(0.3))
    return so.attention(q, k, v, layout=layout, implementation="xla"), layout.to_dense()

  out, allowed = sparse(q, k, v)
  layout = so.BlockLayout.from_blocks(allowed, block_q=1, block_kv=1, q_len=77, kv_len=77)
  ref = lambda q, k, v: so.attention(q, k, v, layout=layout, implementation="reference")
  _close(out, ref(q, k, v), dtype, "out")
  gs = jax.grad(lambda *a: (sparse(*a)[0] * g).sum(), argnums=(0, 1, 2))(q, k, v)
  gr = jax.grad(lambda *a: (ref(*a) * g).sum(), argnums=(0, 1, 2))(q, k, v)
  for name, a, b in zip(("dq", "dk", "dv"), gs, gr):
    _close(a, b, dtype, name)


@pytest.mark.parametrize("scoring", ["mean", "quest", "vertical_slash"])
@pytest.mark.parametrize("block_q, block_kv", [(8, 8), (8, 4)])
def test_selection_never_reads_the_future(scoring, block_q, block_kv):
  """Changing q and k after position p changes no choice of a q-block starting at or before p
  (seeds and positions where keys inside a q-block's diagonal blocks change)."""
  changed_later = False
  for seed in range(6):
    q, k, _, _ = _inputs(seed, 1, 96, 96, 2, 1, 8, 8, jnp.float32)
    select = lambda q, k: np.asarray(so.select_block_mask(
        q, k, block_q=block_q, block_kv=block_kv, budget=so.Budget.blocks(5), scoring=scoring))
    before = select(q, k)
    for p in (17, 40, 64, 81):
      noise = jax.random.normal(jax.random.PRNGKey(p + 100 * seed), q.shape) * 5
      # Also: later keys aligned with the query block holding p (its representative, the queries
      # ending at its first position), strongly enough to dominate any softmax that wrongly
      # includes them.
      first = p // block_q * block_q
      rep = q[:, max(0, first - block_q + 1):first + 1].mean(axis=(1, 2))  # [B, D]
      aligned = 40 * rep / jnp.sum(rep * rep, -1, keepdims=True) * math.sqrt(q.shape[-1])
      for q2, k2 in ((q.at[:, p + 1:].add(noise[:, p + 1:]),
                      k.at[:, p + 1:].add(noise[:, p + 1:, :1])),
                     (q, k.at[:, p + 1:].add(aligned[:, None, None, :]))):
        after = select(q2, k2)
        rows = p // block_q + 1  # q-blocks whose first query is at or before p
        np.testing.assert_array_equal(after[..., :rows, :], before[..., :rows, :],
                                      err_msg=f"seed {seed}, change after {p}")
        changed_later |= bool((after != before).any())
  assert changed_later, "the perturbations should change some later choice"


def test_selection_finds_the_planted_block():
  """A key block aligned with the queries is chosen over random ones, at 1 extra block."""
  rng = np.random.default_rng(0)
  t, blk, d = 256, 16, 32
  q = rng.normal(size=(1, t, 1, d)).astype(np.float32) * 0.1
  k = rng.normal(size=(1, t, 1, d)).astype(np.float32) * 0.1
  direction = rng.normal(size=d).astype(np.float32)
  q[0, 200:, 0] += direction
  k[0, 80:96, 0] += direction  # kv-block 5
  keep = np.asarray(so.select_block_mask(jnp.asarray(q), jnp.asarray(k), block_q=blk,
                                         block_kv=blk, budget=so.Budget.blocks(3)))
  assert keep[0, 0, 13, 5] and keep[0, 0, 15, 5]
  assert keep[0, 0, 13].sum() == 3


@settings(max_examples=12)
@given(st.integers(0, 2**31), st.one_of(st.integers(1, 6).map(so.Budget.blocks),
                                        st.floats(0.05, 1.0).map(so.Budget.density),
                                        st.floats(0.3, 2.0).map(lambda c: so.Budget.adaptive(c))),
       st.integers(9, 100), st.integers(9, 100), st.sampled_from([(8, 8), (16, 8), (8, 16)]),
       st.integers(0, 2), st.integers(1, 2))
@example(seed=0, budget=so.Budget.blocks(1), t=9, s=9, blocks=(16, 8), sink=0, local=1)
def test_selected_pairs_are_known_without_content(seed, budget, t, s, blocks, sink, local):
  """FLOP accounting of content-chosen layouts is exact before seeing q and k."""
  bq, bk = blocks
  q, k, _, _ = _inputs(seed, 1, t, s, 1, 1, 8, 8, jnp.float32)
  layout = so.select_blocks(q, k, block_q=bq, block_kv=bk, budget=budget, sink_blocks=sink,
                            local_blocks=local)
  pairs, blocks_visited = so.selected_pairs(t, s, block_q=bq, block_kv=bk, budget=budget,
                                            sink_blocks=sink, local_blocks=local)
  assert pairs == int(np.asarray(layout.to_dense()).sum())
  assert blocks_visited == int(np.asarray(layout.visited_blocks()).sum())
  with pytest.raises(ValueError, match="content-dependent"):
    so.selected_pairs(t, s, block_q=bq, block_kv=bk, budget=so.Budget.coverage(0.9))


def test_dense_before_makes_context_rows_dense_and_question_rows_sparse():
  q, k, _, _ = _inputs(3, 2, 128, 128, 2, 1, 8, 8, jnp.float32)
  bound = jnp.array([40, 100])
  keep = np.asarray(so.select_block_mask(q, k, block_q=16, block_kv=16,
                                         budget=so.Budget.blocks(2), dense_before=bound))
  causal = np.tril(np.ones((8, 8), bool))
  # batch 0: q-blocks 0..2 hold a query < 40 -> dense; from block 3 on, 2 blocks each
  np.testing.assert_array_equal(keep[0, 0, :3], causal[:3])
  assert (keep[0, 0, 3:].sum(-1) == 2).all()
  np.testing.assert_array_equal(keep[1, 0, :7], causal[:7])
  assert keep[1, 0, 7].sum() == 2
  layout = so.select_blocks(q, k, block_q=16, block_kv=16, budget=so.Budget.blocks(2),
                            dense_before=bound)
  np.testing.assert_array_equal(np.asarray(layout.block_masks()[0] | layout.block_masks()[1]),
                                keep)


def test_adaptive_budget_keeps_a_smaller_fraction_of_longer_rows():
  b = so.Budget.adaptive(2.0, 0.5)
  n = jnp.array([4, 16, 64, 256])
  frac = np.asarray(b.counts(n)) / np.asarray(n)
  assert (np.diff(frac) < 0).all()


@pytest.mark.parametrize("call, message", [
    (lambda: so.Budget.blocks(0), r"k=0\): k must be a positive integer"),
    (lambda: so.Budget.density(0.0), r"d=0.0\): d must be in \(0, 1\]"),
    (lambda: so.Budget.density(1.5), r"d=1.5"),
    (lambda: so.Budget.adaptive(1.0, 2.0), r"alpha=2.0\): alpha must be in \[0, 1\]"),
    (lambda: so.Budget.coverage(0), r"threshold=0"),
    (lambda: so.select_blocks(jnp.zeros((1, 8, 2, 4)), jnp.zeros((1, 8, 2, 4)), block_q=0,
                              block_kv=8, budget=so.Budget.blocks(1)), "block_q=0"),
    (lambda: so.select_blocks(jnp.zeros((1, 8, 3, 4)), jnp.zeros((1, 8, 2, 4)), block_q=8,
                              block_kv=8, budget=so.Budget.blocks(1)), "Hq=3 must be a multiple"),
    (lambda: so.select_blocks(jnp.zeros((1, 8, 2, 4)), jnp.zeros((1, 8, 2, 4)), block_q=8,
                              block_kv=8, budget=0.5), "budget=0.5 must be a sparse_ops.Budget"),
    (lambda: so.select_blocks(jnp.zeros((1, 8, 2, 4)), jnp.zeros((1, 8, 2, 4)), block_q=8,
                              block_kv=8, budget=so.Budget.blocks(1), local_blocks=0),
     "local_blocks=0"),
    (lambda: so.select_blocks(jnp.zeros((1, 8, 2, 4)), jnp.zeros((1, 8, 2, 4)), block_q=8,
                              block_kv=8, budget=so.Budget.blocks(1), scoring="max"),
     "scoring='max'"),
])
def test_bad_selection_arguments(call, message):
  with pytest.raises(ValueError, match=message):
    call()


@pytest.mark.parametrize("scoring, dense_before", [("quest", None), ("mean", jnp.array([40, 77]))])
def test_per_query_layout_keeps_the_pairs_of_one_query_blocks(scoring, dense_before):
  """select_blocks(per_query=True) lays out the selection of block_q=1 in 16-query blocks: the
  same allowed pairs (to_dense, flops.pairs, selected_pairs), fewer q-blocks, every visited block
  partial (so no query's sum order depends on another's choice), and the same attention on xla
  as reference gives."""
  q, k, v, g = _inputs(5, 2, 77, 77, 4, 2, 16, 16, jnp.float32)
  args = dict(block_kv=8, budget=so.Budget.density(0.3), scoring=scoring,
              dense_before=dense_before)
  one = so.select_blocks(q, k, block_q=1, **args)
  laid = so.select_blocks(q, k, block_q=16, per_query=True, **args)
  assert laid.block_q == 16 and laid.row_keep is not None and one.row_keep is None
  np.testing.assert_array_equal(np.asarray(laid.to_dense()), np.asarray(one.to_dense()))
  assert so.flops.pairs(laid) == so.flops.pairs(one)
  if dense_before is None:
    per_head, _ = so.selected_pairs(77, 77, block_q=1, block_kv=8, budget=args["budget"])
    assert so.flops.pairs(laid) == per_head * 2 * 2  # batch x kv-heads
  partial, full = (np.asarray(x) for x in laid.block_masks())
  rows = np.asarray(laid.row_keep).reshape(2, 2, 10, 5, 16)  # [B, H, nk, nq, bq]
  assert not full.any()
  np.testing.assert_array_equal(partial, rows.any(-1).transpose(0, 1, 3, 2))  # the union
  run = lambda impl, layout: so.attention(q, k, v, layout=layout, implementation=impl)
  _close(run("xla", laid), run("reference", one), jnp.float32, "out")
  gs = jax.grad(lambda q, k, v: (so.attention(q, k, v, layout=laid, implementation="xla")
                                 * g).sum(), argnums=(0, 1, 2))(q, k, v)
  gr = jax.grad(lambda q, k, v: (so.attention(q, k, v, layout=one, implementation="reference")
                                 * g).sum(), argnums=(0, 1, 2))(q, k, v)
  for name, a, b in zip(("dq", "dk", "dv"), gs, gr):
    _close(a, b, jnp.float32, name)


def test_per_query_layouts_run_where_they_can():
  """Triton and xla take per-query layouts; the TPU kernel and cuDNN refuse them by name, and
  implementation=None passes over them."""
  from sparse_ops.kernels import cudnn, tpu
  q, k, v, _ = _inputs(1, 1, 64, 64, 2, 2, 16, 16, jnp.float32)
  laid = so.select_blocks(q, k, block_q=16, block_kv=16, budget=so.Budget.blocks(2),
                          per_query=True)
  assert so.IMPLEMENTATIONS["pallas_triton"].takes(laid)
  assert not so.IMPLEMENTATIONS["pallas_tpu"].takes(laid)
  with pytest.raises(ValueError, match="implementation='pallas_tpu' cannot run a layout with "
                                       "per-query row_keep"):
    tpu.attention(q, k, v, laid, interpret=True)
  assert cudnn.dense_kind(laid) == (None, "keeps kv-blocks per query (row_keep)")
  with pytest.raises(ValueError, match=r"row_keep.shape=\(1, 1, 4, 64\); expected"):
    so.attention(q, k, v, layout=dataclasses.replace(laid, row_keep=laid.row_keep[:, :1]),
                 implementation="xla")


@pytest.mark.parametrize("budget", [so.Budget.density(0.3), so.Budget.blocks(3),
                                    so.Budget.adaptive(0.9, 0.5), so.Budget.coverage(0.8)])
def test_a_traced_budget_value_selects_what_the_constant_does(budget):
  """One jitted selection for every value of a kind (`Budget.traced`): the same kept blocks and
  the same layout as each constant budget, per q-block, per query and in the decode phase."""
  q, k = _inputs(np.random.randint(1 << 30), 2, 96, 96, 4, 2, 16, 16, jnp.float32)[:2]
  args = dict(block_q=16, block_kv=16, scoring="quest")
  select = jax.jit(lambda q, k, v, per_query, bound: so.select_blocks(
      q, k, budget=budget.traced(v), per_query=per_query, dense_before=bound, **args),
      static_argnums=(3, 4))
  for value in {budget.value, budget.value * 0.5 if budget.kind != "blocks" else 1}:
    constant = dataclasses.replace(budget, value=value)
    for per_query, bound in ((False, None), (True, None), (True, 40)):
      want = so.select_blocks(q, k, budget=constant, per_query=per_query, dense_before=bound,
                              **args)
      got = select(q, k, value, per_query, bound)
      np.testing.assert_array_equal(got.to_dense(), want.to_dense())
