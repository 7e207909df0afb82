"""Emergent activation sparsity against difficulty, correctness and attention-sparsity tolerance
(issue 21), from the probe files of trained runs (`experiments.evaluation.probe`: probe.json +
probe.npz in a run folder). Pure numpy/scipy (+ matplotlib for the figures); `section` returns
the report's markdown lines and the figure paths.

The measure is the Hoyer sparsity of the last layer's hidden state (the final-normed stream the
head reads) at each question's position (the one that predicts its first answer token); the
table beside it gives all four measures. Units: a question is an item; questions sharing a
context are not independent, so trend tests use per-context means and the logistic slopes use a
cluster-robust (by context) interval. Three hypotheses, each with a verdict per model × category
("reproduced": significant in the hypothesised direction after Holm across the family;
"refuted": significant in the opposite direction; "not resolvable": neither):

H1 (Jin et al. 2026) harder / farther-shifted inputs give sparser last-layer states: Spearman
   trend of per-context Hoyer over log(eval length / trained length), one-sided both ways; and
   knob-shifted (more needles / hops / distractors than trained) vs trained form at the trained
   length, Mann-Whitney on per-context means.
H2 sparser means more likely wrong: logistic slope of dense correctness on the Hoyer value
   (z-scored within each task × length cell, per-cell intercepts), Wald 95% interval with
   context clusters; H2 holds when the slope is < 0.
H3 items the model finds hard by this signal tolerate less attention pruning: items split into
   terciles of their Hoyer within each task × length cell; the tolerance per tercile (the
   largest sparsity not significantly worse than dense, `frontier.tolerance` on the paired
   context sign test, Holm across the curve) is reported, and the verdict's test is a logistic
   slope of survival (right under the sparse setting, among items right dense) on the tercile
   index (0 densest .. 2 sparsest), strata = task × length × phase × setting, context clusters;
   H3 holds when the slope is < 0.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from scipy import stats as sps

from experiments import stats
from experiments.analysis import frontier as fr
from experiments.analysis.plots import short_label
from experiments.stats import ACTIVATION_METRICS, ALPHA

HOYER = ACTIVATION_METRICS.index("hoyer")
# A heavier-tailed vector has fewer units above its mean + std (half-normal magnitudes 16%,
# exponential 13.5%, one-hot 1/n): for that measure "sparser" is lower, so the tests take its
# negative and "higher = sparser" holds for every measure.
SPARSER_IS_LOWER = {ACTIVATION_METRICS.index("above_mean_std")}
VERDICTS = ("reproduced", "refuted", "not resolvable")


# ------------------------------------------------------------------------------- loading
def load_probe(folder: Path) -> dict[str, Any]:
  """A run folder's probe.json + probe.npz (the format `experiments.evaluation.probe.save`
  writes): {"meta", "rows", "activations": {(task, length): {field: array}}}."""
  folder = Path(folder)
  written = json.loads((folder / "probe.json").read_text())
  acts: dict = {}
  with np.load(folder / "probe.npz") as z:
    for k in z.files:
      task, length, field = k.rsplit("|", 2)
      acts.setdefault((task, int(length)), {})[field] = z[k]
  return {"meta": written["meta"], "rows": written["rows"], "activations": acts}


def _nominal(setting: str) -> float | None:
  if setting == "dense":
    return 0.0
  head, _, tail = setting.partition("@")
  try:
    return float(tail)
  except ValueError:
    return None


def items(probe: dict[str, Any], metric: int = HOYER, layer: int = -1) -> list[dict[str, Any]]:
  """One dict per question of the captured (dense) pass: model, task, category, length, shift
  (log2 of length / trained), knob_shift, cell, context (unique in the model), value (the
  measure), all four measures, correct (dense), and sparse: {(phase, setting): 0/1}."""
  meta = probe["meta"]
  label = meta.get("label", meta.get("run", "model"))
  by_key: dict = defaultdict(dict)
  for r in probe["rows"]:
    s = _nominal(r["eval_setting"])
    if s is not None and s > 0:
      by_key[(r["task"], r["eval_length"])][(r["phase"], r["eval_setting"])] = r["correct"]
  out = []
  for (task, length), a in sorted(probe["activations"].items()):
    info = meta["tasks"][task]
    every = np.asarray(a["question"])  # [n, L, M]
    q = every[:, layer]  # [n, M]
    sparse = by_key.get((task, length), {})
    for i in range(len(q)):
      out.append(dict(model=label, params=meta.get("params"), task=task,
                      category=info["category"], trained_task=info["trained_task"],
                      knob_shift=info["knob_shift"], length=length,
                      shift=float(np.log2(length / meta["trained_length"])),
                      cell=f"{task}|{length}", context=f"{task}|{length}|{int(a['context'][i])}",
                      value=float(-q[i, metric] if metric in SPARSER_IS_LOWER else q[i, metric]),
                      measures=q[i].tolist(),
                      layers=every[i, :, metric].tolist(),
                      correct=int(a["correct"][i]),
                      sparse={k: int(v[i]) for k, v in sparse.items()}))
  return out


# ----------------------------------------------------------------------------- the tests
def _context_means(group: list[dict[str, Any]], key: str = "value") -> dict[str, float]:
  sums: dict = defaultdict(list)
  for it in group:
    sums[it["context"]].append(it[key])
  return {c: float(np.mean(v)) for c, v in sums.items()}


def mean_ci(values: Sequence[float], level: float = 0.95) -> tuple[float, float, float]:
  """(mean, low, high): the t interval of the mean of independent values (nan without 2)."""
  v = np.asarray(values, np.float64)
  if len(v) < 2:
    m = float(v.mean()) if len(v) else float("nan")
    return m, float("nan"), float("nan")
  m, se = float(v.mean()), float(v.std(ddof=1) / np.sqrt(len(v)))
  h = float(sps.t.ppf(0.5 + level / 2, len(v) - 1) * se)
  return m, m - h, m + h


def trend(x: Sequence[float], y: Sequence[float]) -> dict[str, float]:
  """Spearman's rho of y on x with its one-sided p-values (rho > 0, rho < 0); nan p when x or
  y does not vary."""
  x, y = np.asarray(x, float), np.asarray(y, float)
  if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
    return dict(rho=float("nan"), p_greater=1.0, p_less=1.0, n=len(x))
  g = sps.spearmanr(x, y, alternative="greater")
  l = sps.spearmanr(x, y, alternative="less")
  return dict(rho=float(g.statistic), p_greater=float(g.pvalue), p_less=float(l.pvalue),
              n=len(x))


def shifted_greater(shifted: Sequence[float], trained: Sequence[float]) -> dict[str, float]:
  """Mann-Whitney U of shifted > trained (and <), one-sided each."""
  a, b = np.asarray(shifted, float), np.asarray(trained, float)
  if len(a) < 2 or len(b) < 2 or np.ptp(np.concatenate([a, b])) == 0:
    return dict(diff=float("nan"), p_greater=1.0, p_less=1.0, n=len(a) + len(b))
  g = sps.mannwhitneyu(a, b, alternative="greater")
  l = sps.mannwhitneyu(a, b, alternative="less")
  return dict(diff=float(np.median(a) - np.median(b)), p_greater=float(g.pvalue),
              p_less=float(l.pvalue), n=len(a) + len(b))


def verdicts(family: list[dict[str, Any]], hypothesised: str, alpha: float = ALPHA) -> None:
  """Adds p_adj (Holm over both directions of every test of the family) and verdict to each
  test {p_greater, p_less}: "reproduced" where the `hypothesised` direction ("greater" or
  "less") is significant, "refuted" where the other one is, else "not resolvable"."""
  if not family:
    return
  other = "less" if hypothesised == "greater" else "greater"
  adj = stats.holm([t[f"p_{hypothesised}"] for t in family] + [t[f"p_{other}"] for t in family])
  for t, ph, po in zip(family, adj, adj[len(family):]):
    t.update(p_adj=ph, p_adj_other=po,
             verdict="reproduced" if ph < alpha else "refuted" if po < alpha
             else "not resolvable")


def _slope_test(fit: stats.Logistic, hypothesised: str) -> dict[str, Any]:
  """A logistic slope as a test {p_greater, p_less} (one-sided halves of its Wald p)."""
  if not np.isfinite(fit.slope) or not np.isfinite(fit.p):
    return dict(slope=fit.slope, ci=fit.ci, n=fit.n, p_greater=1.0, p_less=1.0)
  half = fit.p / 2
  return dict(slope=fit.slope, ci=fit.ci, n=fit.n,
              p_greater=half if fit.slope > 0 else 1 - half,
              p_less=half if fit.slope < 0 else 1 - half)


def _zscore_within(group: list[dict[str, Any]]) -> np.ndarray:
  cells: dict = defaultdict(list)
  for i, it in enumerate(group):
    cells[it["cell"]].append(i)
  z = np.zeros(len(group))
  for idx in cells.values():
    v = np.array([group[i]["value"] for i in idx])
    sd = v.std()
    z[idx] = (v - v.mean()) / sd if sd > 0 else 0.0
  return z


def terciles(group: list[dict[str, Any]]) -> np.ndarray:
  """Tercile index (0 densest, 1, 2 sparsest) of each item's value within its cell (ranks, ties
  by order, so the terciles are equal-sized)."""
  cells: dict = defaultdict(list)
  for i, it in enumerate(group):
    cells[it["cell"]].append(i)
  t = np.zeros(len(group), int)
  for idx in cells.values():
    v = np.array([group[i]["value"] for i in idx])
    ranks = np.argsort(np.argsort(v, kind="stable"), kind="stable")
    t[idx] = np.minimum(3 * ranks // max(len(idx), 1), 2)
  return t


def _paired_p(dense, arm) -> float:
  (dc, ctx), (sc, _) = dense, arm
  _, which = np.unique(np.asarray(ctx, str), return_inverse=True)
  return stats.paired_greater(dc, sc, "greater", which).p


# --------------------------------------------------------------------------- the analyses
def difficulty(all_items: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
  """H1. "cells": mean (95% CI over contexts) of the measure per model × category × task form ×
  length; "length": the trend over log length per model × category (trained knob forms);
  "knob": shifted vs trained form at the trained length per model × category."""
  cells, length_tests, knob_tests = [], [], []
  groups: dict = defaultdict(list)
  for it in all_items:
    groups[(it["model"], it["category"])].append(it)
  for (model, cat), g in sorted(groups.items()):
    by_cell: dict = defaultdict(list)
    for it in g:
      by_cell[(it["knob_shift"], it["length"], it["shift"])].append(it)
    for (knob, length, shift), c in sorted(by_cell.items()):
      m, lo, hi = mean_ci(list(_context_means(c).values()))
      cells.append(dict(model=model, category=cat, knob_shift=knob, length=length, shift=shift,
                        mean=m, low=lo, high=hi, accuracy=float(np.mean([i["correct"] for i in c])),
                        n=len(c), measures=np.mean([i["measures"] for i in c], 0).tolist()))
    trained = [it for it in g if it["knob_shift"] == "trained"]
    means = _context_means(trained)
    shift_of = {it["context"]: it["shift"] for it in trained}
    t = trend([shift_of[c] for c in means], list(means.values()))
    length_tests.append(dict(model=model, category=cat, **t))
    at_trained = [it for it in g if it["shift"] == 0]
    for knob in sorted({it["knob_shift"] for it in at_trained} - {"trained"}):
      s = _context_means([it for it in at_trained if it["knob_shift"] == knob])
      b = _context_means([it for it in at_trained if it["knob_shift"] == "trained"])
      knob_tests.append(dict(model=model, category=cat, knob_shift=knob,
                             **shifted_greater(list(s.values()), list(b.values()))))
  verdicts(length_tests, "greater")
  verdicts(knob_tests, "greater")
  return {"cells": cells, "length": length_tests, "knob": knob_tests}


def correctness(all_items: list[dict[str, Any]]) -> list[dict[str, Any]]:
  """H2 per model × category: the logistic slope of dense correctness on the within-cell
  z-scored measure (per-cell intercepts, context clusters), and the Mann-Whitney of the
  z-scored measure wrong > right as a check; verdict on the slope (hypothesis: < 0)."""
  out = []
  groups: dict = defaultdict(list)
  for it in all_items:
    groups[(it["model"], it["category"])].append(it)
  for (model, cat), g in sorted(groups.items()):
    z = _zscore_within(g)
    y = np.array([it["correct"] for it in g])
    fit = stats.logistic_slope(y, z, strata=[it["cell"] for it in g],
                               clusters=[it["context"] for it in g])
    mw = shifted_greater(z[y == 0], z[y == 1])
    out.append(dict(model=model, category=cat, accuracy=float(y.mean()), n_wrong=int((y == 0).sum()),
                    n_right=int(y.sum()), mw_p_wrong_sparser=mw["p_greater"],
                    **_slope_test(fit, "less")))
  verdicts(out, "less")
  return out


def tolerance_by_tercile(all_items: list[dict[str, Any]], alpha: float = ALPHA
                         ) -> dict[str, list[dict[str, Any]]]:
  """H3. "curves": tolerance (sparsity and compression) per model × category × length × phase ×
  pattern × tercile, with the tercile's dense and per-level accuracy; "tests": per model ×
  category the survival slope on the tercile index (hypothesis < 0)."""
  curves, tests = [], []
  groups: dict = defaultdict(list)
  for it in all_items:
    groups[(it["model"], it["category"])].append(it)
  for (model, cat), g in sorted(groups.items()):
    ter = terciles(g)
    keys = sorted({k for it in g for k in it["sparse"]})
    ys, xs, strata, clusters = [], [], [], []
    for i, it in enumerate(g):
      if not it["correct"]:
        continue
      for k in keys:
        if k in it["sparse"]:
          ys.append(it["sparse"][k]); xs.append(ter[i])
          strata.append(f"{it['cell']}|{k}"); clusters.append(it["context"])
    fit = stats.logistic_slope(ys, xs, strata=strata, clusters=clusters)
    tests.append(dict(model=model, category=cat, n_pairs=len(ys),
                      survival=[float(np.mean([y for y, x in zip(ys, xs) if x == t]))
                                if any(x == t for x in xs) else float("nan") for t in range(3)],
                      **_slope_test(fit, "less")))
    phases = sorted({k[0] for k in keys})
    patterns = sorted({k[1].partition("@")[0] for k in keys})
    for length in sorted({it["length"] for it in g}):
      for phase in phases:
        for pattern in patterns:
          levels = sorted({k[1] for k in keys if k[0] == phase and k[1].startswith(pattern + "@")},
                          key=_nominal)
          for t in range(3):
            sel = [it for i, it in enumerate(g) if ter[i] == t and it["length"] == length
                   and it["knob_shift"] == "trained"]
            sel = [it for it in sel if all((phase, s) in it["sparse"] for s in levels)]
            if len(sel) < 2 or not levels:
              continue
            ctx = [it["context"] for it in sel]
            dense = ([it["correct"] for it in sel], ctx)
            by = {_nominal(s): ([it["sparse"][(phase, s)] for it in sel], ctx) for s in levels}
            tol = fr.tolerance(dense, by, alpha, greater=_paired_p)
            # could any drop be significant? the sign test's smallest p, Holm-scaled, with every
            # context holding a dense-right item dropping
            k = len({c for c, y in zip(ctx, dense[0]) if y})
            curves.append(dict(model=model, category=cat, length=length, phase=phase,
                               pattern=pattern, tercile=t, n=len(sel),
                               dense_acc=float(np.mean(dense[0])),
                               level_acc={s: float(np.mean(v[0])) for s, v in by.items()},
                               tolerance=tol, compression=1.0 / (1.0 - tol),
                               testable=bool(len(levels) * 0.5 ** k < alpha)))
  verdicts(tests, "less")
  return {"curves": curves, "tests": tests}


# ------------------------------------------------------------------------------ the figures
def _plots(diff, tol, out_dir: Path, stem: str) -> list[Path]:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  paths = []
  cats = sorted({c["category"] for c in diff["cells"]})
  models = sorted({c["model"] for c in diff["cells"]})
  if cats:
    fig, axes = plt.subplots(1, len(cats), figsize=(4 * len(cats), 3.3), squeeze=False)
    for ax, cat in zip(axes[0], cats):
      for m in models:
        for knob, marker in (("trained", "o-"), (None, "s--")):
          pts = [c for c in diff["cells"] if c["model"] == m and c["category"] == cat
                 and (c["knob_shift"] == "trained" if knob else c["knob_shift"] != "trained")]
          if not pts:
            continue
          x = [2 ** c["shift"] for c in pts]
          y = [c["mean"] for c in pts]
          err = [[max(c["mean"] - c["low"], 0) if np.isfinite(c["low"]) else 0 for c in pts],
                 [max(c["high"] - c["mean"], 0) if np.isfinite(c["high"]) else 0 for c in pts]]
          ax.errorbar(x, y, yerr=err, fmt=marker, capsize=3, ms=4,
                      label=short_label(m) + ("" if knob else " (knob-shifted)"))
      ax.axvline(1.0, color="grey", lw=0.8, ls=":")
      ax.set_xscale("log", base=2)
      ax.set_title(cat)
      ax.set_xlabel("eval length / trained length")
    axes[0][0].set_ylabel("Hoyer sparsity, last layer (95% CI)")
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    p = out_dir / f"{stem}_difficulty.png"
    fig.savefig(p, dpi=110)
    plt.close(fig)
    paths.append(p)
  if tol["tests"]:
    fig, ax = plt.subplots(figsize=(max(4, 1.6 * len(tol["tests"])), 3.5))
    for j, t in enumerate(tol["tests"]):
      ax.bar([j - 0.25, j, j + 0.25], t["survival"], width=0.25,
             color=["#4c72b0", "#dd8452", "#c44e52"],
             label=["densest third", "middle third", "sparsest third"] if j == 0 else None)
    ax.set_xticks(range(len(tol["tests"])))
    ax.set_xticklabels([f"{short_label(t['model'])}\n{t['category']}" for t in tol["tests"]],
                       fontsize=7)
    ax.set_ylabel("right under sparse attention\n(among items right dense)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    p = out_dir / f"{stem}_tolerance_terciles.png"
    fig.savefig(p, dpi=110)
    plt.close(fig)
    paths.append(p)
  return paths


# ------------------------------------------------------------------------------ the section
def _f(x, fmt=".3f") -> str:
  return "n/a" if x is None or (isinstance(x, float) and not np.isfinite(x)) else format(x, fmt)


def section(probes: Sequence[dict[str, Any]], out_dir: Path | None = None,
            stem: str = "activation_sparsity", heading: str = "##", link: str = ""
            ) -> tuple[list[str], list[Path]]:
  """The report section from loaded probes (`load_probe`): markdown lines and figure paths
  (written into `out_dir`; none without it; the markdown links them as `link` + file name,
  e.g. link="plots/" when out_dir is the report's plots folder)."""
  all_items = [it for p in probes for it in items(p)]
  lines = [f"{heading} Emergent activation sparsity (issue 21)", ""]
  if not all_items:
    return lines + ["No probe results (run `python -m experiments probe RUN_DIR`).", ""], []
  diff = difficulty(all_items)
  corr = correctness(all_items)
  tol = tolerance_by_tercile(all_items)
  plots = _plots(diff, tol, Path(out_dir), stem) if out_dir is not None else []
  lines += [
      "Measure: Hoyer sparsity (0 = all units equal in magnitude, 1 = one-hot) of the last "
      "layer's hidden state (final-normed) at each question's position, from the dense "
      "evaluation pass itself. Verdicts: \"reproduced\" = significant in the hypothesised "
      f"direction after Holm across the family (α = {ALPHA}), \"refuted\" = significant the "
      "other way, \"not resolvable\" = neither.", "",
      "### Activation sparsity by difficulty", "",
      "| model | category | task form | length (x trained) | dense acc | Hoyer (95% CI) | "
      "Gini | top-5% share | frac > mean+std | n |", "|---|---|---|---|---|---|---|---|---|---|"]
  for c in diff["cells"]:
    g, t5, am = c["measures"][1:]
    lines.append(f"| {c['model']} | {c['category']} | {c['knob_shift']} | {c['length']} "
                 f"({2 ** c['shift']:g}x) | {c['accuracy']:.2f} | {c['mean']:.3f} "
                 f"[{_f(c['low'])}, {_f(c['high'])}] | {g:.3f} | {t5:.3f} | {am:.3f} | {c['n']} |")
  lines += ["", "H1a, sparser when longer than trained (Spearman of per-context Hoyer on log "
            "length ratio, one-sided):", "",
            "| model | category | rho | p (sparser, Holm) | p (denser, Holm) | contexts | verdict |",
            "|---|---|---|---|---|---|---|"]
  for t in diff["length"]:
    lines.append(f"| {t['model']} | {t['category']} | {_f(t['rho'])} | {_f(t['p_adj'], '.3g')} | "
                 f"{_f(t['p_adj_other'], '.3g')} | {t['n']} | {t['verdict']} |")
  if diff["knob"]:
    lines += ["", "H1b, sparser with more needles / hops / distractors than trained, at the "
              "trained length (Mann-Whitney on per-context Hoyer, one-sided):", "",
              "| model | category | shift | median diff | p (sparser, Holm) | p (denser, Holm) "
              "| contexts | verdict |", "|---|---|---|---|---|---|---|---|"]
    for t in diff["knob"]:
      lines.append(f"| {t['model']} | {t['category']} | {t['knob_shift']} | {_f(t['diff'])} | "
                   f"{_f(t['p_adj'], '.3g')} | {_f(t['p_adj_other'], '.3g')} | {t['n']} | "
                   f"{t['verdict']} |")
  lines += ["", "### Activation sparsity and correctness", "",
            "H2, sparser means more likely wrong: logistic slope of dense correctness on Hoyer "
            "(z-scored within task × length, per-cell intercepts; 95% Wald CI, context clusters); "
            "cells where every item is right or every item wrong carry no information and drop "
            "out. Mann-Whitney p (wrong sparser than right, z-scored) as a check.", "",
            "| model | category | acc | wrong/right | slope (95% CI) | p (< 0, Holm) | p (> 0, Holm) "
            "| MW p | verdict |", "|---|---|---|---|---|---|---|---|---|"]
  for t in corr:
    lines.append(f"| {t['model']} | {t['category']} | {t['accuracy']:.2f} | {t['n_wrong']}/"
                 f"{t['n_right']} | {_f(t['slope'])} [{_f(t['ci'][0])}, {_f(t['ci'][1])}] | "
                 f"{_f(t['p_adj'], '.3g')} | {_f(t['p_adj_other'], '.3g')} | "
                 f"{_f(t['mw_p_wrong_sparser'], '.3g')} | "
                 f"{t['verdict']} |")
  lines += ["", "### Attention-sparsity tolerance by the items' own activation sparsity", "",
            "Items in terciles of Hoyer within each task × length (T1 densest, T3 sparsest). "
            "Tolerance = the largest sparsity not significantly worse than dense on the same "
            "items (paired sign test over contexts, Holm across the curve), trained task forms "
            "only. † = untestable: too few contexts with a dense-right item for any drop to be "
            "significant, so the tolerance is the top of the ladder by default.", "",
            "| model | category | length | phase | pattern | T1 tol (dense acc) | "
            "T2 tol (dense acc) | T3 tol (dense acc) |", "|---|---|---|---|---|---|---|---|"]
  by_curve: dict = defaultdict(dict)
  for c in tol["curves"]:
    by_curve[(c["model"], c["category"], c["length"], c["phase"], c["pattern"])][c["tercile"]] = c
  for k, ts in sorted(by_curve.items()):
    cellf = lambda t: (f"{ts[t]['tolerance']:g}{'' if ts[t]['testable'] else '†'} "
                       f"({ts[t]['dense_acc']:.2f})" if t in ts else "–")
    lines.append(f"| {' | '.join(map(str, k))} | {cellf(0)} | {cellf(1)} | {cellf(2)} |")
  lines += ["", "H3, items the model finds hard by this signal tolerate less pruning: logistic "
            "slope of survival (right under a sparse setting, among items right dense) on the "
            "tercile index, strata task × length × phase × setting, context clusters; H3 holds "
            "when the slope is < 0.", "",
            "| model | category | survival T1 / T2 / T3 | slope (95% CI) | p (< 0, Holm) | "
            "p (> 0, Holm) | pairs | verdict |", "|---|---|---|---|---|---|---|---|"]
  for t in tol["tests"]:
    s = " / ".join(_f(v, ".2f") for v in t["survival"])
    lines.append(f"| {t['model']} | {t['category']} | {s} | {_f(t['slope'])} "
                 f"[{_f(t['ci'][0])}, {_f(t['ci'][1])}] | {_f(t['p_adj'], '.3g')} | "
                 f"{_f(t['p_adj_other'], '.3g')} | {t['n_pairs']} | {t['verdict']} |")
  counts = lambda fam: ", ".join(f"{sum(t['verdict'] == v for t in fam)} {v}" for v in VERDICTS)
  lines += ["", "### Across layers and measures", "",
            "Mean Hoyer by layer (question positions, trained task forms; layer i < depth is the "
            "residual stream after block i, the last column the final-normed stream):", ""]
  by_ml: dict = defaultdict(list)
  for it in all_items:
    if it["knob_shift"] == "trained":
      by_ml[(it["model"], it["length"])].append(it["layers"])
  depth = max(len(v[0]) for v in by_ml.values())
  lines += ["| model | length | " + " | ".join(
      [f"block {i}" for i in range(depth - 1)] + ["final norm"]) + " |",
            "|---|---|" + "---|" * depth]
  for (m, n), ls in sorted(by_ml.items()):
    mean = [f"{x:.3f}" for x in np.mean(ls, 0)]
    mean = mean[:-1] + ["–"] * (depth - len(mean)) + mean[-1:]  # shallower model: final aligned
    lines.append(f"| {m} | {n} | " + " | ".join(mean) + " |")
  lines += ["", "The same tests on each of the four measures (last layer), verdict counts "
            "(reproduced / refuted / not resolvable); for frac > mean+std \"sparser\" is fewer "
            "units above mean+std (heavier tail), so its tests run on the negated value:", "",
            "| measure | H1a longer | H1b knobs | H2 wrong | H3 tolerance |", "|---|---|---|---|---|"]
  short = lambda fam: "/".join(str(sum(t["verdict"] == v for t in fam)) for v in VERDICTS)
  for m, name in enumerate(ACTIVATION_METRICS):
    its = [it for p in probes for it in items(p, metric=m)]
    d_m = difficulty(its) if m != HOYER else diff
    c_m = correctness(its) if m != HOYER else corr
    t_m = tolerance_by_tercile(its)["tests"] if m != HOYER else tol["tests"]
    lines.append(f"| {name} | {short(d_m['length'])} | {short(d_m['knob'])} | {short(c_m)} | "
                 f"{short(t_m)} |")
  lines += ["", "Summary of verdicts (cells = model × category):", "",
            f"- H1a sparser when longer than trained: {counts(diff['length'])}.",
            f"- H1b sparser with more needles/hops/distractors: {counts(diff['knob'])}.",
            f"- H2 sparser means more likely wrong: {counts(corr)}.",
            f"- H3 sparser items tolerate less attention pruning: {counts(tol['tests'])}.", ""]
  lines += [f"![{p.stem}]({link}{p.name})" for p in plots] + ([""] if plots else [])
  return lines, plots


def section_from_dirs(run_dirs: Sequence[Path], out_dir: Path | None = None, **kw
                      ) -> tuple[list[str], list[Path]]:
  """`section` of every run folder holding probe files (others are skipped)."""
  probes = [load_probe(d) for d in run_dirs if (Path(d) / "probe.json").exists()]
  return section(probes, out_dir, **kw)


def analyse(probes: Sequence[dict[str, Any]]) -> dict[str, Any]:
  """Every number of the section (last-layer Hoyer): {"difficulty", "correctness",
  "tolerance"} as `difficulty`, `correctness` and `tolerance_by_tercile` return them."""
  its = [it for p in probes for it in items(p)]
  return {"difficulty": difficulty(its), "correctness": correctness(its),
          "tolerance": tolerance_by_tercile(its)}


def write(md_path: Path, run_dirs: Sequence[Path], preamble: Sequence[str] = ()) -> list[Path]:
  """A standalone markdown file: `preamble` lines, then the section of `run_dirs`' probes, its
  figures beside it (named after the file), and every number of it in a .json beside them."""
  md_path = Path(md_path)
  probes = [load_probe(d) for d in run_dirs if (Path(d) / "probe.json").exists()]
  lines, plots = section(probes, md_path.parent, stem=md_path.stem, heading="#")
  md_path.write_text("\n".join([lines[0], "", *preamble, *lines[1:]]) + "\n")
  js = md_path.with_suffix(".json")
  js.write_text(json.dumps(analyse(probes), indent=1, default=float))
  return [md_path, *plots, js]
