"""The FLOP-matched grid: every point's training FLOPs equal its budget to within one step, run
ids are hashes of what decides the result, bad grids are rejected naming the value."""

import dataclasses
import json
import re

import numpy as np
import pytest

import models
import sparse_ops as so
from pathlib import Path

from experiments import tasks as tasks_lib
from experiments.runs import job
from experiments.spec import study as study_lib
from experiments.runs import store
from experiments.spec.grid import Grid, RunSpec, spec_from_dict, to_dict
from train import config as train_config
from train.config import OptimConfig

STUDIES = Path(__file__).resolve().parents[2] / "studies"


def _all_preset_specs():
  for name in study_lib.presets():
    specs, _ = study_lib.load_preset(name).runs()
    for s in specs:
      yield name, s


@pytest.mark.parametrize("preset", study_lib.presets())
def test_every_preset_point_matches_its_budget_within_one_step(preset):
  specs, skipped = study_lib.load_preset(preset).runs()
  assert specs, f"preset {preset} has no runs"
  for s in specs:
    # Recomputed here from the model counter and the mask, not read from the spec.
    fpt = models.flops_per_token(s.model, s.seq_len, training=True)
    step = fpt * s.batch_size * s.seq_len
    assert step == pytest.approx(s.step_flops, rel=1e-12)
    short = 0.0
    if s.short_len:  # curriculum steps: the same tokens at the short length (dense if asked)
      at_short = dataclasses.replace(s.model, attention=models.AttentionConfig()) \
          if s.config.short_dense else s.model
      short = models.flops_per_token(at_short, s.short_len, training=True) * s.batch_size * s.seq_len
    total = s.short_steps * short + (s.steps - s.short_steps) * step
    lens = s.config.data.long_lens
    if lens:  # the long phase cycles through lens, long_every steps each (written out here)
      every = s.config.steps_per_call
      at = {n: models.flops_per_token(s.model, n, training=True) * s.batch_size * s.seq_len
            for n in lens}
      total = s.short_steps * short + sum(at[lens[(i // every) % len(lens)]]
                                          for i in range(s.steps - s.short_steps))
      step = max(at.values())
    assert abs(total - s.budget) <= step / 2 * (1 + 1e-9), (s.label, total, s.budget, step)
    assert s.flops_residual == pytest.approx(total - s.budget, rel=1e-9, abs=1.0)
    # The trainer's own count of the same run agrees.
    cfg = job.train_config(s, Path("/nonexistent"), study_lib.load_preset(preset))
    assert cfg.flops_through(cfg.total_steps) == pytest.approx(total, rel=1e-12)
    assert s.steps >= 1
  for p in skipped:
    assert "reason" in p and p["steps"] < study_lib.load_preset(preset).grid.min_steps


def test_residual_is_the_nearest_step_count():
  g = Grid(budgets=(1e11, 3.3e11), sizes=("100k", "300k"), sparsities=(0.0, 0.5),
           patterns=("local", "strided"), seq_lens=(64, 128), batch_size=4, vocab_size=128)
  specs, skipped = g.points()
  assert not skipped
  assert len(specs) == 2 * 2 * 2 * (1 + 2)  # budgets × lens × sizes × (dense + 2 patterns)
  for s in specs:
    for other in (s.steps - 1, s.steps + 1):
      assert abs(other * s.step_flops - s.budget) >= abs(s.flops_residual)


def test_curriculum_points_spend_their_short_share_and_match_the_budget():
  kw = dict(budgets=(2e11,), sizes=("100k",), sparsities=(0.0, 0.5), seq_lens=(256,),
            batch_size=4, vocab_size=128)
  plain, _ = Grid(**kw).points()
  curr, _ = Grid(**kw, short_len=64, short_frac=0.6).points()
  for p, c in zip(plain, curr):
    assert c.short_len == 64 and 0 < c.short_steps < c.steps
    assert c.short_step_flops < c.step_flops  # same tokens, shorter attention
    assert c.short_steps * c.short_step_flops == pytest.approx(0.6 * c.budget,
                                                               abs=c.short_step_flops / 2)
    assert abs(c.flops_residual) <= c.step_flops / 2
    assert c.steps > p.steps  # cheaper short steps buy more updates
    assert c.run_id != p.run_id and c.label == p.label + "c64"
    assert spec_from_dict(json.loads(json.dumps(c.to_dict()))) == c
  with pytest.raises(ValueError, match="grid.short_len=256"):
    Grid(**kw, short_len=256, short_frac=0.5)
  with pytest.raises(ValueError, match="grid.short_frac=0"):
    Grid(**kw, short_len=64)


def test_sparse_sizes_limit_the_sparse_variants():
  g = Grid(budgets=(1e11,), sizes=("100k", "300k"), sparsities=(0.0, 0.5), seq_lens=(64,),
           vocab_size=128, batch_size=4, sparse_sizes=("300k",))
  specs, _ = g.points()
  assert [(s.size, s.pattern) for s in specs] == [("100k", "dense"), ("300k", "dense"),
                                                  ("300k", "local")]


def test_sparse_points_have_the_target_sparsity_and_fewer_flops():
  g = Grid(budgets=(1e11,), sizes=("100k",), sparsities=(0.0, 0.75), patterns=("local",),
           seq_lens=(128,), batch_size=4, vocab_size=128)
  (dense, sparse), _ = g.points()
  assert dense.pattern == "dense" and sparse.pattern == "local"
  mask = sparse.model.attention.mask(128)
  assert so.flops.sparsity(mask, 128) == pytest.approx(0.75, abs=0.02)
  assert sparse.train_attention_stats()["element"] == so.flops.sparsity(mask, 128)
  assert sparse.flops_per_token < dense.flops_per_token
  assert sparse.steps > dense.steps  # same budget buys more, cheaper steps


def test_run_id_hashes_the_result_deciding_fields_only():
  g = Grid(budgets=(1e11,), sizes=("100k",), vocab_size=128, seq_lens=(64,), batch_size=4)
  (s,), _ = g.points()
  assert s.run_id == g.points()[0][0].run_id  # stable
  assert len(s.run_id) == 12 and int(s.run_id, 16) >= 0
  c = s.config
  lr = dataclasses.replace(s, config=dataclasses.replace(c, optim=dataclasses.replace(
      c.optim, lr=1e-3)))
  assert lr.run_id != s.run_id
  seed = dataclasses.replace(s, config=dataclasses.replace(
      c, seed=1, data=dataclasses.replace(c.data, seed=1)))
  assert seed.run_id != s.run_id
  # Derived numbers are not identity: recomputing them cannot orphan a finished run (spec.json
  # writes them for its readers; reading it back recomputes them).
  assert not {"params", "step_flops", "flops_per_token"} & set(s.identity())
  assert spec_from_dict({**s.to_dict(), "params": 0, "step_flops": 1.0}).run_id == s.run_id
  # Renaming the study or changing its evaluation keeps the run ids.
  smoke = study_lib.load_preset("smoke")
  renamed = dataclasses.replace(smoke, name="other", eval=dataclasses.replace(
      smoke.eval, examples=7))
  assert [x.run_id for x in renamed.runs()[0]] == [x.run_id for x in smoke.runs()[0]]


def test_run_id_ignores_fields_at_their_default():
  g = Grid(budgets=(1e11,), sizes=("100k",), vocab_size=128, seq_lens=(64,), batch_size=4)
  (s,), _ = g.points()
  ident = s.identity()
  defaults = models.ModelConfig()
  for key, value in ident["model"].items():  # only what differs from the defaults is hashed
    assert value != to_dict(getattr(defaults, key)), key
  assert "attention" not in ident["model"]  # dense attention with default knobs
  assert ident["size"] == "100k" and ident["steps"] == s.steps


def test_spec_round_trips_through_json():
  for _, s in _all_preset_specs():
    back = spec_from_dict(json.loads(json.dumps(s.to_dict())))
    assert back == s and back.run_id == s.run_id
    break


def test_study_round_trips_through_json():
  for name in study_lib.presets():
    st = study_lib.load_preset(name)
    assert study_lib.from_json(json.loads(json.dumps(study_lib.to_json(st)))) == st
  # h200 carries its tolerance margin; a study at the default writes study.json as before
  assert study_lib.to_json(study_lib.load_preset("h200"))["tolerance_margin"] == 0.03
  assert "tolerance_margin" not in study_lib.to_json(study_lib.load_preset("smoke"))
  smoke = study_lib.load_preset("smoke")
  for bad in (-0.1, 1.0, True, "0.03"):
    with pytest.raises(ValueError, match=re.escape(f"study.tolerance_margin={bad!r} must be")):
      dataclasses.replace(smoke, tolerance_margin=bad)


def test_too_small_budget_is_skipped_with_reason():
  g = Grid(budgets=(1e6, 1e11), sizes=("100k",), vocab_size=128, seq_lens=(64,), batch_size=4,
           min_steps=10)
  specs, skipped = g.points()
  assert [s.budget for s in specs] == [1e11]
  assert len(skipped) == 1 and "buys" in skipped[0]["reason"] and skipped[0]["budget"] == 1e6


@pytest.mark.parametrize("kwargs, needle", [
    (dict(budgets=()), "grid.budgets"),
    (dict(budgets=(-1.0,)), "grid.budgets"),
    (dict(sizes=("7b",)), "'7b'"),
    (dict(sparsities=(1.0,)), "grid.sparsities has 1.0"),
    (dict(patterns=("dense",)), "grid.patterns has 'dense'"),
    (dict(tasks=("nope",)), "grid.tasks has 'nope'"),
    (dict(task_weights=(1.0, 2.0)), "grid.task_weights"),
    (dict(batch_size=0), "grid.batch_size=0"),
    (dict(sparse_sizes=("300k",)), "grid.sparse_sizes has '300k'"),
    (dict(tasks=("nope(questions=2)",)), "grid.tasks has 'nope(questions=2)'"),
    (dict(tasks=("niah_multikey(num_needles=4, questions=9)",)), "questions=9"),
    (dict(tasks=("niah_single(questiosn=2)",)), "unknown knob(s) ['questiosn']; valid knobs: ['depth', 'key_len', 'questions',"),
    (dict(data_source="gpu"), "grid.data_source='gpu'"),
    (dict(lr_ref_width=-1), "grid.lr_ref_width=-1"),
    (dict(warmup_frac=1.0), "grid.warmup_frac=1.0"),
    (dict(optim=OptimConfig(warmup_steps=7)), "grid.optim.warmup_steps=7 is unused"),
    (dict(batch_sizes=(("300k", 8),)), "grid.batch_sizes has ('300k', 8)"),
    (dict(batch_sizes=(("100k", 0),)), "grid.batch_sizes has ('100k', 0)"),
    (dict(batch_sizes=(("100k", 8), ("100k", 4))), "names a size twice"),
    (dict(short_dense=True), "grid.short_dense=True needs a curriculum"),
    (dict(select_block_q=1), "grid.select_block_q=1 needs grid.block"),
    (dict(select_block_q=3, block=16, patterns=("quest",), seq_lens=(64,)),
     "grid.select_block_q=3 must be an int >= 1 dividing every training length [64]"),
])
def test_bad_grid_names_the_value(kwargs, needle):
  base = dict(budgets=(1e11,), sizes=("100k",))
  with pytest.raises(ValueError, match=re.escape(needle)):
    Grid(**{**base, **kwargs})


def test_a_point_the_trainer_refuses_fails_the_plan():
  """The trainer's own checks run where the study is planned: a grid whose sparse points train
  their short phase dense at a length their long cycle also trains (sparse) fails `points()`
  with the trainer's message, before any run is written, not on each attempt mid-sweep."""
  g = Grid(budgets=(1e11,), sizes=("100k",), sparsities=(0.0, 0.5), patterns=("quest",),
           seq_lens=(256,), batch_size=16, vocab_size=128, block=8, short_len=64,
           short_frac=0.3, short_dense=True, long_lens=(64, 128, 256), long_every=5)
  with pytest.raises(ValueError, match=re.escape("data.short_len=64 is also in data.long_lens")):
    g.points()
  assert len(dataclasses.replace(g, long_lens=(128, 256)).points()[0]) == 2


def test_tasks_with_knobs_and_device_batches_reach_the_trainer(tmp_path):
  """A grid task may carry knobs (a multi-question form); the trainer gets the same string and
  the data source, and the run id changes with them."""
  from experiments.runs import job
  from experiments.spec import study as study_lib
  tasks = ("niah_multikey(num_needles=8, questions=8)",)
  grid = Grid(budgets=(1e11,), sizes=("100k",), seq_lens=(128,), tasks=tasks,
              data_source="device")
  (spec,), _ = grid.points()
  (plain,), _ = Grid(budgets=(1e11,), sizes=("100k",), seq_lens=(128,)).points()
  assert spec.tasks == tasks and spec.config.data.source == "device"
  assert spec.run_id != plain.run_id
  study = study_lib.Study(name="t", grid=grid, eval=study_lib.EvalSpec(tasks=("niah_single",), lengths=(128,)),
                          steps_per_call=7)
  cfg = job.train_config(spec, tmp_path, study, progress=False)
  assert cfg.data.tasks == tasks and cfg.data.source == "device" and cfg.steps_per_call == 7


def test_unreachable_sparsity_fails_before_training():
  g = Grid(budgets=(1e11,), sizes=("100k",), sparsities=(0.99,), patterns=("strided",),
           seq_lens=(32,), vocab_size=128)
  with pytest.raises(ValueError, match="sparsity=0.99"):
    g.points()


def test_content_patterns_train_at_exact_flops():
  """A content-based training pattern gets a FLOP-matched step count like a static one: its
  pairs are exact before any content is seen, and a real selection has exactly that many."""
  import jax
  g = Grid(budgets=(1e11,), sizes=("100k",), sparsities=(0.0, 0.75), patterns=("topk_blocks",),
           seq_lens=(128,), batch_size=4, vocab_size=128, block=16, sink=16)
  specs, _ = g.points()
  sparse = next(s for s in specs if s.pattern == "topk_blocks")
  att, t = sparse.model.attention, 128
  stats = sparse.train_attention_stats()
  pairs, blocks = att.selection_counts(t)
  assert stats["element"] == pytest.approx(1 - pairs / so.masks.causal_pairs(t))
  assert 0.6 < stats["element"] < 0.8  # forced sink/diagonal blocks keep it under the 0.75 target
  assert abs(sparse.flops_residual) <= sparse.step_flops / 2
  q, k = jax.random.normal(jax.random.PRNGKey(0), (2, 1, t, 4, 16))
  layout = att.select(q, k)
  mask = np.asarray(layout.to_dense())  # [B, H, T, S] booleans of the selected layout
  assert (mask.sum(axis=(-1, -2)) == pairs).all()


def test_learning_rate_scales_as_one_over_width_when_asked():
  """lr_ref_width: each size gets lr · ref / width, planned into its own spec (so its run id
  holds the rate it trains at, and the trainer gets that rate); without it, one rate for all."""
  base = dict(budgets=(1e12,), sizes=("100k", "3m"), seq_lens=(64,), vocab_size=128)
  scaled, _ = Grid(optim=OptimConfig(lr=1e-3), lr_ref_width=192, **base).points()
  assert [(s.model.width, s.optim.lr) for s in scaled] == [
      (64, pytest.approx(3e-3)), (192, pytest.approx(1e-3))]
  plain, _ = Grid(optim=OptimConfig(lr=1e-3), **base).points()
  assert [s.optim.lr for s in plain] == [1e-3, 1e-3]
  # The 3m run is the same run either way (same rate); the 100k one is not.
  assert scaled[1].run_id == plain[1].run_id and scaled[0].run_id != plain[0].run_id
  study = study_lib.Study(name="t", grid=Grid(optim=OptimConfig(lr=1e-3), lr_ref_width=192,
                                              **base),
                          eval=study_lib.EvalSpec(tasks=("niah_single",), lengths=(64,)))
  assert job.train_config(scaled[0], Path("/tmp/unused"), study).optim.lr == pytest.approx(3e-3)


def test_committed_studies_keep_their_run_ids_and_trainer_configs():
  """The run ids hash the layout the first studies wrote, so the presets plan the committed
  folders' runs again (smoke's, cpu's and h200's study.json; h100_3m on the h100 folder), and
  every committed spec.json (written with the grid's own optimiser, `warmup_frac`) reads back to
  its folder's id and to the trainer config its config.json holds: a rerun resumes those runs,
  not retrains."""
  order = json.loads((STUDIES / "smoke" / "study.json").read_text())["run_order"]
  assert [s.run_id for s in study_lib.load_preset("smoke").runs()[0]] == order
  assert order[0] == "9bf01bdc513a"  # session 8's smoke (path-form chain_resolve)
  order = json.loads((STUDIES / "h100" / "study.json").read_text())["run_order"]
  assert [s.run_id for s in study_lib.load_preset("h100_3m").runs()[0]] == order
  for name in ("cpu", "h200"):  # the presets of the studies that learn plan their folders
    order = json.loads((STUDIES / name / "study.json").read_text())["run_order"]
    assert [s.run_id for s in study_lib.load_preset(name).runs()[0]] == order
  for name in ("h100", "h100_no_curriculum"):  # study.json in the first layout
    written = json.loads((STUDIES / name / "study.json").read_text())
    assert "warmup_frac" in written["study"]["grid"]["optim"]
    st = study_lib.from_json(written["study"])
    assert [s.run_id for s in st.runs()[0]] == written["run_order"]
    assert st.grid.warmup_frac == 0.05 and st.grid.optim.weight_decay == 0.1
  run_dirs = sorted(STUDIES.glob("*/runs/*"))
  assert len(run_dirs) >= 28
  trained = checked = 0
  for d in run_dirs:
    written = json.loads((d / "spec.json").read_text())
    if d.parent.parent.name in ("h100", "h100_no_curriculum"):  # planned before the grid
      assert "warmup_frac" in written["optim"]  # wrote warmup_steps: the first layout
    spec = store.load_spec(d)
    assert spec.run_id == d.name == written["run_id"] and spec.label == written["label"]
    short = written.get("short_steps", 0)  # older files: no curriculum fields
    if not written.get("long_lens"):  # with a length cycle the long steps differ in cost
      assert spec.train_flops == pytest.approx(short * written.get("short_step_flops", 0.0)
                                               + (spec.steps - short) * written["step_flops"],
                                               rel=1e-12)
    metrics = d / "metrics.jsonl"
    if metrics.exists():  # what the trainer counted, step by step, through its last step
      logged = [r for r in map(json.loads, metrics.read_text().splitlines()) if "flops" in r]
      if logged and logged[-1]["step"] == spec.steps:  # (older files log no FLOPs)
        checked += 1
        assert logged[-1]["flops"] == pytest.approx(spec.train_flops, rel=1e-9)
    if (d / "config.json").exists():  # trained (h100_no_curriculum left three runs untrained)
      trained += 1
      cfg = job.train_config(spec, d, store.load_study(d.parent.parent))
      assert train_config.identity_changes(cfg, json.loads((d / "config.json").read_text())) == []
    # Written again in today's layout (the trainer's optimiser), the same run.
    again = spec_from_dict(json.loads(json.dumps(spec.to_dict())))
    assert again == spec and again.run_id == d.name
  assert trained >= 16 and checked >= 2


def test_the_grid_plans_with_the_trainers_budget_rule():
  """One budget -> steps rule: a point's steps are what the trainer's own Config buys with the
  budget (`Config.total_steps`, `train.config.nearest_steps`), curriculum or not."""
  for kw in (dict(), dict(short_len=64, short_frac=0.6)):
    g = Grid(budgets=(2e11,), sizes=("100k",), sparsities=(0.0, 0.5), seq_lens=(256,),
             batch_size=4, vocab_size=128, **kw)
    for s in g.points()[0]:
      buys = dataclasses.replace(s.config, steps=0, flop_budget=s.budget)
      assert buys.total_steps == s.steps and s.train_flops == buys.flops_through(s.steps)
      if kw:
        assert s.short_steps == train_config.nearest_steps(0.6 * s.budget, s.short_step_flops)


def test_batch_sizes_give_sizes_their_own_batch():
  """A size may train with its own batch (small models are bound by per-step overhead on a
  GPU); its budget is matched all the same, and sizes not named keep batch_size and their ids."""
  base = dict(budgets=(1e12,), sizes=("100k", "300k"), seq_lens=(64,), vocab_size=128,
              batch_size=4)
  plain, _ = Grid(**base).points()
  big, _ = Grid(**base, batch_sizes=(("100k", 16),)).points()
  assert [s.batch_size for s in big] == [16, 4] and [s.batch_size for s in plain] == [4, 4]
  assert big[1].run_id == plain[1].run_id and big[0].run_id != plain[0].run_id
  assert abs(big[0].flops_residual) <= big[0].step_flops / 2
  assert big[0].steps == pytest.approx(plain[0].steps / 4, abs=1)
  same, _ = Grid(**base, batch_sizes=(("300k", 4),)).points()
  assert [s.run_id for s in same] == [s.run_id for s in plain]
  st = study_lib.Study(name="t", grid=Grid(**base, batch_sizes=(("100k", 16),)),
                       eval=study_lib.EvalSpec(tasks=("niah_single",), lengths=(64,)))
  assert study_lib.from_json(json.loads(json.dumps(study_lib.to_json(st)))) == st
  Grid(**{**base, "batch_size": 3}, short_len=48, short_frac=0.5)  # 3 × 64 = 4 × 48 tokens
  with pytest.raises(ValueError, match=re.escape("grid.short_len=48 must divide batch × seq_len "
                                                 "= 256")):  # the 100k batch's 4 × 64
    Grid(**{**base, "batch_size": 3}, batch_sizes=(("100k", 4),), short_len=48, short_frac=0.5)


def test_grid_optimiser_is_the_trainers_with_warmup_and_width_rules():
  """The grid holds the trainer's OptimConfig; each run warms up for warmup_frac of its own
  steps, or, with warmup_frac=0, for optim.warmup_steps."""
  base = dict(budgets=(1e11,), sizes=("100k",), seq_lens=(64,), vocab_size=128, batch_size=4)
  (s,), _ = Grid(**base, optim=OptimConfig(lr=1e-3, weight_decay=0.0, b2=0.99)).points()
  assert s.optim == OptimConfig(lr=1e-3, weight_decay=0.0, b2=0.99,
                                warmup_steps=max(1, round(0.05 * s.steps)))
  (fixed,), _ = Grid(**base, warmup_frac=0.0, optim=OptimConfig(warmup_steps=7)).points()
  assert fixed.optim.warmup_steps == 7 and fixed.run_id != s.run_id
  assert fixed.identity()["optim"]["warmup_steps"] == 7  # not the 5% the layout assumes


def test_a_spec_refuses_config_fields_spec_json_does_not_hold():
  (s,), _ = Grid(budgets=(1e11,), sizes=("100k",), seq_lens=(64,), vocab_size=128).points()
  with pytest.raises(ValueError, match=re.escape("RunSpec.config sets ['grad_accum: 1 -> 2']")):
    dataclasses.replace(s, config=dataclasses.replace(s.config, grad_accum=2))
  with pytest.raises(ValueError, match=re.escape("data.seed: 0 -> 3")):
    dataclasses.replace(s, config=dataclasses.replace(
        s.config, data=dataclasses.replace(s.config.data, seed=3)))


def test_the_first_optimiser_layout_reads_with_its_own_defaults():
  """spec.json written with the grid's own optimiser (grid.Optim): its absent fields are that
  optimiser's defaults (no weight decay, 5% warmup), not the trainer's; a per-width rule left in
  it is refused (a planned run holds its own rate)."""
  (s,), _ = Grid(budgets=(1e11,), sizes=("100k",), seq_lens=(64,), vocab_size=128,
                 optim=OptimConfig(weight_decay=0.0)).points()
  first = {**s.to_dict(), "optim": {"lr": 3e-3}}
  assert spec_from_dict(first) == s and "optim" not in s.identity()
  tenth = spec_from_dict({**first, "optim": {"lr": 1e-3, "warmup_frac": 0.1}})
  assert tenth.optim == OptimConfig(lr=1e-3, weight_decay=0.0,
                                    warmup_steps=max(1, round(0.1 * s.steps)))
  with pytest.raises(ValueError, match=re.escape("has lr_ref_width=192; valid: 0")):
    spec_from_dict({**first, "optim": {"lr": 1e-3, "lr_ref_width": 192}})


def test_extra_grids_join_the_study_once_per_run_and_round_trip():
  """A grid per budget block (its own sizes), and a pattern at one budget only: the runs of
  every grid, a point two grids share planned once, in order; study.json reads them back."""
  base = study_lib.load_preset("micro")
  g = base.grid
  other = dataclasses.replace(g, sparsities=(0.0, 0.25))  # the dense run again, a new sparse one
  study = dataclasses.replace(base, extra_grids=(other,))
  ids = [s.run_id for s in study.runs()[0]]
  first = [s.run_id for s in g.points()[0]]
  extra = [s.run_id for s in other.points()[0]]
  assert ids == first + [i for i in extra if i not in first]
  assert len(ids) == len(set(ids)) > len(first)
  back = study_lib.from_json(json.loads(json.dumps(study_lib.to_json(study))))
  assert back == study
  assert "extra_grids" not in study_lib.to_json(base)  # studies without them keep their json


def test_eval_tasks_take_knobs_and_bad_knobs_fail_at_once():
  e = study_lib.EvalSpec(tasks=("niah_multikey(num_needles=16, questions=8)",), lengths=(1024,))
  assert e.tasks[0].startswith("niah_multikey(")
  with pytest.raises(ValueError, match="eval.tasks has 'nope'"):
    study_lib.EvalSpec(tasks=("nope",), lengths=(1024,))
  with pytest.raises(ValueError):
    study_lib.EvalSpec(tasks=("niah_multikey(no_such_knob=3)",), lengths=(1024,))


def test_h200_quick_is_h200s_first_budget_and_continues_into_it():
  """`h200_quick`'s folder continues with `--preset h200 --add-to-study`: its runs are h200's
  (same ids) and it evaluates with h200's settings (same eval key), so nothing retrains."""
  full, quick = study_lib.load_preset("h200"), study_lib.load_preset("h200_quick")
  full_ids = [s.run_id for s in full.runs()[0]]
  quick_ids = [s.run_id for s in quick.runs()[0]]
  assert set(quick_ids) < set(full_ids) and quick_ids == full_ids[:len(quick_ids)]
  assert quick.eval.key == full.eval.key
  budgets = sorted({s.budget for s in full.runs()[0]})
  assert len(budgets) >= 3 and budgets[-1] / budgets[0] >= 10  # issue 19's grid
  for b in budgets:
    assert len({s.size for s in full.runs()[0] if s.budget == b and s.train_sparsity == 0}) >= 4
  questions = {}  # >= 1000 scored questions per category per setting (a +-0.03 interval)
  for t in full.eval.tasks:
    for n in full.eval.lengths:
      task = tasks_lib.make(t, length=n, vocab_size=full.grid.vocab_size)
      key = (task.category, n)
      questions[key] = questions.get(key, 0) + task.questions * full.eval.examples_of(t)
  assert min(questions.values()) >= 1000, questions


def test_long_lens_reach_the_trainer_with_their_dispatch_and_keep_old_ids():
  """grid.long_lens: the trainer's data.long_lens with the grid's long_every as its dispatch (it
  sets each step's length, so the run's FLOPs); spec.json holds both; without them the ids are
  as before."""
  base = study_lib.load_preset("micro")
  g = dataclasses.replace(base.grid, seq_lens=(64,), long_lens=(32, 64), long_every=5,
                          budgets=(4e10,))
  spec = g.points()[0][0]
  assert spec.config.data.long_lens == (32, 64) and spec.config.steps_per_call == 5
  assert spec.train_flops == pytest.approx(sum(spec.config.step_flops(i)
                                               for i in range(spec.steps)), rel=1e-12)
  back = spec_from_dict(json.loads(json.dumps(spec.to_dict())))
  assert back == spec and back.run_id == spec.run_id
  plain = dataclasses.replace(g, long_lens=()).points()[0][0]
  assert plain.run_id != spec.run_id and "long_lens" not in plain.identity()
  cfg = job.train_config(spec, Path("/tmp/x"), dataclasses.replace(base, steps_per_call=25))
  assert cfg.steps_per_call == 5  # the planned dispatch, not the study's
  with pytest.raises(ValueError, match="grid.long_lens"):
    dataclasses.replace(g, long_lens=(32, 48))


def test_short_dense_reaches_the_sparse_runs_only_with_their_dense_short_flops():
  """grid.short_dense: sparse points train the curriculum's short phase dense (the trainer's
  short_dense, in spec.json and the run id, `d` in the label); dense points keep their ids; the
  short steps cost what a dense model's do, and the budget is still met within one step."""
  base = study_lib.load_preset("micro").grid
  g = dataclasses.replace(base, seq_lens=(64,), short_len=32, short_frac=0.5, budgets=(4e10,),
                          sparsities=(0.0, 0.75), patterns=("topk_blocks",), block=16)
  warm = dataclasses.replace(g, short_dense=True)
  (d0, s0), (d1, s1) = g.points()[0][:2], warm.points()[0][:2]
  assert d0.pattern == "dense" and d1.run_id == d0.run_id and not d1.config.short_dense
  assert s1.config.short_dense and s1.run_id != s0.run_id and s1.label == s0.label + "d"
  assert s1.short_step_flops == d1.short_step_flops > s0.short_step_flops
  assert abs(s1.flops_residual) <= s1.step_flops / 2
  assert s1.train_flops == pytest.approx(sum(s1.config.step_flops(i) for i in range(s1.steps)),
                                         rel=1e-12)
  back = spec_from_dict(json.loads(json.dumps(s1.to_dict())))
  assert back == s1 and back.run_id == s1.run_id and "short_dense" not in s0.identity()


def test_select_block_q_chooses_per_query_in_the_content_runs_only():
  """grid.select_block_q=1: the content-selected points choose kv-blocks per query (per_query,
  laid out in the grid's blocks; `q1` in the label, a new run id), at the same attended pairs and
  steps; dense points and their ids are untouched, and spec.json reads back the same run."""
  base = study_lib.load_preset("micro").grid
  g = dataclasses.replace(base, seq_lens=(64,), budgets=(4e10,), sparsities=(0.0, 0.75),
                          patterns=("quest",), block=16)
  (d0, s0), (d1, s1) = g.points()[0][:2], dataclasses.replace(g, select_block_q=1).points()[0][:2]
  assert d1.run_id == d0.run_id and d1.model.attention.block_q == 16
  att = s1.model.attention
  assert att.per_query and (att.block_q, att.block_kv) == (16, 16)
  assert att.selection_blocks(64) == (1, 16) and not s0.model.attention.per_query
  assert s1.run_id != s0.run_id and s1.label == s0.label.replace("@0.75/", "@0.75/q1/")
  assert s1.steps == s0.steps and s1.model.attention.pairs(64) == s0.model.attention.pairs(64)
  back = spec_from_dict(json.loads(json.dumps(s1.to_dict())))
  assert back == s1 and back.run_id == s1.run_id
