"""train.data: batching, mixture weights, sharding, shuffling and exact iterator restore."""

import json

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from train import data


class Toy:
  """Example i of source `tag`: inputs [T] = (tag, i, i, ...), so every row names its origin."""

  def __init__(self, tag, length, size=10_000):
    self.tag, self.length, self.size = tag, length, size

  def __len__(self):
    return self.size

  def __getitem__(self, i):
    inputs = np.full(self.length, i, np.int32)
    inputs[0] = self.tag
    return {"inputs": inputs, "targets": np.roll(inputs, -1),
            "weights": np.ones(self.length, np.float32)}


def _origins(batch):
  return [(int(r[0]), int(r[1])) for r in batch["inputs"]]


def _run(ds, n, state=None):
  it = iter(ds)
  if state is not None:
    it.set_state(state)
  return data.take(it, n)


def _mixture(sources, weights, **kw):
  return data.mixture(sources, weights, **{"batch_size": 4, "seed": 0, "shard_index": 0,
                                           "shard_count": 1, **kw})


def test_batches_are_b_by_t_with_one_length_each():
  ds = _mixture([Toy(0, 16), Toy(1, 32), Toy(2, 16)], [1, 1, 1])
  lengths = set()
  for batch in _run(ds, 30):
    assert set(batch) == set(data.KEYS)
    t = batch["inputs"].shape[1]
    lengths.add(t)
    assert batch["inputs"].shape == batch["targets"].shape == batch["weights"].shape == (4, t)
    assert batch["inputs"].dtype == np.int32 and batch["weights"].dtype == np.float32
    assert {tag for tag, _ in _origins(batch)} <= ({0, 2} if t == 16 else {1})
  assert lengths == {16, 32}


def test_weights_are_example_fractions():
  ds = _mixture([Toy(0, 16), Toy(1, 16), Toy(2, 32)], [1, 2, 1])
  tags = [tag for b in _run(ds, 400) for tag, _ in _origins(b)]
  np.testing.assert_allclose(np.bincount(tags) / len(tags), [0.25, 0.5, 0.25], atol=0.01)


@settings(max_examples=12, deadline=None)
@given(st.integers(0, 30), st.lists(st.floats(0.1, 5), min_size=1, max_size=4),
       st.sampled_from([1, 3]), st.integers(0, 2**32 - 1))
def test_restore_continues_with_the_same_batches(cut, weights, threads, seed):
  sources = [Toy(k, 8 * (1 + k % 2)) for k in range(len(weights))]
  ds = _mixture(sources, weights, seed=seed, num_threads=threads)
  straight = _run(ds, cut + 8)
  it = iter(ds)
  data.take(it, cut)
  state = json.loads(json.dumps(it.get_state()))  # the state survives JSON
  resumed = _run(_mixture(sources, weights, seed=seed), 8, state)  # a fresh pipeline object
  for a, b in zip(straight[cut:], resumed):
    for k in data.KEYS:
      np.testing.assert_array_equal(a[k], b[k])


def test_shards_are_disjoint_and_step_aligned():
  sources = [Toy(0, 16), Toy(1, 32)]
  runs = [_run(_mixture(sources, [1, 1], shard_index=s, shard_count=3), 40) for s in range(3)]
  for step in zip(*runs):  # every process has the same T at every step
    assert len({b["inputs"].shape for b in step}) == 1
  seen = [{o for b in run for o in _origins(b)} for run in runs]
  assert all(not (seen[i] & seen[j]) for i in range(3) for j in range(i + 1, 3))
  for s in range(3):
    assert all(i % 3 == s for _, i in seen[s])


def test_shuffle_is_a_permutation_per_epoch_and_seeded():
  order = lambda seed: [i for b in _run(_mixture([Toy(0, 8, size=10)], [1], batch_size=5,
                                                  seed=seed), 4) for _, i in _origins(b)]
  a = order(0)
  assert sorted(a[:10]) == sorted(a[10:]) == list(range(10))
  assert a[:10] != list(range(10)) and a[:10] != a[10:]
  assert a == order(0) and a != order(1)


def test_shard_defaults_come_from_jax():
  import jax
  assert (jax.process_index(), jax.process_count()) == (0, 1)
  ds = data.mixture([Toy(0, 8, size=8)], [1], batch_size=8, seed=0)
  assert sorted(i for _, i in _origins(_run(ds, 1)[0])) == list(range(8))


@pytest.mark.parametrize("kwargs,match", [
    (dict(weights=[1, 0]), r"weights=\[1, 0\] must all be positive"),
    (dict(weights=[1]), "one weight per source"),
    (dict(batch_size=0), r"batch_size=0 must be an int >= 1"),
    (dict(shard_index=2, shard_count=2), r"shard_index=2 must be an int in \[0, 1\]"),
    (dict(shard_index=0, shard_count=0), r"shard_count=0 must be an int >= 1"),
])
def test_bad_arguments(kwargs, match):
  args = {"weights": [1, 1], "batch_size": 2, "seed": 0, "shard_index": 0, "shard_count": 1,
          **kwargs}
  with pytest.raises(ValueError, match=match):
    data.mixture([Toy(0, 8), Toy(1, 8)], args.pop("weights"), **args)


def test_bad_source():
  class Extra(Toy):
    def __getitem__(self, i):
      return {**super().__getitem__(i), "answer": np.zeros(1)}

  with pytest.raises(ValueError, match=r"sources\[1\]\[0\] has keys"):
    _mixture([Toy(0, 8), Extra(1, 8)], [1, 1])
