"""Report section: fixed vs adaptive content budgets at equal average FLOPs across lengths.

The Sparse Frontier's finding is that longer inputs tolerate more sparsity, so a budget whose
kept fraction shrinks with length (c·n**alpha blocks of n) should beat a fixed fraction that
spends the same FLOPs on average. For each run, every pair of content settings of one pattern,
a fixed budget (density or blocks) and an adaptive one, whose prefill inference FLOPs per token
averaged over the eval lengths agree within `MATCH` is compared per category and phase: accuracy
with its interval and FLOPs/token at each length, and pooled over the lengths (the average),
tested both ways. The two arms are one model on the same examples, so the test is paired
(`compare.greater`) where outcomes.npz holds them, Welch (conservative) where it does not; the
section's summary is one verdict over all its comparisons, so their p-values (both directions)
are Holm-adjusted together.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Callable

from experiments import stats
from experiments.analysis import compare

MATCH = 0.01  # relative difference of average prefill FLOPs/token that still counts as equal
FIXED = ("density", "blocks")


def comparisons(points: list[dict[str, Any]], alpha: float) -> list[dict[str, Any]]:
  """One entry per run × matched (fixed, adaptive) pair × category × phase (report points)."""
  content: dict[str, list[dict[str, Any]]] = defaultdict(list)
  dense: dict[tuple, dict[str, Any]] = {}
  for p in points:
    if p["eval_setting"] == "dense":
      dense[(p["run_id"], p["category"], p["phase"], p["eval_length"])] = p
    elif p["eval_budget"] and p["eval_setting"] != "native":
      content[p["run_id"]].append(p)
  out = []
  for run_id, ps in sorted(content.items(), key=lambda kv: (kv[1][0]["run_label"], kv[0])):
    at = {(p["eval_setting"], p["category"], p["phase"], p["eval_length"]): p for p in ps}
    lengths = sorted({p["eval_length"] for p in ps})
    kind = {p["eval_setting"]: (p["eval_pattern"], p["eval_budget"]) for p in ps}
    avg = {}  # prefill FLOPs don't depend on the task: any category's point gives them
    for s in kind:
      flops = {p["eval_length"]: p["inference_flops_per_token"] for p in ps
               if p["eval_setting"] == s and p["phase"] == "prefill"}
      if len(flops) == len(lengths):
        avg[s] = sum(flops.values()) / len(flops)
    for f in sorted(s for s in avg if kind[s][1] in FIXED):
      for a in sorted(s for s in avg if kind[s][1] == "adaptive"):
        if kind[f][0] != kind[a][0] or abs(avg[a] / avg[f] - 1) > MATCH:
          continue
        for cat, phase in sorted({(p["category"], p["phase"]) for p in ps}):
          per = [dict(eval_length=t, fixed=at.get((f, cat, phase, t)),
                      adaptive=at.get((a, cat, phase, t)),
                      dense=dense.get((run_id, cat, phase, t))) for t in lengths]
          if any(r["fixed"] is None or r["adaptive"] is None for r in per):
            continue
          out.append(_compare(per, f, a, cat, phase, alpha))
  adjusted = stats.holm([r["p_adaptive"] for r in out] + [r["p_fixed"] for r in out])
  for r, pa, pf in zip(out, adjusted, adjusted[len(out):]):
    r.update(p_adaptive=pa, p_fixed=pf, verdict=r["verdict"] or (
        "adaptive wins" if pa < alpha else "fixed wins" if pf < alpha
        else "no significant difference"))
  return out


def _compare(per, fixed, adaptive, category, phase, alpha) -> dict[str, Any]:
  """One comparison, its verdict left to `comparisons` (after Holm) unless too weak to tell."""
  arm = {k: stats.Arm.pool(r[k]["arm"] for r in per) for k in ("fixed", "adaptive")}
  pooled = {k: dict(arm=arm[k], sample=compare.pool([r[k].get("sample") for r in per]))
            for k in ("fixed", "adaptive")}
  flops = {k: sum(r[k]["inference_flops_per_token"] for r in per) / len(per)
           for k in ("fixed", "adaptive")}
  first = per[0]["fixed"]
  chance = sum(r["fixed"]["chance"] * r["fixed"]["arm"].n for r in per) / max(arm["fixed"].n, 1)
  up = compare.greater(pooled["adaptive"], pooled["fixed"])
  down = compare.greater(pooled["fixed"], pooled["adaptive"])
  weak = not (stats.above_chance(arm["fixed"], chance, alpha)
              or stats.above_chance(arm["adaptive"], chance, alpha))
  return dict(run_id=first["run_id"], label=first["run_label"], pattern=first["eval_pattern"],
              fixed=fixed, adaptive=adaptive, category=category, phase=phase, per_length=per,
              fixed_arm=arm["fixed"], adaptive_arm=arm["adaptive"],
              fixed_ci=compare.interval(arm["fixed"], pooled["fixed"]["sample"]),
              adaptive_ci=compare.interval(arm["adaptive"], pooled["adaptive"]["sample"]),
              fixed_flops=flops["fixed"], adaptive_flops=flops["adaptive"],
              p_adaptive=up.p, p_fixed=down.p, test=up.test,
              verdict="too weak to tell" if weak else None)


def _acc(arm: stats.Arm, ci: tuple[float, float] | None = None) -> str:
  lo, hi = ci or stats.proportion_ci(arm.mean * arm.n, arm.n)
  return f"{arm.mean:.2f} [{lo:.2f}, {hi:.2f}]"


def _at(point: dict[str, Any]) -> str:
  return _acc(point["arm"], point.get("ci"))


def markdown(rows: list[dict[str, Any]], table: Callable[..., str]) -> list[str]:
  md = ["## Fixed vs adaptive content budgets at equal average FLOPs", "",
        "Content-based selection with a fixed budget vs a length-adaptive one (c·n^alpha of a "
        "row's n causal blocks), matched when their prefill inference FLOPs per token averaged over "
        f"the eval lengths agree within {MATCH:.0%} (decode FLOPs are shown, not matched). "
        "Accuracy: exact match with 95% interval (Wilson; a bootstrap over contexts where "
        "questions share them); \"mean\" pools the lengths. Verdict: one-sided "
        f"{compare.named({r['test'] for r in rows})} both ways on the pooled examples (one "
        "model, the same examples under both budgets), p-values Holm-adjusted across the family "
        "of every comparison of this section, both directions; \"too weak to tell\" when "
        "neither policy is significantly above chance.", ""]
  if not rows:
    return md + ["No matched pair: the study's eval settings have no fixed and adaptive budget "
                 f"of one content pattern whose average prefill FLOPs agree within {MATCH:.0%}."]
  counts = defaultdict(int)
  for r in rows:
    counts[r["verdict"]] += 1
  md.append(f"**Which wins**: over {len(rows)} comparisons (run × category × phase): " + ", ".join(
      f"{k} {v}" for k, v in sorted(counts.items())) + ".")
  md.append("")
  for r in rows:
    if r["verdict"] != "too weak to tell":
      md.append(f"- {r['label']}, {r['category']}, {r['phase']}: **{r['verdict']}** — adaptive "
                f"`{r['adaptive']}` {_acc(r['adaptive_arm'], r['adaptive_ci'])} vs fixed "
                f"`{r['fixed']}` {_acc(r['fixed_arm'], r['fixed_ci'])} at mean FLOPs/token "
                f"{r['adaptive_flops']:.4g} vs {r['fixed_flops']:.4g} ({r['test']}, "
                f"Holm-adjusted p adaptive>fixed {r['p_adaptive']:.3g}, fixed>adaptive "
                f"{r['p_fixed']:.3g}).")
  body = []
  for r in rows:
    for x in r["per_length"]:
      d = x["dense"]
      body.append([r["label"], r["category"], r["phase"], x["eval_length"],
                   _at(d) if d else "—", _at(x["fixed"]),
                   f"{x['fixed']['inference_flops_per_token']:.4g}", _at(x["adaptive"]),
                   f"{x['adaptive']['inference_flops_per_token']:.4g}"])
    body.append([r["label"], r["category"], r["phase"], "**mean**", "",
                 _acc(r["fixed_arm"], r["fixed_ci"]), f"{r['fixed_flops']:.4g}",
                 _acc(r["adaptive_arm"], r["adaptive_ci"]), f"{r['adaptive_flops']:.4g}"])
  pairs = sorted({(r["pattern"], r["fixed"], r["adaptive"]) for r in rows})
  md += ["", "Pairs: " + "; ".join(f"fixed `{f}` vs adaptive `{a}`" for _, f, a in pairs), ""]
  md.append(table(["model", "category", "phase", "T", "dense acc", "fixed acc", "fixed FLOPs/tok",
                   "adaptive acc", "adaptive FLOPs/tok"], body))
  return md
