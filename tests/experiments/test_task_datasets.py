"""TFDS builders write array_record eval sets, without TensorFlow, identical to the generator."""

import sys

import numpy as np
import pytest

from experiments import tasks

ARRAYS = ("inputs", "targets", "weights", "answer", "evidence")


class _HideTensorflow:
  """Wraps a meta-path finder so that tensorflow looks uninstalled (find_spec -> None)."""

  def __init__(self, finder):
    self.finder = finder

  def find_spec(self, name, path=None, target=None):
    if name == "tensorflow" or name.startswith("tensorflow."):
      return None
    find = getattr(self.finder, "find_spec", None)
    return find(name, path, target) if find else None


@pytest.fixture
def no_tensorflow(monkeypatch):
  # Not a None entry in sys.modules: etils reads mere presence there as "TF is loaded".
  for name in [m for m in sys.modules if m == "tensorflow" or m.startswith("tensorflow.")]:
    monkeypatch.delitem(sys.modules, name)
  monkeypatch.setattr(sys, "meta_path", [_HideTensorflow(f) for f in sys.meta_path])
  with pytest.raises(ModuleNotFoundError):
    import tensorflow  # noqa: F401


def _assert_same(record, ex, index):
  for k in ARRAYS:
    np.testing.assert_array_equal(record[k], ex[k], err_msg=k)
    assert record[k].dtype == ex[k].dtype, k
  assert record["index"] == index
  assert record["task"].decode() == ex["task"] and record["category"].decode() == ex["category"]


def test_build_and_read_back_every_task(tmp_path, no_tensorflow):
  import tensorflow_datasets as tfds
  from experiments.tasks import tfds_builders

  splits = {"validation": 2, "test": 3}
  for name in tasks.TASKS:
    knobs = {"num_needles": 3} if name == "niah_multikey" else {}
    b = tfds_builders.builder(name, data_dir=str(tmp_path), length=160, seed=5, splits=splits,
                              **knobs)
    b.download_and_prepare()
    assert list((tmp_path / name).glob("*/*/*.array_record-*")), "array_record files written"
    task = tasks.make(name, length=160, seed=5, **knobs)
    for split, n in splits.items():
      # Read back through the registry by name, as a user with only the data dir would.
      ds = tfds.data_source(f"{name}/{b.builder_config.name}", data_dir=str(tmp_path), split=split)
      assert len(ds) == n
      for i in range(n):
        _assert_same(ds[i], task.example(split, i), i)


def test_standard_config_names_and_validation(tmp_path):
  from experiments.tasks import tfds_builders

  names = [c.name for c in tfds_builders.BUILDERS["chain_resolve"].BUILDER_CONFIGS]
  assert names == [f"len{2**k}" for k in range(7, 18)]
  b = tfds_builders.builder("chain_resolve", data_dir=str(tmp_path), length=128)
  assert b.builder_config.name == "len128"  # default arguments reuse the standard config
  with pytest.raises(ValueError, match=r"chain_resolve: num_hops=50 must be in \[1, "):
    tfds_builders.builder("chain_resolve", data_dir=str(tmp_path), length=4096, num_hops=50)
