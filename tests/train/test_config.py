"""The budget -> steps rule the trainer and the study's grid share (`train.config.nearest_steps`,
`Config.total_steps`): the whole number of steps whose FLOPs come nearest the budget, after the
curriculum's short steps."""

import dataclasses

import pytest

import models
from train.config import Config, DataConfig, identity_changes, nearest_steps, validate


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


# ------------------------------------------------------------------------------ data.long_lens
MODEL = models.ModelConfig(vocab_size=64, width=32, depth=1, num_heads=2)


def long_cfg(**data):
  """seq_len 128, 4 sequences per step (512 tokens), 3 steps per call."""
  return Config(model=MODEL, batch_size=4, steps_per_call=3, steps=20,
                data=DataConfig(seq_len=128, **data))


def test_long_lens_cycle_per_call_after_the_short_phase_a_pure_function_of_the_step():
  cfg = long_cfg(long_lens=(64, 128, 32))
  assert [cfg.phase(s)[0] for s in range(10)] == [64] * 3 + [128] * 3 + [32] * 3 + [64]
  assert {cfg.phase(s) for s in range(9)} == {(64, 8), (128, 4), (32, 16)}  # same tokens
  curr = long_cfg(short_len=32, short_steps=2, long_lens=(64, 128))
  assert [curr.phase(s) for s in range(10)] == (  # the cycle counts from the first long step
      [(32, 16)] * 2 + [(64, 8)] * 3 + [(128, 4)] * 3 + [(64, 8)] * 2)
  assert curr.lengths == (128, 64, 32) and cfg.lengths == (128, 64, 32)
  # Default: seq_len throughout (or after the short steps), as before.
  assert {long_cfg().phase(s) for s in range(30)} == {(128, 4)}
  plain = long_cfg(short_len=32, short_steps=2)
  assert [plain.phase(s) for s in (0, 1, 2, 50)] == [(32, 16)] * 2 + [(128, 4)] * 2


def test_long_lens_of_seq_len_alone_is_the_default_run_in_every_number():
  for data in ({}, {"short_len": 32, "short_steps": 5}):
    base = long_cfg(**data)
    same = long_cfg(long_lens=(128,), **data)
    assert [same.phase(s) for s in range(40)] == [base.phase(s) for s in range(40)]
    assert [same.flops_through(s) for s in range(40)] == pytest.approx(
        [base.flops_through(s) for s in range(40)], rel=1e-15)
    for extra in (0.2, 0.5, 0.7, 13.3):
      budget = base.flops_through(17) + extra * base.flops_per_step
      assert (dataclasses.replace(same, steps=0, flop_budget=budget).total_steps
              == dataclasses.replace(base, steps=0, flop_budget=budget).total_steps)


def _costs(cfg, lengths):
  """Per-step FLOPs computed from the schedule written out by hand, not through `phase`."""
  return [models.flops_per_token(MODEL, n) * cfg.batch_size * cfg.data.seq_len for n in lengths]


def test_long_lens_flops_count_each_step_at_its_own_length():
  cfg = long_cfg(short_len=32, short_steps=2, long_lens=(64, 128))
  lengths = [32] * 2 + ([64] * 3 + [128] * 3) * 10
  costs = _costs(cfg, lengths)
  assert costs[2] < costs[5]  # a 64-token step costs less than a 128-token one
  for s in range(len(lengths) + 1):
    assert cfg.flops_through(s) == pytest.approx(sum(costs[:s]), rel=1e-12)
    if s < len(lengths):
      assert cfg.step_flops(s) == costs[s]
  assert cfg.flops_per_step == costs[5]  # one step at seq_len
  # A budget buys the short steps, then the whole number of cycled steps nearest the rest.
  for budget in (sum(costs[:2]) + 1.0, sum(costs[:9]) + 0.3 * costs[9],
                 sum(costs[:9]) + 0.7 * costs[9], sum(costs[:31]) + 0.49 * costs[31],
                 sum(costs[:47]) + 0.51 * costs[47]):
    buys = dataclasses.replace(cfg, steps=0, flop_budget=budget)
    want = min(range(2, len(lengths)), key=lambda k: abs(sum(costs[:k]) - budget))
    assert buys.total_steps == want
    assert buys.flops_through(buys.total_steps) == pytest.approx(sum(costs[:want]), rel=1e-12)
  nocurr = long_cfg(long_lens=(32, 128))
  costs = _costs(nocurr, ([32] * 3 + [128] * 3) * 5)
  for budget in (0.4 * costs[0], 0.6 * costs[0], sum(costs[:4]) + 0.6 * costs[4]):
    buys = dataclasses.replace(nocurr, steps=0, flop_budget=budget)
    assert buys.total_steps == min(range(30), key=lambda k: abs(sum(costs[:k]) - budget))


@pytest.mark.parametrize("data, words", [
    ({"long_lens": (64,)}, "the largest must be data.seq_len=128"),
    ({"long_lens": (48, 128)}, "48 is not a valid length; valid lengths here: [1, 2, 4, 8, 16, 32,"
                               " 64, 128]"),
    ({"long_lens": (256, 128)}, "256 is not a valid length"),
    ({"long_lens": (16, 128), "short_len": 32, "short_steps": 2},
     "16 is not a valid length; valid lengths here: [32, 64, 128]"),
    ({"long_lens": (0, 128)}, "0 is not a valid length"),
])
def test_bad_long_lens_fail_in_one_line_naming_the_value_and_the_valid_ones(data, words):
  cfg = dataclasses.replace(long_cfg(**data), model=dataclasses.replace(
      MODEL, attention=models.AttentionConfig(implementation="reference")))
  with pytest.raises(ValueError) as error:
    validate(cfg, 1, 1)
  message = str(error.value)
  assert message.startswith("data.long_lens=") and words in message and "\n" not in message


def test_long_lens_lengths_must_split_over_the_devices():
  model = dataclasses.replace(MODEL, attention=models.AttentionConfig(implementation="reference"))
  cfg = Config(model=model, batch_size=6, steps=4,
               data=DataConfig(seq_len=128, long_lens=(64, 128), shards=1))
  validate(cfg, 3, 1)  # 6 rows at 128 and 12 at 64: both split over 3 devices
  with pytest.raises(ValueError, match=r"data.long_lens=\(96, 128\): 96 is not a valid length; "
                                       r"valid lengths here: \[.*\b64, 128\]"):
    validate(dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, long_lens=(96, 128))),
             3, 1)  # 768 tokens make 8 sequences of 96: not a multiple of 3 devices


def test_long_lens_calls_have_one_length_and_steps_per_call_becomes_identity():
  from train.loop import call_end
  for data in ({"long_lens": (64, 128, 32)},
               {"long_lens": (64, 128), "short_len": 32, "short_steps": 4}):
    cfg = dataclasses.replace(long_cfg(**data), steps=40)
    step = 0
    while step < cfg.total_steps:
      end = call_end(cfg, step)
      assert len({cfg.phase(s) for s in range(step, end)}) == 1, (step, end)
      step = end
  plain, cycled = long_cfg(), long_cfg(long_lens=(64, 128))
  assert identity_changes(dataclasses.replace(plain, steps_per_call=5), plain.to_dict()) == []
  assert identity_changes(dataclasses.replace(cycled, steps_per_call=5), cycled.to_dict()) == [
      "steps_per_call: 3 -> 5"]
  assert identity_changes(cycled, plain.to_dict()) == ["data.long_lens: [] -> [64, 128]"]
