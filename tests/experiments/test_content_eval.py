"""Content-based inference settings: parsing, end-to-end evaluation, decode keeps the context
dense, FLOPs equal the pairs the layers really select, the fixed-vs-adaptive report section, and
the oracle check's construction (90% block sparsity exactly, causal, a same-FLOPs static twin)."""

import dataclasses

import jax
import numpy as np
import pytest
from flax import nnx

import models
import sparse_ops as so
from experiments import stats
from experiments.analysis import budgets
from experiments.tools import oracle
from experiments.evaluation import accounting as acc
from experiments.evaluation import evaluate as ev
from experiments.spec import settings as settings_lib
from experiments.spec import study as study_lib
from experiments import tasks
from experiments.spec.grid import config_hash, to_dict
from experiments.spec.study import EvalSpec
from models import transformer

T, VOCAB = 64, 128


def _model(seed=0):
  cfg = models.ModelConfig(vocab_size=VOCAB, width=32, depth=2, num_heads=4, num_kv_heads=2,
                           attention=models.AttentionConfig(implementation="reference"))
  return cfg, models.Transformer(cfg, rngs=nnx.Rngs(seed))


def _spec(**kw):
  return EvalSpec(**{**dict(tasks=("niah_single",), lengths=(T,), examples=4, batch_size=4),
                     **kw})


@pytest.mark.parametrize("setting, message", [
    (("topk", 0.5), r"pattern 'topk' is unknown; valid: dense, local, .*topk_blocks, quest"),
    (("topk_blocks", "coverage", 0.9), r"coverage.*valid budgets: density, blocks, adaptive"),
    (("topk_blocks", "magic", 1.0), r"budget 'magic' is unknown; valid: density, blocks"),
    (("topk_blocks", "adaptive", -1.0), r"c=-1.0\): c must be > 0"),
    (("topk_blocks", "adaptive", 1.0, 2.0), r"alpha=2.0\): alpha must be in \[0, 1\]"),
    (("quest", "density", 1.5), r"d=1.5\): d must be in \(0, 1\]"),
    (("quest", "blocks", 2.5), r"k=2.5\): k must be a positive integer"),
    (("quest", "density", 0.1, 0.5), r"only 'adaptive' takes a 4th element"),
    (("local", "density", 0.1), r"budgets apply to content-based patterns"),
    (("topk_blocks", 1.0), r"sparsity must be a number in \[0, 1\)"),
    (("topk_blocks",), r"valid formats: \(pattern, sparsity\)"),
    ("topk_blocks", r"valid formats"),
])
def test_bad_settings_raise_naming_the_value_and_the_options(setting, message):
  with pytest.raises(ValueError, match=message):
    _spec(settings=(setting,))


def test_bad_blocks_raise_before_anything_compiles():
  with pytest.raises(ValueError, match=r"selection_block=24 must divide every eval length"):
    _spec(settings=(("topk_blocks", 0.5),), selection_block=24)
  with pytest.raises(ValueError, match=r"repeats a setting"):
    _spec(settings=(("topk_blocks", 0.5), ("local", 0.5), ("topk_blocks", 0.5)))
  cfg = models.ModelConfig(vocab_size=VOCAB, width=32, depth=1, num_heads=2,
                           attention=models.AttentionConfig(block_q=48, block_kv=48))
  calls = []
  with pytest.raises(ValueError, match=r"block_q=48 must divide seq_len=64"):
    ev.evaluate(lambda *a: calls.append(a), cfg, _spec(settings=(("quest", 0.5),)), VOCAB)
  assert not calls


def test_settings_round_trip_json_and_old_studies_keep_their_eval_key():
  micro = study_lib.load_preset("micro")
  spec = dataclasses.replace(micro.eval, settings=(("dense", 0.0), ("local", 0.5),
                                                   ("quest", "blocks", 3),
                                                   ("topk_blocks", "adaptive", 0.8, 0.5)))
  study = dataclasses.replace(micro, eval=spec)
  assert study_lib.from_json(study_lib.to_json(study)) == study
  old = dataclasses.replace(micro.eval, settings=(("dense", 0.0), ("local", 0.5)),
                            selection_block=None)
  d = to_dict(old)
  # a study.json before them
  del d["selection_block"], d["decode_rows"], d["selection_queries"], d["task_examples"]
  loaded = study_lib.from_json({**study_lib.to_json(micro), "eval": d}).eval
  assert loaded == old and loaded.key == config_hash(d)


def test_decode_rows_floor_compiles_one_decode_program_and_changes_no_answer():
  """Tasks of different question lengths share one decode program once the floor covers their
  tails; the extra slab rows are dense context rows, so every answer and count stays."""
  cfg, model = _model()
  spec = _spec(settings=(("topk_blocks", 0.75),), selection_block=8, native=False,
               phases=("decode",), tasks=("niah_single", "niah_multiquery"))
  programs = {}
  def counting(floor):
    forward = ev.make_forward(model)
    seen = programs.setdefault(floor, set())
    def fwd(tokens, phased):
      seen.add(acc.decode_rows(tokens.shape[1], phased.dense_before, phased.decode_floor))
      return forward(tokens, phased)
    return fwd
  plain = ev.evaluate(counting(0), cfg, spec, VOCAB)
  floored = ev.evaluate(counting(T // 2), cfg, dataclasses.replace(spec, decode_rows=T // 2), VOCAB)
  assert len(programs[0]) == 2 and programs[T // 2] == {T // 2}
  assert plain == floored
  with pytest.raises(ValueError, match="eval.decode_rows=9999"):
    dataclasses.replace(spec, decode_rows=9999)


def test_native_of_a_content_trained_model_shares_the_fixed_setting_of_its_density():
  """A model trained with topk_blocks at sparsity 0.75 evaluates "native" and
  ("topk_blocks", 0.75) once: the same selection, so the same rows and one compiled program."""
  trained = models.AttentionConfig("topk_blocks", sparsity=0.75, block_q=8, block_kv=8,
                                   implementation="reference")
  cfg = models.ModelConfig(vocab_size=VOCAB, width=32, depth=2, num_heads=4, num_kv_heads=2,
                           attention=trained)
  model = models.Transformer(cfg, rngs=nnx.Rngs(0))
  forward, calls = ev.make_forward(model), []
  fwd = lambda tokens, phased: calls.append(phased) or forward(tokens, phased)
  rows = ev.evaluate(fwd, cfg, _spec(settings=(("topk_blocks", 0.75),), selection_block=8), VOCAB)
  assert len(calls) == 2  # prefill and decode, each once for both settings
  by = {(r["eval_setting"], r["phase"]): r for r in rows}
  for phase in ("prefill", "decode"):
    native, fixed = by[("native", phase)], by[("topk_blocks@0.75", phase)]
    assert native["correct"] == fixed["correct"]
    assert native["inference_flops_per_token"] == fixed["inference_flops_per_token"]


def test_content_settings_evaluate_end_to_end_with_exact_flops(monkeypatch):
  cfg, model = _model()
  spec = _spec(settings=(("topk_blocks", 0.75), ("quest", "adaptive", 0.8)),
               selection_block=8, native=False)
  rows = ev.evaluate(ev.make_forward(model), cfg, spec, VOCAB)
  assert {(r["eval_setting"], r["phase"]) for r in rows} == {
      (s, p) for s in ("topk_blocks@0.75", "quest@adaptive_c0.8_a0.5")
      for p in ("prefill", "decode")}
  task = tasks.make("niah_single", length=T, vocab_size=VOCAB)
  x = np.stack([task.example("test", i)["inputs"] for i in range(2)])
  seen = []  # every layout (prefill) or kept-block mask (decode) a layer selects
  select, keep = models.AttentionConfig.select, transformer.decode_keep
  monkeypatch.setattr(models.AttentionConfig, "select",
                      lambda self, q, k, dense_before=None, budget_value=None:
                      seen.append(select(self, q, k, dense_before, budget_value)) or seen[-1])
  monkeypatch.setattr(transformer, "decode_keep",
                      lambda *a: seen.append(keep(*a)) or seen[-1])
  rest = models.flops_per_token(cfg, T, training=False) - \
      models.attention_flops_per_token(cfg, T)
  for r in rows:
    if r["selection_flops_per_token"] <= 0 or r["n"] != 4 or \
        not r["ci_low"] <= r["accuracy"] <= r["ci_high"]:
      raise AssertionError(r)
    if (r["eval_pattern"], r["phase"]) not in (("topk_blocks", "prefill"), ("quest", "decode")):
      continue  # each budget and phase once: counting the layers' pairs compiles the model
    att = acc.setting_attention(cfg, settings_lib.parse(
        ("topk_blocks", 0.75) if r["eval_pattern"] == "topk_blocks" else
        ("quest", "adaptive", 0.8)), 8)
    sel = acc.phase_attention(att, T, r["phase"], acc.dense_prefix(task))

    def layer_pairs(x):  # the pairs of each layer's selected layout, [B, Hkv] per layer
      seen.clear()
      model(x, attention=sel.attention, dense_before=sel.dense_before)
      if sel.dense_before is None:
        return [lay.to_dense().sum((2, 3)) for lay in seen]
      # decode: the rows before the bound are dense causal, the rest their blocks ∩ causal
      blocks = sel.attention.selection_blocks(T)
      return [transformer.decode_allowed(kp, 0, T, *blocks).sum((2, 3)) for kp in seen]
    with jax.disable_jit():  # the blocks share one jit trace: eagerly, every layer selects
      counts = layer_pairs(x)
    assert len(counts) == cfg.depth
    pairs = {int(p) for c in counts for p in np.asarray(c).ravel()}
    (counted,) = pairs  # the same count in every layer, example and kv-head
    per_pair = cfg.depth * cfg.num_heads * so.flops.per_pair(cfg.head_size) / T
    assert r["inference_flops_per_token"] == pytest.approx(rest + per_pair * counted, rel=1e-12)
    assert r["eval_sparsity_element"] == pytest.approx(1 - counted / (T * (T + 1) // 2), 1e-12)
    if r["phase"] == "prefill":  # the models counter agrees
      assert r["inference_flops_per_token"] == pytest.approx(
          models.flops_per_token(cfg, T, training=False, attention=att), rel=1e-12)


def test_decode_selection_leaves_the_context_dense():
  cfg, model = _model(seed=np.random.randint(1 << 30))
  task = tasks.make("common_words", length=T, vocab_size=VOCAB)
  x = np.stack([task.example("test", i)["inputs"] for i in range(3)])
  prefix = acc.dense_prefix(task)
  att = acc.setting_attention(cfg, ("topk_blocks", 0.9), 8)
  sel = acc.phase_attention(att, T, "decode", prefix)
  assert sel.dense_before == prefix and sel.attention.per_query
  run = jax.jit(lambda x, b: model(x, attention=sel.attention, dense_before=b))
  got = np.asarray(run(x, prefix))
  want = np.asarray(jax.jit(lambda x: model(x, attention=cfg.attention))(x))
  np.testing.assert_allclose(got[:, :prefix], want[:, :prefix], rtol=1e-5, atol=1e-5)
  assert np.abs(got[:, prefix:] - want[:, prefix:]).max() > 1e-3  # the question rows are sparse
  # the evaluation's compiled forward gives the same predictions on the context
  preds = ev.make_forward(model)(x, sel)
  np.testing.assert_array_equal(preds[:, :prefix], want[:, :prefix].argmax(-1))


def test_prefill_per_query_selection_matches_decode_on_the_question_rows():
  """eval.selection_queries=1: prefill content settings choose kv-blocks per query (per_query,
  laid out in selection_block q-blocks); a question row sees what it sees in decode (where the
  context is dense, so only question rows are compared), the context rows are sparse too, the
  FLOPs are the per-query selection's, and a spec without it keeps its eval key."""
  cfg, model = _model(seed=np.random.randint(1 << 30))
  spec = _spec(settings=(("quest", 0.75),), selection_block=8, selection_queries=1,
               native=False)
  att = acc.setting_attention(cfg, ("quest", 0.75), 8, 1)
  assert att.per_query and (att.block_q, att.block_kv) == (8, 8)
  assert spec.key != dataclasses.replace(spec, selection_queries=None).key
  task = tasks.make("niah_single", length=T, vocab_size=VOCAB)
  x = np.stack([task.example("test", i)["inputs"] for i in range(3)])
  prefix = acc.dense_prefix(task)
  pre = acc.phase_attention(att, T, "prefill", prefix)
  dec = acc.phase_attention(att, T, "decode", prefix)
  assert pre.attention == dec.attention and pre.dense_before is None
  # Causal selection: row i's blocks depend on rows <= i only, so a question row's selection
  # is the same in both phases; its output differs only through the context's own (sparse or
  # dense) representations, which layer 0 does not have yet: compare one-layer logits.
  one = dataclasses.replace(cfg, depth=1)
  m1 = models.Transformer(one, rngs=nnx.Rngs(3))
  got = np.asarray(m1(x, attention=pre.attention))
  want = np.asarray(m1(x, attention=dec.attention, dense_before=prefix))
  np.testing.assert_allclose(got[:, prefix:], want[:, prefix:], rtol=2e-5, atol=2e-5)
  dense = np.asarray(m1(x, attention=cfg.attention))
  assert np.abs(got[:, :prefix] - dense[:, :prefix]).max() > 1e-3  # context rows sparse too
  rows = ev.evaluate(ev.make_forward(model), cfg, spec, VOCAB)
  by = {r["phase"]: r for r in rows}
  assert by["prefill"]["inference_flops_per_token"] == pytest.approx(
      models.flops_per_token(cfg, T, training=False, attention=att), rel=1e-12)
  with pytest.raises(ValueError, match=r"eval.selection_queries=3 must be a positive int"):
    _spec(selection_queries=3)


def test_smoke_presets_fixed_and_adaptive_budgets_spend_equal_average_flops():
  smoke = study_lib.load_preset("smoke").eval
  parsed = [settings_lib.parse(s) for s in smoke.settings]
  fixed = [p for p in parsed if p.budget == "density"]
  adaptive = [p for p in parsed if p.budget == "adaptive"]
  assert fixed and adaptive
  model = models.family("100k", vocab_size=128,
                        attention=models.AttentionConfig(implementation="reference"))
  mean = lambda p: settings_lib.mean_pairs_per_token(p.attention(model, smoke.selection_block),
                                                     smoke.lengths)
  assert mean(fixed[0]) == mean(adaptive[0])
  got, gap = settings_lib.matched_adaptive("topk_blocks", fixed[0].value, (64, 128), 16)
  assert gap == 0.0 and got[:2] == ("topk_blocks", "adaptive")


def test_h100_presets_adaptive_budget_matches_density_01_on_its_models():
  """The h100 preset writes its adaptive constant as a literal: recheck it against density 0.1
  with the models' own sink and the selection blocks, over the eval lengths."""
  h100 = study_lib.load_preset("h100")
  ev = h100.eval
  parsed = {p.budget: p for p in map(settings_lib.parse, ev.settings) if p.budget}
  spec = h100.runs()[0][0]
  mean = lambda p: settings_lib.mean_pairs_per_token(p.attention(spec.model, ev.selection_block),
                                                     ev.lengths)
  fixed = settings_lib.parse(("topk_blocks", 0.9))
  assert abs(mean(parsed["adaptive"]) / mean(fixed) - 1) < 0.005
  got, _ = settings_lib.matched_adaptive("topk_blocks", 0.1, ev.lengths, ev.selection_block,
                                         sink=h100.grid.sink)
  assert got == tuple(next(s for s in ev.settings if "adaptive" in s))


def _point(run, setting, budget, t, acc, flops, phase="prefill", n=40):
  k = round(acc * n)
  return dict(run_id=run, run_label=run, category="retrieval", phase=phase, eval_length=t,
              eval_setting=setting, eval_pattern="dense" if setting == "dense" else "topk_blocks",
              eval_budget=budget, inference_flops_per_token=flops, chance=0.03,
              arm=stats.Arm.of([1] * k + [0] * (n - k)))


def test_budget_section_pairs_equal_average_flops_and_names_the_winner():
  pts = []
  for t, (fa, aa, ff, af) in {64: (0.5, 0.9, 10.0, 14.0), 256: (0.5, 0.8, 20.0, 16.0)}.items():
    pts += [_point("m", "dense", "", t, 0.95, 30.0), _point("m", "fix", "density", t, fa, ff),
            _point("m", "ada", "adaptive", t, aa, af), _point("m", "far", "adaptive", t, aa, 99.0)]
  (row,) = budgets.comparisons(pts, 0.05)  # "far" spends more FLOPs on average: not paired
  assert (row["fixed"], row["adaptive"], row["verdict"]) == ("fix", "ada", "adaptive wins")
  assert row["fixed_flops"] == row["adaptive_flops"] == 15.0
  assert row["adaptive_arm"].n == 80 and row["adaptive_arm"].mean == pytest.approx(0.85)
  md = "\n".join(budgets.markdown([row], lambda h, b: f"{len(b)} rows"))
  assert "adaptive wins 1" in md and "3 rows" in md  # two lengths and the mean
  assert budgets.comparisons([p for p in pts if p["eval_setting"] != "ada"], 0.05) == []


def test_oracle_selects_exactly_90_percent_of_blocks_causally_with_a_same_flops_twin():
  d = oracle.solve_density()
  att = oracle.content("topk_blocks", d, "reference")
  pairs, visited = att.selection_counts(oracle.LENGTH)
  causal_blocks = so.flops.causal_blocks(oracle.LENGTH, oracle.LENGTH, oracle.BLOCK, oracle.BLOCK)
  assert visited == causal_blocks // 10 and 1 - visited / causal_blocks == pytest.approx(0.9, 1e-12)
  q, k = (jax.random.normal(key, (2, oracle.LENGTH, n, 8)) for key, n in
          zip(jax.random.split(jax.random.PRNGKey(np.random.randint(1 << 30))), (4, 2)))
  layout = jax.jit(lambda q, k: att.select(q, k))(q, k)
  dense = np.asarray(layout.to_dense())
  causal = np.tril(np.ones((oracle.LENGTH, oracle.LENGTH), bool))
  assert not (dense & ~causal).any() and (dense.sum((2, 3)) == pairs).all()
  # the static twin: same blocks per row (so the same pairs), the most recent ones
  twin = oracle.recency_twin(att, oracle.LENGTH, None)
  partial, full = layout.block_masks()
  np.testing.assert_array_equal(np.asarray(partial | full).sum(-1)[0, 0], twin.keep.sum(-1))
  assert twin.nnz(oracle.LENGTH, oracle.LENGTH) == pairs
  n = len(twin.keep)
  assert twin.keep[:, 0].all() and twin.keep[np.arange(n), np.arange(n)].all()
  assert twin.keep[-1].sum() == 6 and twin.keep[-1, -5:].all()  # ceil(d·64): sink + 5 latest
  elem = np.kron(twin.keep, np.ones((4, 4), bool)) & causal
  np.testing.assert_array_equal(so.masks.dense(twin, oracle.LENGTH, oracle.LENGTH), elem)
  twin_layout = so.BlockLayout.from_mask(twin, oracle.LENGTH, oracle.LENGTH, block_q=128,
                                         block_kv=128)  # the model's blocks: exact bounds needed
  np.testing.assert_array_equal(np.asarray(twin_layout.to_dense())[0, 0], elem)


def test_task_examples_sets_one_tasks_contexts_and_keeps_other_specs_keys():
  """eval.task_examples: a task with many questions per context is evaluated on fewer
  contexts (rows count them); the spec round-trips through study.json, a spec without it keeps
  its key, and a task not in eval.tasks or a count below 2 is refused by name."""
  cfg, model = _model()
  spec = _spec(tasks=("niah_single", "niah_multiquery"), examples=4,
               task_examples=(("niah_multiquery", 2),), native=False)
  assert spec.key != dataclasses.replace(spec, task_examples=()).key
  micro = study_lib.load_preset("micro")
  study = dataclasses.replace(micro, eval=dataclasses.replace(
      micro.eval, task_examples=((micro.eval.tasks[0], 3),)))
  assert study_lib.from_json(study_lib.to_json(study)) == study
  rows = ev.evaluate(ev.make_forward(model), cfg, spec, VOCAB)
  contexts = {r["task"]: len(set(r["context"])) for r in rows}
  assert contexts == {"niah_single": 4, "niah_multiquery": 2}
  with pytest.raises(ValueError, match=r"task_examples has \('nope', 3\): the task must be one"):
    _spec(task_examples=(("nope", 3),))
  with pytest.raises(ValueError, match=r"task_examples has \('niah_single', 1\)"):
    _spec(task_examples=(("niah_single", 1),))


@pytest.mark.parametrize("setting, queries", [
    (("topk_blocks", 0.75), None), (("quest", 0.9), 1),
    (("topk_blocks", "adaptive", 0.8), 1), (("quest", "blocks", 3), None)])
def test_a_traced_budget_selects_and_computes_exactly_what_the_constant_does(setting, queries):
  """The evaluator compiles one program per content pattern and budget kind (`shared_program`)
  and calls it with the budget's value traced: in both phases and both selection layouts its
  logits are bitwise those of the setting's own config, on fresh random weights and inputs."""
  cfg, model = _model(seed=np.random.randint(1 << 30))
  task = tasks.make("niah_multikey", length=T, vocab_size=VOCAB)
  x = np.stack([task.example("test", i)["inputs"] for i in range(3)])
  att = acc.setting_attention(cfg, settings_lib.parse(setting), 8, queries)
  shared, value = ev.shared_program(att)
  assert shared != att and shared.selection_budget().kind == att.selection_budget().kind
  for phase in ("prefill", "decode"):
    sel = acc.phase_attention(att, T, phase, acc.dense_prefix(task))
    shared_sel = acc.phase_attention(shared, T, phase, acc.dense_prefix(task))
    own = jax.jit(lambda x: model(x, attention=sel.attention, dense_before=sel.dense_before))
    traced = jax.jit(lambda x, v: model(x, attention=shared_sel.attention,
                                        dense_before=sel.dense_before, budget_value=v))
    np.testing.assert_array_equal(np.asarray(traced(x, value)), np.asarray(own(x)))


def test_sparsities_of_one_content_pattern_share_one_program_per_phase(predict_compiles):
  """Three sparsities of topk_blocks and two of quest compile 2 programs per phase (one per
  pattern), not 5, and score as each setting evaluated alone."""
  cfg, model = _model()
  settings = (("topk_blocks", 0.5), ("topk_blocks", 0.75), ("topk_blocks", 0.9),
              ("quest", 0.5), ("quest", 0.9))
  spec = _spec(settings=settings, selection_block=8, native=False, selection_queries=1)
  rows = ev.evaluate(ev.make_forward(model), cfg, spec, VOCAB)
  assert len(predict_compiles) == 2 * 2 and len(rows) == 5 * 2
  # the one program follows each setting's value: its predictions are each config's own
  forward, task = ev.make_forward(model), tasks.make("niah_single", length=T, vocab_size=VOCAB)
  x = np.stack([task.example("test", i)["inputs"] for i in range(4)])
  preds = []
  for s in settings[:3]:
    sel = acc.phase_attention(acc.setting_attention(cfg, settings_lib.parse(s), 8, 1), T,
                              "prefill", acc.dense_prefix(task))
    preds.append(forward(x, sel))
    own = jax.jit(lambda x: model(x, attention=sel.attention))(x)
    np.testing.assert_array_equal(preds[-1], np.asarray(own).argmax(-1))
  assert (preds[0] != preds[2]).any()
