"""Tolerance per model × category × length × phase × pattern, in compression, with an interval.

Compression c = 1 / (1 - sparsity): the study's ladder 1, 2, 4, 8, 16, 20 is sparsity 0, 0.5,
0.75, 0.875, 0.9375, 0.95. A curve's tolerance is the largest compression not significantly
worse than the same model evaluated dense (`frontier.tolerance` on `compare.greater`: the paired
test where the arms hold the same questions, Holm across the curve), 1 when the first sparse
level already is. Its interval is a percentile bootstrap: resample the contexts of the paired
outcomes (dense and every level together, so the pairing stays inside each resample), recompute
the tolerance, take the 2.5% and 97.5% points of the resampled tolerances (fixed seed). Without
outcomes each arm's questions are resampled on their own (Binomial(n, accuracy)) and Welch
recomputed: the unpaired fallback, as for the point estimate.

A level's compression is the setting's nominal one where the setting names it ("local@0.75",
"topk_blocks@0.75", "topk_blocks@density_0.25"): the achieved sparsity of a block pattern
differs a little from length to length (0.744 at 2048, 0.748 at 4096), and two tolerances of one
setting should not differ for that. Blocks and length-adaptive budgets name no compression; their
curves use the achieved one and are marked `ladder=False` (the claims leave them out).
"""

from __future__ import annotations

import re
from collections import defaultdict
from typing import Any

import numpy as np

from experiments import stats
from experiments.analysis import compare
from experiments.analysis import frontier as fr
from experiments.stats import ALPHA

RESAMPLES = 1000  # per curve; the report holds hundreds of curves
SEED = 0
_SPARSITY = re.compile(r"@(\d*\.?\d+(?:e-?\d+)?)$")
_DENSITY = re.compile(r"@density_(\d*\.?\d+(?:e-?\d+)?)$")


def nominal_sparsity(setting: str) -> float | None:
  """The sparsity a setting's name promises: "dense" 0, "local@0.75" and "topk_blocks@0.75"
  0.75, "topk_blocks@density_0.25" 0.75; None for blocks, adaptive and "native"."""
  if setting == "dense":
    return 0.0
  m = _SPARSITY.search(setting)
  if m:
    return float(m.group(1))
  m = _DENSITY.search(setting)
  return 1.0 - float(m.group(1)) if m else None


def compression(sparsity: float) -> float:
  """1 / (1 - sparsity), rounded off its float noise (0.95 gives 20, not 19.999999999999982)."""
  return float(f"{1.0 / (1.0 - sparsity):.6g}")


def family(p: dict[str, Any]) -> str:
  """A tolerance curve's pattern: static patterns by name, content ones by name and budget kind
  (a fixed and an adaptive budget are different curves)."""
  return f"{p['eval_pattern']} ({p['eval_budget']})" if p["eval_budget"] else p["eval_pattern"]


def _level(p: dict[str, Any]) -> tuple[float, bool]:
  """A curve point's sparsity and whether it is the setting's nominal one."""
  s = nominal_sparsity(p["eval_setting"])
  return (s, True) if s is not None else (p["eval_target"], False)


def curves(points: list[dict[str, Any]], resamples: int = RESAMPLES,
           margin: float = 0.0) -> list[dict[str, Any]]:
  """One row per model × category × length × phase × eval pattern (report points): the
  tolerance in sparsity and compression, its bootstrap interval (compression; None with
  `resamples` 0, where only the point estimate is wanted), the tests used, and what the claims
  pair on. `weak`: the dense model is too weak to tell (`stats.measurable`
  by the curve's own test and correction), and the row has no tolerance.

  `margin` (accuracy, per question): a level is tolerated while its drop below dense is not
  significantly larger than this (`compare.greater` with the margin). At 0 any significant drop
  ends the curve, which with many questions calls a drop of a point or two a failure: the more
  a study scores, the less its models would "tolerate". A margin makes the tolerance converge,
  as questions grow, to the compression where the drop reaches the margin."""
  by_key: dict[tuple, dict[str, Any]] = defaultdict(dict)
  for p in points:
    by_key[(p["run_id"], p["category"], p["eval_length"], p["phase"])][p["eval_setting"]] = p
  out = []
  for (run_id, cat, length, phase), settings in sorted(by_key.items()):
    dense = settings.get("dense")
    if dense is None:
      continue
    for pattern in sorted({family(p) for p in settings.values()
                           if p["sparse"] and p["eval_setting"] != "native"}):
      pts = [p for p in settings.values() if family(p) == pattern and p["eval_setting"] != "native"]
      levels = {p["eval_setting"]: _level(p) for p in pts}
      curve = {levels[p["eval_setting"]][0]: p for p in pts}
      # The gate judges with the curve's own test and correction, or a curve the test cannot
      # see fall (5 right of 128 against the exact paired test) would read "tolerates all".
      paired = all(compare.same_questions(dense["sample"], p["sample"]) for p in curve.values())
      # With a margin, a model within it of chance could fall to chance "tolerated": weak too.
      weak = (not stats.measurable(dense["arm"], dense["chance"], ALPHA, paired=paired,
                                   family=len(curve))
              or dense["arm"].mean - dense["chance"] <= margin)
      row = dict(run_id=run_id, label=dense["run_label"], size=dense["size"],
                 params=dense["params"], budget=dense["budget"],
                 train_pattern=dense["train_pattern"], train_sparsity=dense["train_sparsity"],
                 train_seq_len=dense["train_seq_len"], category=cat, eval_length=length,
                 phase=phase, pattern=pattern, ladder=all(nom for _, nom in levels.values()),
                 levels=sorted(compression(s) for s in curve), dense_acc=dense["arm"].mean,
                 n=dense["arm"].n, weak=weak, paired=paired, tolerance=None, compression=None,
                 ci=None, tests=set(), margin=margin)
      if not weak:
        tol, tests = _tolerance(dense, curve, margin)
        row.update(tolerance=tol, compression=compression(tol), tests=tests)
      if not weak and resamples:
        boot = bootstrap(dense, curve, resamples, margin=margin)
        c = np.array([compression(s) for s in boot])
        row.update(ci=(float(np.quantile(c, ALPHA / 2, method="inverted_cdf")),
                       float(np.quantile(c, 1 - ALPHA / 2, method="inverted_cdf"))))
      out.append(row)
  return out


def _tolerance(dense: dict[str, Any], curve: dict[float, dict[str, Any]], margin: float = 0.0
               ) -> tuple[float, set[str]]:
  """`frontier.tolerance` of report points on `compare.greater` (with `margin`), and the tests
  it used."""
  used = set()

  def greater(a, b):
    t = compare.greater(a, b, margin)
    used.add(t.test)
    return t.p
  return fr.tolerance(dense, curve, ALPHA, greater), used


def first_rejected(adjusted: np.ndarray, alpha: float = ALPHA) -> np.ndarray:
  """Per row of Holm-adjusted p-values [B, L] (levels in order): the index of the first
  significant drop, L where there is none; the tolerated levels are those before it (the rule
  of `frontier.tolerance`, a row at a time)."""
  rejected = np.asarray(adjusted) < alpha
  return np.where(rejected.any(-1), rejected.argmax(-1), rejected.shape[-1])


def bootstrap(dense: dict[str, Any], curve: dict[float, dict[str, Any]],
              resamples: int = RESAMPLES, seed: int = SEED, margin: float = 0.0) -> np.ndarray:
  """The tolerance (sparsity; 0 for dense only) of `resamples` bootstrap resamples of a curve:
  contexts resampled jointly where every level holds the dense arm's questions (the sign test
  over contexts, McNemar's where each question is its own; with a margin `stats.drop_beyond`),
  else each arm's questions on their own (Welch, dense's mean less the margin). Fixed seed: a
  report is reproducible."""
  levels = sorted(curve)
  rng = np.random.default_rng(seed)
  if all(compare.same_questions(dense["sample"], curve[s]["sample"]) for s in levels):
    cluster = dense["sample"].cluster
    right_d, asked = stats.per_context(dense["sample"].correct, cluster)
    diff = np.stack([right_d - stats.per_context(curve[s]["sample"].correct, cluster)[0]
                     for s in levels])  # [L, C]: dense right minus level right, per context
    idx = rng.integers(0, diff.shape[1], (resamples, diff.shape[1]))
    if margin:
      p = stats.drop_beyond(diff[:, idx], asked[idx], margin).T  # [B, L]
    else:
      a_only = (diff > 0)[:, idx].sum(-1).T  # [B, L] contexts where dense did better
      b_only = (diff < 0)[:, idx].sum(-1).T
      p = stats.sign_test_greater(a_only, b_only)
  else:
    def draw(arm, shape):
      k = rng.binomial(arm.n, min(max(arm.mean, 0.0), 1.0), shape).astype(np.float64)
      return k / arm.n, np.sqrt(k * (arm.n - k) / (arm.n * (arm.n - 1))), arm.n
    md, sd, nd = draw(dense["arm"], (resamples, 1))
    md = md - margin
    cols = [draw(curve[s]["arm"], (resamples,)) for s in levels]
    ml, sl = np.stack([c[0] for c in cols], 1), np.stack([c[1] for c in cols], 1)
    nl = np.array([c[2] for c in cols], np.float64)
    p = stats.welch_greater_many(md, sd, nd, ml, sl, nl)
  first = first_rejected(stats.holm_rows(p))
  ladder = np.array([0.0] + levels)
  return ladder[first]  # first rejected at index i: levels[:i] tolerated, ladder[i] the last
