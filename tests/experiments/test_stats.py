"""experiments.stats on constructed data, against scipy and statsmodels: Welch from summary
statistics, the exact paired test (McNemar) and its clustered form, Holm, the cluster
bootstrap; and a paired case the unpaired tests miss."""

import numpy as np
import pytest
from scipy import stats as sps

from experiments import stats

sm_tables = pytest.importorskip("statsmodels.stats.contingency_tables")
sm_multitest = pytest.importorskip("statsmodels.stats.multitest")
sm_proportion = pytest.importorskip("statsmodels.stats.proportion")


def _table(a, b):
  """McNemar's 2x2 table: rows a right/wrong, columns b right/wrong."""
  a, b = np.asarray(a, bool), np.asarray(b, bool)
  return [[int((a & b).sum()), int((a & ~b).sum())], [int((~a & b).sum()), int((~a & ~b).sum())]]


@pytest.mark.filterwarnings("ignore:Precision loss")  # scipy's reference on a constant sample
def test_welch_is_scipys_from_the_samples_and_keeps_the_zero_variance_rule():
  rng = np.random.default_rng(0)
  for n_a, n_b in ((5, 7), (40, 23), (200, 200)):
    a, b = rng.integers(0, 2, n_a).astype(float), rng.integers(0, 2, n_b).astype(float)
    w = stats.welch_greater(stats.Arm.of(a), stats.Arm.of(b))
    ref = sps.ttest_ind(a, b, equal_var=False, alternative="greater")
    assert (w.t, w.p) == pytest.approx((ref.statistic, ref.pvalue), rel=1e-9)
  # one arm constant, the other not: scipy's formula, no special case
  w = stats.welch_greater(stats.Arm.of(np.ones(10)), stats.Arm.of([1.0] * 8 + [0.0] * 2))
  ref = sps.ttest_ind(np.ones(10), [1.0] * 8 + [0.0] * 2, equal_var=False, alternative="greater")
  assert w.p == pytest.approx(ref.pvalue, rel=1e-9)
  # both constant: the documented rule (scipy gives nan there)
  assert stats.welch_greater(stats.Arm.of(np.ones(5)), stats.Arm.of(np.zeros(5))).p == 0.0
  assert stats.welch_greater(stats.Arm.of(np.ones(4)), stats.Arm.of(np.zeros(4))).p == 0.5


def test_paired_test_is_mcnemars_exact_test():
  rng = np.random.default_rng(1)
  for n, flip in ((30, 0.2), (200, 0.1), (500, 0.03)):
    a = rng.integers(0, 2, n)
    b = np.where(rng.random(n) < flip, 1 - a, a)
    b[: n // 20] = 1  # b a little better
    table = _table(a, b)
    a_only, b_only = table[0][1], table[1][0]
    ref = sm_tables.mcnemar(table, exact=True)
    assert stats.paired_greater(a, b, "two-sided").p == pytest.approx(ref.pvalue, rel=1e-12)
    # one-sided: the binomial tail on the discordant pairs, each direction
    assert stats.paired_greater(b, a).p == pytest.approx(
        sps.binom.sf(b_only - 1, a_only + b_only, 0.5), rel=1e-12)
    assert stats.paired_greater(b, a, "less").p == pytest.approx(
        sps.binom.cdf(b_only, a_only + b_only, 0.5), rel=1e-12)
    assert stats.paired_greater(a, b).p == stats.paired_greater(b, a, "less").p
    got = stats.paired_greater(b, a)
    assert (got.a_only, got.b_only) == (b_only, a_only)
  same = stats.paired_greater([1, 0, 1], [1, 0, 1])
  assert (same.a_only, same.b_only, same.p) == (0, 0, 1.0)


def test_paired_test_finds_the_difference_the_unpaired_tests_miss():
  """200 questions; B is right on exactly the questions A is right on, plus 12 more. Every
  discordant pair favours B: the paired test sees it (p = 2**-12). Unpaired, 0.50 against 0.56
  at n = 200 is within noise, for Welch and for the two-proportion z-test alike."""
  a = np.zeros(200, int)
  a[:100] = 1
  b = a.copy()
  b[100:112] = 1
  paired = stats.paired_greater(b, a)
  assert (paired.a_only, paired.b_only) == (12, 0)
  assert paired.p == pytest.approx(0.5 ** 12) and paired.p < stats.ALPHA
  assert sm_tables.mcnemar(_table(b, a), exact=True).pvalue == pytest.approx(2 * 0.5 ** 12)
  welch = stats.welch_greater(stats.Arm.of(b), stats.Arm.of(a))
  assert welch.p > 0.1 and not stats.significantly_greater(stats.Arm.of(b), stats.Arm.of(a))
  _, z_p = sm_proportion.proportions_ztest([b.sum(), a.sum()], [200, 200], alternative="larger")
  assert z_p > 0.1


def test_paired_test_over_shared_contexts_is_the_sign_test_on_contexts():
  rng = np.random.default_rng(2)
  contexts = np.repeat(np.arange(50), 4)  # four questions a context
  a = rng.integers(0, 2, 200)
  b = np.where(rng.random(200) < 0.3, 1, a)
  got = stats.paired_greater(b, a, contexts=contexts)
  d = b.reshape(50, 4).sum(1) - a.reshape(50, 4).sum(1)
  wins, losses = int((d > 0).sum()), int((d < 0).sum())
  assert (got.a_only, got.b_only) == (wins, losses)
  assert got.p == pytest.approx(sps.binomtest(wins, wins + losses, 0.5, "greater").pvalue)
  # one question a context (in any order of ids) is McNemar's test again
  ids = rng.permutation(200)
  assert stats.paired_greater(b, a, contexts=ids) == stats.paired_greater(b, a)
  # the 200/+12 case with the 12 extra questions in 3 contexts: 3 discordant units, p = 1/8
  a = np.zeros(200, int)
  a[:100] = 1
  b = a.copy()
  b[100:112] = 1
  assert stats.paired_greater(b, a, contexts=contexts).p == pytest.approx(1 / 8)


def test_paired_test_refuses_mismatched_inputs():
  with pytest.raises(ValueError, match=r"shapes \(3,\) and \(2,\)"):
    stats.paired_greater([1, 0, 1], [1, 0])
  with pytest.raises(ValueError, match="alternative='bigger'"):
    stats.paired_greater([1], [0], "bigger")
  with pytest.raises(ValueError, match="contexts has shape"):
    stats.paired_greater([1, 0], [0, 0], contexts=[0])


def test_holm_matches_statsmodels():
  assert stats.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
  assert stats.holm([]) == [] and stats.holm([0.2]) == [0.2]
  rng = np.random.default_rng(3)
  for m in (2, 5, 13, 40):
    p = rng.random(m) ** 3
    p[: m // 4] = p[0]  # ties
    p[-1] = 1.0
    ref = sm_multitest.multipletests(p, alpha=0.05, method="holm")
    assert stats.holm(p) == pytest.approx(ref[1].tolist(), rel=1e-12)
    assert [q < 0.05 for q in stats.holm(p)] == ref[0].tolist()
  with pytest.raises(ValueError, match="p-values in"):
    stats.holm([0.5, 1.5])


def test_cluster_bootstrap_is_scipys_bootstrap_over_contexts():
  rng = np.random.default_rng(4)
  asked = rng.integers(1, 9, 60).astype(float)
  right = rng.binomial(asked.astype(int), rng.beta(2, 2, 60)).astype(float)
  lo, hi = stats.cluster_bootstrap_ci(right, asked)
  ref = sps.bootstrap((right, asked), lambda r, a, axis=-1: r.sum(axis) / a.sum(axis),
                      paired=True, vectorized=True, n_resamples=stats.BOOTSTRAP_RESAMPLES,
                      random_state=0, method="percentile").confidence_interval
  assert (lo, hi) == pytest.approx((ref.low, ref.high), rel=1e-12)
  assert lo < right.sum() / asked.sum() < hi
  # deterministic: the report is reproducible
  assert stats.cluster_bootstrap_ci(right, asked) == (lo, hi)


def test_cluster_bootstrap_is_wider_than_wilson_when_contexts_decide():
  """All-or-nothing contexts (every question of a context right, or none): 40 contexts of 8
  questions carry the information of 40 questions, not 320; Wilson on the questions is too
  narrow, the bootstrap over contexts is not."""
  right = np.array([8.0] * 20 + [0.0] * 20)
  asked = np.full(40, 8.0)
  lo, hi = stats.cluster_bootstrap_ci(right, asked)
  w_lo, w_hi = stats.proportion_ci(160, 320)
  c_lo, c_hi = stats.proportion_ci(20, 40)
  assert hi - lo > 1.5 * (w_hi - w_lo)
  assert hi - lo == pytest.approx(c_hi - c_lo, rel=0.25)  # about the 40-question Wilson width


def test_cluster_bootstrap_without_spread_counts_each_context_once():
  # every context all right: no resample varies; a [1, 1] interval would claim certainty
  assert stats.cluster_bootstrap_ci([4.0] * 48, [4.0] * 48) == stats.proportion_ci(48, 48)
  assert stats.cluster_bootstrap_ci([2.0] * 10, [4.0] * 10) == stats.proportion_ci(5, 10)
  with pytest.raises(ValueError, match="asked >= 1"):
    stats.cluster_bootstrap_ci([1.0, 2.0], [2.0, 0.0])


def test_paired_cluster_bootstrap_of_a_difference():
  rng = np.random.default_rng(5)
  asked = np.full(50, 4.0)
  right_a = rng.binomial(4, 0.5, 50).astype(float)
  right_b = np.minimum(right_a + (rng.random(50) < 0.3), 4.0)  # b: a plus one in some contexts
  lo, hi = stats.paired_cluster_bootstrap_ci(right_b, right_a, asked)
  ref = sps.bootstrap((right_b, right_a, asked),
                      lambda b, a, n, axis=-1: (b.sum(axis) - a.sum(axis)) / n.sum(axis),
                      paired=True, vectorized=True, n_resamples=stats.BOOTSTRAP_RESAMPLES,
                      random_state=0, method="percentile").confidence_interval
  assert (lo, hi) == pytest.approx((ref.low, ref.high), rel=1e-12)
  assert 0 < lo < (right_b - right_a).sum() / asked.sum() < hi
  # unpaired, the two arms' own intervals overlap: the pairing is what separates them
  b_lo, _ = stats.cluster_bootstrap_ci(right_b, asked)
  assert b_lo < stats.cluster_bootstrap_ci(right_a, asked)[1]
  assert stats.paired_cluster_bootstrap_ci(right_a, right_a, asked) == (0.0, 0.0)


def test_per_context_counts():
  right, asked = stats.per_context([1, 0, 1, 1, 0], [7, 7, 3, 7, 3])
  assert right.tolist() == [1.0, 2.0] and asked.tolist() == [2.0, 3.0]  # contexts 3, 7


def test_a_fall_to_chance_under_the_paired_test():
  """5 right of 128: Welch calls a fall to 0 significant (p 0.012); the exact paired test only
  just (5 discordant questions: p 1/32), not against chance answers at rate 0.008 (5 against 1:
  p 7/64) nor after a correction for two sparsities, so a tolerance by the paired test there
  would read "tolerates everything" from no evidence: it is too weak to tell."""
  arm = stats.Arm.of([1.0] * 5 + [0.0] * 123)
  assert stats.drop_detectable(arm, 0.0)
  assert stats.drop_detectable(arm, 0.0, paired=True)  # 5 vs 0: p = 1/32
  assert not stats.drop_detectable(arm, 0.008, paired=True)  # 5 vs 1: p = 7/64
  assert not stats.measurable(arm, 0.0, paired=True, family=2)  # 1/32 * 2 > 0.05
  strong = stats.Arm.of([1.0] * 20 + [0.0] * 108)
  assert stats.measurable(strong, 0.008, paired=True, family=4)


# ------------------------------------------------------ the vectorised tests and the claims'
def test_the_array_forms_are_the_scalar_tests():
  """sign_test_greater, welch_greater_many and holm_rows give, element by element, what
  paired_greater, welch_greater and holm give (the tolerance bootstrap runs them)."""
  rng = np.random.default_rng(6)
  a_only, b_only = rng.integers(0, 12, 50), rng.integers(0, 12, 50)
  a_only[:3], b_only[:3] = 0, 0  # nothing discordant: p = 1
  got = stats.sign_test_greater(a_only, b_only)
  for a, b, p in zip(a_only, b_only, got):
    assert p == pytest.approx(stats.paired_greater([1] * a + [0] * b, [0] * a + [1] * b).p,
                              rel=1e-12)
  for n_a, n_b, k_a, k_b in ((10, 10, 10, 0), (4, 4, 4, 0), (10, 10, 0, 10), (8, 8, 3, 3),
                             (30, 50, 17, 20), (200, 150, 100, 60), (20, 20, 20, 13)):
    arm = lambda k, n: stats.Arm.of([1.0] * k + [0.0] * (n - k))
    a, b = arm(k_a, n_a), arm(k_b, n_b)
    many = stats.welch_greater_many(a.mean, a.std, a.n, b.mean, b.std, b.n)
    assert float(many) == pytest.approx(stats.welch_greater(a, b).p, rel=1e-12, abs=1e-300)
  p = rng.random((40, 5)) ** 2
  p[:, 2] = p[:, 1]  # ties
  assert np.allclose(stats.holm_rows(p), [stats.holm(row) for row in p], rtol=1e-12)
  with pytest.raises(ValueError, match="p-values in"):
    stats.holm_rows(np.array([[0.5, np.nan]]))


def test_drop_beyond_a_margin_is_the_t_test_over_contexts():
  """drop_beyond's p is scipy's one-sample t (alternative "greater") of the per-context
  differences less margin × questions asked, element by element over leading axes; its mean
  is above 0 exactly when the pooled drop is above the margin; constant differences give 0 or 1."""
  rng = np.random.default_rng(3)
  asked = rng.integers(1, 5, 60).astype(float)
  diff = np.stack([rng.binomial(asked.astype(int), q) - rng.binomial(asked.astype(int), 0.1)
                   for q in (0.1, 0.2, 0.5)]).astype(float)  # [3, 60]
  got = stats.drop_beyond(diff, asked, 0.05)
  for row, p in zip(diff, got):
    assert p == pytest.approx(sps.ttest_1samp(row - 0.05 * asked, 0.0,
                                              alternative="greater").pvalue, rel=1e-10)
  assert got[0] > 0.5 > 0.05 > got[2]  # no drop: large p; a 40-point drop: tiny
  assert stats.drop_beyond(np.ones(5), np.ones(5), 0.5) == 0.0  # every context drops 1 of 1
  assert stats.drop_beyond(np.ones(5), np.full(5, 4.0), 0.5) == 1.0  # 1 of 4: under the margin
  with pytest.raises(ValueError, match="needs >= 2 contexts"):
    stats.drop_beyond(np.ones(1), np.ones(1), 0.1)


def test_sign_test_across_cells_drops_ties():
  d = [1.0, 2.0, 0.0, 0.0, 1.0, -1.0, 3.0, 0.5]  # 5 up, 1 down, 2 ties
  t = stats.sign_test(d)
  assert (t.a_only, t.b_only) == (5, 1)
  assert t.p == pytest.approx(sps.binomtest(5, 6, 0.5, "greater").pvalue, rel=1e-12)
  assert stats.sign_test(d, "less").p == pytest.approx(sps.binomtest(5, 6, 0.5, "less").pvalue)
  assert stats.sign_test([0.0, 0.0]).p == 1.0


def test_median_interval_from_order_statistics():
  """[x_(k), x_(n+1-k)] covers the median with probability 1 - 2·P(Bin(n, 1/2) < k): at n = 10,
  k = 2 (coverage 0.979; k = 3 would give 0.891). Below 6 cells nothing reaches 95%."""
  x = np.arange(10.0)[::-1]
  assert stats.median_interval(x) == (1.0, 8.0)
  assert 1 - 2 * sps.binom.cdf(1, 10, 0.5) >= 0.95 > 1 - 2 * sps.binom.cdf(2, 10, 0.5)
  assert stats.median_interval([3.0, 1.0, 2.0, 5.0, 4.0]) == (-np.inf, np.inf)
  assert stats.median_interval(np.arange(6.0)) == (0.0, 5.0)  # coverage 1 - 2/64
  # its coverage, checked by simulation on a skewed distribution with a known median
  rng = np.random.default_rng(7)
  hits = [lo <= np.log(2) <= hi for lo, hi in
          (stats.median_interval(rng.exponential(1.0, 25)) for _ in range(2000))]
  assert np.mean(hits) >= 0.94


def test_difference_interval_is_newcombes():
  for k_a, n_a, k_b, n_b in ((30, 50, 20, 60), (0, 40, 0, 40), (40, 40, 10, 40), (3, 7, 5, 9)):
    ref = sm_proportion.confint_proportions_2indep(k_a, n_a, k_b, n_b, method="newcomb")
    assert stats.difference_ci(k_a, n_a, k_b, n_b) == pytest.approx(ref, rel=1e-9, abs=1e-12)
