"""Task sources feed train.data: rows are real examples, and restore is exact on real tasks."""

import numpy as np

from experiments import tasks
from train import data


def test_an_epoch_of_a_task_source_is_its_examples():
  task = tasks.make("variable_tracking", length=256, seed=2)
  source = task.source("train", num_examples=16)
  ds = data.mixture([source], [1], batch_size=4, seed=0, shard_index=0, shard_count=1)
  rows = {r.tobytes() for b in data.take(iter(ds), 4) for r in b["inputs"]}
  assert rows == {task.example("train", i)["inputs"].tobytes() for i in range(16)}


def test_mixture_of_tasks_and_lengths_restores_exactly():
  sources = [tasks.make(n, length=t).source("train")
             for n, t in [("niah_multikey", 128), ("common_words", 128), ("chain_resolve", 512)]]
  ds = data.mixture(sources, [2, 1, 1], batch_size=3, seed=7, shard_index=1, shard_count=2)
  it = iter(ds)
  data.take(it, 5)
  state = it.get_state()
  expected = data.take(it, 6)
  it2 = iter(ds)
  it2.set_state(state)
  for a, b in zip(expected, data.take(it2, 6)):
    for k in data.KEYS:
      np.testing.assert_array_equal(a[k], b[k])
  assert {b["inputs"].shape[1] for b in expected} == {128, 512}
