"""The activation-sparsity measures on vectors with known values (one-hot, uniform, closed
forms), the logistic slope against a known generating slope, and the analysis's tests and
verdicts on constructed probe data where the answer is known."""

import math

import numpy as np
import pytest

from experiments import stats
from experiments.analysis import activation as act


@pytest.mark.parametrize("n", [4, 10, 64])
def test_one_hot_and_uniform(n):
  one = np.eye(n)[1] * -3.0  # sign and scale do not matter
  uni = np.full(n, 0.7) * np.where(np.arange(n) % 2, 1, -1)
  assert stats.hoyer(one) == pytest.approx(1.0) and stats.hoyer(uni) == pytest.approx(0.0, abs=1e-12)
  assert stats.gini(one) == pytest.approx(1 - 1 / n) and stats.gini(uni) == pytest.approx(0.0, abs=1e-12)
  k = math.ceil(0.05 * n)
  assert stats.topk_share(one) == pytest.approx(1.0) and stats.topk_share(uni) == pytest.approx(k / n)
  assert stats.above_mean_std(one) == pytest.approx(1 / n) and stats.above_mean_std(uni) == 0.0


def test_closed_forms():
  # k equal nonzeros of n: Hoyer (sqrt n - sqrt k)/(sqrt n - 1); Gini 1 - k/n
  n, k = 16, 4
  x = np.r_[np.ones(k), np.zeros(n - k)]
  assert stats.hoyer(x) == pytest.approx((4 - 2) / 3)
  assert stats.gini(x) == pytest.approx(1 - k / n)
  assert stats.topk_share(x, 0.125) == pytest.approx(0.5)  # 2 of the 4 equal units
  # mean 0.25, std sqrt(0.25*0.75) = 0.433: the 4 ones are above 0.683
  assert stats.above_mean_std(x) == pytest.approx(k / n)
  # linear ramp 1..n: Gini of magnitudes (n-1)/(3n) ... check the Hurley-Rickard sum directly
  r = np.arange(1, n + 1, dtype=float)
  want = 1 - 2 * sum((r[i] / r.sum()) * (n - (i + 1) + 0.5) / n for i in range(n))
  assert stats.gini(r) == pytest.approx(want) and stats.gini(r) == pytest.approx((n - 1) / (3 * n))
  # zero vector: every measure 0, no nan
  assert stats.activation_metrics(np.zeros(8)).tolist() == [0.0, 0.0, 0.0, 0.0]


def test_batched_and_jax_agree():
  import jax.numpy as jnp
  x = np.random.default_rng(0).normal(size=(3, 5, 32)).astype(np.float32)
  a = stats.activation_metrics(x)
  assert a.shape == (3, 5, 4)
  np.testing.assert_allclose(np.asarray(stats.activation_metrics(jnp.asarray(x), xp=jnp)), a,
                             rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(a[1, 2], stats.activation_metrics(x[1, 2]), rtol=1e-6)
  # a sparser vector scores higher on every measure but the tail fraction's direction
  dense, sparse = np.ones(32), np.r_[np.full(4, 8.0), np.full(28, 0.1)]
  assert (stats.activation_metrics(sparse)[:3] > stats.activation_metrics(dense)[:3]).all()


def test_logistic_slope_recovers_a_known_slope():
  rng = np.random.default_rng(1)
  x = rng.normal(size=4000)
  strata = rng.integers(0, 4, size=4000)
  y = rng.random(4000) < 1 / (1 + np.exp(-(-1.0 * x + 0.5 * strata - 0.5)))
  fit = stats.logistic_slope(y.astype(int), x, strata=strata)
  assert fit.ci[0] < -1.0 < fit.ci[1] and fit.p < 1e-6
  null = stats.logistic_slope(y.astype(int), rng.normal(size=4000), strata=strata)
  assert null.ci[0] < 0 < null.ci[1]
  # a stratum where y never varies drops out; x without variation gives nan
  assert stats.logistic_slope([1, 1, 1, 0, 1], [1, 2, 3, 4, 5], strata=[0, 0, 0, 1, 1]).n == 2
  assert math.isnan(stats.logistic_slope([0, 1, 0, 1], [1, 1, 1, 1]).slope)


def _probe(rng, *, sparser_when_long, sparser_wrong, hard_drop):
  """A constructed probe: Hoyer rises with length iff `sparser_when_long`; wrong items are
  sparser iff `sparser_wrong`; sparse-tercile items lose their answer under sparse attention
  iff `hard_drop`."""
  tasks = {"t": dict(trained_task="t", knob_shift="trained", category="retrieval")}
  acts, rows = {}, []
  for length in (64, 128, 256):
    n = 120
    base = 0.3 + (0.1 * np.log2(length / 128) if sparser_when_long else 0.0)
    h = base + 0.05 * rng.normal(size=n)
    correct = (rng.random(n) < 0.7).astype(int)
    if sparser_wrong:
      h = h + 0.08 * (1 - correct)
    q = np.zeros((n, 3, 4), np.float32)
    q[:, -1, 0] = h
    acts[("t", length)] = dict(question=q, answer=q, correct=correct, context=np.arange(n))
    rank = np.argsort(np.argsort(h))
    sparse_third = rank >= 2 * n // 3
    for s in ("local@0.5", "local@0.75"):
      lose = (rng.random(n) < (0.8 if hard_drop else 0.1)) & sparse_third
      lose |= (rng.random(n) < 0.1) & ~sparse_third
      rows.append(dict(task="t", eval_length=length, phase="prefill", eval_setting=s,
                       correct=(correct * ~lose).astype(int).tolist()))
    rows.append(dict(task="t", eval_length=length, phase="prefill", eval_setting="dense",
                     correct=correct.tolist()))
  meta = dict(trained_length=128, tasks=tasks, label="m", params=1)
  return {"meta": meta, "rows": rows, "activations": acts}


def test_section_verdicts_on_constructed_data(tmp_path):
  rng = np.random.default_rng(0)
  yes = _probe(rng, sparser_when_long=True, sparser_wrong=True, hard_drop=True)
  items = act.items(yes)
  assert len(items) == 360 and {i["shift"] for i in items} == {-1.0, 0.0, 1.0}
  d = act.difficulty(items)
  assert [t["verdict"] for t in d["length"]] == ["reproduced"]
  assert [t["verdict"] for t in act.correctness(items)] == ["reproduced"]
  tol = act.tolerance_by_tercile(items)
  assert [t["verdict"] for t in tol["tests"]] == ["reproduced"]
  t3 = [c for c in tol["curves"] if c["tercile"] == 2 and c["length"] == 128]
  t1 = [c for c in tol["curves"] if c["tercile"] == 0 and c["length"] == 128]
  assert t3[0]["tolerance"] == 0.0 and t1[0]["tolerance"] >= 0.5
  no = _probe(rng, sparser_when_long=False, sparser_wrong=False, hard_drop=False)
  items = act.items(no)
  assert [t["verdict"] for t in act.difficulty(items)["length"]] == ["not resolvable"]
  assert [t["verdict"] for t in act.correctness(items)] == ["not resolvable"]
  assert [t["verdict"] for t in act.tolerance_by_tercile(items)["tests"]] == ["not resolvable"]
  lines, plots = act.section([yes], tmp_path, stem="x")
  text = "\n".join(lines)
  assert "H1a sparser when longer than trained: 1 reproduced" in text
  assert all(p.exists() for p in plots) and len(plots) == 2


def test_refuted_when_the_other_direction_is_significant():
  fam = [dict(p_greater=0.9999, p_less=1e-6), dict(p_greater=1e-6, p_less=0.9999),
         dict(p_greater=0.3, p_less=0.7)]
  act.verdicts(fam, "greater")
  assert [t["verdict"] for t in fam] == ["refuted", "reproduced", "not resolvable"]


def test_terciles_are_equal_within_cells():
  items = [dict(cell=c, value=v) for c in "ab" for v in range(9)]
  t = act.terciles(items)
  assert t.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2] * 2


def test_load_probe_reads_what_probe_save_writes(tmp_path):
  from experiments.evaluation import probe as probe_lib
  p = _probe(np.random.default_rng(2), sparser_when_long=True, sparser_wrong=False,
             hard_drop=False)
  probe_lib.save(tmp_path, p)
  back = act.load_probe(tmp_path)
  assert back["rows"] == p["rows"] and set(back["activations"]) == set(p["activations"])


def test_heavier_tails_have_fewer_units_above_mean_std():
  rng = np.random.default_rng(3)
  half_normal = np.abs(rng.normal(size=200_000))
  exponential = rng.exponential(size=200_000)
  assert stats.above_mean_std(half_normal) == pytest.approx(0.1615, abs=0.005)
  assert stats.above_mean_std(exponential) == pytest.approx(math.exp(-2), abs=0.005)
  assert stats.hoyer(exponential) > stats.hoyer(half_normal)


def test_untestable_tolerance_is_marked():
  rng = np.random.default_rng(4)
  p = _probe(rng, sparser_when_long=False, sparser_wrong=False, hard_drop=False)
  for a in p["activations"].values():  # one dense-right context only
    a["correct"][:] = 0
    a["correct"][0] = 1
  for r in p["rows"]:
    r["correct"] = [1] + [0] * (len(r["correct"]) - 1) if r["eval_setting"] == "dense" else \
        [0] * len(r["correct"])
  curves = act.tolerance_by_tercile(act.items(p))["curves"]
  assert curves and not any(c["testable"] for c in curves)


def test_write_puts_markdown_figures_and_numbers_beside_each_other(tmp_path):
  import json
  from experiments.evaluation import probe as probe_lib
  p = _probe(np.random.default_rng(5), sparser_when_long=True, sparser_wrong=True,
             hard_drop=True)
  probe_lib.save(tmp_path / "run", p)
  paths = act.write(tmp_path / "out.md", [tmp_path / "run", tmp_path / "missing"], ["preamble"])
  assert [x.name for x in paths] == ["out.md", "out_difficulty.png", "out_tolerance_terciles.png",
                                     "out.json"]
  text = paths[0].read_text()
  assert text.startswith("# Emergent activation sparsity") and "\npreamble\n" in text
  numbers = json.loads(paths[-1].read_text())
  assert numbers["difficulty"]["length"][0]["verdict"] == "reproduced"
