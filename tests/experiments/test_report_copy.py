"""Reporting on a copied results folder (results.csv and study.json, no run folders: what
studies/ commits) rewrites the report and loses no row; without outcomes.npz it says its tests
are unpaired, with one it pairs the eval settings of a model. outcomes.npz round trips."""

import shutil
from pathlib import Path

import numpy as np
import pytest

from experiments.cli import write_report
from experiments.runs import files, results

SMOKE = Path(__file__).resolve().parents[2] / "studies" / "smoke"


def test_report_on_copied_results_keeps_every_row(tmp_path):
  out = tmp_path / "smoke"
  shutil.copytree(SMOKE, out)
  before = (out / "results.csv").read_text()
  (out / "report.md").unlink()
  write_report(out, wandb_mode="disabled")  # with the committed outcomes.npz: paired tests
  assert (out / "results.csv").read_text() == before
  md = (out / "report.md").read_text()
  assert "frontier" in md.lower()
  assert "Data: per-question outcomes of all" in md and "| paired |" in md
  _claims_answered(md)
  (out / "outcomes.npz").unlink()  # a copied folder without them: the unpaired fallback
  write_report(out, wandb_mode="disabled")
  md = (out / "report.md").read_text()
  assert (out / "results.csv").read_text() == before
  assert "no per-question outcomes (`outcomes.npz` absent" in md and "| paired |" not in md
  _claims_answered(md)
  assert "**no `outcomes.npz`**: every test here is the unpaired fallback" in md
  assert (out / "plots" / "tolerance_curves.png").exists()
  assert "![task_tolerance](plots/task_tolerance.png)" in md.split("## Compute-optimal")[0]
  assert (out / "plots" / "task_tolerance.png").exists()


def _claims_answered(md):
  """The verdict table right under the title, a row per claim, each with a verdict in words
  and a reason; the first plots right under it."""
  lines = md.splitlines()
  assert lines[0].startswith("# Study") and lines[2] == "## The Sparse Frontier's claims: verdicts"
  rows = [line for line in lines[4:12] if line.startswith("| (")]
  assert [r.split(")")[0] for r in rows] == ["| (a", "| (b", "| (c", "| (c", "| (d"]
  for r in rows:
    verdict = r.split("| **")[1].split("**")[0]
    assert verdict in ("reproduced", "refuted", "not resolvable here")
    assert len(r.split("|")[3].strip()) > 10  # the why is never empty
  top = md.split("## The claims in detail")[0]
  assert top.index("verdicts") < top.index("plots/tolerance_curves.png") < \
      top.index("plots/frontier.png") < top.index("plots/isoflop.png")
  for section in ("## The claims in detail", "## (a) task by task (secondary)",
                  "## Compute-optimal dense size per budget", "## Iso-FLOP table"):
    assert section in md
  assert "**Verdicts at other tolerance margins.**" in md.split("## (a) task by task")[0]
  # one budget: the crossover of (c) cannot be fitted, and says so
  assert "needs >= 3 training budgets" in md


def _nested_outcomes(rows):
  """Per-question outcomes that agree with each row's accuracy: the first k of n questions
  right, so the settings of one model are nested (what a sparse setting that only loses
  answers would give)."""
  for r in rows:
    k = round(r["accuracy"] * r["n"])
    yield {**r, "correct": [1] * k + [0] * (r["n"] - k)}


def test_report_with_outcomes_pairs_a_models_settings(tmp_path):
  out = tmp_path / "smoke"
  shutil.copytree(SMOKE, out)
  rows = results.read(out / "results.csv")
  results.write_outcomes(out / results.OUTCOMES, list(_nested_outcomes(rows)))
  md = write_report(out, wandb_mode="disabled").read_text()
  assert f"per-question outcomes of all {len(rows)} rows" in md
  tolerance = md.split("## Sparsity tolerance")[1].split("## Fixed")[0]
  assert "| paired |" in tolerance and "| Welch |" not in tolerance
  assert "paired exact sign test (McNemar)" in md and "Holm" in md
  _claims_answered(md)
  # (c): the two models scored the same examples, so they are compared paired by question
  assert "so the comparison is paired by question" in md
  detail = md.split("## The claims in detail")[1].split("## Compute-optimal")[0]
  assert "| (c, training) |" in detail and "| paired exact sign test (McNemar) |" in detail


def test_outcomes_round_trip_and_join(tmp_path):
  base = dict(run_id="r1", task="niah_single", eval_length=64, phase="prefill")
  rows = [dict(base, eval_setting="dense", n=5, accuracy=0.6, correct=[1, 0, 1, 1, 0]),
          dict(base, eval_setting="local_0.5", n=5, accuracy=0.4, correct=[1, 0, 0, 1, 0],
               context=[0, 0, 1, 1, 2]),
          dict(base, eval_setting="old", n=3, accuracy=0.0)]  # an eval.json without outcomes
  path = results.write_outcomes(tmp_path / results.OUTCOMES, rows)
  got = results.read_outcomes(path)
  assert set(got) == {results.outcome_key(r) for r in rows[:2]}
  dense = got[results.outcome_key(rows[0])]
  assert dense.correct.tolist() == [1, 0, 1, 1, 0] and dense.context.tolist() == list(range(5))
  assert got[results.outcome_key(rows[1])].context.tolist() == [0, 0, 1, 1, 2]
  # join: a row's outcomes where they match it; none where absent or left from other results
  stale = dict(rows[0], accuracy=0.8)
  joined = results.join(rows + [stale], got)
  assert joined[0] is dense and joined[2] is None and joined[3] is None
  assert results.join(rows, None) == [None] * 3
  assert results.read_outcomes(tmp_path / "absent.npz") is None
  (tmp_path / "bad.npz").write_bytes(path.read_bytes()[:100])
  with pytest.raises(files.DamagedFile, match="bad.npz"):
    results.read_outcomes(tmp_path / "bad.npz")
  with pytest.raises(ValueError, match="2 context ids for 5 questions"):
    results.write_outcomes(tmp_path / "x.npz", [dict(rows[0], context=[0, 1])])
  assert np.load(path)["bits"].dtype == np.uint8  # packed: 8 questions a byte
