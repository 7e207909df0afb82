"""Evaluation masks and numbers: decode = sparse only after the context, sparsity columns equal
sparse_ops.flops on the same masks, sparsity 0 reproduces the dense evaluation exactly."""

import dataclasses

import jax
import numpy as np
import pytest
from flax import nnx

import models
import sparse_ops as so
from experiments.evaluation import evaluate as ev
from experiments import tasks
from experiments.spec.study import EvalSpec
from sparse_ops import masks as M


@pytest.mark.parametrize("n", [0, 1, 37, 64, 100])
def test_query_prefix_nnz_and_layout_match_brute_force(n):
  t = 64
  m = M.QueryPrefix(n) & M.Causal()
  dense = M.dense(m, t, t)
  want = np.tril(np.ones((t, t), bool)) & (np.arange(t)[:, None] < n)
  np.testing.assert_array_equal(dense, want)
  assert m.nnz(t, t) == want.sum()
  layout = so.BlockLayout.from_mask(m, t, t, block_q=16, block_kv=16)
  q = k = np.arange(t)
  visited = np.zeros((t // 16, t // 16), bool)
  counts = np.asarray(layout.kv_num_blocks)[0, 0]
  idx = np.asarray(layout.kv_indices)[0, 0]
  fcounts = np.asarray(layout.full_kv_num_blocks)[0, 0]
  fidx = np.asarray(layout.full_kv_indices)[0, 0]
  for i in range(t // 16):
    visited[i, idx[i, :counts[i]]] = True
    visited[i, fidx[i, :fcounts[i]]] = True
  blocks_needed = want.reshape(t // 16, 16, t // 16, 16).any((1, 3))
  np.testing.assert_array_equal(visited, blocks_needed)
  del q, k


def test_decode_mask_is_dense_before_the_question_and_sparse_after():
  t = 128
  task = tasks.make("niah_multikey", length=t, vocab_size=128)
  prefix = ev.dense_prefix(task)
  ex = task.example("test", 0)
  assert ex["inputs"][prefix] == task.vocab.SEP  # the first sparse query is the SEP
  att = models.AttentionConfig("local", sparsity=0.75)
  sparse = M.dense(att.mask(t), t, t)
  decode = M.dense(ev.phase_mask(att, t, "decode", prefix), t, t)
  causal = np.tril(np.ones((t, t), bool))
  np.testing.assert_array_equal(decode[:prefix], causal[:prefix])
  np.testing.assert_array_equal(decode[prefix:], sparse[prefix:])
  np.testing.assert_array_equal(M.dense(ev.phase_mask(att, t, "prefill", prefix), t, t), sparse)
  with pytest.raises(ValueError, match="phase='train'"):
    ev.phase_mask(att, t, "train", prefix)


@pytest.mark.parametrize("pattern, sparsity", [("local", 0.5), ("strided", 0.75),
                                               ("block_random", 0.6)])
@pytest.mark.parametrize("phase", ["prefill", "decode"])
def test_sparsity_and_flops_columns_agree_with_sparse_ops(pattern, sparsity, phase):
  t = 256
  cfg = models.family("100k", vocab_size=128, attention=models.AttentionConfig(block_q=32,
                                                                               block_kv=32))
  att = ev.setting_attention(cfg, (pattern, sparsity))
  assert att.block_q == 32 and att.pattern == pattern
  mask = ev.phase_mask(att, t, phase, 200)
  stats = ev.mask_stats(cfg, att, mask, t)
  dense = M.dense(mask, t, t)
  assert stats["element"] == pytest.approx(1 - dense.sum() / (t * (t + 1) / 2), abs=1e-12)
  assert stats["element"] == so.flops.sparsity(mask, t)
  layout = so.BlockLayout.from_mask(mask, t, t, block_q=32, block_kv=32)
  assert stats["block"] == so.flops.block_sparsity(layout)
  if phase == "prefill":  # the models counter with the same attention gives the same FLOPs
    assert stats["inference_flops_per_token"] == pytest.approx(
        models.flops_per_token(cfg, t, training=False, attention=att), rel=1e-12)
  else:  # decode: dense context rows cost more than all-sparse prefill
    pre = ev.mask_stats(cfg, att, att.mask(t), t)
    assert stats["inference_flops_per_token"] > pre["inference_flops_per_token"]
    assert stats["element"] < pre["element"]


def _random_model(attention, seed=0):
  cfg = models.family("100k", vocab_size=128, attention=attention)
  return cfg, models.Transformer(cfg, rngs=nnx.Rngs(seed))


@pytest.mark.parametrize("trained", ["dense", "local"])
def test_inference_sparsity_zero_reproduces_dense_exactly(trained):
  att = (models.AttentionConfig(implementation="xla") if trained == "dense" else
         models.AttentionConfig("local", sparsity=0.5, implementation="xla"))
  cfg, model = _random_model(att, seed=np.random.randint(1 << 30))
  spec = EvalSpec(tasks=("niah_single", "common_words"), lengths=(64,),
                  settings=(("dense", 0.0), ("local", 0.5)), examples=6, batch_size=3)
  fwd = ev.make_forward(model)
  rows = ev.evaluate(fwd, cfg, spec, 128)
  # The sparsity-0 setting is dense causal ...
  dense_rows = [r for r in rows if r["eval_setting"] == "dense"]
  assert {r["eval_sparsity_element"] for r in dense_rows} == {0.0}
  # ... and its predictions are bitwise those of the model run densely, outside the evaluator.
  task = tasks.make("niah_single", length=64, vocab_size=128)
  x = np.stack([task.example("test", i)["inputs"] for i in range(6)])
  dense_cfg = dataclasses.replace(att, pattern="dense", sparsity=None)
  want = np.asarray(jax.jit(lambda t: model(t, attention=dense_cfg))(x)).argmax(-1)
  np.testing.assert_array_equal(fwd(x, ev.setting_attention(cfg, ("dense", 0.0)).mask(64)), want)
  if trained == "dense":  # for a dense model, the native evaluation is the same numbers
    native = [r for r in rows if r["eval_setting"] == "native"]
    for a, b in zip(native, dense_rows):
      assert a["correct"] == b["correct"] and a["task"] == b["task"]
      assert a["phase"] == b["phase"]
  # Rows carry n, CI and the per-example scores they summarise.
  for r in rows:
    assert r["n"] == 6 and len(r["correct"]) == 6
    assert r["ci_low"] <= r["accuracy"] <= r["ci_high"]


def test_chance_rate_of_single_needle_is_one_over_values():
  task = tasks.make("niah_single", length=64, vocab_size=128)
  assert ev.chance_exact_match(task) == pytest.approx(1 / len(task.vocab.values))
