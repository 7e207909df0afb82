"""The budget -> steps rule the trainer and the study's grid share (`train.config.nearest_steps`,
`Config.total_steps`): the whole number of steps whose FLOPs come nearest the budget, after the
curriculum's short steps."""

import dataclasses

import pytest

import models
from train.config import Config, DataConfig, nearest_steps


def test_nearest_steps_is_the_nearest_whole_step():
  assert [nearest_steps(f, 10.0) for f in (0.0, 4.9, 5.1, 14.9, 15.1, 1234.0)] == [
      0, 0, 1, 1, 2, 123]
  assert nearest_steps(-30.0, 10.0) == 0  # a budget the short phase overspent buys no step
  for budget in (1e3, 3.7e3, 9.99e3):
    steps = nearest_steps(budget, 7.0)
    assert abs(steps * 7.0 - budget) <= 3.5


def test_a_flop_budget_buys_the_nearest_step_count_after_the_short_steps():
  model = models.ModelConfig(vocab_size=64, width=32, depth=1, num_heads=2)
  cfg = Config(model=model, batch_size=4, data=DataConfig(seq_len=64))
  step = cfg.flops_per_step
  assert step == models.flops_per_token(model, 64) * 4 * 64
  for over, want in ((0.3, 10), (0.7, 11)):  # rounded, not floored: 10.7 steps buy 11
    assert dataclasses.replace(cfg, flop_budget=(10 + over) * step).total_steps == want
  curr = dataclasses.replace(cfg, data=DataConfig(seq_len=64, short_len=16, short_steps=5))
  short = curr.short_flops_per_step
  assert 0 < short < step  # same tokens, shorter attention
  budget = 5 * short + 7.6 * step
  buys = dataclasses.replace(curr, flop_budget=budget)
  assert buys.total_steps == 5 + 8
  assert buys.flops_through(13) == pytest.approx(5 * short + 8 * step, rel=1e-12)
  assert abs(buys.flops_through(buys.total_steps) - budget) <= step / 2
  assert dataclasses.replace(curr, steps=9, flop_budget=budget).total_steps == 9  # steps win
