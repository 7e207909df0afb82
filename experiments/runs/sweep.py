"""Resumable, idempotent sweeps: plan the grid into run folders (`store`), execute the
unfinished ones (`job.run_job` through an executor), collect results.csv.

Rerunning a sweep skips done runs, resumes partial ones from their last checkpoint (the trainer
resumes exactly), retries failed ones until `max_attempts` and then reports them.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

from experiments import stats
from experiments.runs import results, store
from experiments.runs.files import DamagedFile, read_json, readable
from experiments.spec import study as study_lib


def todo(out: Path, dirs: list[Path], study: study_lib.Study, *, retry_failed: bool) -> list[Path]:
  """Runs an executor should (re)start now."""
  key = study.eval.key
  todo_ = []
  for d in dirs:
    s = store.state(d, key)
    if s == "done" or store.remembered(d):  # _MEMORY: unwritable or held elsewhere, this call
      continue
    # store.Held by a live process (an orphaned worker of a killed sweep still finishing it): left
    # to it. A run submitted to Slurm stays: the Slurm executor waits for its job itself.
    if not store.job_record(d).get("slurm_submitted") and store.held_elsewhere(d):
      store.mark_elsewhere(d, f"held by another process (pid {store.job_record(d).get('pid')}, lock "
                    f"{d}/.job.lock)")
      continue
    if s == "failed" and store.job_record(d).get("attempts", 0) >= study.max_attempts and not retry_failed:
      continue
    todo_.append(d)
  return todo_


# A size not seen yet in the folder is judged from other sizes' runs scaled by training FLOPs,
# with this margin: it compiles everything anew and may use the GPU differently. On the h100
# study (one H100, equal budgets) the 20m and 50m runs took 0.6-1.0x the 6m runs' wall; scaling
# by parameters, as this did first, asked 572 s for 20m runs that took 104-173 s.
NEW_SIZE_MARGIN = 1.5


def expected_wall(out: Path, run_dir: Path) -> float:
  """Seconds a run should take, from the finished runs of this study folder as job.json recorded
  them: training (all its attempts: a run resumed across pieces counts its preempted ones too)
  scaled by training FLOPs (`budget`) or by steps, whichever says longer (a sparse run of a size
  has more, cheaper steps than its dense run, and a small model's step costs more than its FLOPs
  say), plus the evaluation unscaled (a size's evaluation is the same work at every budget). From
  the longest of the same size, else the longest of other sizes (scaled by FLOPs) times
  `NEW_SIZE_MARGIN`; 0 before any finishes."""
  spec = read_json(Path(run_dir) / "spec.json")
  same, other_sizes = [], []
  for d in store.run_dirs(out):
    rec, other = store.job_record(d), read_json(d / "spec.json") or {}
    if rec["state"] != "done" or "train_wall_s" not in rec:
      continue
    train = rec["train_wall_s"] + rec.get("preempted_wall_s", 0.0)
    flops = spec["budget"] / other["budget"]
    if other.get("size") == spec["size"]:
      steps = spec.get("steps", 0) / other["steps"] if other.get("steps") else 0.0
      same.append(train * max(flops, steps) + rec.get("eval_wall_s", 0.0))
    else:
      other_sizes.append(train * flops + rec.get("eval_wall_s", 0.0))
  return max(same, default=0.0) or NEW_SIZE_MARGIN * max(other_sizes, default=0.0)


def select(study: study_lib.Study, only: tuple[str, ...]) -> list[str]:
  """Run ids of the study's runs named in `only`: a run id, a label, or a label's prefix
  ("300k/" picks every 300k run), in the order named (a prefix's runs in study order), which is
  the order they start in: a piece names its longest run first. A name that picks nothing is an
  error naming the labels."""
  specs, _ = study.runs()
  chosen: list[str] = []
  for name in only:
    hits = [s.run_id for s in specs if name in (s.run_id, s.label) or s.label.startswith(name)]
    if not hits:
      raise ValueError(f"--only {name!r} names none of study {study.name}'s runs; they are "
                       + ", ".join(f"{s.run_id} ({s.label})" for s in specs))
    chosen += [h for h in hits if h not in chosen]
  return chosen


def run_sweep(study: study_lib.Study, out: Path, executor, *, retry_failed: bool = False,
              stop_after: float | None = None, add_to_study: bool = False,
              only: tuple[str, ...] = (), log: Callable[[str], None] = print
              ) -> dict[str, list[str]]:
  """Plans, runs every unfinished run (with retries), collects results.csv. Returns run ids
  by final state.

  stop_after: a time limit in seconds for this call, for machines lent for a fixed time. Runs
  then go one at a time, and a run is started only if it should end inside the limit (judged by
  `expected_wall`); the rest stay pending for the next call, which continues where this one
  stopped. A run the estimate gets wrong is not cut: wrap the call in `timeout -s TERM`, which
  preempts it cleanly (the trainer saves and the sweep stops).

  add_to_study: run this study on a folder made by another preset, keeping that one's runs
  (`plan`); without it such a folder is refused.

  only: train/evaluate just these of the study's runs this call (`select`), to plan pieces by
  hand; the others stay as they are.
  """
  chosen = select(study, only) if only else None  # bad names fail before anything is written
  out = Path(out)
  t_start = time.time()
  store.forget()
  with store.study_lock(out):
    dirs = store.plan(study, out, add=add_to_study)
    skipped = read_json(out / "study.json")["skipped"]
    for s in skipped:
      log(f"grid point skipped: {s}")
    for note in store.damaged_files(out):
      log(f"damaged file: {note}")
    done0 = sum(store.state(d, study.eval.key) == "done" for d in dirs)
    log(f"study {study.name}: {len(dirs)} runs ({done0} already done) in {out}")
    if retry_failed:
      for d in dirs:
        if store.job_record(d).get("state") == "failed":
          store.update(d, attempts=0)
    for attempt in range(study.max_attempts):
      pending = todo(out, dirs, study, retry_failed=False)
      if chosen is not None:
        pending = sorted((d for d in pending if d.name in chosen),
                         key=lambda d: chosen.index(d.name))
      if not pending:
        break
      log(f"round {attempt + 1}: {len(pending)} run(s) to train/evaluate with {executor.name}")
      out_of_time = False
      if stop_after is None:
        executor.run(pending, log=log)
      else:
        for d in pending:
          elapsed, need = time.time() - t_start, expected_wall(out, d)
          if out_of_time := elapsed + need > stop_after:
            log(f"time limit: {elapsed:.0f}s used of {stop_after:.0f}s, the next run needs "
                f"about {need:.0f}s; rerun the same command to continue")
            break
          executor.run([d], log=log)
          if store.state(d) == "preempted":
            break
      if any(store.state(d) == "preempted" for d in pending):
        log("interrupted (preempted): rerun the same command to continue")
        break
      if out_of_time:
        break
    by_state: dict[str, list[str]] = {s: [] for s in store.STATES}
    for d in dirs:
      by_state[store.state(d, study.eval.key)].append(d.name)
    collect(out)
    for rid in by_state["failed"]:
      rec = store.job_record(out / "runs" / rid)
      label = (readable(out / "runs" / rid / "spec.json") or {}).get("label", "?")
      log(f"FAILED {rid} ({label}) after {rec.get('attempts')} attempt(s): {rec.get('error')}")
    for d in dirs:
      if store.job_record(d).get("elsewhere"):
        log(f"RUNNING ELSEWHERE {d.name}: {store.job_record(d)['elsewhere']}; rerun when it ends "
            "to collect it")
    return by_state




def result_rows(out: Path) -> list[dict[str, Any]]:
  """Rows of every done run, in plan order (deterministic, so reruns give the same file), each
  with its per-question `correct` and `context` (for outcomes.npz; results.csv leaves them out).
  Where several questions share a context the interval is the cluster bootstrap's (questions of
  one context are not independent draws); else the Wilson interval evaluation gave."""
  out = Path(out)
  study = store.load_study(out)
  rows = []
  for d in store.run_dirs(out):
    if store.state(d, study.eval.key) != "done" or readable(d / "spec.json", ("run_id",)) is None:
      continue
    spec = store.load_spec(d)
    train_stats = spec.train_attention_stats()
    base = dict(study=study.name, run_id=spec.run_id, label=spec.label, size=spec.size,
                params=spec.params, nonembed_params=spec.nonembed_params,
                train_pattern=spec.pattern, train_sparsity_target=spec.train_sparsity,
                train_sparsity_element=train_stats["element"],
                train_sparsity_block=train_stats["block"], budget=spec.budget, steps=spec.steps,
                train_flops=spec.train_flops, flops_residual=spec.flops_residual,
                train_flops_per_token=spec.flops_per_token, train_seq_len=spec.seq_len)
    for r in read_json(d / store.EVAL_FILE)["rows"]:
      row = {**base, **r}
      if row.get("correct") is not None:
        row.setdefault("context", list(range(len(row["correct"]))))
        right, asked = stats.per_context(row["correct"], row["context"])
        if len(asked) < len(row["correct"]):
          row["ci_low"], row["ci_high"] = stats.cluster_bootstrap_ci(right, asked)
      rows.append(row)
  return rows


def collect(out: Path) -> Path:
  """Writes out/results.csv and out/outcomes.npz (the rows' per-question outcomes) from the
  done runs' eval.json.gz files; returns the results.csv path."""
  rows = result_rows(out)
  results.write_outcomes(Path(out) / results.OUTCOMES, rows)
  return results.write(Path(out) / "results.csv", rows)


def report_inputs(out: Path) -> dict[str, Any]:
  """What `analysis.report.write` reads, gathered from a study folder: results rows (collected
  afresh from the run folders, or the results.csv of a copied folder with no runs), their
  per-question outcomes (outcomes.npz; None where a copied folder has none, and the report
  falls back to unpaired tests), status rows, the study's name, skipped grid points and damaged
  files."""
  out = Path(out)
  study = store.load_study(out)
  # A copied results folder (results.csv, study.json, no run folders, as committed under
  # studies/) keeps its results.csv: collecting from absent runs would empty it.
  runs_here = any((d / "spec.json").exists() for d in store.run_dirs(out))
  if runs_here:
    csv_path = collect(out)
  elif (out / "results.csv").exists():
    csv_path = out / "results.csv"
  else:
    raise ValueError(f"{str(out)!r} holds neither run folders nor a results.csv to report on")
  rows = results.read(csv_path)
  damaged = store.damaged_files(out) if runs_here else []
  try:
    outcomes = results.read_outcomes(out / results.OUTCOMES)
  except DamagedFile as e:
    outcomes = None
    damaged = [*damaged, f"{e} (the report uses unpaired tests)"]
  return dict(rows=rows, name=study.name, outcomes=outcomes, margin=study.tolerance_margin,
              status=store.status_rows(out) if runs_here else _status_from_results(rows),
              skipped=read_json(out / "study.json")["skipped"], damaged=damaged,
              curves=training_curves(out) if runs_here else {},
              # the activation-sparsity probes' folders (`python -m experiments probe`)
              probe_dirs=[d for d in store.run_dirs(out) if (d / "probe.json").exists()])


def training_curves(out: Path) -> dict[str, dict[str, Any]]:
  """Per run folder with a training log: its label, budget, and the (training FLOPs, loss)
  pairs metrics.jsonl holds (records without FLOPs, from older trainers, are left out)."""
  from train.log import read_metrics
  curves = {}
  for d in store.run_dirs(out):
    pts = [(r["flops"], r["loss"]) for r in read_metrics(d) if "flops" in r and "loss" in r]
    if pts:
      spec = read_json(d / "spec.json")
      curves[d.name] = dict(label=spec["label"], budget=spec["budget"], points=pts)
  return curves


def _status_from_results(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
  """The run table of a copied results folder: every run in results.csv finished (only done
  runs are collected); attempts are not recorded there."""
  runs = {}
  for r in rows:
    runs.setdefault(r["run_id"], dict(
        run_id=r["run_id"], label=r["label"], state="done", step=r["steps"], steps=r["steps"],
        train_flops=r["train_flops"], budget=r["budget"], attempts="", train_wall_s=None,
        eval_wall_s=None, preempted_wall_s=0.0, error=""))
  return list(runs.values())
