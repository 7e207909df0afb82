"""The results.csv schema: one row per run × eval setting × task × length × phase.

JAX-free, so the analysis reads results without the models: `write` and `read` are the only
ways in and out of the file.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from experiments.runs import files

COLUMNS = (
    "study", "run_id", "label", "size", "params", "nonembed_params", "train_pattern",
    "train_sparsity_target", "train_sparsity_element", "train_sparsity_block", "budget", "steps",
    "train_flops", "flops_residual", "train_flops_per_token", "train_seq_len", "task", "category",
    "eval_length", "phase", "eval_setting", "eval_pattern", "eval_budget", "eval_sparsity_target",
    "eval_sparsity_element", "eval_sparsity_block", "inference_flops_per_token",
    "selection_flops_per_token", "accuracy", "ci_low", "ci_high", "n", "accuracy_std",
    "token_accuracy", "set_recall", "chance")
# Columns added later, with the value every row written before them had (static patterns only).
DEFAULTS = {"eval_budget": "", "selection_flops_per_token": 0.0}


def _fmt(v: Any) -> Any:
  return repr(v) if isinstance(v, float) else v  # repr: exact round trip, no locale surprises


def write(path: Path, rows: list[dict[str, Any]]) -> Path:
  """results.csv from rows (missing columns take DEFAULTS), atomically."""
  buf = io.StringIO(newline="")
  w = csv.DictWriter(buf, fieldnames=COLUMNS)
  w.writeheader()
  for r in rows:
    w.writerow({k: _fmt({**DEFAULTS, **r}.get(k)) for k in COLUMNS})
  files.write_text(Path(path), buf.getvalue())
  return Path(path)


def read(path: Path) -> list[dict[str, Any]]:
  """results.csv → typed rows."""
  ints = {"params", "nonembed_params", "steps", "train_seq_len", "eval_length", "n"}
  strs = {"study", "run_id", "label", "size", "train_pattern", "task", "category", "phase",
          "eval_setting", "eval_pattern", "eval_budget"}
  rows = []
  with open(path) as f:
    for r in csv.DictReader(f):
      rows.append({k: (v if k in strs else int(v) if k in ints else float(v)) for k, v in r.items()})
  return rows


