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
  return holm_rows(p[None])[0].tolist()


def holm_rows(pvalues: np.ndarray) -> np.ndarray:
  """`holm` of each row of `pvalues` [..., m] at once (a family per row): the tolerance
  bootstrap adjusts one curve per resample, thousands of families."""
  p = np.asarray(pvalues, np.float64)
  bad = p[~((p >= 0.0) & (p <= 1.0))]  # nan fails this too
  if bad.size:
    raise ValueError(f"holm needs p-values in [0, 1], got {float(bad[0])!r}")
  m = p.shape[-1]
  order = np.argsort(p, axis=-1, kind="stable")
  step = np.take_along_axis(p, order, -1) * np.arange(m, 0, -1)
  adjusted = np.minimum(np.maximum.accumulate(step, axis=-1), 1.0)
  out = np.empty_like(p)
  np.put_along_axis(out, order, adjusted, -1)
  return out


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


# ------------------------------------------------------------------ many tests at once
# The bootstrap of a tolerance recomputes a curve's tests on every resample: the scalar tests
# above, elementwise over arrays (tests/experiments/test_stats.py checks them against those).
def sign_test_greater(a_only: np.ndarray, b_only: np.ndarray) -> np.ndarray:
  """`paired_greater`'s one-sided p ("greater") from its discordant counts, elementwise:
  P(Binomial(a_only + b_only, 1/2) >= a_only), 1 where nothing is discordant."""
  a, b = np.asarray(a_only), np.asarray(b_only)
  n = a + b
  return np.where(n > 0, stats.binom.sf(a - 1, n, 0.5), 1.0)


def welch_greater_many(mean_a, std_a, n_a, mean_b, std_b, n_b) -> np.ndarray:
  """`welch_greater`'s p, elementwise over broadcast arrays, with its rule for two constant
  arms (where scipy's formula divides by zero)."""
  arrays = np.broadcast_arrays(*(np.asarray(x, np.float64)
                                 for x in (mean_a, std_a, n_a, mean_b, std_b, n_b)))
  ma, sa, na, mb, sb, nb = arrays
  if (na < 2).any() or (nb < 2).any():
    raise ValueError("Welch's test needs n >= 2 in each arm")
  const = (sa == 0) & (sb == 0)
  with np.errstate(divide="ignore", invalid="ignore"):
    p = stats.ttest_ind_from_stats(ma, np.where(const, 1.0, sa), na, mb, np.where(const, 1.0, sb),
                                   nb, equal_var=False, alternative="greater").pvalue
  diff = ma - mb
  rule = np.where(diff == 0, 0.5, np.where(diff < 0, 1.0,
                                           np.where(np.minimum(na, nb) >= 5, 0.0, 0.5)))
  return np.where(const, rule, p)


def drop_beyond(diff: np.ndarray, asked: np.ndarray, margin: float) -> np.ndarray:
  """One-sided p of "a's accuracy exceeds b's by more than `margin`" for paired arms, from the
  per-context differences diff [..., C] (questions a got right minus b, per context) and asked
  [C] (questions per context): the t-test over contexts (`scipy.stats.ttest_1samp`, alternative
  "greater") of diff − margin · asked, whose mean is above 0 exactly when the pooled drop is
  above the margin. Elementwise over leading axes (the tolerance bootstrap passes resamples).
  The exact sign test cannot take a margin (a context's sign says nothing of its size), so this
  is the paired test where a tolerance has one. Constant differences: p 0 if above the margin,
  else 1."""
  e = np.asarray(diff, np.float64) - margin * np.asarray(asked, np.float64)
  n = e.shape[-1]
  if n < 2:
    raise ValueError(f"the margin test needs >= 2 contexts, got {n}")
  mean, sd = e.mean(-1), e.std(-1, ddof=1)
  with np.errstate(divide="ignore", invalid="ignore"):  # ttest_1samp's statistic, vectorised
    p = stats.t.sf(mean / (sd / math.sqrt(n)), n - 1)
  return np.where(sd == 0, np.where(mean > 0, 0.0, 1.0), p)


# ------------------------------------------------------------ differences across cells
def sign_test(differences: Sequence[float], alternative: str = "greater") -> Paired:
  """Exact sign test of a median difference > 0 (`alternative` "greater"; or "less",
  "two-sided") over independent units (cells of a table: one model at one length, say), ties
  dropped: `paired_greater` on the signs. The claims compare tolerances that sit on a ladder
  of a few compressions, so most differences are ties or whole steps: a rank test (Wilcoxon)
  would rank mostly ties, the sign test needs nothing but the signs."""
  d = np.asarray(differences, np.float64).reshape(-1)
  return paired_greater((d > 0).astype(int), (d < 0).astype(int), alternative)


def median_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float]:
  """Distribution-free interval of a median from order statistics (the one that goes with the
  sign test): [x_(k), x_(n+1-k)] for the largest k whose coverage 1 - 2·P(Bin(n, 1/2) < k)
  is at least `level`. (-inf, inf) where no k reaches it (n < 6 at 95%): so few cells cannot
  bound the median at that level."""
  x = np.sort(np.asarray(values, np.float64).reshape(-1))
  n = len(x)
  ks = [k for k in range(1, n // 2 + 1) if 2 * stats.binom.cdf(k - 1, n, 0.5) <= 1 - level]
  if not ks:
    return (-math.inf, math.inf)
  k = ks[-1]
  return (float(x[k - 1]), float(x[n - k]))


def difference_ci(k_a: float, n_a: int, k_b: float, n_b: int,
                  level: float = 0.95) -> tuple[float, float]:
  """Interval of p_a - p_b for two independent proportions (k right of n each): Newcombe's
  hybrid score interval from the two Wilson intervals (sane at 0 and 1, unlike Wald's)."""
  pa, pb = k_a / n_a, k_b / n_b
  la, ua = proportion_ci(k_a, n_a, level)
  lb, ub = proportion_ci(k_b, n_b, level)
  d = pa - pb
  return (d - math.sqrt((pa - la) ** 2 + (ub - pb) ** 2),
          d + math.sqrt((ua - pa) ** 2 + (pb - lb) ** 2))


# ------------------------------------------------------------ activation sparsity (issue 21)
# How sparse one hidden-state vector is, the four measures of Jin et al. (2026), each over the
# last axis of an array of vectors and computed on magnitudes |x|. `xp` is the array module
# (numpy here; the evaluation passes jax.numpy to compute them inside its compiled forward), so
# one implementation serves both. Every measure is 0 for a uniform-magnitude vector and rises
# towards its maximum (1, or k%-share 1) for a one-hot one.
def hoyer(x, xp=np):
  """Hoyer sparsity (sqrt(n) - |x|_1 / |x|_2) / (sqrt(n) - 1): 0 uniform, 1 one-hot; 0 for a
  zero vector."""
  a = xp.abs(x)
  n = a.shape[-1]
  l1, l2 = xp.sum(a, axis=-1), xp.sqrt(xp.sum(a * a, axis=-1))
  ratio = xp.where(l2 > 0, l1 / xp.where(l2 > 0, l2, 1.0), math.sqrt(n))
  return (math.sqrt(n) - ratio) / (math.sqrt(n) - 1)


def gini(x, xp=np):
  """Gini index of the magnitudes (Hurley & Rickard 2009): with c sorted ascending,
  1 - 2 Σ_k (c_k / |c|_1) (n - k + 1/2) / n, k = 1..n: 0 uniform, 1 - 1/n one-hot; 0 for zero."""
  c = xp.sort(xp.abs(x), axis=-1)
  n = c.shape[-1]
  l1 = xp.sum(c, axis=-1)
  weights = (n - xp.arange(1, n + 1) + 0.5) / n
  g = 1.0 - 2.0 * xp.sum(c * weights, axis=-1) / xp.where(l1 > 0, l1, 1.0)
  return xp.where(l1 > 0, g, 0.0)


def topk_share(x, fraction: float = 0.05, xp=np):
  """Share of the L1 mass held by the ceil(fraction · n) largest magnitudes: `fraction`'s
  ceiling share (k/n) uniform, 1 one-hot; 0 for a zero vector."""
  if not 0.0 < fraction <= 1.0:
    raise ValueError(f"fraction={fraction!r} must be in (0, 1]")
  c = xp.sort(xp.abs(x), axis=-1)
  n = c.shape[-1]
  k = max(1, math.ceil(fraction * n - 1e-9))
  l1 = xp.sum(c, axis=-1)
  return xp.where(l1 > 0, xp.sum(c[..., n - k:], axis=-1) / xp.where(l1 > 0, l1, 1.0), 0.0)


def above_mean_std(x, xp=np):
  """Fraction of units whose magnitude exceeds mean + std of the vector's magnitudes (population
  std): 0 uniform, 1/n one-hot."""
  a = xp.abs(x)
  thresh = xp.mean(a, axis=-1, keepdims=True) + xp.std(a, axis=-1, keepdims=True)
  return xp.mean((a > thresh).astype(a.dtype), axis=-1)


ACTIVATION_METRICS = ("hoyer", "gini", "top5_share", "above_mean_std")


def activation_metrics(x, xp=np):
  """The four measures of each vector over the last axis, stacked on a new last axis in the
  order of ACTIVATION_METRICS: [..., d] -> [..., 4]."""
  return xp.stack([hoyer(x, xp), gini(x, xp), topk_share(x, 0.05, xp), above_mean_std(x, xp)],
                  axis=-1)


@dataclasses.dataclass(frozen=True)
class Logistic:
  """Slope of a logistic regression of a 0/1 outcome on one predictor (with per-stratum
  intercepts), its 95% interval (Wald, cluster-robust sandwich over `clusters`) and two-sided p."""
  slope: float
  ci: tuple[float, float]
  p: float
  n: int


def logistic_slope(y: Sequence[int], x: Sequence[float], strata: Sequence | None = None,
                   clusters: Sequence | None = None, level: float = 0.95,
                   iters: int = 50) -> Logistic:
  """Logit P(y=1) = a_stratum + b·x by Newton-Raphson; strata where y never varies are dropped
  (they say nothing about b and their intercepts diverge). Standard error: the sandwich with
  score sums per cluster (the contexts, whose questions are not independent), per observation
  without `clusters`. NaN slope when nothing is left or x does not vary."""
  y = np.asarray(y, np.float64).reshape(-1)
  x = np.asarray(x, np.float64).reshape(-1)
  s = np.zeros(len(y), int) if strata is None else np.unique(np.asarray(strata, str),
                                                             return_inverse=True)[1]
  c = np.arange(len(y)) if clusters is None else np.unique(np.asarray(clusters, str),
                                                          return_inverse=True)[1]
  keep = np.zeros(len(y), bool)
  for k in np.unique(s):
    m = s == k
    if 0 < y[m].sum() < m.sum():
      keep |= m
  y, x, s, c = y[keep], x[keep], s[keep], c[keep]
  nan = Logistic(float("nan"), (float("nan"), float("nan")), float("nan"), int(len(y)))
  if len(y) < 3 or np.ptp(x) == 0:
    return nan
  _, s = np.unique(s, return_inverse=True)
  design = np.column_stack([x, np.eye(s.max() + 1)[s]])
  beta = np.zeros(design.shape[1])
  for _ in range(iters):
    p = 1.0 / (1.0 + np.exp(-(design @ beta)))
    hess = design.T @ (design * (p * (1 - p))[:, None]) + 1e-9 * np.eye(len(beta))
    step = np.linalg.solve(hess, design.T @ (y - p))
    beta += step
    if np.max(np.abs(step)) < 1e-10:
      break
  p = 1.0 / (1.0 + np.exp(-(design @ beta)))
  hess = design.T @ (design * (p * (1 - p))[:, None])
  bread = np.linalg.pinv(hess)
  score = design * (y - p)[:, None]
  per_cluster = np.zeros((c.max() + 1, design.shape[1]))
  np.add.at(per_cluster, c, score)
  g = len(per_cluster)
  meat = per_cluster.T @ per_cluster * (g / (g - 1) if g > 1 else 1.0)
  se = float(np.sqrt(max((bread @ meat @ bread)[0, 0], 0.0)))
  b = float(beta[0])
  if se == 0 or not np.isfinite(se):
    return Logistic(b, (b, b), float("nan"), int(len(y)))
  z = stats.norm.ppf(0.5 + level / 2)
  return Logistic(b, (b - z * se, b + z * se), float(2 * stats.norm.sf(abs(b) / se)), int(len(y)))
