"""The activation capture: the evaluation rows are the same with and without it (one pass, the
dense one, also returns the hidden-state sparsity), the per-question arrays line up with the rows'
questions and equal the metrics of the model's own hidden states at the question positions, and
probe results round-trip through their files."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import models
from experiments import stats, tasks
from experiments.evaluation import evaluate as ev
from experiments.evaluation import probe as probe_lib
from experiments.spec.study import EvalSpec
from experiments.tasks import scoring


def _model():
  cfg = models.ModelConfig(vocab_size=128, width=32, depth=2, num_heads=2, num_kv_heads=1,
                           attention=models.AttentionConfig(implementation="xla"))
  return cfg, models.Transformer(cfg, rngs=nnx.Rngs(3))


SPEC = EvalSpec(tasks=("niah_single",), lengths=(64,), settings=(("dense", 0.0), ("local", 0.5)),
                examples=5, batch_size=2)


def test_capture_leaves_rows_unchanged_and_matches_hidden_states():
  cfg, model = _model()
  name = "niah_multikey(questions=3)"
  spec = EvalSpec(tasks=("niah_single", name), lengths=(64,),
                  settings=(("dense", 0.0), ("local", 0.5)), examples=5, batch_size=2)
  fwd = ev.make_forward(model)
  plain = ev.evaluate(fwd, cfg, spec, 128)
  acts = {}
  captured = ev.evaluate(fwd, cfg, spec, 128, activations=acts)
  assert captured == plain
  assert set(acts) == {("niah_single", 64), (name, 64)}
  a = acts[(name, 64)]
  (row,) = [r for r in plain if r["task"] == name and r["eval_setting"] == "dense"
            and r["phase"] == "prefill"]
  assert a["question"].shape == (len(row["correct"]), cfg.depth + 1, 4) == a["answer"].shape
  assert a["correct"].tolist() == row["correct"] and a["context"].tolist() == row["context"]
  # the numbers are the metrics of the model's own hidden states at the question positions
  data = ev.stacked_examples(tasks.make(name, length=64, vocab_size=128), "test", 5)
  _, hidden = model(jnp.asarray(data["inputs"]), return_hidden=True)  # [L+1, B, T, d]
  ids = scoring.question_ids(data["weights"])
  want = []
  for b in range(5):
    for q in range(ids[b].max() + 1):
      want.append(stats.activation_metrics(np.asarray(hidden[:, b, np.flatnonzero(ids[b] == q)[0]])))
  np.testing.assert_allclose(a["question"], np.stack(want), atol=1e-5)


def test_question_activations_order_and_means():
  weights = np.array([[0, 1, 1, 0, 1, 0], [0, 0, 0, 1, 0, 0]], float)
  sparsity = np.arange(2 * 1 * 6 * 1, dtype=float).reshape(2, 1, 6, 1)
  out = ev.question_activations(sparsity, weights)
  assert out["question"][:, 0, 0].tolist() == [1, 4, 9]
  assert out["answer"][:, 0, 0].tolist() == [1.5, 4, 9]


def test_probe_model_saves_and_loads(tmp_path):
  cfg, model = _model()
  shifted = probe_lib.shifted_tasks(["niah_multikey(questions=2)", "niah_single"], 64, 128)
  assert shifted == [("niah_multikey(questions=2, num_needles=8)", "niah_multikey(questions=2)",
                      "num_needles 4->8")]
  # a small vocabulary caps the hops: the largest that fits
  (hops,) = probe_lib.shifted_tasks(["chain_resolve(questions=4)"], 128, 128)
  assert hops[2] == "num_hops 4->5"
  # chain_resolve(questions=4) cannot be built at 32 tokens: it is probed at 64 only
  assert ("chain_resolve(questions=4)" not in
          [t for ts, ls in probe_lib._fitting(["chain_resolve(questions=4)"], (32,), 128) for t in ts])
  spec = EvalSpec(tasks=("niah_multikey(questions=2)",), lengths=(32, 64),
                  settings=(("dense", 0.0),), examples=3, batch_size=3, native=False)
  result = probe_lib.probe_model(ev.make_forward(model), cfg, spec, 128, trained_length=64,
                                 shifted=shifted)
  assert set(result["activations"]) == {("niah_multikey(questions=2)", 32),
                                        ("niah_multikey(questions=2)", 64), (shifted[0][0], 64)}
  probe_lib.save(tmp_path, result, {"run": "x"})
  back = probe_lib.load(tmp_path)
  assert back["meta"]["run"] == "x"
  assert back["meta"]["tasks"][shifted[0][0]]["knob_shift"] == "num_needles 4->8"
  assert back["rows"] == result["rows"]
  for key, fields in result["activations"].items():
    for f, v in fields.items():
      np.testing.assert_array_equal(back["activations"][key][f], v)


def test_capture_replaces_the_dense_pass_rather_than_adding_one():
  """With the capture on, the dense setting's batches go through with_activations only: the
  plain forward runs for the sparse settings alone, exactly as often as without it minus the
  dense batches."""
  cfg, model = _model()
  fwd = ev.make_forward(model)
  calls = []

  def counting(tokens, phased):
    calls.append(("plain", phased))
    return fwd(tokens, phased)

  def counting_capture(tokens, phased):
    calls.append(("capture", phased))
    return fwd.with_activations(tokens, phased)

  counting.with_activations = counting_capture
  ev.evaluate(counting, cfg, SPEC, 128)
  plain = list(calls)
  calls.clear()
  ev.evaluate(counting, cfg, SPEC, 128, activations={})
  batches = -(-SPEC.examples // SPEC.batch_size)
  assert [c for c, _ in calls].count("capture") == batches
  assert len(calls) == len(plain)  # one pass per batch and phase either way


def test_probe_command_refuses_a_folder_that_is_not_a_run(tmp_path, capsys):
  from experiments.cli import main
  with pytest.raises(SystemExit) as e:
    main(["probe", str(tmp_path)])
  assert e.value.code == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert err[0].endswith(f"{tmp_path}: no spec.json; RUN_DIRS must be run folders "
                         "(<study>/runs/<run_id>)") and len(err) == 2
