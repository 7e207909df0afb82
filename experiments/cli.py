"""``python -m experiments <command>``: the study's entry point (the only importer of
`experiments.analysis`).

Commands:
  run --preset NAME [--out DIR] [--executor local|slurm|pod] [--retry-failed] [--no-report]
      [--stop-after SECONDS] [--wandb offline|online|disabled] [--add-to-study] [--only RUN...]
      plan the preset's FLOP-matched grid, train and evaluate every unfinished run, write
      results.csv, report.md and plots. Rerunning skips finished runs and resumes partial ones.
      --stop-after starts only runs expected to end inside the limit (machines lent for a fixed
      time): the next call continues, on this machine or on another given the study folder.
      A study folder remembers its preset: another preset on it is refused unless
      --add-to-study (its runs join the folder's; the earlier ones stay in the results).
      --only trains/evaluates just the named runs (ids, labels or label prefixes) this call,
      started in the order named.
  status DIR      table of runs: state (done/running/stopped/preempted/failed/pending), steps,
                  FLOPs, attempts, wall seconds (unfinished: ~ what it still needs, by the
                  folder's finished runs), last error
  report DIR      rewrite results.csv, report.md and plots from the run folders
  job RUN_DIR     train + evaluate one run folder (what executors run on each machine)
  presets         list the presets
  calibrate --preset NAME   measure step times here and estimate the preset's wall time
  probe RUN_DIR...  activation-sparsity probe of finished runs (probe.json, probe.npz)
  demo            a sparse_ops tour (implementations × patterns, with times)

`python -m experiments COMMAND --help` lists a command's flags. The flags are the fields of the
command dataclasses below, parsed by tyro as `python -m train` parses `train.Config`. Errors are
one or two lines naming the value; --debug (anywhere) shows the traceback.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Annotated, Callable, Literal, NoReturn, Union

# NAMES only: the executors package's __init__ is stdlib alone (each executor loads on use).
from experiments.runs import executors
from train import guard

PROG = "python -m experiments"
_DESCRIPTION = ("The study of sparse vs dense attention: plan a preset's FLOP-matched grid, "
                "train, evaluate, report. `python -m experiments COMMAND --help` lists a "
                "command's flags.")
WandbMode = Literal["offline", "online", "disabled"]


# ------------------------------------------------------------------------------ the commands
# Each command's flags are the fields of its dataclass (docstrings are the --help text). They
# hold only stdlib types: tyro's markers are applied in _parse, so importing this module stays
# cheap and `run`/`job` can arm their SIGTERM handler before tyro loads.
@dataclasses.dataclass(frozen=True)
class Run:
  """Plan the preset's FLOP-matched grid, train and evaluate every unfinished run, write
  results.csv, report.md and plots. Rerunning skips finished runs and resumes partial ones; a
  study folder remembers its preset and refuses another one unless --add-to-study."""

  preset: str
  """the study to run: one of `python -m experiments presets`"""
  out: str | None = None
  """study folder (None: runs/<preset>)"""
  executor: Literal[executors.NAMES] | None = None
  """where runs train (None: the preset's)"""
  workers: int | None = None
  """local: subprocess workers (0: in-process; None: the preset's)"""
  runs_per_device: int | None = None
  """local, with --workers N >= 2: runs side by side on each accelerator (None: 1)"""
  partition: str | None = None
  """slurm partition"""
  hosts: str | None = None
  """pod: comma-separated hosts, first = coordinator"""
  launch: Literal["print", "ssh", "local"] | None = None
  """pod: print the per-host commands, run them over ssh, or as local processes"""
  retry_failed: bool = False
  """give runs that used up their attempts another round"""
  no_report: bool = False
  """train and evaluate only (`report DIR` writes the report later)"""
  stop_after: float | None = None
  """SECONDS: start no run that should not end inside this many seconds (machines lent for a
  fixed time; the next call continues, here or on another machine given the study folder)"""
  wandb: WandbMode | None = None
  """W&B mode for this call (None: the preset's)"""
  add_to_study: bool = False
  """run this preset on a folder made by another one, keeping its runs"""
  only: tuple[str, ...] = ()
  """RUN...: this call trains/evaluates only these runs (run ids, labels, or label prefixes
  such as `300k/`), started in the order named; the others stay pending"""


@dataclasses.dataclass(frozen=True)
class Status:
  """Table of runs: state (done/running/stopped/preempted/failed/pending), steps, FLOPs,
  attempts, wall seconds (unfinished: ~ what it still needs), last error."""

  dir: str
  """a study folder"""


@dataclasses.dataclass(frozen=True)
class Report:
  """Rewrite results.csv, report.md and plots from the run folders."""

  dir: str
  """a study folder"""
  wandb: WandbMode | None = None
  """W&B mode of the summary run (None: the study's)"""


@dataclasses.dataclass(frozen=True)
class Job:
  """Train + evaluate one run folder (what executors run on each machine)."""

  run_dir: str
  """a run folder, <study>/runs/<run_id>"""


@dataclasses.dataclass(frozen=True)
class Presets:
  """List the presets."""


@dataclasses.dataclass(frozen=True)
class Calibrate:
  """Measure step times here and estimate the preset's wall time (nothing in a study folder is
  touched)."""

  preset: str
  """one of `python -m experiments presets`"""
  steps: int = 30
  """training steps per distinct model"""
  out: str = "/tmp/experiments-calibrate"
  """scratch folder, emptied first; calibration.json is written there"""


@dataclasses.dataclass(frozen=True)
class Probe:
  """Activation-sparsity probe of finished run folders: probe.json + probe.npz in each (the
  study's report then has its section)."""

  run_dirs: tuple[str, ...]
  """run folders, <study>/runs/<run_id>"""
  examples: int | None = None
  """contexts per task and length (None: the study's)"""
  lengths: tuple[int, ...] = ()
  """eval lengths (empty: the study's)"""


@dataclasses.dataclass(frozen=True)
class Demo:
  """A sparse_ops tour: implementations × patterns, with times."""

  length: int = 2048
  """sequence length T"""
  heads: int = 4
  head_dim: int = 64


# ---------------------------------------------------------------------------------- parsing
def _usage_error(command: str, message: str) -> NoReturn:
  """A bad value: one line naming it and what is valid, then where the flags are; exit 2 (as
  argparse's errors were, and `python -m train`'s are)."""
  prog = f"{PROG} {command}"
  print(f"{prog}: error: {message}\n(see {prog} --help)", file=sys.stderr)
  raise SystemExit(2)


def _parse(argv: list[str]):
  """`COMMAND [flags]` -> that command's dataclass, by tyro. tyro's boxed error (5-15 lines) is
  cut to the line that names the value and what is valid; --help passes through unchanged."""
  import tyro  # here, not at the top: `run` and `job` arm their SIGTERM handler before it
  variants = []
  for name, (cls, _) in _COMMANDS.items():
    markers = [tyro.conf.subcommand(name)]
    if name in _POSITIONAL:
      markers += [tyro.conf.PositionalRequiredArgs, tyro.conf.PositionalMetavarFromFieldName]
    variants.append(Annotated[(cls, *markers)])
  # Flags as argparse's store_true made them: --no-report alone, not --report/--no-report pairs.
  # (`--out None` and the like mean "not given": tyro.conf.DisallowNone would refuse them but
  # still list None among the valid choices of --executor, a worse message.)
  config = (tyro.conf.FlagCreatePairsOff,)
  err = io.StringIO()
  try:
    with contextlib.redirect_stderr(err):
      return tyro.cli(Union[tuple(variants)], args=argv, prog=PROG, config=config,
                      description=_DESCRIPTION)
  except SystemExit as e:
    if e.code in (0, None):
      sys.stderr.write(err.getvalue())
      raise
    _usage_error(argv[0], guard.box_message(err.getvalue()))


# --------------------------------------------------------------------------------- commands
def _run(a: Run) -> None:
  if a.stop_after is not None and not a.stop_after > 0:  # `not >` also refuses nan
    _usage_error("run", f"--stop-after {a.stop_after:g}: must be a positive number of seconds")
  if a.workers is not None and a.workers < 0:
    _usage_error("run", f"--workers {a.workers}: must be 0 (in-process) or a positive number "
                 "of workers")
  with _deferred_sigterm():
    from experiments.runs import sweep
    from experiments.spec import study as study_lib
  _check_preset("run", a.preset, study_lib.presets())
  study = study_lib.load_preset(a.preset)
  if a.wandb:
    study = dataclasses.replace(study, wandb=a.wandb)
  out = a.out or f"runs/{a.preset}"
  name = a.executor or study.executor
  options = dict(study.executor_options) if name == study.executor else {}
  if a.workers is not None:
    options["workers"] = a.workers
  if a.runs_per_device is not None:
    options["runs_per_device"] = a.runs_per_device
  if a.partition:
    options["partition"] = a.partition
  if a.hosts:
    options["hosts"] = tuple(a.hosts.split(","))
  if a.launch:
    options["launch"] = a.launch
  t0 = time.time()
  by_state = sweep.run_sweep(study, out, executors.make(name, **options),
                             retry_failed=a.retry_failed, stop_after=a.stop_after,
                             add_to_study=a.add_to_study, only=a.only,
                             log=lambda s: print(s, flush=True))
  if study.probe:
    _probe_done_runs(out)
  if not a.no_report:
    path = write_report(out, wall_s=time.time() - t0)
    print(f"wrote {out}/results.csv, {path} and {out}/plots/")
  summary = ", ".join(f"{len(v)} {k}" for k, v in by_state.items() if v)
  print(f"study {study.name}: {summary}; {time.time() - t0:.0f}s", flush=True)


def _check_preset(command: str, preset: str, valid: list[str]) -> None:
  if preset not in valid:
    _usage_error(command, f"--preset {preset!r} is unknown; valid: {', '.join(valid)}")


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
    tracking.backfill(study, Path(out), mode)  # runs trained with W&B off join the group
    tracking.summary(study, Path(out), inputs["rows"], figs, mode)
  return path


def _status(a: Status) -> None:
  from experiments.runs import store, sweep
  rows = store.status_rows(a.dir)
  print(f"{'run':12} {'model':34} {'state':9} {'steps':>11} {'train FLOPs':>11} "
        f"{'budget':>9} {'tries':>5} {'wall s':>7}  error")
  left = 0.0
  for r in rows:
    # done: the wall its attempts took; else ~ what is left of `sweep.expected_wall` after its
    # preempted attempts (the estimate `--stop-after` plans with)
    if r["state"] == "done":
      wall = f"{(r['train_wall_s'] or 0) + (r['eval_wall_s'] or 0) + r['preempted_wall_s']:.0f}"
    else:
      try:
        need = max(0.0, sweep.expected_wall(Path(a.dir), Path(a.dir) / "runs" / r["run_id"])
                   - r["preempted_wall_s"])
      except (ValueError, OSError):  # a damaged record: named below ("unreadable: ...")
        need, wall = None, "?"
      if need is not None:
        left += need
        wall = f"~{need:.0f}"
    print(f"{r['run_id']:12} {r['label']:34} {r['state']:9} {r['step']:>5}/{r['steps']:<5} "
          f"{r['train_flops']:11.3g} {r['budget']:9.3g} {r['attempts']:>5} {wall:>7}  "
          f"{r['error'][:80]}")
  counts: dict[str, int] = {}
  for r in rows:
    counts[r["state"]] = counts.get(r["state"], 0) + 1
  print(", ".join(f"{v} {k}" for k, v in sorted(counts.items()))
        + (f"; ~{left:.0f} s of runs left by this folder's walls" if left else ""))
  for note in store.damaged_files(a.dir):  # status works on what is readable, says what is not
    print(f"unreadable: {note}")


def _report(a: Report) -> None:
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


@contextlib.contextmanager
def _deferred_sigterm():
  """SIGTERM noted, not raised, while the block imports JAX and the rest: raised inside a C
  extension's initialisation (numpy's, jaxlib's) a _Terminated comes out as an ImportError (see
  _termination), or aborts the process (exit 134), or is lost, the job then running to its end
  with SIGTERM ignored (all three seen). Honoured, as a _Terminated, when the block is done."""
  noted: list[int] = []
  signal.signal(signal.SIGTERM, lambda signum, frame: noted.append(signum))
  try:
    yield
  finally:
    signal.signal(signal.SIGTERM, _terminate)
  if noted:
    _terminate(noted[0], None)


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


def _job(a: Job) -> None:
  if not (Path(a.run_dir) / "spec.json").exists():
    raise SystemExit(f"error: {a.run_dir}/spec.json not found: RUN_DIR must be a run folder "
                     "(<study>/runs/<run_id>) planned by `python -m experiments run`")
  stop = None
  try:
    with _deferred_sigterm():
      _die_with_parent()
      from experiments.runs import job
    rec = job.run_job(a.run_dir)
  except (_Terminated, Exception) as e:  # noqa: BLE001 — re-raised unless a SIGTERM is in it
    if (stop := _termination(e)) is None:
      raise
  if stop is not None:
    _job_preempted(a.run_dir, stop)
    return
  print(f"{a.run_dir}: {rec['state']}" + (f" — {rec.get('error')}" if rec.get("error") else ""))
  if rec["state"] == "failed":
    raise SystemExit(1)


def _job_preempted(run_dir: str, stop: _Terminated) -> None:
  _record_preempted(run_dir, str(stop))  # no-op when run_job recorded it already
  print(f"{run_dir}: preempted ({stop})", flush=True)
  # exit 0, as `python -m train` does for a preempted run: the record says what happened


def _presets(a: Presets) -> None:
  from experiments.spec import study as study_lib
  for name in study_lib.presets():
    s = study_lib.load_preset(name)
    specs, skipped = s.runs()
    print(f"{name:8} {len(specs)} runs, {len(skipped)} skipped, executor {s.executor}")


def _calibrate(a: Calibrate) -> None:
  if a.steps < 1:
    _usage_error("calibrate", f"--steps {a.steps}: must be a positive number of steps")
  from experiments.spec import study as study_lib
  from experiments.tools import calibrate
  _check_preset("calibrate", a.preset, study_lib.presets())  # before --out is emptied
  calibrate.calibrate(a.preset, Path(a.out), a.steps, log=lambda s: print(s, flush=True))


def _probe(a: Probe) -> None:
  for d in a.run_dirs:
    if not (Path(d) / "spec.json").exists():
      _usage_error("probe", f"{d}: no spec.json; RUN_DIRS must be run folders "
                   "(<study>/runs/<run_id>)")
  if a.examples is not None and a.examples < 2:
    _usage_error("probe", f"--examples {a.examples}: must be >= 2")
  from experiments.tools import probe
  for d in a.run_dirs:
    probe.probe(d, examples=a.examples, lengths=a.lengths or None)


def _probe_done_runs(out: str) -> None:
  """A study with `probe=True`: every done run without probe files is probed (on this host,
  after the sweep)."""
  from experiments.runs import store
  from experiments.tools import probe
  study = store.load_study(Path(out))
  for d in store.run_dirs(Path(out)):
    if store.state(d, study.eval.key) == "done" and not (d / "probe.json").exists():
      probe.probe(d)


def _demo(a: Demo) -> None:
  for flag, value in (("--length", a.length), ("--heads", a.heads), ("--head-dim", a.head_dim)):
    if value < 1:
      _usage_error("demo", f"{flag} {value}: must be a positive integer")
  from experiments.tools import demo
  demo.main(a.length, a.heads, a.head_dim)


# name -> (flags, what runs them); the order is the order --help lists them in.
_COMMANDS: dict[str, tuple[type, Callable]] = {
    "run": (Run, _run), "status": (Status, _status), "report": (Report, _report),
    "job": (Job, _job), "presets": (Presets, _presets), "calibrate": (Calibrate, _calibrate),
    "probe": (Probe, _probe), "demo": (Demo, _demo)}
# their required arguments: DIR / RUN_DIR / RUN_DIRS
_POSITIONAL = {"status", "report", "job", "probe"}


def main(argv=None, *, noted_sigterm: list[int] | None = None) -> None:
  """`python -m experiments ARGV`. noted_sigterm: where __main__ notes a SIGTERM that came while
  this module loaded (None in-process: this process's SIGTERM handling is left as it is)."""
  argv = list(sys.argv[1:] if argv is None else argv)
  debug = "--debug" in argv
  argv = [x for x in argv if x != "--debug"]
  previous = signal.getsignal(signal.SIGTERM)  # run and job install their own
  try:
    _main(argv, noted_sigterm)
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


def _main(argv: list[str], noted_sigterm: list[int] | None) -> None:
  if not argv:
    print(__doc__, file=sys.stderr)
    print(f"usage: {PROG} {{{','.join(_COMMANDS)}}} [options]", file=sys.stderr)
    raise SystemExit(2)
  if argv[0] not in _COMMANDS and argv[0] not in ("-h", "--help"):
    # exit 2 like every other usage error (it was 1)
    print(f"error: unknown command {argv[0]!r}; valid: {', '.join(_COMMANDS)}\n"
          f"({PROG} alone lists them with their options)", file=sys.stderr)
    raise SystemExit(2)
  try:
    if argv[0] in ("run", "job"):
      # SIGTERM outside training (importing, evaluating, between runs) used to end the process
      # with no record (a bare exit 143): now a _Terminated, recorded as preempted by run_job
      # or below, and the sweep stops (see main). Armed before tyro's import and the ~2 s of
      # the job's imports; one that came earlier, while this module loaded, is honoured now.
      signal.signal(signal.SIGTERM, _terminate)
      if noted_sigterm:
        _terminate(noted_sigterm[0], None)
    elif noted_sigterm is not None:  # the other commands stop on SIGTERM as any process does
      signal.signal(signal.SIGTERM, signal.SIG_DFL)
      if noted_sigterm:
        raise SystemExit(128 + signal.SIGTERM)
    args = _parse(argv)
  except (_Terminated, Exception) as e:  # noqa: BLE001 — re-raised unless a SIGTERM is in it
    stop = _termination(e)  # during the parse: a job not started yet is recorded here
    if stop is None or not (argv[0] == "job" and len(argv) == 2 and
                            (Path(argv[1]) / "spec.json").exists()):
      raise
    _job_preempted(argv[1], stop)
    return
  _COMMANDS[argv[0]][1](args)


if __name__ == "__main__":
  main()
