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

from experiments.runs import job
from experiments.spec import study as study_lib
from experiments.spec.grid import Grid, Optim, RunSpec, spec_from_dict, to_dict


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
    if s.short_len:  # curriculum steps: the same tokens at the short length
      short = models.flops_per_token(s.model, s.short_len, training=True) * s.batch_size * s.seq_len
    total = s.short_steps * short + (s.steps - s.short_steps) * step
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
    assert spec_from_dict(json.loads(json.dumps(to_dict(c)))) == c
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
  lr = dataclasses.replace(s, optim=dataclasses.replace(s.optim, lr=1e-3))
  assert lr.run_id != s.run_id
  seed = dataclasses.replace(s, seed=1)
  assert seed.run_id != s.run_id
  # Derived numbers are not identity: recomputing them cannot orphan a finished run.
  assert dataclasses.replace(s, params=0, step_flops=1.0).run_id == s.run_id
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
    back = spec_from_dict(json.loads(json.dumps(to_dict(s))))
    assert back == s and back.run_id == s.run_id
    break


def test_study_round_trips_through_json():
  for name in study_lib.presets():
    st = study_lib.load_preset(name)
    assert study_lib.from_json(json.loads(json.dumps(study_lib.to_json(st)))) == st


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
    (dict(optim=Optim(lr_ref_width=-1)), "grid.optim.lr_ref_width=-1"),
])
def test_bad_grid_names_the_value(kwargs, needle):
  base = dict(budgets=(1e11,), sizes=("100k",))
  with pytest.raises(ValueError, match=re.escape(needle)):
    Grid(**{**base, **kwargs})


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
  assert spec.tasks == tasks and spec.data_source == "device" and spec.run_id != plain.run_id
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
  scaled, _ = Grid(optim=Optim(lr=1e-3, lr_ref_width=192), **base).points()
  assert [(s.model.width, s.optim.lr, s.optim.lr_ref_width) for s in scaled] == [
      (64, pytest.approx(3e-3), 0), (192, pytest.approx(1e-3), 0)]
  plain, _ = Grid(optim=Optim(lr=1e-3), **base).points()
  assert [s.optim.lr for s in plain] == [1e-3, 1e-3]
  # The 3m run is the same run either way (same rate); the 100k one is not.
  assert scaled[1].run_id == plain[1].run_id and scaled[0].run_id != plain[0].run_id
  study = study_lib.Study(name="t", grid=Grid(optim=Optim(lr=1e-3, lr_ref_width=192), **base),
                          eval=study_lib.EvalSpec(tasks=("niah_single",), lengths=(64,)))
  assert job.train_config(scaled[0], Path("/tmp/unused"), study).optim.lr == pytest.approx(3e-3)
