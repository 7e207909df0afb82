"""Statistics of scored questions, from scipy: a leaf module (no JAX, nothing of experiments),
so evaluation, the tools and the analysis share one implementation of each."""

from __future__ import annotations

import dataclasses
import math
from typing import Iterable, Sequence

import numpy as np
from scipy import stats

# The level of every test and interval the study reports (two-sided intervals at 1 - ALPHA).
ALPHA = 0.05


def proportion_ci(k: float, n: int, level: float = 0.95) -> tuple[float, float]:
  """Wilson score interval of k right out of n (`scipy.stats.binomtest`; sane at 0 and n,
  unlike the normal one). (0, 1) when nothing was scored."""
  if n <= 0:
    return (0.0, 1.0)
  ci = stats.binomtest(int(round(k)), int(n)).proportion_ci(level, method="wilson")
  return (float(ci.low), float(ci.high))


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
  return Welch(t, df, float(stats.t.sf(t, df)))


def significantly_greater(a: Arm, b: Arm, alpha: float = 0.05) -> bool:
  return welch_greater(a, b).p < alpha


def above_chance(arm: Arm, chance: float, alpha: float = 0.05) -> bool:
  """Whether accuracy is significantly above the chance rate (one-sided binomial test)."""
  if arm.n == 0:
    return False
  k = round(arm.mean * arm.n)
  return float(stats.binomtest(k, arm.n, min(max(chance, 0.0), 1.0), "greater").pvalue) < alpha


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
