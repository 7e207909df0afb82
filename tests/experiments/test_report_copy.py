"""Reporting on a copied results folder (results.csv and study.json, no run folders: what
experiments/results/ commits) rewrites the report and loses no row."""

import shutil
from pathlib import Path

from experiments import report

SMOKE = Path(__file__).resolve().parents[2] / "experiments" / "results" / "smoke"


def test_report_on_copied_results_keeps_every_row(tmp_path):
  out = tmp_path / "smoke"
  shutil.copytree(SMOKE, out)
  before = (out / "results.csv").read_text()
  (out / "report.md").unlink()
  report.write(out, wandb_mode="disabled")
  assert (out / "results.csv").read_text() == before
  assert "frontier" in (out / "report.md").read_text().lower()
