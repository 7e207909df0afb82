"""``python -m experiments <command>``: the study's entry point.

Commands:
  run --preset NAME [--out DIR] [--executor local|slurm|pod] [--retry-failed] [--no-report]
      [--stop-after SECONDS] [--wandb offline|online|disabled]
      plan the preset's FLOP-matched grid, train and evaluate every unfinished run, write
      results.csv, report.md and plots. Rerunning skips finished runs and resumes partial ones.
      --stop-after starts only runs expected to end inside the limit (machines lent for a fixed
      time): the next call continues, on this machine or on another given the study folder.
  status DIR      table of runs: state (done/running/stopped/preempted/failed/pending), steps,
                  FLOPs, attempts, last error
  report DIR      rewrite results.csv, report.md and plots from the run folders
  job RUN_DIR     train + evaluate one run folder (what executors run on each machine)
  presets         list the presets
  calibrate --preset NAME   measure step times here and estimate the preset's wall time
  demo            a sparse_ops tour (implementations × patterns, with times)
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time


def _run(argv: list[str]) -> None:
  from experiments import executors, report, study as study_lib, sweep
  p = argparse.ArgumentParser(prog="python -m experiments run")
  p.add_argument("--preset", required=True, help=f"one of {study_lib.presets()}")
  p.add_argument("--out", default=None, help="study folder (default runs/<preset>)")
  p.add_argument("--executor", default=None, choices=executors.NAMES,
                 help="default: the preset's")
  p.add_argument("--workers", type=int, default=None, help="local: subprocess workers (0: "
                 "in-process)")
  p.add_argument("--partition", default=None, help="slurm partition")
  p.add_argument("--hosts", default=None, help="pod: comma-separated hosts, first = coordinator")
  p.add_argument("--launch", default=None, choices=("print", "ssh", "local"), help="pod launch")
  p.add_argument("--retry-failed", action="store_true",
                 help="give runs that used up their attempts another round")
  p.add_argument("--no-report", action="store_true")
  p.add_argument("--stop-after", type=float, default=None, metavar="SECONDS",
                 help="start no run that should not end inside this many seconds")
  p.add_argument("--wandb", default=None, choices=("offline", "online", "disabled"),
                 help="W&B mode for this call (default: the preset's)")
  a = p.parse_args(argv)
  if a.stop_after is not None and a.stop_after <= 0:
    p.error(f"--stop-after {a.stop_after:g}: must be a positive number of seconds")
  study = study_lib.load_preset(a.preset)
  if a.wandb:
    study = dataclasses.replace(study, wandb=a.wandb)
  out = a.out or f"runs/{a.preset}"
  name = a.executor or study.executor
  options = dict(study.executor_options) if name == study.executor else {}
  if a.workers is not None:
    options["workers"] = a.workers
  if a.partition:
    options["partition"] = a.partition
  if a.hosts:
    options["hosts"] = tuple(a.hosts.split(","))
  if a.launch:
    options["launch"] = a.launch
  t0 = time.time()
  by_state = sweep.run_sweep(study, out, executors.make(name, **options),
                             retry_failed=a.retry_failed, stop_after=a.stop_after,
                             log=lambda s: print(s, flush=True))
  if not a.no_report:
    path = report.write(out, wall_s=time.time() - t0)
    print(f"wrote {out}/results.csv, {path} and {out}/plots/")
  summary = ", ".join(f"{len(v)} {k}" for k, v in by_state.items() if v)
  print(f"study {study.name}: {summary}; {time.time() - t0:.0f}s", flush=True)


def _status(argv: list[str]) -> None:
  from experiments import sweep
  p = argparse.ArgumentParser(prog="python -m experiments status")
  p.add_argument("dir")
  a = p.parse_args(argv)
  rows = sweep.status_rows(a.dir)
  print(f"{'run':12} {'model':34} {'state':9} {'steps':>11} {'train FLOPs':>11} "
        f"{'budget':>9} {'tries':>5}  error")
  for r in rows:
    print(f"{r['run_id']:12} {r['label']:34} {r['state']:9} {r['step']:>5}/{r['steps']:<5} "
          f"{r['train_flops']:11.3g} {r['budget']:9.3g} {r['attempts']:>5}  {r['error'][:80]}")
  counts: dict[str, int] = {}
  for r in rows:
    counts[r["state"]] = counts.get(r["state"], 0) + 1
  print(", ".join(f"{v} {k}" for k, v in sorted(counts.items())))


def _report(argv: list[str]) -> None:
  from experiments import report
  p = argparse.ArgumentParser(prog="python -m experiments report")
  p.add_argument("dir")
  p.add_argument("--wandb", default=None, choices=("offline", "online", "disabled"))
  a = p.parse_args(argv)
  print(f"wrote {report.write(a.dir, wandb_mode=a.wandb)}")


def _job(argv: list[str]) -> None:
  from experiments import sweep
  p = argparse.ArgumentParser(prog="python -m experiments job")
  p.add_argument("run_dir")
  a = p.parse_args(argv)
  rec = sweep.run_job(a.run_dir)
  print(f"{a.run_dir}: {rec['state']}" + (f" — {rec.get('error')}" if rec.get("error") else ""))


def _presets(argv: list[str]) -> None:
  from experiments import study as study_lib
  for name in study_lib.presets():
    s = study_lib.load_preset(name)
    specs, skipped = s.runs()
    print(f"{name:8} {len(specs)} runs, {len(skipped)} skipped, executor {s.executor}")


def main(argv=None) -> None:
  argv = list(sys.argv[1:] if argv is None else argv)
  commands = {"run": _run, "status": _status, "report": _report, "job": _job,
              "presets": _presets, "calibrate": None, "demo": None}
  if not argv or argv[0] not in commands:
    print(__doc__, file=sys.stderr)
    print(f"usage: python -m experiments {{{','.join(commands)}}} [options]", file=sys.stderr)
    raise SystemExit(2)
  if argv[0] in ("demo", "calibrate"):
    import importlib
    importlib.import_module(f"experiments.{argv[0]}").main(argv[1:])
    return
  commands[argv[0]](argv[1:])


if __name__ == "__main__":
  main()
