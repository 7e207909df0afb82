"""``python -m experiments <command>``: the study's entry point (the only importer of
`experiments.analysis`).

Commands:
  run --preset NAME [--out DIR] [--executor local|slurm|pod] [--retry-failed] [--no-report]
      [--stop-after SECONDS] [--wandb offline|online|disabled] [--add-to-study]
      plan the preset's FLOP-matched grid, train and evaluate every unfinished run, write
      results.csv, report.md and plots. Rerunning skips finished runs and resumes partial ones.
      --stop-after starts only runs expected to end inside the limit (machines lent for a fixed
      time): the next call continues, on this machine or on another given the study folder.
      A study folder remembers its preset: another preset on it is refused unless
      --add-to-study (its runs join the folder's; the earlier ones stay in the results).
  status DIR      table of runs: state (done/running/stopped/preempted/failed/pending), steps,
                  FLOPs, attempts, last error
  report DIR      rewrite results.csv, report.md and plots from the run folders
  job RUN_DIR     train + evaluate one run folder (what executors run on each machine)
  presets         list the presets
  calibrate --preset NAME   measure step times here and estimate the preset's wall time
  demo            a sparse_ops tour (implementations × patterns, with times)

Errors are one or two lines naming the value; --debug (anywhere) shows the traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import sys
import time
from pathlib import Path


class _Parser(argparse.ArgumentParser):
  """argparse's errors without the full usage (a dozen wrapped lines for `run`): two lines."""

  def error(self, message: str):
    self.exit(2, f"{self.prog}: error: {message}\n(see {self.prog} --help)\n")


def _run(argv: list[str]) -> None:
  # SIGTERM outside training (evaluating, between runs) used to end the sweep with no record:
  # now run_job records the run as preempted and the sweep stops (see main).
  signal.signal(signal.SIGTERM, _terminate)
  from experiments.runs import executors, sweep
  from experiments.spec import study as study_lib
  p = _Parser(prog="python -m experiments run")
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
  p.add_argument("--add-to-study", action="store_true",
                 help="run this preset on a folder made by another one, keeping its runs")
  a = p.parse_args(argv)
  if a.stop_after is not None and a.stop_after <= 0:
    p.error(f"--stop-after {a.stop_after:g}: must be a positive number of seconds")
  if a.workers is not None and a.workers < 0:
    p.error(f"--workers {a.workers}: must be 0 (in-process) or a positive number of workers")
  if a.preset not in study_lib.presets():
    p.error(f"--preset {a.preset!r} is unknown; valid: {', '.join(study_lib.presets())}")
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
                             add_to_study=a.add_to_study, log=lambda s: print(s, flush=True))
  if not a.no_report:
    path = write_report(out, wall_s=time.time() - t0)
    print(f"wrote {out}/results.csv, {path} and {out}/plots/")
  summary = ", ".join(f"{len(v)} {k}" for k, v in by_state.items() if v)
  print(f"study {study.name}: {summary}; {time.time() - t0:.0f}s", flush=True)


def write_report(out: str | Path, *, wall_s: float | None = None,
                 wandb_mode: str | None = None) -> Path:
  """results.csv, report.md and plots/ of a study folder, and its W&B summary run: the run
  store gathers (`runs.sweep.report_inputs`), the analysis writes, tracking logs."""
  from experiments.analysis import report
  from experiments.runs import store, sweep, tracking
  inputs = sweep.report_inputs(Path(out))
  path, figs = report.write(Path(out), **inputs, wall_s=wall_s)
  study = store.load_study(Path(out))
  mode = study.wandb if wandb_mode is None else wandb_mode
  if mode != "disabled" and inputs["rows"]:
    tracking.summary(study, Path(out), inputs["rows"], figs, mode)
  return path


def _status(argv: list[str]) -> None:
  from experiments.runs import store
  p = _Parser(prog="python -m experiments status")
  p.add_argument("dir")
  a = p.parse_args(argv)
  rows = store.status_rows(a.dir)
  print(f"{'run':12} {'model':34} {'state':9} {'steps':>11} {'train FLOPs':>11} "
        f"{'budget':>9} {'tries':>5}  error")
  for r in rows:
    print(f"{r['run_id']:12} {r['label']:34} {r['state']:9} {r['step']:>5}/{r['steps']:<5} "
          f"{r['train_flops']:11.3g} {r['budget']:9.3g} {r['attempts']:>5}  {r['error'][:80]}")
  counts: dict[str, int] = {}
  for r in rows:
    counts[r["state"]] = counts.get(r["state"], 0) + 1
  print(", ".join(f"{v} {k}" for k, v in sorted(counts.items())))
  for note in store.damaged_files(a.dir):  # status works on what is readable, says what is not
    print(f"unreadable: {note}")


def _report(argv: list[str]) -> None:
  p = _Parser(prog="python -m experiments report")
  p.add_argument("dir")
  p.add_argument("--wandb", default=None, choices=("offline", "online", "disabled"))
  a = p.parse_args(argv)
  print(f"wrote {write_report(a.dir, wandb_mode=a.wandb)}")


def _termination(e: BaseException) -> _Terminated | None:
  """The SIGTERM inside `e`: one that lands in an extension module's import (numpy's, during
  the first seconds of a job) comes out as that import's ImportError, with it as the cause."""
  while e is not None:
    if isinstance(e, _Terminated):
      return e
    e = e.__cause__ or e.__context__
  return None


class _Terminated(KeyboardInterrupt):
  """SIGTERM outside the trainer's own handler (which saves and stops at a step boundary):
  run_job records a KeyboardInterrupt as preempted, not as a failed attempt."""


def _terminate(signum, frame):
  del frame
  signal.signal(signum, signal.SIG_IGN)  # one is enough; a second must not cut the record
  raise _Terminated(f"signal {signum}")


def _die_with_parent() -> None:
  """A worker must not outlive its sweep: an orphan kept training while the rerun started a
  second trainer on the same run dir. Linux: SIGTERM when the parent dies (the trainer saves
  and stops); if the parent already died before this ran, stop now. Elsewhere a no-op (the
  run dir's lock still keeps a rerun off the run)."""
  parent = os.environ.get("EXPERIMENTS_PARENT_PID")
  if not parent or not sys.platform.startswith("linux"):
    return
  import ctypes
  PR_SET_PDEATHSIG = 1
  ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
  if os.getppid() != int(parent):
    raise _Terminated("the sweep that started this worker is gone")


def _record_preempted(run_dir: str, why: str) -> None:
  """SIGTERM before run_job got to record anything (during the imports, about 2 s): mark the
  run preempted with the stdlib alone (a half-done import is no base to import more on),
  unless its record says it is done, already preempted, or running in another live process."""
  path = Path(run_dir) / "job.json"
  try:
    rec = json.loads(path.read_text())
  except FileNotFoundError:
    rec = {"state": "pending", "attempts": 0}
  except (OSError, ValueError):
    return
  pid = rec.get("pid")
  if rec.get("state") in ("done", "preempted") or (
      rec.get("state") == "running" and pid not in (None, os.getpid()) and _alive(pid)):
    return
  rec.update(state="preempted", error=f"preempted before the job started ({why})")
  tmp = path.with_name(f".job.json.tmp{os.getpid()}")
  try:
    tmp.write_text(json.dumps(rec, indent=1))
    os.replace(tmp, path)
  except OSError:
    tmp.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    pass
  return True


def _job(argv: list[str]) -> None:
  # First, before the ~2 s of imports: SIGTERM then ended the process as a bare exit 143 with
  # no record. Now it is a _Terminated, recorded as preempted, by run_job or below.
  signal.signal(signal.SIGTERM, _terminate)
  p = _Parser(prog="python -m experiments job")
  p.add_argument("run_dir")
  a = p.parse_args(argv)
  if not (Path(a.run_dir) / "spec.json").exists():
    raise SystemExit(f"error: {a.run_dir}/spec.json not found: RUN_DIR must be a run folder "
                     "(<study>/runs/<run_id>) planned by `python -m experiments run`")
  stop = None
  try:
    _die_with_parent()
    from experiments.runs import job
    rec = job.run_job(a.run_dir)
  except (_Terminated, Exception) as e:  # noqa: BLE001 — re-raised unless a SIGTERM is in it
    if (stop := _termination(e)) is None:
      raise
  if stop is not None:
    _record_preempted(a.run_dir, str(stop))  # no-op when run_job recorded it already
    print(f"{a.run_dir}: preempted ({stop})", flush=True)
    return  # exit 0, as `python -m train` does for a preempted run: the record says what
  print(f"{a.run_dir}: {rec['state']}" + (f" — {rec.get('error')}" if rec.get("error") else ""))
  if rec["state"] == "failed":
    raise SystemExit(1)


def _presets(argv: list[str]) -> None:
  from experiments.spec import study as study_lib
  for name in study_lib.presets():
    s = study_lib.load_preset(name)
    specs, skipped = s.runs()
    print(f"{name:8} {len(specs)} runs, {len(skipped)} skipped, executor {s.executor}")


def main(argv=None) -> None:
  argv = list(sys.argv[1:] if argv is None else argv)
  debug = "--debug" in argv
  argv = [x for x in argv if x != "--debug"]
  previous = signal.getsignal(signal.SIGTERM)  # run and job install their own
  try:
    _main(argv)
  except (_Terminated, Exception) as e:  # noqa: BLE001 — one line, not a 40-line traceback
    if (stop := _termination(e)) is not None:  # recorded as preempted; the trainer saved
      print(f"stopped ({stop}): rerun the same command to continue", file=sys.stderr)
      return
    if debug:
      raise
    msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
    if not isinstance(e, (ValueError, RuntimeError, OSError)) or not msg:
      msg = f"{type(e).__name__}: {msg}"  # e.g. a KeyError's message alone is just the key
    print(f"error: {msg}", file=sys.stderr)
    print("(add --debug for the traceback)", file=sys.stderr)
    raise SystemExit(1) from None
  finally:
    signal.signal(signal.SIGTERM, previous)  # main() called in-process (tests) leaves none


def _main(argv: list[str]) -> None:
  commands = {"run": _run, "status": _status, "report": _report, "job": _job,
              "presets": _presets, "calibrate": None, "demo": None}
  if argv and argv[0] not in commands:
    raise SystemExit(f"error: unknown command {argv[0]!r}; valid: {', '.join(commands)}\n"
                     "(python -m experiments alone lists them with their options)")
  if not argv:
    print(__doc__, file=sys.stderr)
    print(f"usage: python -m experiments {{{','.join(commands)}}} [options]", file=sys.stderr)
    raise SystemExit(2)
  if argv[0] in ("demo", "calibrate"):
    import importlib
    importlib.import_module(f"experiments.tools.{argv[0]}").main(argv[1:])
    return
  commands[argv[0]](argv[1:])


if __name__ == "__main__":
  main()
