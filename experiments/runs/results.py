"""The results.csv schema: one row per run × eval setting × task × length × phase, and
outcomes.npz beside it: each row's per-question outcomes (right or not, and which test context
the question came from), for the paired tests and the cluster bootstrap of the analysis.

JAX-free (numpy only), so the analysis reads results without the models: `write`/`read` and
`write_outcomes`/`read_outcomes` are the only ways in and out of the two files.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

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


# ------------------------------------------------------------------------------ outcomes.npz
OUTCOMES = "outcomes.npz"
# What names a results row: rows of one run × task × length × phase scored the same examples in
# every eval setting, which makes two settings of one model a paired comparison.
KEY = ("run_id", "task", "eval_length", "phase", "eval_setting")


def outcome_key(row: dict[str, Any]) -> tuple:
  return (str(row["run_id"]), str(row["task"]), int(row["eval_length"]), str(row["phase"]),
          str(row["eval_setting"]))


@dataclasses.dataclass(frozen=True)
class Outcomes:
  correct: np.ndarray  # uint8 [n]: 1 where the question was answered right
  context: np.ndarray  # int64 [n]: which test context it came from (its example index)


def write_outcomes(path: Path, rows: list[dict[str, Any]]) -> Path:
  """outcomes.npz from the rows that carry `correct` (and `context`; without it each question is
  its own context, as in the single-question forms), atomically. One flat bit array and one
  context array for all rows, cut by `offsets`; the KEY columns name each row."""
  rows = [r for r in rows if r.get("correct") is not None]
  correct = [np.asarray(r["correct"], np.uint8) for r in rows]
  context = [np.asarray(r.get("context", range(len(c))), np.int64) for r, c in zip(rows, correct)]
  for r, c, x in zip(rows, correct, context):
    if c.shape != x.shape:
      raise ValueError(f"row {outcome_key(r)}: {len(x)} context ids for {len(c)} questions; "
                       "expected one per question")
  offsets = np.cumsum([0] + [len(c) for c in correct]).astype(np.int64)
  flat = np.concatenate(correct) if correct else np.zeros(0, np.uint8)
  arrays = {k: np.array([outcome_key(r)[i] for r in rows], np.int64 if k == "eval_length" else str)
            for i, k in enumerate(KEY)}
  buf = io.BytesIO()
  np.savez_compressed(buf, **arrays, offsets=offsets, bits=np.packbits(flat),
                      context=np.concatenate(context) if context else np.zeros(0, np.int64))
  path = Path(path)
  tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")  # as files.write_text: never half a file
  try:
    with open(tmp, "wb") as f:
      f.write(buf.getvalue())
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  finally:
    tmp.unlink(missing_ok=True)
  return path


def read_outcomes(path: Path) -> dict[tuple, Outcomes] | None:
  """outcomes.npz → {outcome_key: Outcomes}; None where there is no such file (a study folder
  copied without it); files.DamagedFile naming the path where it cannot be read."""
  try:
    with np.load(Path(path), allow_pickle=False) as z:
      cols = [z[k].tolist() for k in KEY]
      offsets, context = z["offsets"], z["context"]
      bits = np.unpackbits(z["bits"], count=int(offsets[-1])) if len(offsets) else z["bits"]
  except FileNotFoundError:
    return None
  except (OSError, KeyError, ValueError, zipfile.BadZipFile, EOFError) as e:
    raise files.DamagedFile(f"{path}: unreadable ({type(e).__name__}: {e})") from None
  if len(offsets) != len(cols[0]) + 1 or len(bits) != len(context):
    raise files.DamagedFile(f"{path}: offsets, bits and contexts disagree in length")
  return {key: Outcomes(bits[lo:hi], context[lo:hi])
          for key, lo, hi in zip(zip(*cols), offsets[:-1].tolist(), offsets[1:].tolist())}


def join(rows: list[dict[str, Any]], outcomes: dict[tuple, Outcomes] | None
         ) -> list[Outcomes | None]:
  """Each results row's outcomes, or None where there are none or they do not match the row
  (another count or accuracy: an outcomes.npz left from another results.csv)."""
  out = []
  for r in rows:
    o = (outcomes or {}).get(outcome_key(r))
    ok = o is not None and len(o.correct) == r["n"] and \
        int(o.correct.sum()) == round(r["accuracy"] * r["n"])
    out.append(o if ok else None)
  return out
