"""Statistics and frontier extraction on constructed data where the right answer is known."""

import math

import numpy as np
import pytest
from scipy import stats as sps

from experiments import stats
from experiments.analysis import budgets, compare
from experiments.analysis import frontier as fr
from experiments.runs import results
from experiments.stats import proportion_ci


def _bernoulli(k, n):
  return np.array([1.0] * k + [0.0] * (n - k))


def test_welch_matches_the_textbook_formula_and_scipy():
  rng = np.random.default_rng()
  a, b = rng.normal(1.0, 2.0, 37), rng.normal(0.2, 0.5, 23)
  w = stats.welch_greater(stats.Arm.of(a), stats.Arm.of(b))
  va, vb = a.var(ddof=1) / 37, b.var(ddof=1) / 23
  assert w.t == pytest.approx((a.mean() - b.mean()) / math.sqrt(va + vb), rel=1e-12)
  assert w.df == pytest.approx((va + vb) ** 2 / (va ** 2 / 36 + vb ** 2 / 22), rel=1e-12)
  ref = sps.ttest_ind(a, b, equal_var=False, alternative="greater")
  assert w.p == pytest.approx(ref.pvalue, rel=1e-9)


def test_welch_known_case():
  # Two arms with means 0.8 and 0.5 at n=100 each: t ≈ 4.60, clearly significant; reversed: not.
  a, b = stats.Arm.of(_bernoulli(80, 100)), stats.Arm.of(_bernoulli(50, 100))
  w = stats.welch_greater(a, b)
  assert w.t == pytest.approx(0.3 / math.sqrt(0.8 * 0.2 * 100 / 99 / 100 + 0.25 * 100 / 99 / 100))
  assert w.p < 1e-5 and stats.significantly_greater(a, b)
  assert not stats.significantly_greater(b, a)
  # Same rate, same n: the statistic is exactly 0, p exactly one half.
  assert stats.welch_greater(a, a).p == pytest.approx(0.5)


def test_welch_constant_arms():
  ones, zeros = stats.Arm.of(np.ones(10)), stats.Arm.of(np.zeros(10))
  assert stats.significantly_greater(ones, zeros)
  assert not stats.significantly_greater(zeros, ones)
  assert not stats.significantly_greater(ones, ones)
  assert not stats.significantly_greater(stats.Arm.of(np.ones(3)), stats.Arm.of(np.zeros(3)))
  with pytest.raises(ValueError, match="n >= 2"):
    stats.welch_greater(stats.Arm.of([1.0]), ones)


def test_pooled_arm_equals_the_concatenated_sample():
  rng = np.random.default_rng()
  parts = [rng.integers(0, 2, n).astype(float) for n in (5, 17, 40)]
  pooled = stats.Arm.pool(stats.Arm.of(p) for p in parts)
  whole = stats.Arm.of(np.concatenate(parts))
  assert pooled.n == whole.n
  assert pooled.mean == pytest.approx(whole.mean, rel=1e-12)
  assert pooled.std == pytest.approx(whole.std, rel=1e-12)


def test_proportion_interval_is_wilsons():
  """Known values, the closed form, and the empty case."""
  assert proportion_ci(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
  lo, hi = proportion_ci(0, 10)
  assert lo == 0.0 and hi == pytest.approx(0.2775, abs=1e-4)
  assert proportion_ci(10, 10)[1] == pytest.approx(1.0)
  k, n, z = 37, 50, sps.norm.ppf(0.975)
  p = k / n
  centre = (p + z * z / (2 * n)) / (1 + z * z / n)
  half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
  assert proportion_ci(k, n) == pytest.approx((centre - half, centre + half), rel=1e-12)
  assert proportion_ci(0, 0) == (0.0, 1.0)


def test_tolerance_finds_the_first_significant_drop():
  dense = stats.Arm.of(_bernoulli(180, 200))  # 0.90
  curve = {0.5: stats.Arm.of(_bernoulli(181, 200)),   # 0.905: fine
           0.75: stats.Arm.of(_bernoulli(172, 200)),  # 0.86: within noise at n=200
           0.9: stats.Arm.of(_bernoulli(60, 200)),    # 0.30: a collapse
           0.95: stats.Arm.of(_bernoulli(180, 200))}  # recovery after a drop does not count
  assert fr.tolerance(dense, curve) == 0.75
  assert fr.tolerance(dense, {0.5: stats.Arm.of(_bernoulli(20, 200))}) == 0.0
  assert fr.tolerance(dense, {s: dense for s in (0.5, 0.9)}) == 0.9


def test_above_chance():
  assert stats.above_chance(stats.Arm.of(_bernoulli(20, 64)), 1 / 30)
  assert not stats.above_chance(stats.Arm.of(_bernoulli(3, 64)), 1 / 30)
  assert not stats.above_chance(stats.Arm.of(_bernoulli(0, 64)), 0.0)


def test_pareto_on_known_points():
  pts = [(1.0, 0.2), (2.0, 0.5), (2.0, 0.4), (3.0, 0.5), (4.0, 0.9), (0.5, 0.1), (4.0, 0.9)]
  assert fr.pareto(pts) == [True, True, False, False, True, True, True]
  assert fr.pareto([]) == []


def test_loglinear_fit_recovers_coefficients():
  rng = np.random.default_rng()
  n = 40
  params = rng.uniform(1e5, 1e8, n)
  length = rng.choice([128, 256, 1024, 4096], n)
  comp = rng.choice([1.0, 2.0, 4.0, 10.0], n)
  err = np.exp(1.5 - 0.3 * np.log(params) + 0.2 * np.log(length) + 0.4 * np.log(comp))
  err = np.clip(err, 0, 1)
  keep = err < 1.0  # the fit clips at 1: use only unclipped points for exact recovery
  fit = fr.loglinear_fit(params[keep], length[keep], comp[keep], err[keep])
  assert fit.coef["log_params"] == pytest.approx(-0.3, abs=1e-9)
  assert fit.coef["log_length"] == pytest.approx(0.2, abs=1e-9)
  assert fit.coef["log_compression"] == pytest.approx(0.4, abs=1e-9)
  assert fit.r2_train == pytest.approx(1.0) and fit.r2_heldout == pytest.approx(1.0)
  assert fit.n_heldout == keep.sum() // 4


def _point(label, params, flops, k, n=100, sparse=False, length=1024, chance=0.01):
  return dict(category="retrieval", eval_length=length, phase="prefill", budget=1e15,
              label=label, params=params, sparse=sparse, inference_flops_per_token=flops,
              arm=stats.Arm.of(_bernoulli(k, n)), chance=chance)


def test_sparse_vs_dense_verdicts():
  small = _point("small dense", 1e6, 10.0, 50)
  rows = [small,
          _point("big sparse good", 4e6, 9.0, 80, sparse=True),
          _point("big sparse bad", 4e6, 8.0, 20, sparse=True),
          _point("big sparse same", 4e6, 10.0, 52, sparse=True),
          _point("big sparse too costly", 4e6, 20.0, 99, sparse=True),
          _point("smaller sparse", 5e5, 5.0, 99, sparse=True)]
  verdicts = {c["sparse"]: c["verdict"] for c in fr.sparse_vs_dense(rows)}
  assert verdicts == {"big sparse good": "sparse wins", "big sparse bad": "dense wins",
                      "big sparse same": "no significant difference"}
  weak = [_point("small dense", 1e6, 10.0, 1, length=4096),
          _point("big sparse", 4e6, 9.0, 2, sparse=True, length=4096)]
  (c,) = fr.sparse_vs_dense(weak)
  assert c["verdict"] == "too weak to tell"


def test_drop_detectable_needs_room_above_chance():
  # 1 or 2 right out of 128 is above a near-zero chance rate, but a fall to chance would not be a
  # significant drop: a tolerance there would be "everything tolerated" from no evidence.
  for k in (1, 2):
    arm = stats.Arm.of(_bernoulli(k, 128))
    assert stats.above_chance(arm, 1e-6) and not stats.drop_detectable(arm, 1e-6)
  assert stats.drop_detectable(stats.Arm.of(_bernoulli(5, 128)), 1e-6)
  # measurable: both at once (the report's "too weak to tell" is its negation)
  assert stats.measurable(stats.Arm.of(_bernoulli(5, 128)), 1e-6)
  assert not stats.measurable(stats.Arm.of(_bernoulli(2, 128)), 1e-6)
  assert not stats.measurable(stats.Arm.of(_bernoulli(3, 64)), 1 / 30)  # not above chance
  # the same check against a real chance rate: 20/64 clears 1/30, 4/64 does not
  assert stats.drop_detectable(stats.Arm.of(_bernoulli(20, 64)), 1 / 30)
  assert not stats.drop_detectable(stats.Arm.of(_bernoulli(4, 64)), 1 / 30)
  # and agrees with the Welch test that tolerance uses: a curve that falls to chance
  dense = stats.Arm.of(_bernoulli(5, 128))
  assert fr.tolerance(dense, {0.5: stats.Arm.of(_bernoulli(0, 128))}) == 0.0
  weak = stats.Arm.of(_bernoulli(2, 128))
  assert fr.tolerance(weak, {0.5: stats.Arm.of(_bernoulli(0, 128))}) == 0.5


def test_tolerance_holm_corrects_across_the_curve():
  """One level at p = 0.037 is a significant drop on its own; the same level as one of three
  sparsities of a curve is not (Holm: 3 × 0.037 > 0.05), so the curve tolerates all three."""
  dense, dip = stats.Arm.of(_bernoulli(180, 200)), stats.Arm.of(_bernoulli(168, 200))
  assert stats.welch_greater(dense, dip).p == pytest.approx(0.0374, abs=1e-3)
  assert fr.tolerance(dense, {0.5: dip}) == 0.0
  assert fr.tolerance(dense, {0.5: dip, 0.75: dip, 0.9: dip}) == 0.9
  # Holm steps down: once a collapse at 0.75 is rejected, the dip is tested at alpha again and
  # ends the curve at its first level (Bonferroni, 2 × 0.037, would have let it through)
  assert fr.tolerance(dense, {0.5: dip, 0.75: stats.Arm.of(_bernoulli(20, 200))}) == 0.0


def _outcome_point(correct):
  correct = np.asarray(correct)
  o = results.Outcomes(correct.astype(np.uint8), np.arange(len(correct)))
  return dict(arm=stats.Arm.of(correct.astype(float)),
              sample=compare.sample([(("niah_single", 1024), o)]))


def test_tolerance_on_paired_points_sees_the_drop_welch_misses():
  """Dense right on 112 of 200 questions; the sparse setting on 100 of them and nothing else:
  12 discordant questions, all against sparse. Welch on the summaries (0.56 vs 0.50) sees no
  drop; the paired test on the same questions does (p = 2**-12)."""
  b = np.zeros(200, int)
  b[:112] = 1
  a = b.copy()
  a[100:112] = 0
  dense, sparse = _outcome_point(b), _outcome_point(a)
  assert fr.tolerance(dense["arm"], {0.9: sparse["arm"]}) == 0.9
  t = compare.greater(dense, sparse)
  assert t.test == compare.PAIRED and t.p == pytest.approx(0.5 ** 12)
  assert fr.tolerance(dense, {0.9: sparse}, greater=lambda d, s: compare.greater(d, s).p) == 0.0
  # other questions (another task, or no outcomes): the unpaired test
  other = dict(sparse, sample=compare.sample([(("niah_multikey", 1024),
                                               sparse["sample"].parts[0][1])]))
  assert compare.greater(dense, other).test == compare.WELCH
  assert compare.greater(dense, dict(sparse, sample=None)).test == compare.WELCH


def test_sparse_vs_dense_holm_corrects_across_a_category():
  """A pair at p = 0.023 alone is "sparse wins" (its family: both directions, 2 × 0.023 < 0.05);
  next to two more pairs of its category (six one-sided tests) the adjusted p is over 0.05.
  Its raw p is kept."""
  small = _point("small dense", 1e6, 10.0, 50)
  close = _point("big sparse close", 4e6, 9.0, 64, sparse=True)
  (alone,) = fr.sparse_vs_dense([small, close])
  assert alone["verdict"] == "sparse wins" and alone["p_raw"] == pytest.approx(0.0229, abs=1e-3)
  assert alone["p"] == pytest.approx(2 * alone["p_raw"])
  family = fr.sparse_vs_dense([small, close, _point("big sparse same", 4e6, 9.0, 50, sparse=True),
                               _point("other sparse", 4e6, 9.0, 51, sparse=True)])
  row = next(c for c in family if c["sparse"] == "big sparse close")
  assert row["verdict"] == "no significant difference"
  assert row["p_raw"] == pytest.approx(alone["p_raw"]) and row["p"] > 0.05


def test_cluster_interval_where_questions_share_contexts():
  correct = np.array([1, 1, 1, 1, 0, 0, 0, 0] * 10)  # contexts all right or all wrong
  o = results.Outcomes(correct.astype(np.uint8), np.repeat(np.arange(20), 4))
  s = compare.sample([(("niah_single", 1024), o)])
  assert s.clustered
  arm = stats.Arm.of(correct.astype(float))
  right, asked = stats.per_context(correct, np.repeat(np.arange(20), 4))
  assert compare.interval(arm, s) == stats.cluster_bootstrap_ci(right, asked)
  flat = compare.sample([(("niah_single", 1024), results.Outcomes(o.correct, np.arange(80)))])
  assert not flat.clustered and compare.interval(arm, flat) == proportion_ci(40, 80)


def _budget_point(setting, budget, t, correct, flops):
  correct = np.asarray(correct)
  o = results.Outcomes(correct.astype(np.uint8), np.arange(len(correct)))
  return dict(run_id="m", run_label="m", category="retrieval", phase="prefill", eval_length=t,
              eval_setting=setting, eval_pattern="topk_blocks", eval_budget=budget,
              inference_flops_per_token=flops, chance=0.03,
              arm=stats.Arm.of(correct.astype(float)),
              sample=compare.sample([(("niah_single", t), o)]))


def test_budgets_compare_fixed_and_adaptive_on_the_same_questions():
  """At each of two lengths the adaptive budget answers the fixed one's right questions and 6
  more (0.56 vs 0.50 pooled over 200): paired, 12 discordant questions all for adaptive."""
  pts = []
  for t, flops in ((64, (10.0, 14.0)), (256, (20.0, 16.0))):
    fixed = np.zeros(100, int)
    fixed[:50] = 1
    ada = fixed.copy()
    ada[50:56] = 1
    pts += [_budget_point("fix", "density", t, fixed, flops[0]),
            _budget_point("ada", "adaptive", t, ada, flops[1])]
  (row,) = budgets.comparisons(pts, 0.05)
  assert row["test"] == compare.PAIRED and row["verdict"] == "adaptive wins"
  assert row["p_adaptive"] == pytest.approx(2 * 0.5 ** 12)  # Holm over both directions
  # the summaries alone (a folder without outcomes.npz): Welch, no difference
  (welch,) = budgets.comparisons([dict(p, sample=None) for p in pts], 0.05)
  assert welch["test"] == compare.WELCH and welch["verdict"] == "no significant difference"
  md = "\n".join(budgets.markdown([row], lambda h, b: f"{len(b)} rows"))
  assert compare.PAIRED in md and "Holm" in md


def test_loglinear_fit_intervals_cover_the_coefficients():
  """With noise of known size the OLS intervals cover the true coefficients; without noise
  they shrink onto them."""
  rng = np.random.default_rng(8)
  n = 200
  params, length = rng.uniform(1e5, 1e8, n), rng.choice([128, 1024, 4096], n)
  comp = rng.choice([1.0, 4.0, 16.0], n)
  log_err = -1.0 - 0.3 * np.log(params / 1e5) + 0.2 * np.log(length) + 0.4 * np.log(comp) - 2
  noisy = fr.loglinear_fit(params, length, comp, np.exp(log_err + rng.normal(0, 0.05, n)),
                           floor=1e-12)
  for name, true in (("log_params", -0.3), ("log_length", 0.2), ("log_compression", 0.4)):
    lo, hi = noisy.ci[name]
    assert lo < true < hi and hi - lo < 0.05
  exact = fr.loglinear_fit(params, length, comp, np.exp(log_err), floor=1e-12)
  assert exact.ci["log_length"] == pytest.approx((0.2, 0.2), abs=1e-9)
