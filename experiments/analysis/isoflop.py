"""Per training budget: the models side by side (the iso-FLOP table), the compute-optimal dense
size, the best dense and best sparse model, the difference of two models per category, and the
trend of a gap across budgets with the budget where it crosses zero.

A model's headline accuracy is at its training length, prefill, evaluated with its own attention
("native"), pooled over the categories' questions. Models of one study are scored on the same
test examples (same seed, split and lengths), so two models' points hold the same questions and
are compared paired (`compare.same_questions`): the exact sign test over contexts, the paired
bootstrap of the difference; without outcomes, Welch and Newcombe's interval (unpaired).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np

from experiments import stats
from experiments.analysis import compare
from experiments.stats import ALPHA

SEED = 0
RESAMPLES = 1000
MIN_BUDGETS = 3  # a line through two points always fits: its crossing would be no estimate
# A budget where both models are this close to perfect has no room for a gap: its tie is the
# ceiling's, not a closing gap, and a trend through it would read the ceiling as progress (the
# cpu study's pooled trend did: multi-hop -0.90 then a tie at 1.00). 0.03 is the half-width of
# a category's 95% interval at the ~1000 questions the studies' evaluations are sized for.
CEILING = 0.03


def models(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
  """One entry per run: its headline points per category, pooled arm, sample and interval."""
  by_run: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
  for p in points:
    if p["eval_setting"] == "native" and p["phase"] == "prefill" and \
        p["eval_length"] == p["train_seq_len"]:
      by_run[p["run_id"]][p["category"]] = p
  out = []
  for run_id, cats in by_run.items():
    first = next(iter(cats.values()))
    ps = [cats[c] for c in sorted(cats)]
    arm = stats.Arm.pool(p["arm"] for p in ps)
    sample = compare.pool([p["sample"] for p in ps])
    out.append(dict(run_id=run_id, label=first["run_label"], size=first["size"],
                    params=first["params"], budget=first["budget"],
                    train_pattern=first["train_pattern"], train_sparsity=first["train_sparsity"],
                    sparse=first["train_pattern"] != "dense",
                    train_tokens=first.get("train_tokens"), train_seq_len=first["train_seq_len"],
                    inference_flops_per_token=first["inference_flops_per_token"],
                    categories=cats, arm=arm, sample=sample, ci=compare.interval(arm, sample)))
  return sorted(out, key=lambda m: (m["budget"], m["sparse"], m["params"], m["label"]))


def best(ms: list[dict[str, Any]]) -> dict[str, Any] | None:
  """The highest pooled accuracy; a tie goes to the smaller model (the cheaper one to serve)."""
  return min(ms, key=lambda m: (-m["arm"].mean, m["params"], m["label"]), default=None)


def leaders(ms: list[dict[str, Any]]) -> list[tuple[str, str]]:
  """(run_id, what it is) of each budget's best dense and best sparse-trained model: the models
  a reader wants to see first."""
  out = []
  for budget, group in by_budget(ms).items():
    for kind, m in (("best dense", best([m for m in group if not m["sparse"]])),
                    ("best sparse", best([m for m in group if m["sparse"]]))):
      if m is not None:
        out.append((m["run_id"], f"{kind} at {budget:.2g} FLOPs"))
  return out


def by_budget(ms: list[dict[str, Any]]) -> dict[float, list[dict[str, Any]]]:
  out: dict[float, list[dict[str, Any]]] = defaultdict(list)
  for m in ms:
    out[m["budget"]].append(m)
  return dict(sorted(out.items()))


def difference(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
  """accuracy(a) - accuracy(b) of two points or models ({"arm", "sample"}): the difference, its
  95% interval, one-sided p both ways, and the test. Paired where they hold the same questions
  (sign test over contexts, paired bootstrap over contexts), else Welch and Newcombe."""
  sa, sb = a.get("sample"), b.get("sample")
  d = a["arm"].mean - b["arm"].mean
  if compare.same_questions(sa, sb):
    ctx = sa.cluster if sa.clustered else None
    ra, asked = stats.per_context(sa.correct, sa.cluster)
    rb, _ = stats.per_context(sb.correct, sb.cluster)
    return dict(diff=d, ci=stats.paired_cluster_bootstrap_ci(ra, rb, asked),
                p_greater=stats.paired_greater(sa.correct, sb.correct, "greater", ctx).p,
                p_less=stats.paired_greater(sa.correct, sb.correct, "less", ctx).p,
                test=compare.PAIRED)
  ka, kb = a["arm"].mean * a["arm"].n, b["arm"].mean * b["arm"].n
  return dict(diff=d, ci=stats.difference_ci(ka, a["arm"].n, kb, b["arm"].n),
              p_greater=stats.welch_greater(a["arm"], b["arm"]).p,
              p_less=stats.welch_greater(b["arm"], a["arm"]).p, test=compare.WELCH)


def compute_optimal(ms: list[dict[str, Any]]) -> list[dict[str, Any]]:
  """Per budget, the dense size with the best pooled accuracy at the training length, against
  the runner-up (difference, interval, Holm across budgets), and whether it sits at the edge of
  the grid's sizes (then the optimum may lie beyond). Not the training loss: the study's runs
  log it at whichever length their schedule is on, so two runs' last losses are not comparable."""
  out = []
  for budget, group in by_budget(ms).items():
    dense = [m for m in group if not m["sparse"]]
    if not dense:
      continue
    ranked = sorted(dense, key=lambda m: (-m["arm"].mean, m["params"]))
    top = ranked[0]
    sizes = sorted(m["params"] for m in dense)
    edge = ("smallest" if top["params"] == sizes[0] else "largest" if top["params"] == sizes[-1]
            else "") if len(sizes) > 1 else "only"
    row = dict(budget=budget, best=top, edge=edge, sizes=len(dense),
               runner_up=ranked[1] if len(ranked) > 1 else None, diff=None)
    if row["runner_up"] is not None:
      row["diff"] = difference(top, row["runner_up"])
    out.append(row)
  tested = [r for r in out if r["diff"] is not None]
  for r, p in zip(tested, stats.holm([r["diff"]["p_greater"] for r in tested])):
    r["p"] = p
  return out


def inference_match(points: list[dict[str, Any]], sparse: dict[str, Any],
                    dense: dict[str, Any]) -> tuple[str, dict[str, dict[str, Any]]] | None:
  """The sparse model's eval setting at inference FLOPs per token no higher than the dense
  model's (prefill, training length), and its points per category. A setting's cost is its
  attention and the rest of the model plus its content selection's own arithmetic (pooling and
  block scores), so Quest, whose min/max bound costs more than a mean, is not tied with mean
  top-k at one density. Of the settings that fit, the one with the most FLOPs (the most compute
  the match allows: chosen before looking at any accuracy), "native" on a tie; None when no
  sparse setting is that cheap."""
  settings: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
  for p in points:
    if p["run_id"] == sparse["run_id"] and p["sparse"] and p["phase"] == "prefill" and \
        p["eval_length"] == sparse["train_seq_len"]:
      settings[p["eval_setting"]][p["category"]] = p
  cost = lambda p: p["inference_flops_per_token"] + p.get("selection_flops_per_token", 0.0)
  limit = cost(dense) * (1 + 1e-9)
  costs = {s: cost(next(iter(cats.values()))) for s, cats in settings.items()}
  fits = [(c, s == "native", s) for s, c in costs.items() if c <= limit]
  if not fits:
    return None
  _, _, name = max(fits)
  return name, settings[name]


# ---------------------------------------------------------------------------- the trend
def at_ceiling(a: dict[str, Any], b: dict[str, Any]) -> bool:
  """Both points within CEILING of perfect accuracy: their gap is censored by the ceiling."""
  return min(a["arm"].mean, b["arm"].mean) >= 1 - CEILING


Pair = tuple[dict[str, Any], dict[str, Any]]  # (sparse point, dense point) of one category


def category_gaps(comps: list[dict[str, Any]]) -> dict[str, list[tuple[float, Pair]]]:
  """Per category, the (budget, (sparse, dense)) gaps `trend` fits, leaving out the budgets
  where both are at the ceiling. Categories are fitted apart: their gaps close at different
  rates, and a mean over them moves when one reaches the ceiling."""
  out: dict[str, list] = {}
  for c in comps:
    for cat, pair in sorted((c.get("per_category") or {}).items()):
      out.setdefault(cat, [])
      if not at_ceiling(*pair):
        out[cat].append((c["budget"], pair))
  return out


def _resample_difference(rng, a: dict[str, Any], b: dict[str, Any], n: int) -> np.ndarray:
  """`n` bootstrap draws of accuracy(a) - accuracy(b): contexts resampled jointly where the
  points hold the same questions, each arm's questions on its own otherwise."""
  sa, sb = a.get("sample"), b.get("sample")
  if compare.same_questions(sa, sb):
    ra, asked = stats.per_context(sa.correct, sa.cluster)
    rb, _ = stats.per_context(sb.correct, sb.cluster)
    idx = rng.integers(0, len(asked), (n, len(asked)))
    return (ra[idx].sum(1) - rb[idx].sum(1)) / asked[idx].sum(1)
  draw = lambda arm: rng.binomial(arm.n, min(max(arm.mean, 0.0), 1.0), n) / arm.n
  return draw(a["arm"]) - draw(b["arm"])


def trend(gaps: list[tuple[float, Pair]], resamples: int = RESAMPLES,
          seed: int = SEED) -> dict[str, Any]:
  """Where a gap (sparse - dense) points across budgets. `gaps`: per budget, the (sparse,
  dense) points of one category (`category_gaps`). Least squares of gap on log10(budget); the
  crossing (gap 0) at x* = mean(x) - mean(gap) / slope. Intervals: percentile bootstrap,
  contexts resampled per pair (fixed seed).
  The crossing is "within the grid" only where it and its interval lie inside the budgets'
  range; no crossing is located where the slope's interval spans zero."""
  gaps = sorted(gaps, key=lambda g: g[0])
  x = np.log10([g[0] for g in gaps])
  y = np.array([s["arm"].mean - d["arm"].mean for _, (s, d) in gaps])
  out = dict(budgets=[g[0] for g in gaps], gap=y.tolist(), slope=None, slope_ci=None,
             crossing=None, crossing_ci=None, within=False, located=False, why="")
  if len(gaps) < MIN_BUDGETS:
    out["why"] = (f"not resolvable here: needs >= {MIN_BUDGETS} training budgets with a "
                  f"comparison to fit a trend, the study has {len(gaps)}")
    return out
  rng = np.random.default_rng(seed)
  ys = np.stack([_resample_difference(rng, s, d, resamples) for _, (s, d) in gaps], 1)  # [B, K]

  def fit(yy):
    xc = x - x.mean()
    slope = (yy - yy.mean(-1, keepdims=True)) @ xc / (xc @ xc)
    with np.errstate(divide="ignore", invalid="ignore"):
      cross = np.where(slope != 0, x.mean() - yy.mean(-1) / slope, np.inf)
    return slope, cross
  slope, cross = fit(y)
  slopes, crosses = fit(ys)
  q = lambda v: (float(np.quantile(v, ALPHA / 2, method="inverted_cdf")),
                 float(np.quantile(v, 1 - ALPHA / 2, method="inverted_cdf")))
  out.update(slope=float(slope), slope_ci=q(slopes), crossing=float(cross))
  lo, hi = out["slope_ci"]
  if lo <= 0 <= hi:
    out["why"] = (f"not resolvable here: no trend to extrapolate, the slope {slope:+.3g} per "
                  f"decade of budget has interval [{lo:+.3g}, {hi:+.3g}], which spans zero")
    return out
  out["located"] = True
  out["crossing_ci"] = q(crosses)
  inside = lambda v: x.min() <= v <= x.max()
  out["within"] = inside(cross) and all(map(inside, out["crossing_ci"]))
  c_lo, c_hi = out["crossing_ci"]
  ahead = "ahead" if slope > 0 else "behind"
  where = (f"gap 0 at 10^{cross:.2f} FLOPs [10^{c_lo:.2f}, 10^{c_hi:.2f}], the sparse model "
           f"{ahead} above it (slope {slope:+.3g} per decade [{lo:+.3g}, {hi:+.3g}])")
  out["why"] = where if out["within"] else (
      f"not within the grid (budgets 10^{x.min():.2f}..10^{x.max():.2f}): {where}")
  return out


# ------------------------------------------------------------------------------- markdown
def _acc(arm: stats.Arm, ci: tuple[float, float]) -> str:
  return f"{arm.mean:.3f} [{ci[0]:.2f}, {ci[1]:.2f}]"


def markdown(ms: list[dict[str, Any]], optimal: list[dict[str, Any]], table) -> list[str]:
  """The compute-optimal dense size per budget and the iso-FLOP table."""
  md = ["## Compute-optimal dense size per budget", "",
        "The dense size with the best accuracy at the training length (prefill, pooled over "
        "the categories' questions), against the runner-up: difference with 95% interval, "
        "one-sided test best > runner-up (paired by question where the models hold the same "
        f"ones, else {compare.WELCH}), Holm across budgets. An optimum at the edge of the grid's "
        "sizes may lie beyond it.", ""]
  if not optimal:
    md.append("No dense-trained model evaluated at its training length.")
  else:
    rows = []
    for r in optimal:
      b, u, d = r["best"], r["runner_up"], r["diff"]
      rows.append([f"{r['budget']:.2g}", b["size"], b["params"], _acc(b["arm"], b["ci"]),
                   u["size"] if u else "—",
                   f"{d['diff']:+.3f} [{d['ci'][0]:+.2f}, {d['ci'][1]:+.2f}]" if d else "—",
                   d["test"] if d else "—", f"{r['p']:.3g}" if d else "—",
                   {"smallest": "smallest size in the grid: the optimum may be smaller",
                    "largest": "largest size in the grid: the optimum may be larger",
                    "only": "the only dense size"}.get(r["edge"], "inside the grid")])
    md.append(table(["budget", "best size", "params", "accuracy [95%]", "runner-up",
                     "best − runner-up [95%]", "test", "p (Holm)", "where"], rows))
  cats = sorted({c for m in ms for c in m["categories"]})
  md += ["", "## Iso-FLOP table", "",
         "Every model at the training length, prefill, evaluated with its own attention: "
         "accuracy per category and pooled over the categories' questions (95% interval). "
         "Tokens per parameter: training FLOPs / training FLOPs per token / parameters.", ""]
  rows = []
  for m in ms:
    tag = "dense" if not m["sparse"] else f"{m['train_pattern']}@{m['train_sparsity']:g}"
    tpp = f"{m['train_tokens'] / m['params']:.3g}" if m.get("train_tokens") else "—"
    rows.append([f"{m['budget']:.2g}", m["size"], m["params"], tag, tpp,
                 *[f"{m['categories'][c]['arm'].mean:.3f}" if c in m["categories"] else "—"
                   for c in cats], _acc(m["arm"], m["ci"])])
  md.append(table(["budget", "size", "params", "training attention", "tokens/param", *cats,
                   "pooled [95%]"], rows) if rows else "No model evaluated at its training length.")
  return md
