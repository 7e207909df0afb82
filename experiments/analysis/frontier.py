"""Analysis of results.csv rows: tolerance, Pareto frontier, iso-FLOP comparisons and the
log-linear error fit, on the tests of `experiments.stats`. Pure numpy/scipy, so every function
is testable on constructed data with known answers."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import numpy as np
from scipy import stats

from experiments.stats import Arm, above_chance, holm, welch_greater


def _welch_p(a: Arm, b: Arm) -> float:
  return welch_greater(a, b).p


def tolerance(dense: Any, by_sparsity: dict[float, Any], alpha: float = 0.05,
              greater: Callable[[Any, Any], float] = _welch_p) -> float:
  """Largest sparsity s such that no sparsity <= s is significantly worse than dense.

  `greater(dense, arm)` is the one-sided p of dense > arm (Welch on `Arm`s by default; the
  report passes the paired test where the arms share questions). The curve is one verdict, so
  its p-values are Holm-adjusted across its sparsities before any is called significant.
  Monotone by construction (a later recovery after a significant drop does not count), so it
  reads as "safe up to s". 0.0 when even the first sparse point is significantly worse.
  """
  levels = sorted(by_sparsity)
  adjusted = holm([greater(dense, by_sparsity[s]) for s in levels])
  best = 0.0
  for s, p in zip(levels, adjusted):
    if p < alpha:
      break
    best = s
  return best


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
  # 95% intervals of the coefficients (OLS: t quantile × standard error from the training
  # residuals, the points taken as independent); None where no residual degree of freedom is left
  ci: dict[str, tuple[float, float]] | None = None


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
  xt, dof = x[~held], int((~held).sum()) - x.shape[1]
  ci = None
  if dof > 0:
    resid = y[~held] - xt @ beta
    cov = (resid @ resid / dof) * np.linalg.pinv(xt.T @ xt)
    half = stats.t.ppf(0.975, dof) * np.sqrt(np.maximum(np.diag(cov), 0.0))
    ci = {k: (float(b - h), float(b + h)) for k, b, h in zip(names, beta, half)}
  return Fit(dict(zip(names, map(float, beta))), r2(~held) or 0.0, r2(held),
             int((~held).sum()), int(held.sum()), ci)


def sparse_vs_dense(rows: list[dict[str, Any]], *, alpha: float = 0.05,
                    flops_slack: float = 0.0, match_inference: bool = True
                    ) -> list[dict[str, Any]]:
  """Does a larger sparse model beat a smaller dense one at equal (or lower) compute?

  `rows` are per-category aggregates {category, eval_length, phase, budget, params, label,
  sparse (bool), inference_flops_per_token, arm (Arm), chance}. For each category × length ×
  phase × training budget, every (smaller dense S, larger sparse L) pair with
  flops(L) <= flops(S) · (1 + flops_slack) (only the budget when `match_inference` is False:
  equal training compute) is tested (Welch: two models are independent arms, L > S and S > L).
  A category's answer is one verdict drawn from all its pairs, so the p-values of both
  directions of every pair of a category are Holm-adjusted together (`p`, `p_dense` hold the
  adjusted ones, `p_raw` the unadjusted L > S). The verdict per pair: "sparse wins",
  "dense wins", "no significant difference", or "too weak to tell" (neither model is
  significantly above chance, so a comparison would only compare noise).
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
        out.append(dict(category=key[0], eval_length=key[1], phase=key[2], budget=key[3],
                        dense=s["label"], sparse=big["label"], dense_acc=s["arm"].mean,
                        sparse_acc=big["arm"].mean, dense_n=s["arm"].n, sparse_n=big["arm"].n,
                        dense_flops=s["inference_flops_per_token"],
                        sparse_flops=big["inference_flops_per_token"], weak=weak,
                        p_raw=_welch_p(big["arm"], s["arm"]),
                        p_dense_raw=_welch_p(s["arm"], big["arm"])))
  for cat in {c["category"] for c in out}:
    family = [c for c in out if c["category"] == cat]
    adjusted = holm([c["p_raw"] for c in family] + [c["p_dense_raw"] for c in family])
    for c, p, p_dense in zip(family, adjusted, adjusted[len(family):]):
      c.update(p=p, p_dense=p_dense, verdict="too weak to tell" if c["weak"] else
               "sparse wins" if p < alpha else "dense wins" if p_dense < alpha else
               "no significant difference")
  return out
