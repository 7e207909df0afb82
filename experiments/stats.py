"""Statistics of scored questions, from scipy (Holm's step-down written out, checked against
statsmodels): a leaf module (no JAX, nothing of experiments), so evaluation, the run store, the
tools and the analysis share one implementation of each.

Unpaired arms (two models) get Welch's t; paired arms (one model's settings scored on the same
questions) an exact sign test on the discordant questions or contexts (McNemar's exact test);
a verdict drawn from several tests is Holm-corrected across them; where several questions share
a context, intervals resample contexts (a cluster bootstrap)."""

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
  """One-sided Welch t-test of mean(a) > mean(b) (`scipy.stats.ttest_ind_from_stats`)."""
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
  r = stats.ttest_ind_from_stats(a.mean, a.std, a.n, b.mean, b.std, b.n, equal_var=False,
                                 alternative="greater")
  # The from-stats result carries no degrees of freedom: Welch-Satterthwaite, for the record.
  df = se2 ** 2 / ((va ** 2 / (a.n - 1) if va else 0.0) + (vb ** 2 / (b.n - 1) if vb else 0.0))
  return Welch(float(r.statistic), df, float(r.pvalue))


def significantly_greater(a: Arm, b: Arm, alpha: float = 0.05) -> bool:
  return welch_greater(a, b).p < alpha


def above_chance(arm: Arm, chance: float, alpha: float = 0.05) -> bool:
  """Whether accuracy is significantly above the chance rate (one-sided binomial test)."""
  if arm.n == 0:
    return False
  k = round(arm.mean * arm.n)
  return float(stats.binomtest(k, arm.n, min(max(chance, 0.0), 1.0), "greater").pvalue) < alpha


def drop_detectable(arm: Arm, chance: float, alpha: float = 0.05, paired: bool = False) -> bool:
  """Whether a fall all the way to chance would be a significant drop from `arm` (the test
  `tolerance` uses: Welch against a Bernoulli sample of size n at the chance rate; with
  `paired`, the paired sign test against the same questions answered at chance, where each of
  arm's right answers stays right with probability `chance` and each wrong one turns right
  with it: k(1 - c) questions only arm answered right, (n - k)c only the other).

  A tolerance counts every setting not significantly worse than dense as tolerated, so where
  even chance would not be significantly worse (1 or 2 right out of 128, say) it would read
  "tolerates everything" from no evidence at all: such a model is too weak to tell.
  """
  if arm.n < 2:
    return False
  c = min(max(chance, 0.0), 1.0)
  if paired:
    k = arm.mean * arm.n
    a_only, b_only = round(k * (1 - c)), round((arm.n - k) * c)
    return a_only + b_only > 0 and \
        float(stats.binomtest(a_only, a_only + b_only, 0.5, "greater").pvalue) < alpha
  at_chance = Arm(c, math.sqrt(c * (1 - c) * arm.n / (arm.n - 1)), arm.n)
  return significantly_greater(arm, at_chance, alpha)


def measurable(arm: Arm, chance: float, alpha: float = 0.05, *, paired: bool = False,
               family: int = 1) -> bool:
  """Significantly above chance, and far enough above it that a fall to chance would be a
  significant drop: only then can a sparse setting be seen to cost the model anything. A
  tolerance curve of `family` sparsities is Holm-corrected, and a fall to chance at every one
  of them gives each that smallest p times `family`: the drop must clear alpha / family."""
  return above_chance(arm, chance, alpha) and drop_detectable(arm, chance, alpha / family, paired)


ALTERNATIVES = ("greater", "less", "two-sided")


@dataclasses.dataclass(frozen=True)
class Paired:
  a_only: int  # discordant units where a did better (questions, or contexts: `paired_greater`)
  b_only: int  # ... where b did better
  p: float     # exact binomial (sign) test of a_only out of a_only + b_only at 1/2
  alternative: str


def paired_greater(a_correct: Sequence[int], b_correct: Sequence[int],
                   alternative: str = "greater", contexts: Sequence[int] | None = None) -> Paired:
  """Exact paired test of accuracy(a) > accuracy(b) (`alternative` "greater"; or "less",
  "two-sided") for two arms scored on the same questions, question i of a against question i of b.

  Without `contexts` (or one question per context) it is McNemar's exact test: a binomial test
  (`scipy.stats.binomtest`, p = 1/2) on the discordant questions, where only one arm is right.
  Questions that share a context are not independent, so with `contexts` the units are the
  contexts: the sign test on the contexts where one arm got more questions right (which is
  McNemar's again when every context holds one question). No discordant unit: p = 1.
  """
  a, b = np.asarray(a_correct), np.asarray(b_correct)
  if a.shape != b.shape or a.ndim != 1:
    raise ValueError(f"paired arms need one outcome per question each, got shapes {a.shape} and "
                     f"{b.shape}")
  if alternative not in ALTERNATIVES:
    raise ValueError(f"alternative={alternative!r}: expected one of {ALTERNATIVES}")
  diff = a.astype(np.int64) - b.astype(np.int64)
  if contexts is not None:
    ctx = np.asarray(contexts)
    if ctx.shape != a.shape:
      raise ValueError(f"contexts has shape {ctx.shape}, expected one per question {a.shape}")
    _, which = np.unique(ctx, return_inverse=True)
    diff = np.bincount(which, weights=diff)
  a_only, b_only = int((diff > 0).sum()), int((diff < 0).sum())
  n = a_only + b_only
  p = float(stats.binomtest(a_only, n, 0.5, alternative=alternative).pvalue) if n else 1.0
  return Paired(a_only, b_only, p, alternative)


def holm(pvalues: Sequence[float]) -> list[float]:
  """Holm-adjusted p-values of one family of tests: an adjusted p below alpha rejects at
  family-wise error rate alpha. The step-down rule (sorted p times the tests left, running
  maximum, at most 1) is written here rather than called from statsmodels' `multipletests`,
  which tests/experiments/test_stats.py checks it against: its "holm" branch runs
  `gc.collect()` on every call, 0.3 s in a report process, minutes for a study's families."""
  p = np.asarray(pvalues, np.float64).reshape(-1)
  bad = [float(q) for q in p if not 0.0 <= q <= 1.0]  # nan fails this too
  if bad:
    raise ValueError(f"holm needs p-values in [0, 1], got {bad[0]!r}")
  order = np.argsort(p, kind="stable")
  adjusted = np.minimum(np.maximum.accumulate(p[order] * np.arange(len(p), 0, -1)), 1.0)
  out = np.empty_like(p)
  out[order] = adjusted
  return out.tolist()


def per_context(correct: Sequence[int], contexts: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
  """(right, asked) per context, contexts in sorted order, from per-question outcomes."""
  _, which = np.unique(np.asarray(contexts), return_inverse=True)
  return (np.bincount(which, weights=np.asarray(correct, np.float64)),
          np.bincount(which).astype(np.float64))


BOOTSTRAP_RESAMPLES = 2000


def _ratio(*arrays, axis=-1):
  """Per-question accuracy of resampled contexts: right / asked, or (right_a - right_b) / asked."""
  *right, asked = arrays
  num = right[0].sum(axis=axis) - (right[1].sum(axis=axis) if len(right) > 1 else 0.0)
  return num / asked.sum(axis=axis)


def _bootstrap(data: tuple[np.ndarray, ...], level: float) -> tuple[float, float]:
  ci = stats.bootstrap(data, _ratio, paired=True, vectorized=True, confidence_level=level,
                       n_resamples=BOOTSTRAP_RESAMPLES, random_state=0,
                       method="percentile").confidence_interval
  return (float(ci.low), float(ci.high))


def cluster_bootstrap_ci(right_per_context: Sequence[float], asked_per_context: Sequence[float],
                         level: float = 0.95) -> tuple[float, float]:
  """Interval of per-question accuracy (sum right / sum asked) when several questions share a
  context: a percentile bootstrap resampling contexts (`scipy.stats.bootstrap`, paired=True,
  fixed random_state, so a report is reproducible).

  Where every context has the same accuracy the resamples cannot vary, and a zero-width
  interval would claim certainty from one draw of contexts; the Wilson interval counting each
  context as one question (the most its questions can be worth; right contexts rounded) is
  given instead.
  """
  right = np.asarray(right_per_context, np.float64)
  asked = np.asarray(asked_per_context, np.float64)
  if right.shape != asked.shape or right.ndim != 1 or (asked <= 0).any():
    raise ValueError(f"need right and asked per context (asked >= 1), got shapes {right.shape} "
                     f"and {asked.shape}")
  if len(right) == 0:
    return (0.0, 1.0)
  rate = right / asked
  if np.ptp(rate) == 0:
    return proportion_ci(rate[0] * len(rate), len(rate), level)
  return _bootstrap((right, asked), level)


def paired_cluster_bootstrap_ci(right_a: Sequence[float], right_b: Sequence[float],
                                asked_per_context: Sequence[float],
                                level: float = 0.95) -> tuple[float, float]:
  """Interval of accuracy(a) - accuracy(b) per question, two arms scored on the same contexts
  (context i of a against context i of b), resampling contexts: the pairing stays inside each
  resample. Equal differences in every context give that difference, zero width."""
  ra, rb = np.asarray(right_a, np.float64), np.asarray(right_b, np.float64)
  asked = np.asarray(asked_per_context, np.float64)
  if not (ra.shape == rb.shape == asked.shape) or ra.ndim != 1 or (asked <= 0).any():
    raise ValueError(f"need right_a, right_b and asked per context (asked >= 1), got shapes "
                     f"{ra.shape}, {rb.shape} and {asked.shape}")
  if len(ra) == 0:
    return (-1.0, 1.0)
  d = (ra - rb) / asked
  if np.ptp(d) == 0:
    return (float(d[0]), float(d[0]))
  return _bootstrap((ra, rb, asked), level)
