"""The report's figures: tolerance curves, the frontier with its Pareto front, iso-FLOP curves,
training curves.

matplotlib is imported inside `plt_module` only: a report without plots needs none of it.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from experiments import stats
from experiments.analysis import frontier as fr
from experiments.analysis import tolerance as tl
from experiments.stats import ALPHA


def plt_module():
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  return plt


def accuracy_top(values) -> float:
  """Top of an accuracy axis: just above the data, so small models' accuracies are not a flat
  band at the bottom of 0..1."""
  return min(1.02, max(0.1, 1.15 * max(values, default=1.0)))


def colours(labels: list[str]) -> dict[str, Any]:
  """One colour per label, the same in every panel: tab10 for up to ten labels, tab20 beyond."""
  palette = plt_module().get_cmap("tab10" if len(labels) <= 10 else "tab20")
  return {lab: palette(i % palette.N) for i, lab in enumerate(labels)}


def short_label(label: str) -> str:
  """"300k/local@0.5/4e+12/T128" -> "300k/local@0.5": a run's size and training attention."""
  return "/".join(label.split("/")[:2])


def log_x(ax) -> None:
  """A log x axis labelled at its decades only: matplotlib also labels minor ticks when the data
  span less than a decade, and on a narrow panel those labels run into each other."""
  from matplotlib.ticker import NullFormatter
  ax.set_xscale("log")
  ax.xaxis.set_minor_formatter(NullFormatter())


def save(fig, path: Path) -> Path:
  """Every report figure ends the same way: laid out, written at one resolution, closed."""
  fig.tight_layout()
  fig.savefig(path, dpi=110, bbox_inches="tight")  # "tight": legends placed below the axes
  plt_module().close(fig)
  return path


def plot_tolerance(points, path: Path) -> Path | None:
  """Accuracy vs eval sparsity per category (prefill): one line per model × length, for static
  patterns and fixed-density content budgets (adaptive ones have their own plot,
  `budgets.plot`). Only models whose dense accuracy could show a drop (`stats.measurable`)
  are drawn: the others lie on the chance line and would only hide the ones that learnt. One
  colour per model in every panel, one line style per length; the y axis ends above the data
  (small models' accuracies would be a flat band at the bottom of 0..1)."""
  pts = [p for p in points if p["phase"] == "prefill" and p["eval_setting"] != "native"
         and p["eval_budget"] != "adaptive"]
  cats = sorted({p["category"] for p in pts})
  if not cats:
    return None
  lines = defaultdict(list)  # (category, model, length) -> its points
  for p in pts:
    lines[(p["category"], p["run_label"], p["eval_length"])].append(p)

  def measurable(ps):
    dense = [p for p in ps if p["eval_setting"] == "dense"]
    return bool(dense) and stats.measurable(dense[0]["arm"], dense[0]["chance"], ALPHA)

  shown = {key: sorted(ps, key=lambda p: p["eval_target"]) for key, ps in lines.items()
           if measurable(ps)}
  colour = colours(sorted({label for _, label, _ in shown}))
  lengths = sorted({p["eval_length"] for p in pts}, reverse=True)
  style = {t: ("-", "--", ":", "-.")[i % 4] for i, t in enumerate(lengths)}
  plt = plt_module()
  fig, axes = plt.subplots(1, len(cats), figsize=(4.5 * len(cats), 4.8), squeeze=False)
  for ax, cat in zip(axes[0], cats):
    mine = sorted(key for key in shown if key[0] == cat)
    top = 0.0
    for key in mine:
      _, label, length = key
      ps = shown[key]
      y = [p["arm"].mean for p in ps]
      # The points' own 95% intervals (Wilson, or the bootstrap over contexts), which are
      # asymmetric near 0 and 1 where a normal one would cross them.
      err = [[a - p["ci"][0] for a, p in zip(y, ps)], [p["ci"][1] - a for a, p in zip(y, ps)]]
      ax.errorbar([p["eval_target"] for p in ps], y, yerr=err, marker="o", ms=4, capsize=2,
                  color=colour[label], ls=style[length])
      top = max(top, max(p["ci"][1] for p in ps))
    ax.axhline(sum(p["chance"] for p in pts if p["category"] == cat)
               / max(1, sum(p["category"] == cat for p in pts)), color="grey", ls=":", lw=1)
    ax.set(title=f"{cat}: accuracy vs inference sparsity", xlabel="inference sparsity (prefill)",
           ylabel="exact match", ylim=(-0.01, accuracy_top([top])), xlim=(-0.03, 1.0))
    if mine:
      handles = [plt.Line2D([], [], color=colour[lab], marker="o", ms=4, label=lab)
                 for lab in sorted({label for _, label, _ in mine})]
      handles += [plt.Line2D([], [], color="k", ls=style[t], label=f"T={t}") for t in lengths
                  if any(length == t for _, _, length in mine)]
      ax.legend(handles=handles, fontsize=6, loc="upper center", bbox_to_anchor=(0.5, -0.15))
    else:
      weak = sum(key[0] == cat for key in lines)
      ax.text(0.5, 0.5, f"no model measurably\nabove chance ({weak} too weak)",
              ha="center", va="center", transform=ax.transAxes, fontsize=9, color="grey")
  return save(fig, path)


def plot_frontier(points, path: Path) -> Path | None:
  """Accuracy vs inference FLOPs per token, per category × length (prefill); Pareto points
  ringed and joined."""
  pts = [p for p in points if p["phase"] == "prefill"]
  keys = sorted({(p["category"], p["eval_length"]) for p in pts})
  if not keys:
    return None
  plt = plt_module()
  cols = min(4, len(keys))
  rows_ = -(-len(keys) // cols)
  fig, axes = plt.subplots(rows_, cols, figsize=(4.2 * cols, 3.5 * rows_), squeeze=False)
  for ax, (cat, length) in zip(axes.ravel(), keys):
    ps = [p for p in pts if p["category"] == cat and p["eval_length"] == length]
    on = fr.pareto([(p["inference_flops_per_token"], p["arm"].mean) for p in ps])
    for size in sorted({p["size"] for p in ps}, key=lambda s: min(p["params"] for p in ps
                                                                 if p["size"] == s)):
      sel = [p for p in ps if p["size"] == size]
      ax.scatter([p["inference_flops_per_token"] for p in sel], [p["arm"].mean for p in sel],
                 label=size, s=18)
    front = sorted((p["inference_flops_per_token"], p["arm"].mean) for p, o in zip(ps, on) if o)
    ax.plot([f for f, _ in front], [a for _, a in front], "k--", lw=1)
    ax.scatter([f for f, _ in front], [a for _, a in front], facecolors="none", edgecolors="k",
               s=60)
    log_x(ax)
    ax.set(title=f"{cat}, T={length}", xlabel="inference FLOPs/token", ylabel="exact match",
           ylim=(-0.01, accuracy_top([p["arm"].mean for p in ps])))
    ax.legend(fontsize=6)
  for ax in axes.ravel()[len(keys):]:
    ax.axis("off")
  return save(fig, path)


def plot_isoflop(points, path: Path) -> Path | None:
  """Per training budget: accuracy (native eval, training length) vs parameters, one line per
  training attention."""
  pts = [p for p in points if p["eval_setting"] == "native" and p["phase"] == "prefill"
         and p["eval_length"] == p["train_seq_len"]]
  cats = sorted({p["category"] for p in pts})
  if not cats:
    return None
  plt = plt_module()
  fig, axes = plt.subplots(1, len(cats), figsize=(4.5 * len(cats), 3.6), squeeze=False)
  for ax, cat in zip(axes[0], cats):
    lines = defaultdict(list)
    for p in pts:
      if p["category"] == cat:
        tag = "dense" if p["train_pattern"] == "dense" else \
            f"{p['train_pattern']}@{p['train_sparsity']:g}"
        lines[(p["budget"], tag)].append(p)
    for (budget, tag), ps in sorted(lines.items()):
      ps.sort(key=lambda p: p["params"])
      ax.plot([p["params"] for p in ps], [p["arm"].mean for p in ps], marker="o",
              label=f"{budget:.2g} FLOPs, {tag}")
    log_x(ax)
    ax.set(title=f"{cat}: iso-FLOP (training)", xlabel="parameters", ylabel="exact match",
           ylim=(-0.01, accuracy_top([p["arm"].mean for ps in lines.values() for p in ps])))
    ax.legend(fontsize=6)
  return save(fig, path)


def plot_training(curves: dict[str, dict[str, Any]], path: Path,
                  window: int = 5) -> Path | None:
  """Training loss against training FLOPs (linear: a panel spans one budget from zero), one
  panel per budget, one line per run. Each line is a running mean over the last `window`
  logged points (fewer at the start): with a cycle of sequence lengths the logged loss jumps
  from record to record, and the mean shows the trend."""
  budgets = sorted({c["budget"] for c in curves.values()})
  if not budgets:
    return None
  colour = colours(sorted({short_label(c["label"]) for c in curves.values()}))
  plt = plt_module()
  fig, axes = plt.subplots(1, len(budgets), figsize=(4.8 * len(budgets), 3.8), squeeze=False)
  for ax, budget in zip(axes[0], budgets):
    for c in sorted((c for c in curves.values() if c["budget"] == budget),
                    key=lambda c: c["label"]):
      flops, loss = (np.asarray(v, np.float64) for v in zip(*c["points"]))
      total = np.concatenate([[0.0], np.cumsum(loss)])
      i = np.arange(1, len(loss) + 1)
      mean = (total[i] - total[np.maximum(i - window, 0)]) / np.minimum(i, window)
      arm = short_label(c["label"])  # the budget is the panel's
      ax.plot(flops, mean, color=colour[arm], label=arm)
    ax.set(title=f"training at {budget:.2g} FLOPs", xlabel="training FLOPs",
           ylabel=f"loss (running mean of {window} logs)")
    ax.legend(fontsize=6)
  return save(fig, path)


def plot_budgets(rows: list[dict[str, Any]], path: Path, alpha: float) -> Path | None:
  """Accuracy vs eval length per category (prefill): fixed solid, adaptive dashed, dense dotted,
  one colour per model; only models measurably above chance dense at some length (as in the
  tolerance plot), the rest would lie on the floor and hide them."""
  rows = [r for r in rows if r["phase"] == "prefill"]
  cats = sorted({r["category"] for r in rows})
  if not cats:
    return None
  measurable = [r for r in rows
                if any(p["dense"] and stats.measurable(p["dense"]["arm"], p["dense"]["chance"], alpha)
                       for p in r["per_length"])]
  colour = colours(sorted({r["label"] for r in measurable}))
  plt = plt_module()
  fig, axes = plt.subplots(1, len(cats), figsize=(4.5 * len(cats), 4.6), squeeze=False)
  for ax, cat in zip(axes[0], cats):
    shown = [r for r in measurable if r["category"] == cat]
    for r in shown:
      x = [p["eval_length"] for p in r["per_length"]]
      for key, style in (("fixed", "-"), ("adaptive", "--")):
        ax.plot(x, [p[key]["arm"].mean for p in r["per_length"]], style, marker="o",
                color=colour[r["label"]], label=f"{r['label']} {r[key]}")
      if all(p["dense"] for p in r["per_length"]):
        ax.plot(x, [p["dense"]["arm"].mean for p in r["per_length"]], ":", color=colour[r["label"]],
                label=f"{r['label']} dense")
    ax.set_xscale("log", base=2)
    lengths = sorted({p["eval_length"] for r in rows for p in r["per_length"]})
    ax.set_xticks(lengths, [str(t) for t in lengths])
    ax.minorticks_off()
    top = accuracy_top([p[k]["arm"].mean for r in shown for p in r["per_length"]
                         for k in ("fixed", "adaptive", "dense") if p[k]])
    ax.set(title=f"{cat}: fixed vs adaptive budget (prefill)", xlabel="eval length",
           ylabel="exact match", ylim=(-0.01, top))
    if shown:
      ax.legend(fontsize=5, loc="upper center", bbox_to_anchor=(0.5, -0.16))
    else:
      ax.text(0.5, 0.5, "no model measurably\nabove chance", ha="center", va="center",
              transform=ax.transAxes, fontsize=9, color="grey")
  return save(fig, path)


def ladder_line(points, pattern: str):
  """One line of a tolerance plot: the points of `pattern` on its fixed compression ladder with
  the dense point at 1, by compression -> (x, y, yerr, points); None with fewer than two."""
  ps = sorted((p for p in points if tl.family(p) == pattern or p["eval_setting"] == "dense"),
              key=lambda p: tl.nominal_sparsity(p["eval_setting"]))
  if len(ps) < 2:
    return None
  x = [tl.compression(tl.nominal_sparsity(p["eval_setting"])) for p in ps]
  y = [p["arm"].mean for p in ps]
  err = [[a - p["ci"][0] for a, p in zip(y, ps)], [p["ci"][1] - a for a, p in zip(y, ps)]]
  return x, y, err, ps


def ladder_axis(ax, ticks: list[float]) -> None:
  """A log2 compression axis labelled at the ladder's levels."""
  ax.set_xscale("log", base=2)
  ax.set_xticks(ticks, [f"{c:.3g}" for c in ticks])
  ax.minorticks_off()


def plot_tolerance_curves(points, path: Path, models: list[tuple[str, str]]) -> Path | None:
  """Accuracy vs compression (log2 axis, 1 = dense) in prefill: one row of panels per model
  of `models` ((run_id, why it is shown): the best dense and best sparse model of each budget),
  one column per category, one line per eval length (colour) and pattern (line style), on the
  fixed compression ladders the claims use; lengths past the model's training length are
  drawn thin. Intervals are the points' own (Wilson, or the bootstrap over contexts)."""
  pts = [p for p in points if p["phase"] == "prefill" and p["eval_setting"] != "native"
         and tl.nominal_sparsity(p["eval_setting"]) is not None]
  cats = sorted({p["category"] for p in pts})
  models = [(run, why) for run, why in models if any(p["run_id"] == run for p in pts)]
  if not cats or not models:
    return None
  lengths = sorted({p["eval_length"] for p in pts})
  palette = plt_module().get_cmap("viridis")
  colour = {t: palette(i / max(1, len(lengths) - 1) * 0.9) for i, t in enumerate(lengths)}
  patterns = sorted({tl.family(p) for p in pts if p["sparse"]})
  style = {pat: ("-", "--", ":", "-.")[i % 4] for i, pat in enumerate(patterns)}
  plt = plt_module()
  fig, axes = plt.subplots(len(models), len(cats), figsize=(4.5 * len(cats), 3.4 * len(models)),
                           squeeze=False)
  ticks = sorted({tl.compression(tl.nominal_sparsity(p["eval_setting"])) for p in pts})
  for row, (run, why) in zip(axes, models):
    mine = [p for p in pts if p["run_id"] == run]
    for ax, cat in zip(row, cats):
      here = [p for p in mine if p["category"] == cat]
      top = 0.0
      for pat in patterns:
        for t in lengths:
          line = ladder_line([p for p in here if p["eval_length"] == t], pat)
          if line is None:
            continue
          x, y, err, ps = line
          past = t > ps[0]["train_seq_len"]
          ax.errorbar(x, y, yerr=err, marker="o", ms=3.5, capsize=2, color=colour[t],
                      ls=style[pat], lw=0.8 if past else 1.6, alpha=0.5 if past else 1.0)
          top = max(top, max(p["ci"][1] for p in ps))
      if here:
        ax.axhline(sum(p["chance"] for p in here) / len(here), color="grey", ls=":", lw=1)
      ladder_axis(ax, ticks)
      ax.set(title=f"{cat}: {here[0]['run_label'] if here else run}\n({why})",
             xlabel="compression 1/(1 − sparsity), prefill", ylabel="exact match",
             ylim=(-0.01, accuracy_top([top])))
      ax.title.set_fontsize(8)
  handles = [plt.Line2D([], [], color=colour[t], marker="o", ms=4, label=f"T={t}")
             for t in lengths]
  handles += [plt.Line2D([], [], color="k", ls=style[p], label=p) for p in patterns]
  fig.legend(handles=handles, fontsize=7, loc="upper center", ncol=len(handles),
             bbox_to_anchor=(0.5, 0.0))  # below the panels; savefig's "tight" box keeps it
  return save(fig, path)


def plot_task_tolerance(points, category_of: dict[str, str], path: Path, run: str, why: str
                        ) -> Path | None:
  """Accuracy vs compression task by task for one model (`run`, shown as `why`), prefill at its
  training length: one row of panels per pattern on a fixed ladder, one column per category, one
  line per task. `points`: report points pooled per task (their `category` is the task spec,
  `category_of` maps it to its category), as `claims.claim_a_by_task` reads them."""
  pts = [p for p in points if p["run_id"] == run and p["phase"] == "prefill"
         and p["eval_length"] == p["train_seq_len"] and p["eval_setting"] != "native"
         and tl.nominal_sparsity(p["eval_setting"]) is not None]
  patterns = sorted({tl.family(p) for p in pts if p["sparse"]})
  cats = [c for c in ("retrieval", "multihop", "aggregation") if c in set(category_of.values())]
  cats += sorted(set(category_of.values()) - set(cats))
  if not patterns or not cats:
    return None
  plt = plt_module()
  fig, axes = plt.subplots(len(patterns), len(cats), figsize=(4.2 * len(cats),
                                                              3.0 * len(patterns)), squeeze=False)
  ticks = sorted({tl.compression(tl.nominal_sparsity(p["eval_setting"])) for p in pts})
  for row, pat in zip(axes, patterns):
    for ax, cat in zip(row, cats):
      tasks = sorted(t for t, c in category_of.items() if c == cat)
      for i, task in enumerate(tasks):
        line = ladder_line([p for p in pts if p["category"] == task], pat)
        if line is not None:
          x, y, err, _ = line
          ax.errorbar(x, y, yerr=err, marker="o", ms=3.5, capsize=2, lw=1.4,
                      color=plt.get_cmap("tab10")(i), label=task.split("(")[0])
      ladder_axis(ax, ticks)
      ax.set(title=f"{cat}, {pat}", xlabel="compression, prefill", ylabel="exact match",
             ylim=(-0.01, 1.02))
      ax.title.set_fontsize(9)
      ax.legend(fontsize=7, loc="lower left")
  fig.suptitle(f"Task by task: {pts[0]['run_label']} ({why}), T={pts[0]['train_seq_len']}",
               fontsize=10)
  return save(fig, path)
