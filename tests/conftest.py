"""Shared test setup: CPU-friendly hypothesis profile, gpu marker handling."""

import os

import hypothesis
import jax
import pytest

# Tests compile many small XLA programs; per-example deadlines would only measure compile time.
hypothesis.settings.register_profile("ci", deadline=None, print_blob=True, derandomize=False)
hypothesis.settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def pytest_collection_modifyitems(config, items):
  if jax.default_backend() == "gpu":
    return
  skip = pytest.mark.skip(reason="needs an NVIDIA GPU: run `pytest -m gpu` on the device machine "
                                 "(results are committed under benchmarks/results/)")
  for item in items:
    if "gpu" in item.keywords:
      item.add_marker(skip)


@pytest.fixture
def predict_compiles():
  """A list that grows by one for each XLA compile of the evaluator's `jit(predict)` while the
  test runs (`experiments.evaluation.evaluate.make_forward`'s programs)."""
  compiles = []

  def listener(event, seconds, fun_name="", **kw):
    if event == "/jax/core/compile/backend_compile_duration" and fun_name == "jit(predict)":
      compiles.append(fun_name)
  jax.monitoring.register_event_duration_secs_listener(listener)
  yield compiles
  jax.monitoring.unregister_event_duration_listener(listener)
