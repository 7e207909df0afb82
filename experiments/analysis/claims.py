"""The Sparse Frontier's four claims (Nawrot et al. 2025), tested on a study's report points:

(a) retrieval tolerates more sparsity than multi-hop and aggregation;
(b) longer contexts tolerate more;
(c) at equal cost, a larger sparse model beats a smaller dense one;
(d) decoding tolerates more than prefill.

(a), (b), (d) compare tolerances (`tolerance.curves`, in log2 compression: one step is a
doubling) of cells that differ in one thing only — the category, the length, the phase — and
test the median difference with the exact sign test across the cells (ties dropped), with the
distribution-free interval of the median. (c) compares the best sparse and the best dense model
of each training budget per category (`isoflop.difference`: paired by question, the models
being scored on the same examples), and fits each category's gap across budgets
(`isoflop.trend`), leaving out ties at the ceiling (`isoflop.category_gaps`).

Each claim is a family: its comparisons, each tested both ways, Holm-adjusted together. A
comparison is "reproduced" when the claimed direction is significant, "refuted" when the
opposite one is, or (tolerance comparisons) when the claimed direction is rare: it shows in
significantly fewer than half of the cells that could show it (a binomial test against 1/2 with
ties counted against the claim, which says the first tolerates *more*; a tie with both at the top
of their ladder is censored and left out). That test joins the family. When the claimed direction
is both significant and rare (the cells mostly tie, and where they differ they go the claimed
way) the verdict stays "reproduced" and its reason says "yet rare", with the count. Otherwise "not
resolvable here" with the reason: no measurable cell (the models sit at or near chance), too few
cells for the test to ever reach significance, every cell a tie, or an interval that spans zero.
A claim is reproduced when all its comparisons are, refuted when some are refuted and none
reproduced, and otherwise not resolvable here, saying why.

Only curves on a fixed compression ladder (static patterns, fixed-density content budgets) and
lengths within the model's training length enter (a), (b), (d): a length-adaptive budget
compresses each length differently, and past the training length a model extrapolates.
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter, defaultdict
from typing import Any, Callable

import numpy as np

from experiments import stats
from experiments.analysis import compare, isoflop
from experiments.stats import ALPHA

REPRODUCED, REFUTED, UNRESOLVED = "reproduced", "refuted", "not resolvable here"
SIGN = "exact sign test over cells"
LOG2 = "Δlog2 compression"
ACC = "Δ accuracy"
OTHERS = ("multihop", "aggregation")


@dataclasses.dataclass(frozen=True)
class Finding:
  """One comparison of a claim. `effect` and `ci` in `unit`; `p_for`/`p_against`: one-sided
  p-values of the claimed and the opposite direction (Holm-adjusted after `decide`); `untied`:
  cells that are not ties (sign tests), which bounds the smallest p the test can give."""

  claim: str
  what: str
  unit: str
  test: str = ""
  effect: float | None = None
  ci: tuple[float, float] | None = None
  n: int = 0
  untied: int | None = None
  signs: str = ""  # sign tests: "5+ 1− 2=", cells up, down and tied
  detail: str = ""
  p_for: float | None = None
  p_against: float | None = None
  p_rare: float | None = None  # sign tests: the claimed direction in at most half of `could`
  could: int | None = None  # cells that could show the claimed direction (not censored ties)
  up: int | None = None  # sign tests: cells that show it
  untestable: str = ""  # why there is nothing to test (set before `decide`)
  verdict: str = ""
  yet_rare: bool = False  # reproduced, and the claimed direction also significantly rare
  why: str = ""    # the verdict's reason (the findings table, beside the numbers)
  short: str = ""  # the same in a few words (the verdict table)


@dataclasses.dataclass(frozen=True)
class Claim:
  key: str
  text: str
  verdict: str
  why: str
  findings: tuple[Finding, ...]
  note: str = ""  # what else the section shows (the log-linear fit, the trend)


def _fmt(v: float) -> str:
  return "−∞" if v == -math.inf else "∞" if v == math.inf else f"{v:+.3g}"


def effect_text(f: Finding) -> str:
  if f.effect is None:
    return "—"
  ci = f" [{_fmt(f.ci[0])}, {_fmt(f.ci[1])}]" if f.ci else ""
  return f"{_fmt(f.effect)}{ci}"


def min_untied(family: int, alpha: float = ALPHA) -> int:
  """Fewest untied cells with which a one-sided sign test can reach alpha / family (Holm's
  first threshold): all m of one sign gives p = 2**-m."""
  return math.floor(math.log2(family / alpha)) + 1


def decide(findings: list[Finding], alpha: float = ALPHA) -> list[Finding]:
  """Holm across the family (both directions of every testable comparison, and its rarity test
  where it has one), then each comparison's verdict and its reason in words."""
  tested = [f for f in findings if not f.untestable]
  rare = [f for f in tested if f.p_rare is not None]
  adjusted = stats.holm([f.p_for for f in tested] + [f.p_against for f in tested]
                        + [f.p_rare for f in rare])
  p_adj = {id(f): (a, b) for f, a, b in zip(tested, adjusted, adjusted[len(tested):])}
  p_rare = {id(f): p for f, p in zip(rare, adjusted[2 * len(tested):])}
  family = len(adjusted)
  out = []
  for f in findings:
    if f.untestable:
      out.append(dataclasses.replace(f, verdict=UNRESOLVED, why=f.untestable,
                                     short=f.untestable))
      continue
    p_for, p_against = p_adj[id(f)]
    f = dataclasses.replace(f, p_for=p_for, p_against=p_against, p_rare=p_rare.get(id(f)))
    brief = effect_text(f) + (f" ({f.signs})" if f.signs else "")
    yet_rare = False
    if p_for < alpha:
      verdict, why = REPRODUCED, "the claimed direction is significant"
      short = f"{brief}, Holm p {p_for:.2g}"
      yet_rare = f.p_rare is not None and f.p_rare < alpha
      if yet_rare:  # both: the direction holds, but seldom
        why += (f" where the cells differ, yet rare: it shows in {f.up} of the {f.could} cells "
                "that could show it, significantly fewer than half (the rest mostly tie)")
        short += f"; yet rare: {f.up} of {f.could} cells, Holm p {f.p_rare:.2g}"
    elif p_against < alpha:
      verdict, why = REFUTED, "the opposite direction is significant"
      short = f"the opposite holds: {brief}, Holm p {p_against:.2g}"
    elif f.p_rare is not None and f.p_rare < alpha:
      verdict, why = REFUTED, (
          f"the claimed direction is rare: {f.up} of the {f.could} cells that could show it "
          "(ties count against it; ties at the top of the ladder are left out), significantly "
          "fewer than half")
      short = f"rare: {f.up} of {f.could} cells, Holm p {f.p_rare:.2g}"
    elif f.untied == 0:
      verdict, why = UNRESOLVED, f"every one of {f.n} cells ties ({f.unit} = 0)"
      short = f"all {f.n} cells tie"
    elif f.untied is not None and f.untied < min_untied(family, alpha):
      verdict, why = UNRESOLVED, (
          f"too few cells: {f.untied} untied of {f.n}; the sign test needs >= "
          f"{min_untied(family, alpha)} to reach alpha {alpha} after Holm over {family} tests")
      short = f"too few cells: {f.untied} untied, needs >= {min_untied(family, alpha)}"
    elif f.ci is None or f.ci[0] <= 0 <= f.ci[1]:
      verdict, why = UNRESOLVED, "interval spans zero; neither direction is significant"
      short = f"interval spans zero: {brief}"
    else:  # the interval is one comparison's, the test's threshold the family's
      verdict, why = UNRESOLVED, (
          f"not significant after Holm over the claim's {family} tests (the 95% interval, "
          "not corrected for the family, excludes zero)")
      short = (f"not significant after Holm: {brief}, "
               f"p {min(p_for, p_against):.2g}")
    out.append(dataclasses.replace(f, verdict=verdict, why=why, short=short, yet_rare=yet_rare))
  return out


def verdict(key: str, text: str, findings: list[Finding], note: str = "") -> Claim:
  """A claim's verdict from its decided comparisons (the rule in the module docstring)."""
  v = Counter(f.verdict for f in findings)
  tell = lambda fs: "; ".join(f"{f.what}: {f.verdict} ({f.short or f.why})" for f in fs)
  if findings and v[REPRODUCED] == len(findings):
    return Claim(key, text, REPRODUCED, tell(findings), tuple(findings), note)
  if v[REFUTED] and not v[REPRODUCED]:
    return Claim(key, text, REFUTED, tell(findings), tuple(findings), note)
  if v[REFUTED]:
    why = "mixed: " + tell(findings)
  else:
    why = tell(findings) or "nothing to compare"
  return Claim(key, text, UNRESOLVED, why, tuple(findings), note)


# ------------------------------------------------------------------- tolerance differences
def usable(tol: list[dict[str, Any]], phase: str | None = "prefill") -> list[dict[str, Any]]:
  """The tolerance rows the claims compare: on a fixed compression ladder, within the model's
  training length, of `phase` (None: both)."""
  return [t for t in tol if t["ladder"] and t["eval_length"] <= t["train_seq_len"]
          and (phase is None or t["phase"] == phase)]


def log2c(t: dict[str, Any]) -> float:
  return math.log2(t["compression"])


def paired_difference(claim: str, what: str, pairs: list[tuple[dict, dict]],
                      nothing: str) -> Finding:
  """Finding of first minus second tolerance over cells; `pairs` holds every cell where both
  rows exist (weak ones included: the count of cells dropped as too weak is part of the why).
  `nothing`: the reason when no cell pairs at all."""
  if not pairs:
    return Finding(claim, what, LOG2, untestable=nothing)
  kept = [(a, b) for a, b in pairs if not a["weak"] and not b["weak"]]
  dropped = len(pairs) - len(kept)
  if not kept:
    return Finding(claim, what, LOG2, n=0, untestable=(
        f"none of {len(pairs)} cells has both tolerances measurable: the dense models are too "
        "weak to tell (at or near chance)"))
  d = np.array([log2c(a) - log2c(b) for a, b in kept])
  pos, neg = int((d > 0).sum()), int((d < 0).sum())
  # A tie with both at the top of their ladder could hide any difference (censored), so it
  # cannot show the claimed direction; every other tie shows it absent.
  top = lambda t: t["compression"] >= max(t["levels"])
  shows = np.array([x > 0 for (a, b), x in zip(kept, d) if not (x == 0 and top(a) and top(b))],
                   bool)
  # The median of a ladder's differences is often a tie (0) even where the untied cells all
  # lean one way: the counts and the mean say how far they lean.
  return Finding(claim, what, LOG2, SIGN, effect=float(np.median(d)),
                 ci=stats.median_interval(d), n=len(d), untied=pos + neg,
                 signs=f"{pos}+ {neg}− {len(d) - pos - neg}=",
                 detail=f"{pos}+ {neg}− {len(d) - pos - neg}= of {len(d)} cells, mean "
                 f"{d.mean():+.2f}"
                 + (f", {dropped} more too weak to tell" if dropped else ""),
                 p_for=stats.sign_test(d, "greater").p, p_against=stats.sign_test(d, "less").p,
                 # shown against not shown (ties included): rare if significantly "less"
                 p_rare=stats.paired_greater(shows, ~shows, "less").p, could=len(shows),
                 up=pos)


def _index(rows: list[dict[str, Any]], key: Callable[[dict], tuple]) -> dict[tuple, dict]:
  return {key(t): t for t in rows}


def claim_a(tol: list[dict[str, Any]]) -> Claim:
  """(a) per (model, length, pattern) cell in prefill: retrieval's tolerance minus each other
  category's."""
  rows = usable(tol)
  cell = lambda t: (t["run_id"], t["eval_length"], t["pattern"])
  by_cat = {c: _index([t for t in rows if t["category"] == c], cell)
            for c in ("retrieval", *OTHERS)}
  findings = []
  for other in OTHERS:
    pairs = [(by_cat["retrieval"][k], by_cat[other][k]) for k in sorted(by_cat["retrieval"])
             if k in by_cat[other]]
    findings.append(paired_difference(
        "a", f"retrieval − {other}", pairs,
        f"no cell with both retrieval and {other} tolerance curves (prefill, fixed-compression "
        "patterns, within the training length)"))
  return verdict("a", "retrieval tolerates more sparsity than multi-hop and aggregation",
                 decide(findings))


def claim_b(tol: list[dict[str, Any]], note: str = "") -> Claim:
  """(b) per category, per (model, pattern) in prefill: tolerance at the model's longest eval
  length within its training length minus at its shortest."""
  rows = usable(tol)
  findings = []
  for cat in sorted({t["category"] for t in tol}):
    cells: dict[tuple, dict[int, dict]] = defaultdict(dict)
    for t in rows:
      if t["category"] == cat:
        cells[(t["run_id"], t["pattern"])][t["eval_length"]] = t
    pairs, spans = [], Counter()
    for k in sorted(cells):
      lengths = sorted(cells[k])
      if len(lengths) >= 2:
        pairs.append((cells[k][lengths[-1]], cells[k][lengths[0]]))
        spans[(lengths[-1], lengths[0])] += 1
    lengths = sorted({t["eval_length"] for t in rows if t["category"] == cat})
    what = (f"{cat}: T={spans.most_common(1)[0][0][0]} − T={spans.most_common(1)[0][0][1]}"
            if spans else f"{cat}: longest − shortest T")
    findings.append(paired_difference(
        "b", what, pairs, f"too few lengths: evaluated within the training length only at "
        f"T={lengths}" if lengths else "no prefill curve within the training length"))
  return verdict("b", "longer contexts tolerate more sparsity", decide(findings), note)


def claim_d(tol: list[dict[str, Any]]) -> Claim:
  """(d) per (model, category, length, pattern): decode tolerance minus prefill tolerance."""
  rows = usable(tol, None)
  cell = lambda t: (t["run_id"], t["category"], t["eval_length"], t["pattern"])
  pre = _index([t for t in rows if t["phase"] == "prefill"], cell)
  dec = _index([t for t in rows if t["phase"] == "decode"], cell)
  pairs = [(dec[k], pre[k]) for k in sorted(pre) if k in dec]
  f = paired_difference("d", "decode − prefill", pairs,
                        "no cell evaluated in both phases (prefill and decode)")
  return verdict("d", "decoding tolerates more sparsity than prefill", decide([f]))


# ------------------------------------------------------------------------- (a) task by task
def short_names(tasks: list[str]) -> dict[str, str]:
  """Each task spec's name without its arguments ("niah_single(questions=8)" -> "niah_single")
  where that name is unique among `tasks`, else the whole spec."""
  base = Counter(t.split("(")[0] for t in tasks)
  return {t: t.split("(")[0] if base[t.split("(")[0]] == 1 else t for t in tasks}


def _tasks_of(category_of: dict[str, str], cats: tuple[str, ...]) -> list[str]:
  """The task specs of `cats`, in the order of `cats`, then by spec."""
  return sorted((t for t in category_of if category_of[t] in cats),
                key=lambda t: (cats.index(category_of[t]), t))


def claim_a_by_task(tol: list[dict[str, Any]], category_of: dict[str, str]
                    ) -> dict[tuple[str, str], Finding]:
  """(a) read task by task, a secondary reading that leaves the claim's verdict alone: the
  published claim is about single-question retrieval, and a category pools tasks that need one
  needle and tasks that need several. `tol`: tolerance rows whose `category` is a task spec
  (the report's `tolerance.curves` over points pooled per task); `category_of`: task spec -> its
  category. Per (model, length,
  pattern) cell in prefill, each retrieval task's tolerance minus each multi-hop and aggregation
  task's, as `claim_a` compares categories; all of them one family (Holm). Keyed by (retrieval
  task, other task) spec, in order."""
  rows = usable(tol)
  cell = lambda t: (t["run_id"], t["eval_length"], t["pattern"])
  by_task = {task: _index([t for t in rows if t["category"] == task], cell)
             for task in category_of}
  name = short_names(sorted(category_of))
  keys = [(r, o) for r in _tasks_of(category_of, ("retrieval",))
          for o in _tasks_of(category_of, OTHERS)]
  findings = [paired_difference(
      "a, by task", f"{name[r]} − {name[o]}",
      [(by_task[r][k], by_task[o][k]) for k in sorted(by_task[r]) if k in by_task[o]],
      f"no cell with both {name[r]} and {name[o]} tolerances") for r, o in keys]
  return dict(zip(keys, decide(findings)))


def by_task_markdown(findings: dict[tuple[str, str], Finding], tol: list[dict[str, Any]],
                     category_of: dict[str, str], table: Callable[..., str]) -> list[str]:
  """The report's section for `claim_a_by_task`: each task's typical tolerance per length, the
  retrieval × other-task verdicts as a matrix, and the comparisons in full."""
  name = short_names(sorted(category_of))
  rows = [t for t in usable(tol) if not t["weak"]]
  lengths = sorted({t["eval_length"] for t in rows})
  tasks = _tasks_of(category_of, ("retrieval", *OTHERS))

  def typical(task, length):
    c = [log2c(t) for t in rows if t["category"] == task and t["eval_length"] == length]
    return f"{2 ** np.mean(c):.3g}× ({len(c)})" if c else "—"
  md = ["## (a) task by task (secondary)", "",
        "The claim names single-question retrieval; the study's retrieval category pools needle "
        "tasks whose question needs one needle with tasks that need several (one key bound to "
        "several values, several keys asked), and its aggregation pools words that occur a few "
        "times each (common_words) with the top ranks of a Zipf law over much of the context "
        "(frequent_words), whose order a subset of the context may keep. So the tolerances "
        "are also read task by task: the same tolerance test (margin, Holm over each curve) "
        "with each task as its own category, no bootstrap interval. This reading was added "
        "to the report after the h200 study's category verdicts were seen (session 21), so "
        "it was not planned ahead and does not change (a)'s verdict; its p-values are "
        "Holm-adjusted over its own family (every comparison below, both directions and the "
        "rarity test).", "",
        "Typical tolerated compression per task (prefill, fixed ladders, within the training "
        "length): the geometric mean over cells (model × pattern), cells in brackets.", "",
        table(["task", "category", *(f"T={n}" for n in lengths)],
              [[name[t], category_of[t], *(typical(t, n) for n in lengths)] for t in tasks]),
        ""]
  if not findings:
    return md + ["No retrieval task and other task to compare."]
  others = [t for t in tasks if category_of[t] in OTHERS]
  md += ["Retrieval task (row) minus other task (column) in log2 tolerated compression, per "
         f"(model, length, pattern) cell: verdict (cells up, down, tied), {SIGN}.", "",
         table(["retrieval task", *(name[o] for o in others)],
               [[name[r], *(_matrix_cell(findings[r, o]) for o in others)]
                for r in tasks if category_of[r] == "retrieval"]), "",
         findings_table([Claim("a, by task", "", "", "", tuple(findings.values()))], table)]
  return md


def by_task_summary(findings: dict[tuple[str, str], Finding]) -> str:
  """One clause per retrieval task for under the verdict table: the other categories' tasks it
  tolerates more sparsity than (reproduced), not more than (refuted: the opposite holds, or the
  claimed direction is rare), and those left unresolved."""
  name = short_names(sorted({t for pair in findings for t in pair}))
  per: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
  for (task, other), f in findings.items():
    per[name[task]][f.verdict].append(name[other] + (" (yet rare)" if f.yet_rare else ""))
  said = ((REPRODUCED, "more than"), (REFUTED, "not more than"), (UNRESOLVED, "unresolved"))
  return "; ".join(f"{task}: " + ", ".join(f"{word} {' and '.join(v[key])}"
                                           for key, word in said if v[key])
                   for task, v in per.items())


def _matrix_cell(f: Finding) -> str:
  rare = ", yet rare" if f.yet_rare else ""
  return f"{f.verdict}{rare} ({f.signs})" if f.signs else f.verdict


# ------------------------------------------------------------------- margin sensitivity
SENSITIVITY_MARGINS = (0.0, 0.02, 0.03, 0.05)  # accuracy per question


def sensitivity_markdown(rows: list[tuple[float, list[Claim]]], margin: float,
                         table: Callable[..., str]) -> list[str]:
  """(a), (b), (d) again at other tolerance margins, `rows` [(margin, [claims])]: whether a
  verdict rests on the study's choice of margin."""
  if not rows:
    return []
  keys = [c.key for c in rows[0][1]]
  cell = lambda c: f"**{c.verdict}**: " + "; ".join(
      f"{f.what} {f.verdict}" + (f" ({f.signs})" if f.signs else "") for f in c.findings)
  return ["**Verdicts at other tolerance margins.** The tolerance comparisons (a), (b), (d) "
          "redone with point tolerances (no bootstrap) at each margin; the study's own is "
          f"{margin:g}. A verdict that changes across the rows rests on that choice.", "",
          table(["margin", *(f"({k})" for k in keys)],
                [[f"{m:g}" + (" (the study's)" if m == margin else ""), *map(cell, claims)]
                 for m, claims in rows])]


# ----------------------------------------------------------------------- (c) larger sparse
def comparisons(points: list[dict[str, Any]], match: str) -> list[dict[str, Any]]:
  """Per training budget, the best dense model (pooled accuracy, `isoflop.best`) against a
  sparse arm, per category. `match` "training": the best sparse-trained model with its own
  attention (the grid matched training FLOPs). "inference": the paper's claim, which is about
  a larger model run sparse whatever it was trained with: of the models larger than the best
  dense one that have a sparse setting within its inference FLOPs per token, the best by its
  own headline accuracy (chosen before any sparse score is looked at), at the setting of
  `isoflop.inference_match`. Entries without `per_category` say why in `why`."""
  out = []
  for budget, ms in isoflop.by_budget(isoflop.models(points)).items():
    d = isoflop.best([m for m in ms if not m["sparse"]])
    found = {}  # run_id -> the inference match of a larger model
    if match == "training" or d is None:
      s = isoflop.best([m for m in ms if m["sparse"]])
    else:
      for m in ms:
        if m["params"] > d["params"] and (hit := isoflop.inference_match(points, m, d)):
          found[m["run_id"]] = hit
      s = isoflop.best([m for m in ms if m["run_id"] in found])
    entry = dict(budget=budget, dense=d, sparse=s, setting=None, per_category=None, why="")
    if d is None or s is None:
      entry["why"] = ("no dense model at this budget" if d is None else
                      "no sparse-trained model at this budget" if match == "training" else
                      f"no model larger than {d['label']} has a sparse setting as cheap as it "
                      "(inference FLOPs per token)")
      out.append(entry)
      continue
    if match == "training":
      setting, arms = "native", s["categories"]
    else:
      setting, arms = found[s["run_id"]]
    entry["setting"] = setting
    entry["per_category"] = {c: (arms[c], d["categories"][c])
                             for c in sorted(arms) if c in d["categories"]}
    out.append(entry)
  return out


def claim_c(points: list[dict[str, Any]], match: str) -> tuple[Claim, list[dict[str, Any]],
                                                                   dict[str, Any]]:
  """(c) at one matching: the claim, the per-budget comparisons and the trend of the gap."""
  comps = comparisons(points, match)
  tag = f"c, {match}"
  findings = []
  for c in comps:
    if c["per_category"] is None:
      findings.append(Finding(tag, f"budget {c['budget']:.2g}", ACC, untestable=c["why"]))
      continue
    for cat, (s, d) in c["per_category"].items():
      what = f"{cat} @ {c['budget']:.2g}"
      arms = f"{s['run_label']} ({c['setting']}) − {d['run_label']}: "
      if not (stats.above_chance(s["arm"], s["chance"], ALPHA)
              or stats.above_chance(d["arm"], d["chance"], ALPHA)):
        findings.append(Finding(tag, what, ACC, untestable=(
            "too weak to tell: neither model is significantly above chance")))
        continue
      r = isoflop.difference(s, d)
      larger = "" if c["sparse"]["params"] > c["dense"]["params"] else \
          "; the best sparse model is not larger than the best dense one"
      findings.append(Finding(tag, what, ACC, r["test"], effect=r["diff"], ci=r["ci"],
                              n=min(s["arm"].n, d["arm"].n),
                              detail=f"{arms}{s['arm'].mean:.3f} vs {d['arm'].mean:.3f}, "
                              f"n={s['arm'].n}{larger}",
                              p_for=r["p_greater"], p_against=r["p_less"]))
  if not comps:
    findings.append(Finding(tag, "all budgets", ACC,
                            untestable="no model evaluated natively at its training length"))
  trends = {cat: isoflop.trend(g) for cat, g in isoflop.category_gaps(comps).items()}
  text = ("at equal training FLOPs, the best sparse-trained model beats the best dense one"
          if match == "training" else
          "at equal inference FLOPs per token, a larger model run sparse beats the best dense "
          "one")
  note = ("Trend of the gap over budgets, per category (budgets where both models are within "
          f"{isoflop.CEILING:g} of perfect left out): "
          + ("; ".join(f"{cat}: {tr['why']}" for cat, tr in trends.items()) or "no comparison")
          + ".")
  return verdict("c", text, decide(findings), note), comps, trends


# ------------------------------------------------------------------------------- markdown
def verdict_table(claims: list[Claim], table: Callable[..., str]) -> list[str]:
  """The table under the report's title: one row per claim."""
  return [table(["claim", "verdict", "why: per comparison, effect [95% interval] (cells up, down, "
                 "tied) and Holm-adjusted p, or what stops it"],
                [[f"({c.key}) {c.text}", f"**{c.verdict}**",
                  c.why + (f" {c.note}" if c.note else "")] for c in claims])]


def findings_table(claims: list[Claim], table: Callable[..., str]) -> str:
  rows = []
  for c in claims:
    for f in c.findings:
      rows.append([f"({f.claim})", f.what, f.unit, effect_text(f), f.test or "—",
                   f.detail or "—",
                   "—" if f.p_for is None else f"{f.p_for:.3g}",
                   "—" if f.p_against is None else f"{f.p_against:.3g}",
                   "—" if f.p_rare is None else f"{f.p_rare:.3g} ({f.could} cells)",
                   f.verdict, f.why])
  return table(["claim", "comparison", "unit", "effect [95% interval]", "test", "cells / arms",
                "p for (Holm)", "p against (Holm)", "p rare (Holm)", "verdict", "why"], rows)


def markdown(verdicts: list[Claim], c_train: tuple[list, dict[str, dict]],
             c_inf: tuple[list, dict[str, dict]],
             paired: bool, table: Callable[..., str]) -> list[str]:
  """The claims' comparisons in full, the (c) pairs per budget and the trends."""
  md = ["## The claims in detail", "",
        "Tolerance: the largest compression c = 1/(1 − sparsity) whose accuracy is not "
        "significantly below the same model evaluated dense (section \"Sparsity tolerance\"). "
        "(a), (b), (d) compare tolerances in log2 compression (+1: one doubling more) between "
        "cells that differ in one thing — (a) the category, per (model, length, pattern) in "
        "prefill; (b) the length, longest vs shortest within the training length, per (model, "
        "pattern) in prefill; (d) the phase, per (model, category, length, pattern) — and only "
        "on fixed compression ladders within the training length. Effect: the median "
        f"difference with its distribution-free 95% interval; test: the {SIGN} (ties dropped; "
        "cells of one model are not independent, so read p as approximate). (c) compares per "
        "category the best sparse-trained and the best dense model of a budget (best: pooled "
        "accuracy at the training length, prefill, own attention), by the difference of their "
        "accuracies: "
        + (f"{compare_text(True)}." if paired else f"{compare_text(False)}.")
        + " Family: a claim's comparisons, both directions each, Holm-adjusted together; "
        "\"p for\" is the claimed direction. \"p rare\" (tolerance comparisons, in the family "
        "too): that the claimed direction shows in at most half of the cells that could show "
        "it, ties counted against the claim except ties at the top of the ladder (censored); "
        "significant, it refutes the claim. Cells where a dense model is too weak to tell "
        "(at or near chance) have no tolerance and drop out; a claim with nothing left is not "
        "resolvable here.", ""]
  md.append(findings_table(verdicts, table))
  arms = {"equal training FLOPs": ("the best sparse-trained model", "best sparse-trained"),
          "equal inference FLOPs": ("the best larger model run sparse (its own accuracy "
                                    "picks it)", "larger model run sparse")}
  for title, (comps, trends) in (("equal training FLOPs", c_train),
                                 ("equal inference FLOPs", c_inf)):
    what, column = arms[title]
    md += ["", f"**(c) at {title}**: per budget, the best dense model and {what}", ""]
    rows = []
    for c in comps:
      d, s = c["dense"], c["sparse"]
      flops = (f"{next(iter(c['per_category'].values()))[0]['inference_flops_per_token']:.3g} "
               f"vs {d['inference_flops_per_token']:.3g}") if c["per_category"] else "—"
      rows.append([f"{c['budget']:.2g}", d["label"] if d else "—",
                   f"{d['arm'].mean:.3f}" if d else "—", s["label"] if s else "—",
                   f"{s['arm'].mean:.3f}" if s else "—", c["setting"] or "—", flops,
                   c["why"] or "compared"])
    md.append(table(["budget", "best dense", "pooled acc", column, "pooled acc",
                     "sparse eval setting", "inference FLOPs/tok sparse vs dense", "note"], rows)
              if rows else "No budget with models evaluated at their training length.")
    if not trends:
      md += ["", "Where the trend points: no budget has a comparison."]
      continue
    md += ["", f"Where the trend points, per category (gap sparse − dense per budget; budgets "
           f"where both models are within {isoflop.CEILING:g} of perfect left out):", ""]
    for cat, tr in trends.items():
      gaps = ", ".join(f"{b:.2g}: {g:+.3f}" for b, g in zip(tr["budgets"], tr["gap"]))
      slope = (f"; slope {tr['slope']:+.3g} per decade [{tr['slope_ci'][0]:+.3g}, "
               f"{tr['slope_ci'][1]:+.3g}]" if tr["slope"] is not None else "")
      md.append(f"- {cat}: {gaps or 'no budget below the ceiling'}{slope}. {tr['why']}.")
  return md


def compare_text(paired: bool) -> str:
  if paired:
    return ("the models are scored on the same test examples (same seed, split and lengths), "
            f"so the comparison is paired by question: {compare.PAIRED} over contexts, interval "
            "a paired bootstrap over contexts")
  return (f"no per-question outcomes, so unpaired: {compare.WELCH} both ways, Newcombe's "
          "interval of the difference")
