"""Reporting on a copied results folder (results.csv and study.json, no run folders: what
studies/ commits) rewrites the report and loses no row."""

import shutil
from pathlib import Path

from experiments.cli import write_report

SMOKE = Path(__file__).resolve().parents[2] / "studies" / "smoke"


def test_report_on_copied_results_keeps_every_row(tmp_path):
  out = tmp_path / "smoke"
  shutil.copytree(SMOKE, out)
  before = (out / "results.csv").read_text()
  (out / "report.md").unlink()
  write_report(out, wandb_mode="disabled")
  assert (out / "results.csv").read_text() == before
  assert "frontier" in (out / "report.md").read_text().lower()
