"""Analysis of results.csv rows: significance tests, tolerance, Pareto frontier, iso-FLOP
comparisons and the log-linear error fit. Pure numpy/scipy on summary statistics, so every
function is testable on constructed data with known answers.

The test: Welch's t-test on per-example exact match (0/1), one-sided. With n ≥ 30 per arm its
t distribution is accurate for proportions not at 0 or 1; where both arms are constant (all right
or all wrong) there is no variance and the difference is either exactly 0 (not significant) or
decided by the counts (significant only if both arms have n ≥ 5, like a Fisher exact test would).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Iterable, Sequence

import numpy as np
from scipy import stats as sps


@dataclasses.dataclass(frozen=True)
class Arm:
  """Summary of one sample: mean, sample standard deviation (ddof=1), size."""

  mean: float
  std: float
  n: int

  @classmethod
  def of(cls, xs: Sequence[float]) -> Arm:
    xs = np.asarray(xs, np.float64)
    return cls(float(xs.mean()), float(xs.std(ddof=1)) if len(xs) > 1 else 0.0, len(xs))

  @classmethod
  def pool(cls, arms: Iterable[Arm]) -> Arm:
    """The arm of the concatenated samples (exact from means, stds and sizes)."""
    arms = [a for a in arms if a.n > 0]
    n = sum(a.n for a in arms)
    if n == 0:
      return cls(0.0, 0.0, 0)
    mean = sum(a.mean * a.n for a in arms) / n
    ss = sum((a.n - 1) * a.std ** 2 + a.n * (a.mean - mean) ** 2 for a in arms)
    return cls(mean, math.sqrt(ss / (n - 1)) if n > 1 else 0.0, n)


@dataclasses.dataclass(frozen=True)
class Welch:
  t: float
  df: float
  p: float  # one-sided: P(mean(a) - mean(b) this large | equal means), alternative mean(a) > mean(b)


def welch_greater(a: Arm, b: Arm) -> Welch:
  """One-sided Welch t-test of mean(a) > mean(b)."""
  if a.n < 2 or b.n < 2:
    raise ValueError(f"Welch's test needs n >= 2 in each arm, got {a.n} and {b.n}")
  va, vb = a.std ** 2 / a.n, b.std ** 2 / b.n
  diff = a.mean - b.mean
  se2 = va + vb
  if se2 == 0.0:
    if diff == 0.0:
      return Welch(0.0, float(a.n + b.n - 2), 0.5)
    # Two constant samples that differ: e.g. all right vs all wrong. With n >= 5 per arm the
    # exact (Fisher) p is <= 1/C(10,5) < 0.004; below that we refuse to call it.
    p = 0.0 if (diff > 0 and min(a.n, b.n) >= 5) else (1.0 if diff < 0 else 0.5)
    return Welch(math.copysign(math.inf, diff), float(a.n + b.n - 2), p)
  t = diff / math.sqrt(se2)
  df = se2 ** 2 / ((va ** 2 / (a.n - 1) if va else 0.0) + (vb ** 2 / (b.n - 1) if vb else 0.0))
  return Welch(t, df, float(sps.t.sf(t, df)))


def significantly_greater(a: Arm, b: Arm, alpha: float = 0.05) -> bool:
  return welch_greater(a, b).p < alpha


def tolerance(dense: Arm, by_sparsity: dict[float, Arm], alpha: float = 0.05) -> float:
  """Largest sparsity s such that no sparsity <= s is significantly worse than dense.

  Monotone by construction (a later recovery after a significant drop does not count), so it
  reads as "safe up to s". 0.0 when even the first sparse point is significantly worse.
  """
  best = 0.0
  for s in sorted(by_sparsity):
    if significantly_greater(dense, by_sparsity[s], alpha):
      break
    best = s
  return best


def above_chance(arm: Arm, chance: float, alpha: float = 0.05) -> bool:
  """Whether accuracy is significantly above the chance rate (one-sided binomial test)."""
  if arm.n == 0:
    return False
  k = round(arm.mean * arm.n)
  return float(sps.binomtest(k, arm.n, min(max(chance, 0.0), 1.0), "greater").pvalue) < alpha


def drop_detectable(arm: Arm, chance: float, alpha: float = 0.05) -> bool:
  """Whether a fall all the way to chance would be a significant drop from `arm` (the Welch
  test `tolerance` uses, against a Bernoulli sample of size n at the chance rate).

  A tolerance counts every setting not significantly worse than dense as tolerated, so where
  even chance would not be significantly worse (1 or 2 right out of 128, say) it would read
  "tolerates everything" from no evidence at all: such a model is too weak to tell.
  """
  if arm.n < 2:
    return False
  c = min(max(chance, 0.0), 1.0)
  at_chance = Arm(c, math.sqrt(c * (1 - c) * arm.n / (arm.n - 1)), arm.n)
  return significantly_greater(arm, at_chance, alpha)


def measurable(arm: Arm, chance: float, alpha: float = 0.05) -> bool:
  """Significantly above chance, and far enough above it that a fall to chance would be a
  significant drop: only then can a sparse setting be seen to cost the model anything."""
  return above_chance(arm, chance, alpha) and drop_detectable(arm, chance, alpha)


def pareto(points: Sequence[tuple[float, float]]) -> list[bool]:
  """For (cost, value) points: True where no other point has cost <= and value >=, one strictly.

  Ties (identical points) are all kept on the frontier.
  """
  pts = np.asarray(points, np.float64).reshape(-1, 2)
  on = []
  for i, (c, v) in enumerate(pts):
    dominated = np.any((pts[:, 0] <= c) & (pts[:, 1] >= v) & ((pts[:, 0] < c) | (pts[:, 1] > v)))
    on.append(not bool(dominated))
  return on


@dataclasses.dataclass(frozen=True)
class Fit:
  coef: dict[str, float]
  r2_train: float
  r2_heldout: float | None
  n_train: int
  n_heldout: int


def loglinear_fit(params: Sequence[float], length: Sequence[float], compression: Sequence[float],
                  error: Sequence[float], *, heldout_every: int = 4, floor: float = 1e-3) -> Fit:
  """OLS of log(error) on [1, log params, log length, log compression]; R² on held-out points.

  compression = 1 / (1 - sparsity) (1 for dense). Every `heldout_every`-th point (in the given
  order) is held out; errors are clipped to [floor, 1] so a perfect score stays finite.
  """
  x = np.column_stack([np.ones(len(error)), np.log(params), np.log(length),
                       np.log(compression)]).astype(np.float64)
  y = np.log(np.clip(np.asarray(error, np.float64), floor, 1.0))
  idx = np.arange(len(y))
  held = (idx % heldout_every == heldout_every - 1) if heldout_every else np.zeros(len(y), bool)
  if (~held).sum() < x.shape[1]:
    held[:] = False
  beta, *_ = np.linalg.lstsq(x[~held], y[~held], rcond=None)

  def r2(mask):
    if mask.sum() < 2:
      return None
    resid = y[mask] - x[mask] @ beta
    tot = ((y[mask] - y[mask].mean()) ** 2).sum()
    return float(1 - (resid ** 2).sum() / tot) if tot > 0 else None

  names = ("intercept", "log_params", "log_length", "log_compression")
  return Fit(dict(zip(names, map(float, beta))), r2(~held) or 0.0, r2(held),
             int((~held).sum()), int(held.sum()))


def sparse_vs_dense(rows: list[dict[str, Any]], *, alpha: float = 0.05,
                    flops_slack: float = 0.0, match_inference: bool = True
                    ) -> list[dict[str, Any]]:
  """Does a larger sparse model beat a smaller dense one at equal (or lower) compute?

  `rows` are per-category aggregates {category, eval_length, phase, budget, params, label,
  sparse (bool), inference_flops_per_token, arm (Arm), chance}. For each category × length ×
  phase × training budget, every (smaller dense S, larger sparse L) pair with
  flops(L) <= flops(S) · (1 + flops_slack) (only the budget when `match_inference` is False:
  equal training compute) is tested (Welch, L > S and S > L). The verdict per pair:
  "sparse wins", "dense wins", "no significant difference", or "too weak to tell" (neither model
  is significantly above chance, so a comparison would only compare noise).
  """
  out = []
  keyf = lambda r: (r["category"], r["eval_length"], r["phase"], r["budget"])
  groups: dict[Any, list[dict[str, Any]]] = {}
  for r in rows:
    groups.setdefault(keyf(r), []).append(r)
  for key, group in sorted(groups.items(), key=lambda kv: (str(kv[0][0]), kv[0][1],
                                                           str(kv[0][2]), kv[0][3])):
    dense = [r for r in group if not r["sparse"]]
    sparse = [r for r in group if r["sparse"]]
    for s in dense:
      for big in sparse:
        if big["params"] <= s["params"]:
          continue
        if match_inference and big["inference_flops_per_token"] > \
            s["inference_flops_per_token"] * (1 + flops_slack):
          continue
        weak = not (above_chance(s["arm"], s["chance"], alpha)
                    or above_chance(big["arm"], big["chance"], alpha))
        if weak:
          verdict = "too weak to tell"
        elif significantly_greater(big["arm"], s["arm"], alpha):
          verdict = "sparse wins"
        elif significantly_greater(s["arm"], big["arm"], alpha):
          verdict = "dense wins"
        else:
          verdict = "no significant difference"
        out.append(dict(category=key[0], eval_length=key[1], phase=key[2], budget=key[3],
                        dense=s["label"], sparse=big["label"], dense_acc=s["arm"].mean,
                        sparse_acc=big["arm"].mean, dense_n=s["arm"].n, sparse_n=big["arm"].n,
                        dense_flops=s["inference_flops_per_token"],
                        sparse_flops=big["inference_flops_per_token"],
                        p=welch_greater(big["arm"], s["arm"]).p, verdict=verdict))
  return out
