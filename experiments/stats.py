"""Intervals for scored questions, from scipy: no JAX, so evaluation and the report share them
without the report importing the model stack."""

from __future__ import annotations

from scipy import stats


def proportion_ci(k: float, n: int, level: float = 0.95) -> tuple[float, float]:
  """Wilson score interval of k right out of n (`scipy.stats.binomtest`; sane at 0 and n,
  unlike the normal one). (0, 1) when nothing was scored."""
  if n <= 0:
    return (0.0, 1.0)
  ci = stats.binomtest(int(round(k)), int(n)).proportion_ci(level, method="wilson")
  return (float(ci.low), float(ci.high))
