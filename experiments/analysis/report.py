"""report.md and PNG plots from results.csv (+ the run folders' states), and the W&B summary.

The report leads with the verdicts on the Sparse Frontier's four claims (`claims`: each with its
effect, interval, test and "reproduced", "refuted" or "not resolvable here" with the reason),
then the plots a reader looks at first (tolerance curves per category and length, the frontier
with its Pareto front, iso-FLOP curves), then the numbers behind them: the claims' comparisons,
compute-optimal sizes and the iso-FLOP table per budget, the tolerances with their intervals,
and the older pairwise sections.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any, Sequence

from experiments import stats
from experiments.analysis import activation, budgets, claims, compare, isoflop, plots
from experiments.analysis import tolerance as tl
from experiments.analysis import frontier as fr
from experiments.stats import ALPHA
from experiments.runs import files, results


# ------------------------------------------------------------------------------ aggregation
def category_points(rows: list[dict[str, Any]], outcomes: dict[tuple, Any] | None = None
                    ) -> list[dict[str, Any]]:
  """Pools task rows into one point per run × category × length × phase × eval setting; with
  `outcomes` (`runs.results.read_outcomes`) each point also holds its questions (`sample`,
  None where a row has none) for the paired tests, and `ci` its 95% interval."""
  groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
  for r, o in zip(rows, results.join(rows, outcomes)):
    groups[(r["run_id"], r["category"], r["eval_length"], r["phase"], r["eval_setting"])].append(
        {**r, "outcomes": o})
  out = []
  for (run_id, cat, length, phase, setting), rs in groups.items():
    arm = stats.Arm.pool(stats.Arm(r["accuracy"], r["accuracy_std"], r["n"]) for r in rs)
    sample = compare.sample([((r["task"], r["eval_length"]), r["outcomes"]) for r in rs])
    first = rs[0]
    out.append(dict(
        run_id=run_id, category=cat, eval_length=length, phase=phase, eval_setting=setting,
        label=f"{first['label']} eval {setting}", run_label=first["label"], size=first["size"],
        params=first["params"], budget=first["budget"], train_pattern=first["train_pattern"],
        train_tokens=first["train_flops"] / first["train_flops_per_token"],
        train_sparsity=first["train_sparsity_target"], train_seq_len=first["train_seq_len"],
        eval_pattern=first["eval_pattern"], eval_sparsity=first["eval_sparsity_element"],
        # The pattern's own sparsity (its rows): in decode the context rows are dense, so the
        # whole-mask element sparsity understates what the sparse rows tolerate.
        eval_target=first["eval_sparsity_target"],
        eval_budget=first.get("eval_budget", ""),  # content budget kind; "" for static
        sparse=first["eval_pattern"] != "dense",
        inference_flops_per_token=sum(r["inference_flops_per_token"] for r in rs) / len(rs),
        selection_flops_per_token=sum(r.get("selection_flops_per_token", 0.0) for r in rs)
        / len(rs),
        arm=arm, sample=sample, ci=compare.interval(arm, sample),
        chance=sum(r["chance"] * r["n"] for r in rs) / max(arm.n, 1)))
  return sorted(out, key=lambda p: (p["category"], p["eval_length"], p["phase"], p["params"],
                                    p["label"]))


def comparison_points(points: list[dict[str, Any]], match: str) -> list[dict[str, Any]]:
  """Dense points: dense-trained models evaluated dense. Sparse points: at equal *training*
  compute, sparse-trained models evaluated with their own attention; at equal *inference*
  compute, any model evaluated sparse."""
  out = []
  for p in points:
    if p["train_pattern"] == "dense" and p["eval_setting"] == "dense":
      out.append(p)
    elif match == "inference" and p["sparse"]:
      out.append(p)
    elif match == "training" and p["train_pattern"] != "dense" and p["eval_setting"] == "native":
      out.append(p)
  return out


# --------------------------------------------------------------------------------- markdown
def _table(header: list[str], rows: list[list[Any]]) -> str:
  def cell(v):
    if isinstance(v, float):
      return f"{v:.3g}"
    return str(v)
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  lines += ["| " + " | ".join(cell(v) for v in r) + " |" for r in rows]
  return "\n".join(lines)


def answer(comparisons: list[dict[str, Any]], categories: list[str], match: str) -> list[str]:
  """One line per category: the study's question answered from the pairwise tests."""
  lines = []
  for cat in categories:
    cs = [c for c in comparisons if c["category"] == cat]
    if not cs and match == "inference":
      lines.append(f"- **{cat}**: no pair to compare — no larger model evaluated sparse fits "
                   "within a smaller dense model's inference FLOPs per token at the same "
                   "training budget in this grid (at these lengths the larger model's "
                   "non-attention FLOPs alone exceed the smaller model's total).")
      continue
    if not cs:
      lines.append(f"- **{cat}**: no pair to compare — the grid has no larger sparse-trained "
                   "model next to a smaller dense one at the same budget.")
      continue
    wins = sorted({c["eval_length"] for c in cs if c["verdict"] == "sparse wins"})
    losses = sorted({c["eval_length"] for c in cs if c["verdict"] == "dense wins"})
    weak = sorted({c["eval_length"] for c in cs if c["verdict"] == "too weak to tell"})
    lengths = sorted({c["eval_length"] for c in cs})
    if wins:
      best = max((c for c in cs if c["verdict"] == "sparse wins"),
                 key=lambda c: c["sparse_acc"] - c["dense_acc"])
      text = (f"**yes, from length {wins[0]} on** (sparse wins at T ∈ {wins}); e.g. "
              f"{best['sparse']} {best['sparse_acc']:.2f} vs {best['dense']} "
              f"{best['dense_acc']:.2f} (n={best['sparse_n']}/{best['dense_n']}, "
              f"Holm-adjusted p={best['p']:.3g}, {best['phase']})")
    elif losses:
      text = f"**no**: the smaller dense model is significantly better at T ∈ {losses}"
    elif len(weak) == len(lengths):
      text = "**too weak to tell**: neither model of any pair is significantly above chance"
    else:
      text = "**no significant difference** at any length tested"
    if weak and (wins or losses):
      text += f"; too weak to tell at T ∈ {weak}"
    lines.append(f"- **{cat}** (lengths {lengths}, {len(cs)} pairs): {text}.")
  return lines


def _length_note(fit: fr.Fit | None) -> str:
  """(b)'s companion from the log-linear fit: how error scales with length at fixed params and
  compression (not the tolerance itself: that would be a length × compression term)."""
  if fit is None or not fit.ci:
    return "Log-linear fit: not fitted (too few points)."
  b, (lo, hi) = fit.coef["log_length"], fit.ci["log_length"]
  sign = ("error grows with length" if lo > 0 else "error falls with length" if hi < 0
          else "no significant effect of length on error")
  return (f"Log-linear fit of error: log_length coefficient {b:+.3f} [{lo:+.3f}, {hi:+.3f}] "
          f"(OLS, points taken as independent): {sign} at fixed params and compression.")


def _short(tests: set[str]) -> str:
  """A tolerance row's test, in a word."""
  return {frozenset(): "—", frozenset({compare.PAIRED}): "paired",
          frozenset({compare.PAIRED_MARGIN}): "paired t",
          frozenset({compare.WELCH}): "Welch"}.get(frozenset(tests), "mixed")


PAIRED_TEXT = (f"{compare.PAIRED}: an exact binomial test at 1/2 on the questions only one "
               "arm answered right (on the contexts where one arm got more right, where several "
               "questions share a context)")


def statistics(points: list[dict[str, Any]], outcomes_rows: int, rows: int) -> list[str]:
  """What the report's tests and intervals are, and on which data (the paired tests need the
  per-question outcomes of outcomes.npz)."""
  clustered = any(p["sample"] is not None and p["sample"].clustered for p in points)
  paired = (f"are compared with the {PAIRED_TEXT}" if outcomes_rows else
            f"would be compared with the {PAIRED_TEXT}; without the outcomes they get "
            f"{compare.WELCH} too, which ignores the pairing (conservative)")
  if outcomes_rows == rows:
    source = f"per-question outcomes of all {rows} rows (`outcomes.npz`)"
  elif outcomes_rows:
    source = (f"per-question outcomes of {outcomes_rows} of {rows} rows (`outcomes.npz`); "
              f"points with a row without them fall back to {compare.WELCH}")
  else:
    source = ("no per-question outcomes (`outcomes.npz` absent, as in a study folder copied "
              f"without it, or not matching results.csv), so every test is {compare.WELCH}")
  return ["## Statistics", "",
          f"Data: {source}. Two eval settings of one model scored the same questions, so they "
          f"{paired}. Two different models are compared with the one-sided {compare.WELCH} on "
          "per-question exact match (unpaired). Each verdict is drawn from a family of "
          "one-sided tests, and its p-values are Holm-adjusted across that family (alpha "
          f"{ALPHA}; each section names its family). Intervals are 95%: "
          + (f"a percentile bootstrap resampling contexts ({stats.BOOTSTRAP_RESAMPLES} "
             "resamples, fixed seed) where questions share a context, else Wilson's."
             if clustered else
             "Wilson's (no two questions share a context).")
          + ' "Too weak to tell" gates the verdicts: an uncorrected binomial test against the '
          "task's chance rate, and for a tolerance whether its test could see a fall to chance "
          "at all."]


def write(out: Path, rows: list[dict[str, Any]], status: list[dict[str, Any]], *, name: str,
          skipped: list[dict[str, Any]] = (), damaged: list[str] = (),
          wall_s: float | None = None, outcomes: dict[tuple, Any] | None = None,
          probe_dirs: Sequence[Path] = (), margin: float = 0.0,
          curves: dict[str, dict[str, Any]] | None = None) -> tuple[Path, list[Path]]:
  """Writes out/report.md and out/plots/*.png from results rows (`runs.results.read`), their
  per-question outcomes (`runs.results.read_outcomes`; None: unpaired tests, and the report
  says so) and the runs' status rows, the study's tolerance margin (`tolerance.curves`) and
  the runs' training curves (`runs.sweep.training_curves`; none: no training plot);
  returns (report path, plot paths). Reads nothing else:
  the run store (`runs.sweep.report_inputs`) gathers these, so the analysis never needs the
  model stack."""
  out = Path(out)
  points = category_points(rows, outcomes)
  joined = sum(o is not None for o in results.join(rows, outcomes))
  plot_dir = out / "plots"
  plot_dir.mkdir(exist_ok=True)
  budget_rows = budgets.comparisons(points, ALPHA)
  tol = tl.curves(points, margin=margin)
  fit_pts = [p for p in points if p["phase"] == "prefill"]
  fit = fr.loglinear_fit([p["params"] for p in fit_pts], [p["eval_length"] for p in fit_pts],
                         [1 / (1 - min(p["eval_sparsity"], 0.999)) for p in fit_pts],
                         [1 - p["arm"].mean for p in fit_pts]) if len(fit_pts) >= 8 else None
  c_train, c_train_comps, c_train_trends = claims.claim_c(points, "training")
  c_inf, c_inf_comps, c_inf_trends = claims.claim_c(points, "inference")
  verdicts = [claims.claim_a(tol), claims.claim_b(tol, _length_note(fit)), c_train, c_inf,
              claims.claim_d(tol)]
  sensitivity = []  # (a), (b), (d) at other margins (the study's: the curves above)
  for m in sorted({*claims.SENSITIVITY_MARGINS, margin}):
    t = tol if m == margin else tl.curves(points, resamples=0, margin=m)
    sensitivity.append((m, [claims.claim_a(t), claims.claim_b(t), claims.claim_d(t)]))
  # (a) task by task: the same points and tolerances with each task as its own category
  task_points = category_points([{**r, "category": r["task"]} for r in rows], outcomes)
  task_tol = tl.curves(task_points, resamples=0, margin=margin)
  category_of = {r["task"]: r["category"] for r in rows}
  by_task = claims.claim_a_by_task(task_tol, category_of)
  models = isoflop.models(points)
  optimal = isoflop.compute_optimal(models)
  dense_by_budget = isoflop.by_budget([m for m in models if not m["sparse"]])
  top = isoflop.best(list(dense_by_budget.values())[-1]) if dense_by_budget else None
  task_fig = plots.plot_task_tolerance(
      task_points, category_of, plot_dir / "task_tolerance.png", top["run_id"],
      f"best dense at {top['budget']:.2g} FLOPs") if top else None
  first_figs = [f for f in (
      plots.plot_tolerance_curves(points, plot_dir / "tolerance_curves.png",
                                  isoflop.leaders(models)[:6]),
      plots.plot_frontier(points, plot_dir / "frontier.png"),
      plots.plot_isoflop(points, plot_dir / "isoflop.png")) if f]
  figs = first_figs + [f for f in (
      plots.plot_tolerance(points, plot_dir / "tolerance.png"),
      plots.plot_budgets(budget_rows, plot_dir / "budgets.png", ALPHA),
      task_fig,
      plots.plot_training(curves or {}, plot_dir / "training.png")) if f]
  comps = fr.sparse_vs_dense(comparison_points(points, "inference"), alpha=ALPHA)
  train_comps = fr.sparse_vs_dense(comparison_points(points, "training"), alpha=ALPHA,
                                   match_inference=False)
  cats = sorted({p["category"] for p in points})

  md = [f"# Study `{name}`", "", "## The Sparse Frontier's claims: verdicts", "",
        *claims.verdict_table(verdicts, _table), "",
        "Each claim's comparisons, tests and families are in \"The claims in detail\" below; "
        + ("paired tests use the per-question outcomes of `outcomes.npz`." if joined else
           "**no `outcomes.npz`**: every test here is the unpaired fallback (Welch between "
           "arms, each arm's questions resampled on their own), which ignores the pairing."),
        *(["", "(a) read task by task (secondary, not planned ahead; section \"(a) task by "
            "task\"), each retrieval task's tolerance against the multi-hop and aggregation "
            f"tasks': {claims.by_task_summary(by_task)}."] if by_task else []),
        "", *[f"![{f.stem}](plots/{f.name})" for f in first_figs], ""]
  counts = defaultdict(int)
  for s in status:
    counts[s["state"]] += 1
  md.append(f"{len(status)} runs: " + ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))
            + (f"; wall time {wall_s:.0f} s" if wall_s is not None else "") + ".")
  # A study run in pieces has no one call's wall time: the runs' own records add up to it.
  train_s = [s["train_wall_s"] for s in status if s.get("train_wall_s") is not None]
  eval_s = [s["eval_wall_s"] for s in status if s.get("eval_wall_s") is not None]
  lost = sum(s.get("preempted_wall_s") or 0.0 for s in status)
  if train_s:
    md += ["", f"Run wall times as the runs recorded them (job.json, {len(train_s)} runs): "
               f"{sum(train_s) + sum(eval_s) + lost:.0f} s: training {sum(train_s):.0f} s + "
               f"evaluation {sum(eval_s):.0f} s + preempted attempts {lost:.0f} s (each "
               "includes its compiles)."]
  failed = [s for s in status if s["state"] == "failed"]
  if failed:
    md += ["", "**Failed runs** (not in the results; `python -m experiments status` shows them):"]
    md += [f"- `{s['run_id']}` {s['label']} after {s['attempts']} attempt(s): {s['error']}"
           for s in failed]
  unfinished = [s for s in status if s["state"] not in ("done", "failed")]
  if unfinished:
    md += ["", "**Unfinished runs**: " + ", ".join(f"`{s['run_id']}` {s['label']} ({s['state']})"
                                                     for s in unfinished)]
  if damaged:
    md += ["", "**Unreadable files** (the report uses what is readable):"]
    md += [f"- {note}" for note in damaged]
  if skipped:
    md += ["", "Grid points skipped: " + "; ".join(
        f"{s['size']} {s['pattern']}@{s['sparsity']} budget {s['budget']:.2g}: {s['reason']}"
        for s in skipped)]

  md += ["", *statistics(points, joined, len(rows))]
  md += ["", *claims.markdown(verdicts, (c_train_comps, c_train_trends),
                             (c_inf_comps, c_inf_trends), joined > 0, _table)]
  md += ["", *claims.sensitivity_markdown(sensitivity, margin, _table)]
  md += ["", *claims.by_task_markdown(by_task, task_tol, category_of, _table)]
  if task_fig:
    md += ["", f"![{task_fig.stem}](plots/{task_fig.name})"]
  md += ["", *isoflop.markdown(models, optimal, _table)]
  md += ["", "## Does a larger sparse model beat a smaller dense one at equal compute?", "",
         f"Test: one-sided {compare.WELCH} on per-question exact match (two models: unpaired), "
         f"alpha={ALPHA}, pooled over a category's tasks, both directions; p-values "
         "Holm-adjusted across the family of a category's answer: both directions of every pair "
         "of that category at that compute matching. \"too weak to tell\" "
         "when neither model is significantly above chance (binomial test against the task's "
         "chance rate), since then a comparison would only compare noise.", "",
         "**Equal training compute** (the grid's matching): a larger model trained sparse "
         "(evaluated with its training attention) vs a smaller dense model, same FLOP budget.", ""]
  md += answer(train_comps, cats, "training")
  md += ["", "**Equal inference compute**: same training budget, and the larger model evaluated "
         "with sparse attention at inference FLOPs per token no higher than the smaller dense "
         "model's.", ""]
  md += answer(comps, cats, "inference")
  for title, cs in (("equal training compute", train_comps), ("equal inference compute", comps)):
    if not cs:
      continue
    md += ["", f"Pairs at {title}:", "", _table(
        ["category", "T", "phase", "budget", "dense (smaller)", "acc", "sparse (larger)", "acc",
         "FLOPs/tok d→s", "p (sparse > dense, Holm)", "verdict"],
        [[c["category"], c["eval_length"], c["phase"], c["budget"], c["dense"], c["dense_acc"],
          c["sparse"], c["sparse_acc"], f"{c['dense_flops']:.3g}→{c['sparse_flops']:.3g}",
          c["p"], c["verdict"]] for c in cs])]

  md += ["", "## Accuracy at the training length (dense eval)", ""]
  md += [_table(["model", "category", "T", "exact match", "95% interval", "n", "chance",
                 "above chance?"],
                [[p["run_label"], p["category"], p["eval_length"], p["arm"].mean,
                  f"[{p['ci'][0]:.2f}, {p['ci'][1]:.2f}]", p["arm"].n, p["chance"],
                  "yes" if stats.above_chance(p["arm"], p["chance"], ALPHA) else "no (too weak)"]
                 for p in points if p["eval_setting"] == "dense" and p["phase"] == "prefill"
                 and p["eval_length"] == p["train_seq_len"]])]

  tol_tests = set().union(*(t["tests"] for t in tol), set())
  md += ["", "## Sparsity tolerance", "",
         "Largest inference sparsity (element level) whose accuracy is not significantly below "
         "the same model evaluated dense"
         + (f" by more than the study's margin of {margin:g} (accuracy per question: a smaller "
            "drop is tolerated however many questions show it)" if margin else "")
         + f" (one-sided, alpha {ALPHA}, monotone: the first significant drop ends it). Test: "
         + (f"{compare.named(tol_tests)} (column \"test\")" if tol_tests else
            "none run (every curve is too weak to tell)")
         + "; a tolerance is one verdict, so its p-values are Holm-adjusted across its family: "
         "the curve's sparsities (one model, category, length, phase and pattern). \"—\": too "
         "weak to tell — the model evaluated dense is not significantly above chance, or so "
         "little above it that even a fall to chance at every sparsity would not be a "
         "significant drop (by the curve's test, after its correction). Compression c = "
         "1/(1 − sparsity), the setting's nominal one where it names it (blocks and adaptive "
         "budgets: the achieved one, \"ladder\" no); its 95% interval is a percentile bootstrap "
         f"({tl.RESAMPLES} resamples, fixed seed) recomputing the tolerance on resampled "
         + ("contexts of the paired outcomes (dense and every level together)" if joined else
            "questions, each arm on its own (no outcomes: unpaired)")
         + ". \"levels\": the compressions tested.", ""]
  md += [_table(["model", "category", "T", "phase", "pattern", "dense acc", "n", "tolerance",
                 "compression [95%]", "levels", "ladder", "test"],
                [[t["label"], t["category"], t["eval_length"], t["phase"], t["pattern"],
                  t["dense_acc"], t["n"], "—" if t["weak"] else t["tolerance"],
                  "—" if t["weak"] else
                  f"{t['compression']:.3g} [{t['ci'][0]:.3g}, {t['ci'][1]:.3g}]",
                  ", ".join(f"{c:.3g}" for c in t["levels"]), "yes" if t["ladder"] else "no",
                  _short(t["tests"])] for t in tol])]

  md += ["", *budgets.markdown(budget_rows, _table)]

  md += ["", "## Pareto frontier (accuracy vs inference FLOPs per token)", ""]
  front_rows = []
  for cat, length, phase in sorted({(p["category"], p["eval_length"], p["phase"]) for p in points}):
    ps = [p for p in points if (p["category"], p["eval_length"], p["phase"]) == (cat, length, phase)]
    on = fr.pareto([(p["inference_flops_per_token"], p["arm"].mean) for p in ps])
    front = sorted((p for p, o in zip(ps, on) if o), key=lambda p: p["inference_flops_per_token"])
    front_rows.append([cat, length, phase, "; ".join(
        f"{p['label']} ({p['inference_flops_per_token']:.3g}, {p['arm'].mean:.2f})"
        for p in front)])
  md += [_table(["category", "T", "phase", "on the frontier: model eval setting (FLOPs/tok, acc)"],
                front_rows)]

  md += ["", "## Log-linear fit of error", ""]
  if fit is not None:
    md.append("log(error) = " + " + ".join(f"{v:.3f}·{k}" for k, v in fit.coef.items())
              + f"; R² {fit.r2_train:.2f} on {fit.n_train} points, held-out R² "
              + (f"{fit.r2_heldout:.2f}" if fit.r2_heldout is not None else "n/a")
              + f" on {fit.n_heldout} (every 4th point held out; compression = 1/(1-sparsity)).")
    if fit.ci:
      md.append("95% intervals (OLS, the points taken as independent, which they are not: "
                "one model's points share it): " + ", ".join(
                    f"{k} [{lo:.3f}, {hi:.3f}]" for k, (lo, hi) in fit.ci.items()) + ".")
  else:
    md.append(f"Not fitted: {len(fit_pts)} points (needs >= 8).")

  md += ["", "## Runs", ""]
  md += [_table(["run", "model", "state", "steps", "train FLOPs", "budget", "residual/budget",
                 "attempts"],
                [[f"`{s['run_id']}`", s["label"], s["state"], f"{s['step']}/{s['steps']}",
                  s["train_flops"], s["budget"], (s["train_flops"] - s["budget"]) / s["budget"],
                  s["attempts"]] for s in status])]
  if probe_dirs:  # runs probed for their own activation sparsity (issue 21)
    lines, probe_figs = activation.section_from_dirs(probe_dirs, plot_dir, link="plots/")
    md += ["", *lines]
    figs += probe_figs
  md += ["", "## Plots", ""] + [f"![{f.stem}](plots/{f.name})" for f in figs]
  md += ["", f"Data: `results.csv` ({len(rows)} rows: run × eval setting × task × length × "
         "phase)."]
  path = out / "report.md"
  files.write_text(path, "\n".join(md) + "\n")
  return path, figs
