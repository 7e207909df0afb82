"""Resumable, idempotent sweeps: plan the grid into run folders, execute the unfinished ones,
collect results.csv.

A study folder `out/`:
  study.json                 the Study (what `status` and `report` read back)
  runs/<run_id>/spec.json    the RunSpec (run_id = hash of the fields that decide the result)
  runs/<run_id>/job.json     the sweep's record: state, attempts, last error, eval key
  runs/<run_id>/.job.lock    held (flock) by the process running this run's job
  runs/<run_id>/...          the trainer's outputs (config.json, status.json, metrics.jsonl,
                             checkpoints/) and eval.json (this run's evaluation rows)
  results.csv                one row per run × eval setting × task (finished runs only)

A run is *done* when its eval.json holds the study's current eval settings; rerunning a sweep
skips done runs, resumes partial ones from their last checkpoint (the trainer resumes exactly),
retries failed ones until `max_attempts` and then reports them. The unit of work is
`run_job(run_dir)`, a plain module-level function, so every executor (in-process, subprocess,
Slurm via submitit, pod hosts) runs the same code.
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import io
import json
import os
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Iterator

from experiments import study as study_lib
from experiments.grid import RunSpec, spec_from_dict, to_dict

STATES = ("pending", "running", "preempted", "failed", "done")


class DamagedFile(ValueError):
  """A small file that exists but cannot be read back (truncated, garbled, wrong shape)."""


class StudyMismatch(ValueError):
  """Another preset on a study folder without asking to add to it."""


# ------------------------------------------------------------------------------------ files
def write_text(path: Path, text: str) -> None:
  """Atomic: a reader (status, another executor) never sees half a file, and a crash or a full
  disk leaves the previous version, not a truncated one."""
  path = Path(path)
  tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
  try:
    with open(tmp, "w", newline="") as f:  # the text's own line ends (csv writes \r\n)
      f.write(text)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  finally:
    tmp.unlink(missing_ok=True)


def write_json(path: Path, obj: Any) -> None:
  write_text(path, json.dumps(obj, indent=1))


def read_json(path: Path, default: Any = None, *, need: tuple[str, ...] = ()) -> Any:
  """The file's JSON, `default` if it does not exist; DamagedFile naming the path if it does
  but cannot be parsed, or is not an object holding the keys in `need`."""
  try:
    d = json.loads(Path(path).read_text())
  except FileNotFoundError:
    return default
  except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError is a ValueError
    raise DamagedFile(f"{path}: unreadable ({type(e).__name__}: {e})") from None
  if need and not (isinstance(d, dict) and all(k in d for k in need)):
    raise DamagedFile(f"{path}: not the expected record (needs keys {list(need)})")
  return d


def _readable(path: Path, need: tuple[str, ...] = ()) -> Any:
  """read_json that answers None for a damaged file too (callers that report it elsewhere)."""
  try:
    return read_json(path, need=need)
  except DamagedFile:
    return None


def run_dirs(out: Path) -> list[Path]:
  order = read_json(Path(out) / "study.json", {}).get("run_order", [])
  return [Path(out) / "runs" / rid for rid in order]


def load_study(out: Path) -> study_lib.Study:
  d = read_json(Path(out) / "study.json", need=("study", "run_order"))
  if d is None:
    raise FileNotFoundError(f"{out}/study.json not found: is {out} a study folder "
                            "(made by `python -m experiments run`)?")
  return study_lib.from_json(d["study"])


def plan(study: study_lib.Study, out: Path, *, add: bool = False) -> list[Path]:
  """Writes study.json and one folder per run (existing folders are kept as they are).

  A folder remembers its preset (the study's name): another one is refused (StudyMismatch)
  unless `add`; then its runs join the folder's and the earlier runs stay in run_order (so in
  results.csv and the report), evaluated with the newest study's eval settings (re-evaluated,
  never retrained, if those differ). Without this, the new preset's run_order silently replaced
  the old one and the earlier runs vanished from the results."""
  out = Path(out)
  try:
    prev = read_json(out / "study.json", need=("study", "run_order"))
  except DamagedFile as e:  # its preset and run order are lost: guessing could drop runs
    raise DamagedFile(f"{e}; move it away to plan the folder again (run folders are kept, "
                      "finished runs are not redone)") from None
  kept: list[str] = []
  presets = [study.name]
  if prev is not None:
    old = prev["study"].get("name")
    presets = prev.get("presets", [old])
    if old != study.name and not add:
      raise StudyMismatch(
          f"{out} holds preset {old!r} (study.json); refusing preset {study.name!r} on it: pass "
          f"--add-to-study to add {study.name}'s runs to it (the {old} runs stay), or another "
          "--out")
    # Runs an earlier preset added stay; with `add`, so do all of the folder's runs.
    kept = list(prev["run_order"]) if old != study.name else list(prev.get("kept", []))
    presets = presets + [study.name] if presets[-1] != study.name else presets
  (out / "runs").mkdir(parents=True, exist_ok=True)
  specs, skipped = study.runs()
  for spec in specs:
    d = out / "runs" / spec.run_id
    d.mkdir(exist_ok=True)
    if _readable(d / "spec.json", need=("run_id",)) is None:  # absent or damaged: rewrite it
      write_json(d / "spec.json", {**to_dict(spec), "run_id": spec.run_id, "label": spec.label})
  new = [s.run_id for s in specs if s.run_id not in kept]
  record = {"study": study_lib.to_json(study), "run_order": kept + new, "skipped": skipped}
  if kept or len(presets) > 1:  # single-preset folders keep their study.json as it was
    record.update(presets=presets, kept=kept)
  write_json(out / "study.json", record)
  return [out / "runs" / rid for rid in kept + new]


def load_spec(run_dir: Path) -> RunSpec:
  return _spec(read_json(Path(run_dir) / "spec.json"))


def _spec(written: dict[str, Any]) -> RunSpec:
  """The RunSpec of a spec.json's contents (which add the derived run_id and label)."""
  return spec_from_dict({k: v for k, v in written.items() if k not in ("run_id", "label")})


# Records this process knows but could not (unwritable run dir) or must not (another process
# holds the run) write to job.json; they stand in for the file until the next sweep call.
_MEMORY: dict[Path, dict[str, Any]] = {}


def job_record(run_dir: Path) -> dict[str, Any]:
  """job.json; a damaged one reads as a failed run with no attempts used, so the sweep names it
  and tries the run again (the trainer resumes it from its checkpoint) instead of crashing."""
  run_dir = Path(run_dir)
  if run_dir in _MEMORY:
    return dict(_MEMORY[run_dir])
  try:
    return read_json(run_dir / "job.json", {"state": "pending", "attempts": 0},
                     need=("state",))
  except DamagedFile as e:
    return {"state": "failed", "attempts": 0, "damaged": True,
            "error": f"{e}: the run is tried again (resumes from its checkpoint)"}


def state(run_dir: Path, eval_key: str | None = None) -> str:
  """pending / running / preempted / failed / done (done = evaluated with `eval_key`)."""
  rec = job_record(run_dir)
  if rec["state"] == "done" and eval_key is not None:
    ev = _readable(Path(run_dir) / "eval.json", need=("eval_key", "rows"))
    if ev is None or ev.get("eval_key") != eval_key:
      return "pending"  # trained, but evaluated with other settings (or unreadably): again
  return rec["state"] if rec["state"] in STATES else "failed"


def _study_run_dirs(out: Path) -> tuple[list[Path], str | None]:
  """(run folders, eval key): from study.json, or, if that is damaged, every folder under
  runs/ with no eval key, so `status` still shows what the runs' own files say."""
  try:
    return run_dirs(out), load_study(out).eval.key
  except DamagedFile:
    return sorted(d for d in (Path(out) / "runs").glob("*") if d.is_dir()), None


def damaged_files(out: Path) -> list[str]:
  """What cannot be read back in a study folder, each with what the sweep does about it."""
  notes = []
  try:
    load_study(out)
  except DamagedFile as e:
    notes.append(f"{e}: runs listed from runs/; `run` refuses the folder until it is moved away")
  for d in _study_run_dirs(out)[0]:
    for name, need, then in (
        ("spec.json", ("run_id",), "the run is left out until a sweep rewrites it"),
        ("job.json", ("state",), "the run counts as failed and is tried again"),
        ("eval.json", ("eval_key", "rows"), "the run is evaluated again"),
        ("status.json", (), "ignored (the trainer rewrites it)")):
      try:
        read_json(d / name, need=need)
      except DamagedFile as e:
        notes.append(f"{e}: {then}")
  return notes


def _primary() -> bool:
  """Process 0 of a pod run (or any single-process run): the one that writes the run folder."""
  return int(os.environ.get("EXPERIMENTS_PROCESS_ID", "0")) == 0


def _update(run_dir: Path, **fields: Any) -> dict[str, Any]:
  """Merges `fields` into job.json. An unwritable run dir does not raise (that crashed the whole
  sweep from inside a run's failure handler): the run is failed in this process's memory,
  naming the path, and the sweep goes on."""
  run_dir = Path(run_dir)
  rec = {k: v for k, v in job_record(run_dir).items() if k != "damaged"}
  rec.update(fields)
  if _primary() and run_dir not in _MEMORY:
    try:
      write_json(run_dir / "job.json", rec)
    except OSError as e:
      rec = _remember_failed(run_dir, rec, f"cannot write {run_dir / 'job.json'}: {e}")
  return rec


def _remember_failed(run_dir: Path, rec: dict[str, Any], why: str) -> dict[str, Any]:
  err = rec.get("error")
  rec = {**rec, "state": "failed", "error": why + (f" (then: {err})" if err else "")}
  _MEMORY[Path(run_dir)] = rec
  return rec


class _Held(Exception):
  """Another live process holds this run dir."""


@contextlib.contextmanager
def job_lock(run_dir: Path) -> Iterator[None]:
  """The run's lock, held for its whole job (training and evaluation), so two processes never
  work on one run dir whatever was killed (an orphaned worker of a killed sweep, a second
  sweep elsewhere). flock dies with its holder. Raises _Held if taken; a filesystem without
  flock (some NFS/Lustre mounts) runs unlocked, as before. Pod: process 0 locks for all."""
  if not _primary():
    yield
    return
  with open(Path(run_dir) / ".job.lock", "a") as f:  # OSError (read-only dir) goes up
    try:
      fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      raise _Held(f"{run_dir} is held by another process (lock {run_dir}/.job.lock)") from None
    except OSError:
      pass
    yield


def _elsewhere(run_dir: Path, why: str) -> dict[str, Any]:
  """Another process trains this run: say "running" for this call, write nothing."""
  _MEMORY[Path(run_dir)] = {**job_record(run_dir), "state": "running", "elsewhere": why}
  return dict(_MEMORY[Path(run_dir)])


def held_elsewhere(run_dir: Path) -> bool:
  try:
    with job_lock(run_dir):
      return False
  except _Held:
    return True
  except OSError:
    return False


# ------------------------------------------------------------------------------ one run's job
def train_config(spec: RunSpec, run_dir: Path, study: study_lib.Study, *, progress: bool = True):
  """The trainer's Config for a run spec: the study never trains itself, it calls `train.run`."""
  from train.config import (CheckpointConfig, Config, DataConfig, DistributedConfig, EvalConfig,
                            LogConfig, OptimConfig)
  o = spec.optim
  env = os.environ
  distributed = DistributedConfig()
  if env.get("EXPERIMENTS_NUM_PROCESSES"):  # set per host by the pod launcher
    distributed = DistributedConfig(coordinator=env["EXPERIMENTS_COORDINATOR"],
                                    num_processes=int(env["EXPERIMENTS_NUM_PROCESSES"]),
                                    process_id=int(env["EXPERIMENTS_PROCESS_ID"]))
  return Config(
      run_dir=str(run_dir), model=spec.model,
      data=DataConfig(tasks=spec.tasks, weights=spec.task_weights, seq_len=spec.seq_len,
                      short_len=spec.short_len, short_steps=spec.short_steps, seed=spec.seed,
                      source=spec.data_source),
      optim=OptimConfig(lr=o.lr, warmup_steps=o.warmup_steps(spec.steps),
                        min_lr_ratio=o.min_lr_ratio, weight_decay=o.weight_decay,
                        clip_norm=o.clip_norm),
      checkpoint=CheckpointConfig(every=study.checkpoint_every, keep=2),
      log=LogConfig(every=study.log_every, progress=progress, wandb=study.wandb,
                    project=study.wandb_project, group=study.name),
      distributed=distributed,
      eval=EvalConfig(examples=0),  # the study evaluates on its own settings afterwards
      batch_size=spec.batch_size, steps=spec.steps, seed=spec.seed,
      steps_per_call=study.steps_per_call, compute_dtype=spec.compute_dtype, resume=True)


def trained_model(run_dir: Path):
  """(model, compute dtype) of a finished run, from its latest checkpoint (`train.load`)."""
  import train
  model, cfg, step = train.load(run_dir)
  if step != cfg.total_steps:
    raise RuntimeError(f"{run_dir}: latest checkpoint is step {step}, the run has "
                       f"{cfg.total_steps} steps: training is not finished")
  return model, cfg.compute_dtype


Trainer = Callable[[RunSpec, Path, study_lib.Study], dict[str, Any]]
Loader = Callable[[Path], Any]


def real_trainer(spec: RunSpec, run_dir: Path, study: study_lib.Study) -> dict[str, Any]:
  import train
  try:
    result = train.run(train_config(spec, run_dir, study, progress=_progress_bars()))
  except train.RunLocked as e:  # a trainer outside this sweep (`python -m train`) holds it
    return {"status": "locked", "message": str(e)}
  return {"status": result.status, "step": result.step, "loss": result.loss,
          "message": result.message}


def _progress_bars() -> bool:
  return os.environ.get("EXPERIMENTS_PROGRESS", "1") != "0"


def _compilation_cache(out: Path) -> None:
  """Share compiled programs between the study's runs (each job is its own process): runs of one
  size evaluate through identical programs, and on a GPU each compile costs seconds, dozens per
  run. JAX_COMPILATION_CACHE_DIR, when set, wins."""
  import jax
  if not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    jax.config.update("jax_compilation_cache_dir", str(out / ".jax_cache"))


def run_job(run_dir: str | Path, trainer: Trainer | None = None,
            loader: Loader | None = None, log: Callable[[str], None] = print) -> dict[str, Any]:
  """Trains (or resumes) and evaluates one run; records the outcome in job.json; never raises
  for a run's own failure, so one bad run cannot stop a sweep. A run another process holds is
  left to it untouched (state "running", `elsewhere`)."""
  run_dir = Path(run_dir)
  _MEMORY.pop(run_dir, None)  # a fresh attempt: what an earlier one could not write is moot
  try:
    with job_lock(run_dir):
      return _run_job(run_dir, trainer, loader, log)
  except _Held as e:
    log(f"  {e}: left to it")
    return _elsewhere(run_dir, str(e))
  except OSError as e:  # the lock file cannot be made: an unwritable run dir
    return _remember_failed(run_dir, job_record(run_dir), f"cannot write in {run_dir}: {e}")


def _run_job(run_dir: Path, trainer: Trainer | None, loader: Loader | None,
             log: Callable[[str], None]) -> dict[str, Any]:
  from experiments import evaluate as eval_lib
  out = run_dir.parent.parent
  _compilation_cache(out)
  study = load_study(out)
  spec = load_spec(run_dir)
  trainer, loader = trainer or real_trainer, loader or trained_model
  # On a pod every process runs this same code (training and loading are collective); only
  # process 0 writes job.json, eval.json and W&B.
  before = job_record(run_dir)
  rec = _update(run_dir, state="running", attempts=before.get("attempts", 0) + 1,
                host=os.uname().nodename, pid=os.getpid(), started=time.time(), error=None,
                slurm_job=_slurm_job_id())
  if rec["state"] == "failed":  # job.json could not be written: do not train unrecorded
    return rec
  t0 = time.time()
  try:
    result = trainer(spec, run_dir, study)
    if result["status"] == "locked":  # not a failed attempt: put the record back as it was
      log(f"  {run_dir}: {result.get('message')}: left to it")
      with contextlib.suppress(OSError):
        write_json(run_dir / "job.json", {k: v for k, v in before.items() if k != "damaged"})
      return _elsewhere(run_dir, result.get("message"))
    if result["status"] == "preempted":
      return _update(run_dir, state="preempted", error=result.get("message"),
                     attempts=rec["attempts"] - 1,  # an interruption is not a failed attempt
                     preempted_wall_s=_lost(rec, t0))
    if result["status"] != "finished":
      return _update(run_dir, state="failed", error=result.get("message") or result["status"],
                     train_wall_s=time.time() - t0)
    t1 = time.time()
    model, compute_dtype = loader(run_dir)
    forward = eval_lib.make_forward(model, compute_dtype)
    rows = eval_lib.evaluate(forward, spec.model, study.eval, spec.model.vocab_size)
    if _primary():
      write_json(run_dir / "eval.json", {"eval_key": study.eval.key, "rows": rows})
      log(f"  evaluated {spec.label} in {time.time() - t1:.0f}s")
      _log_wandb_run(study, spec, run_dir, rows)
    return _update(run_dir, state="done", train_wall_s=t1 - t0, eval_wall_s=time.time() - t1,
                   finished=time.time())
  except KeyboardInterrupt:
    _update(run_dir, state="preempted", error="interrupted", attempts=rec["attempts"] - 1,
            preempted_wall_s=_lost(rec, t0))
    raise
  except Exception as e:  # noqa: BLE001 — any failure of one run is recorded, not propagated
    return _update(run_dir, state="failed", error=f"{type(e).__name__}: {e}",
                   traceback=traceback.format_exc()[-4000:])


def _lost(rec: dict[str, Any], t0: float) -> float:
  """Seconds spent in preempted attempts so far (train_wall_s times only the last attempt)."""
  return rec.get("preempted_wall_s", 0.0) + time.time() - t0


def _slurm_job_id() -> str | None:
  """The id Slurm and submitit use for this job: JOB_TASK for an array task."""
  env = os.environ
  if env.get("SLURM_ARRAY_TASK_ID"):
    return f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
  return env.get("SLURM_JOB_ID")


def _log_wandb_run(study, spec: RunSpec, run_dir: Path, rows: list[dict[str, Any]]) -> None:
  """One W&B run per model (group = study) with flat config fields, so W&B's grouping and
  parallel-coordinates views can slice by size, pattern, sparsity and budget."""
  if study.wandb == "disabled":
    return
  from experiments import report
  report.wandb_model_run(study, spec, run_dir, rows)


# -------------------------------------------------------------------------------- the sweep
@contextlib.contextmanager
def study_lock(out: Path) -> Iterator[None]:
  """One sweep per study folder at a time (a second would train the same runs twice)."""
  Path(out).mkdir(parents=True, exist_ok=True)
  with open(Path(out) / ".sweep.lock", "w") as f:
    try:
      fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      raise RuntimeError(f"another sweep is running on {out} (lock {out}/.sweep.lock)") from None
    yield


def todo(out: Path, dirs: list[Path], study: study_lib.Study, *, retry_failed: bool) -> list[Path]:
  """Runs an executor should (re)start now."""
  key = study.eval.key
  todo_ = []
  for d in dirs:
    s = state(d, key)
    if s == "done" or d in _MEMORY:  # _MEMORY: unwritable or held elsewhere, this call
      continue
    # Held by a live process (an orphaned worker of a killed sweep still finishing it): left
    # to it. A run submitted to Slurm stays: the Slurm executor waits for its job itself.
    if not job_record(d).get("slurm_submitted") and held_elsewhere(d):
      _elsewhere(d, f"held by another process (pid {job_record(d).get('pid')}, lock "
                    f"{d}/.job.lock)")
      continue
    if s == "failed" and job_record(d).get("attempts", 0) >= study.max_attempts and not retry_failed:
      continue
    todo_.append(d)
  return todo_


# A size not seen yet in the folder is judged from other sizes' runs scaled by training FLOPs,
# with this margin: it compiles everything anew and may use the GPU differently. On the h100
# study (one H100, equal budgets) the 20m and 50m runs took 0.6-1.0x the 6m runs' wall; scaling
# by parameters, as this did first, asked 572 s for 20m runs that took 104-173 s.
NEW_SIZE_MARGIN = 1.5


def expected_wall(out: Path, run_dir: Path) -> float:
  """Seconds a run should take, from the finished runs of this study folder (training +
  evaluation as job.json recorded them), each scaled by training FLOPs (`budget`) to this run's:
  the longest of the same size, else the longest of other sizes times `NEW_SIZE_MARGIN`;
  0 before any finishes."""
  spec = read_json(Path(run_dir) / "spec.json")
  same, other_sizes = [], []
  for d in run_dirs(out):
    rec, other = job_record(d), read_json(d / "spec.json") or {}
    if rec["state"] != "done" or "train_wall_s" not in rec:
      continue
    wall = (rec["train_wall_s"] + rec.get("eval_wall_s", 0.0)) * spec["budget"] / other["budget"]
    (same if other.get("size") == spec["size"] else other_sizes).append(wall)
  return max(same, default=0.0) or NEW_SIZE_MARGIN * max(other_sizes, default=0.0)


def run_sweep(study: study_lib.Study, out: Path, executor, *, retry_failed: bool = False,
              stop_after: float | None = None, add_to_study: bool = False,
              log: Callable[[str], None] = print) -> dict[str, list[str]]:
  """Plans, runs every unfinished run (with retries), collects results.csv. Returns run ids
  by final state.

  stop_after: a time limit in seconds for this call, for machines lent for a fixed time. Runs
  then go one at a time, and a run is started only if it should end inside the limit (judged by
  `expected_wall`); the rest stay pending for the next call, which continues where this one
  stopped. A run the estimate gets wrong is not cut: wrap the call in `timeout -s TERM`, which
  preempts it cleanly (the trainer saves and the sweep stops).

  add_to_study: run this study on a folder made by another preset, keeping that one's runs
  (`plan`); without it such a folder is refused.
  """
  out = Path(out)
  t_start = time.time()
  _MEMORY.clear()
  with study_lock(out):
    dirs = plan(study, out, add=add_to_study)
    skipped = read_json(out / "study.json")["skipped"]
    for s in skipped:
      log(f"grid point skipped: {s}")
    for note in damaged_files(out):
      log(f"damaged file: {note}")
    done0 = sum(state(d, study.eval.key) == "done" for d in dirs)
    log(f"study {study.name}: {len(dirs)} runs ({done0} already done) in {out}")
    if retry_failed:
      for d in dirs:
        if job_record(d).get("state") == "failed":
          _update(d, attempts=0)
    for attempt in range(study.max_attempts):
      pending = todo(out, dirs, study, retry_failed=False)
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
          if state(d) == "preempted":
            break
      if any(state(d) == "preempted" for d in pending):
        log("interrupted (preempted): rerun the same command to continue")
        break
      if out_of_time:
        break
    by_state: dict[str, list[str]] = {s: [] for s in STATES}
    for d in dirs:
      by_state[state(d, study.eval.key)].append(d.name)
    collect(out)
    for rid in by_state["failed"]:
      rec = job_record(out / "runs" / rid)
      label = (_readable(out / "runs" / rid / "spec.json") or {}).get("label", "?")
      log(f"FAILED {rid} ({label}) after {rec.get('attempts')} attempt(s): {rec.get('error')}")
    for d in dirs:
      if job_record(d).get("elsewhere"):
        log(f"RUNNING ELSEWHERE {d.name}: {job_record(d)['elsewhere']}; rerun when it ends "
            "to collect it")
    return by_state


# ------------------------------------------------------------------------------- results.csv
COLUMNS = (
    "study", "run_id", "label", "size", "params", "nonembed_params", "train_pattern",
    "train_sparsity_target", "train_sparsity_element", "train_sparsity_block", "budget", "steps",
    "train_flops", "flops_residual", "train_flops_per_token", "train_seq_len", "task", "category",
    "eval_length", "phase", "eval_setting", "eval_pattern", "eval_budget", "eval_sparsity_target",
    "eval_sparsity_element", "eval_sparsity_block", "inference_flops_per_token",
    "selection_flops_per_token", "accuracy", "ci_low", "ci_high", "n", "accuracy_std",
    "token_accuracy", "set_recall", "chance")
# Columns added later, with the value every row written before them had (static patterns only).
_DEFAULTS = {"eval_budget": "", "selection_flops_per_token": 0.0}


def result_rows(out: Path) -> list[dict[str, Any]]:
  """Rows of every done run, in plan order (deterministic, so reruns give the same file)."""
  out = Path(out)
  study = load_study(out)
  rows = []
  for d in run_dirs(out):
    if state(d, study.eval.key) != "done" or _readable(d / "spec.json", ("run_id",)) is None:
      continue
    spec = load_spec(d)
    train_stats = spec.train_attention_stats()
    base = dict(study=study.name, run_id=spec.run_id, label=spec.label, size=spec.size,
                params=spec.params, nonembed_params=spec.nonembed_params,
                train_pattern=spec.pattern, train_sparsity_target=spec.train_sparsity,
                train_sparsity_element=train_stats["element"],
                train_sparsity_block=train_stats["block"], budget=spec.budget, steps=spec.steps,
                train_flops=spec.train_flops, flops_residual=spec.flops_residual,
                train_flops_per_token=spec.flops_per_token, train_seq_len=spec.seq_len)
    for r in read_json(d / "eval.json")["rows"]:
      rows.append({**base, **_DEFAULTS, **{k: v for k, v in r.items() if k != "correct"}})
  return rows


def _fmt(v: Any) -> Any:
  return repr(v) if isinstance(v, float) else v  # repr: exact round trip, no locale surprises


def collect(out: Path) -> Path:
  path = Path(out) / "results.csv"
  buf = io.StringIO(newline="")
  w = csv.DictWriter(buf, fieldnames=COLUMNS)
  w.writeheader()
  for r in result_rows(out):
    w.writerow({k: _fmt(r.get(k)) for k in COLUMNS})
  write_text(path, buf.getvalue())
  return path


def read_results(path: Path) -> list[dict[str, Any]]:
  """results.csv → typed rows."""
  ints = {"params", "nonembed_params", "steps", "train_seq_len", "eval_length", "n"}
  strs = {"study", "run_id", "label", "size", "train_pattern", "task", "category", "phase",
          "eval_setting", "eval_pattern", "eval_budget"}
  rows = []
  with open(path) as f:
    for r in csv.DictReader(f):
      rows.append({k: (v if k in strs else int(v) if k in ints else float(v)) for k, v in r.items()})
  return rows


# ------------------------------------------------------------------------------------ status
def status_rows(out: Path) -> list[dict[str, Any]]:
  out = Path(out)
  dirs, key = _study_run_dirs(out)
  rows = []
  for d in dirs:
    spec = _readable(d / "spec.json", need=("run_id",))
    if spec is None:  # not here (a copied results folder) or damaged (damaged_files names it)
      continue
    rec = job_record(d)
    st = state(d, key)
    step = _last_step(d)
    if st == "running" and rec.get("pid") and rec.get("host") == os.uname().nodename:
      if not _alive(rec["pid"]):
        st = "stopped"  # the sweep that ran it died: the next run resumes it
    rows.append(dict(run_id=d.name, label=spec["label"], state=st, step=step,
                     steps=spec["steps"], train_flops=_spec(spec).train_flops,
                     budget=spec["budget"], attempts=rec.get("attempts", 0),
                     train_wall_s=rec.get("train_wall_s"), eval_wall_s=rec.get("eval_wall_s"),
                     preempted_wall_s=rec.get("preempted_wall_s", 0.0),
                     error=rec.get("error") or ""))
  return rows


def _last_step(run_dir: Path) -> int:
  """Training progress: the last step metrics.jsonl logged (live while a run trains)."""
  status = _readable(run_dir / "status.json") or {}  # the trainer's; damaged: step from metrics
  step = status.get("step", 0) if isinstance(status, dict) else 0
  step = step if isinstance(step, int) else 0
  path = run_dir / "metrics.jsonl"
  if path.exists():
    with open(path, "rb") as f:
      f.seek(max(0, path.stat().st_size - 4096))
      for line in f.read().decode(errors="ignore").splitlines()[::-1]:
        try:
          return max(step, int(json.loads(line)["step"]))
        except (ValueError, KeyError, TypeError):
          continue
  return step


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
    return True
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
