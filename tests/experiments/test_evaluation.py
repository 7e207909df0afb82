"""Evaluation masks and numbers: decode = sparse only after the context, sparsity columns equal
sparse_ops.flops on the same masks, sparsity 0 reproduces the dense evaluation exactly, every
question of a multi-question context is scored on its own, and the study, the oracle and the
trainer share one evaluation loop."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import models
import sparse_ops as so
from experiments.evaluation import accounting
from experiments.evaluation import evaluate as ev
from experiments import tasks
from experiments.tasks import scoring
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
  prefix = accounting.dense_prefix(task)
  ex = task.example("test", 0)
  assert ex["inputs"][prefix] == task.vocab.SEP  # the first sparse query is the SEP
  att = models.AttentionConfig("local", sparsity=0.75)
  sparse = M.dense(att.mask(t), t, t)
  decode = M.dense(accounting.phase_mask(att, t, "decode", prefix), t, t)
  causal = np.tril(np.ones((t, t), bool))
  np.testing.assert_array_equal(decode[:prefix], causal[:prefix])
  np.testing.assert_array_equal(decode[prefix:], sparse[prefix:])
  np.testing.assert_array_equal(M.dense(accounting.phase_mask(att, t, "prefill", prefix), t, t), sparse)
  with pytest.raises(ValueError, match="phase='train'"):
    accounting.phase_mask(att, t, "train", prefix)


@pytest.mark.parametrize("pattern, sparsity", [("local", 0.5), ("strided", 0.75),
                                               ("block_random", 0.6)])
@pytest.mark.parametrize("phase", ["prefill", "decode"])
def test_sparsity_and_flops_columns_agree_with_sparse_ops(pattern, sparsity, phase):
  t = 256
  cfg = models.family("100k", vocab_size=128, attention=models.AttentionConfig(block_q=32,
                                                                               block_kv=32))
  att = accounting.setting_attention(cfg, (pattern, sparsity))
  assert att.block_q == 32 and att.pattern == pattern
  mask = accounting.phase_mask(att, t, phase, 200)
  stats = accounting.phase_stats(cfg, att, mask, t)
  dense = M.dense(mask, t, t)
  assert stats["element"] == pytest.approx(1 - dense.sum() / (t * (t + 1) / 2), abs=1e-12)
  assert stats["element"] == so.flops.sparsity(mask, t)
  layout = so.BlockLayout.from_mask(mask, t, t, block_q=32, block_kv=32)
  assert stats["block"] == so.flops.block_sparsity(layout)
  if phase == "prefill":  # the models counter with the same attention gives the same FLOPs
    assert stats["inference_flops_per_token"] == pytest.approx(
        models.flops_per_token(cfg, t, training=False, attention=att), rel=1e-12)
  else:  # decode: dense context rows cost more than all-sparse prefill
    pre = accounting.phase_stats(cfg, att, att.mask(t), t)
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
  np.testing.assert_array_equal(fwd(x, accounting.setting_attention(cfg, ("dense", 0.0)).mask(64)), want)
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


def test_multi_question_rows_score_every_question_with_its_context():
  """questions=4: a row's `correct` has one 0/1 per question (n = contexts × 4), `context` names
  each question's context, and they are `scoring.question_scores` of the same predictions."""
  cfg, model = _random_model(models.AttentionConfig(implementation="xla"))
  name = "niah_multikey(num_needles=4, questions=4)"
  spec = EvalSpec(tasks=("niah_multikey",), lengths=(64,), settings=(), examples=5, batch_size=2)
  object.__setattr__(spec, "tasks", (name,))  # EvalSpec does not yet take knobs (spec/study.py)
  fwd = ev.make_forward(model)
  (row,) = [r for r in ev.evaluate(fwd, cfg, spec, 128) if r["phase"] == "prefill"]
  task = tasks.make(name, length=64, vocab_size=128)
  data = ev.stacked_examples(task, "test", 5)
  right, asked = scoring.question_scores(fwd(data["inputs"], M.Causal()), data["targets"],
                                         data["weights"])
  assert asked.all() and asked.shape == (5, 4)
  assert row["n"] == 20 and row["correct"] == right.astype(int).ravel().tolist()
  assert row["context"] == [c for c in range(5) for _ in range(4)]
  assert row["accuracy"] == right.mean()
  # chance per question: one key's value out of the values range, as the single-needle task
  assert row["chance"] == pytest.approx(1 / len(task.vocab.values))


def test_single_question_rows_are_exact_match_per_context():
  """One question per context: `correct` is scoring.score's exact match, context i is row i."""
  cfg, model = _random_model(models.AttentionConfig(implementation="xla"))
  spec = EvalSpec(tasks=("niah_multivalue", "common_words"), lengths=(64,), settings=(),
                  examples=4, batch_size=3)
  fwd = ev.make_forward(model)
  for row in ev.evaluate(fwd, cfg, spec, 128):
    task = tasks.make(row["task"], length=64, vocab_size=128)
    data = ev.stacked_examples(task, "test", 4)
    want = scoring.score(fwd(data["inputs"], M.Causal()), data["targets"], data["weights"])
    assert row["correct"] == want["exact_match"].astype(int).tolist()
    assert row["context"] == [0, 1, 2, 3] and row["n"] == 4


def test_study_and_oracle_score_through_the_trainers_loop(monkeypatch):
  """One evaluation loop: the study's `evaluate` and the oracle's both reach
  `train.evaluation.score_batches` (the trainer's `_Evaluator` calls it too)."""
  import train.evaluation
  from experiments.tools import oracle
  calls = []
  real = train.evaluation.score_batches
  monkeypatch.setattr(ev, "score_batches",
                      lambda *a: calls.append(a[2]) or real(*a))
  cfg, model = _random_model(models.AttentionConfig(implementation="xla"))
  spec = EvalSpec(tasks=("niah_single",), lengths=(64,), settings=(), examples=2, batch_size=2)
  ev.evaluate(ev.make_forward(model), cfg, spec, 128)
  assert calls == [ev.score_questions]  # prefill and decode of dense are one pass
  assert oracle.ev is ev and "score_phase" in oracle.evaluate.__code__.co_names


def test_every_pass_is_compiled_ahead_and_scores_as_without(monkeypatch):
  """evaluate hands make_forward's `prepare` every pass it will run (each task, length, setting,
  phase and batch shape, the last batch short): nothing compiles while scoring, and the rows
  are those of the same forward compiled lazily, pass by pass."""
  cfg, model = _random_model(models.AttentionConfig(implementation="xla"))
  spec = EvalSpec(tasks=("niah_single",), lengths=(64,),
                  settings=(("local", 0.5), ("topk_blocks", 0.75)),
                  examples=5, batch_size=3, selection_block=16)
  fwd = ev.make_forward(model)
  prepared, late = [], []
  real_prepare = fwd.prepare

  def prepare(passes):
    real_prepare(passes)
    prepared.append(len(passes))  # from here on, any compile is a late one
  fwd.prepare = prepare

  def listener(event, seconds, fun_name="", **kw):
    if event == "/jax/core/compile/backend_compile_duration" and fun_name == "jit(predict)" \
        and prepared:
      late.append(fun_name)
  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    rows = ev.evaluate(fwd, cfg, spec, 128)
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)
  # (native + 2 settings) x 2 phases x 2 batch shapes (3 and 2 rows)
  assert prepared == [3 * 2 * 2] and late == []
  lazy = ev.make_forward(model)
  again = ev.evaluate(lambda tokens, phased: lazy(tokens, phased), cfg, spec, 128)
  assert [r["correct"] for r in rows] == [r["correct"] for r in again]
  assert [(r["task"], r["eval_setting"], r["phase"]) for r in rows] == [
      (r["task"], r["eval_setting"], r["phase"]) for r in again]


@pytest.mark.parametrize("pattern, sparsity", [("local", 0.75), ("strided", 0.6),
                                               ("block_random", 0.6)])
def test_static_decode_runs_the_phase_masks_pairs_with_one_program_for_every_prefix(
    pattern, sparsity):
  """A static pattern's decode phase (`Decode`: dense causal slab plus its mask's tail rows,
  the bound traced) gives the logits of the phase mask `mask | (QueryPrefix(p) & Causal)` run
  whole, for prefixes sharing a tail size and one compiled program; a per-head mask too."""
  t, b = 128, 2
  cfg = models.ModelConfig(vocab_size=128, width=32, depth=2, num_heads=4, num_kv_heads=2,
                           attention=models.AttentionConfig(implementation="reference"))
  model = models.Transformer(cfg, rngs=nnx.Rngs(0))
  tokens = np.random.default_rng(1).integers(0, 128, (b, t)).astype(np.int32)
  att = models.AttentionConfig(pattern, sparsity=sparsity, sink=8)
  traces = []

  @jax.jit
  def run(tokens, dense_before):
    traces.append(1)
    return model(tokens, attention=att.mask(t), dense_before=dense_before, decode_rows=32)

  for prefix in (100, 97, 112):
    dec = accounting.phase_attention(att, t, "decode", prefix, decode_floor=32)
    assert dec == accounting.Decode(att.mask(t), prefix, 32)
    assert dec.pairs == accounting.phase_mask(att, t, "decode", prefix)
    whole = model(tokens, attention=dec.pairs)
    np.testing.assert_allclose(run(tokens, jnp.int32(prefix)), whole, rtol=2e-5, atol=2e-5)
  assert len(traces) == 1
  # rows before the slab would be sparse but run dense: a concrete bound there raises
  with pytest.raises(ValueError, match="decode_rows >= 50"):
    model(tokens, attention=att.mask(t), dense_before=78, decode_rows=32)
  heads = M.MultiHead([M.Local(4), M.Causal(), M.Local(16), M.Sink(4) & M.Causal()])
  dec = accounting.Decode(heads, 100)
  np.testing.assert_allclose(
      model(tokens, attention=heads, dense_before=100, decode_rows=32),
      model(tokens, attention=dec.pairs), rtol=2e-5, atol=2e-5)
  # and the study's accounting counts those same pairs
  s = accounting.phase_stats(cfg, att, accounting.phase_attention(att, t, "decode", 100), t)
  assert s == accounting.stats(cfg, accounting.phase_mask(att, t, "decode", 100), t,
                               att.blocks(t))
  with pytest.raises(ValueError, match="static pattern 'local'"):
    model(tokens, attention=models.AttentionConfig("local", sparsity=0.5), dense_before=100)


def test_static_decode_compiles_one_program_per_tail_in_an_evaluation(predict_compiles):
  """Tasks with different context lengths (different decode prefixes) share a static setting's
  decode program once the floor covers their tails: 1 program where the phase masks took one per
  prefix, and the scores are those of each phase mask run whole."""
  t = 128
  cfg = models.ModelConfig(vocab_size=128, width=32, depth=2, num_heads=4,
                           attention=models.AttentionConfig(implementation="reference", sink=8))
  model = models.Transformer(cfg, rngs=nnx.Rngs(0))
  spec = EvalSpec(tasks=("niah_single", "niah_multiquery", "common_words"), lengths=(t,),
                  examples=4, batch_size=4, settings=(("local", 0.75),), native=False,
                  phases=("decode",), decode_rows=64)
  prefixes = {accounting.dense_prefix(tasks.make(n, length=t, vocab_size=128))
              for n in spec.tasks}
  assert len(prefixes) == 3
  rows = ev.evaluate(ev.make_forward(model), cfg, spec, 128)
  assert len(predict_compiles) == 1 and len(rows) == 3
  forward = ev.make_forward(model)
  for r in rows:
    task = tasks.make(r["task"], length=t, vocab_size=128)
    data = ev.stacked_examples(task, "test", 4)
    local = models.AttentionConfig("local", sparsity=0.75, sink=cfg.attention.sink)
    whole = accounting.phase_mask(local, t, "decode", accounting.dense_prefix(task))
    assert ev.score_phase(forward, whole, data, 4)["correct"].tolist() == r["correct"]
