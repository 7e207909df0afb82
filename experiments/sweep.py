"""Resumable, idempotent sweeps: plan the grid into run folders, execute the unfinished ones,
collect results.csv.

A study folder `out/`:
  study.json                 the Study (what `status` and `report` read back)
  runs/<run_id>/spec.json    the RunSpec (run_id = hash of the fields that decide the result)
  runs/<run_id>/job.json     the sweep's record: state, attempts, last error, eval key
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
import json
import os
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Iterator

from experiments import study as study_lib
from experiments.grid import RunSpec, spec_from_dict, to_dict

STATES = ("pending", "running", "preempted", "failed", "done")


# ------------------------------------------------------------------------------------ files
def write_json(path: Path, obj: Any) -> None:
  """Atomic: a reader (status, another executor) never sees half a file."""
  tmp = path.with_suffix(path.suffix + f".tmp{os.getpid()}")
  tmp.write_text(json.dumps(obj, indent=1))
  os.replace(tmp, path)


def read_json(path: Path, default: Any = None) -> Any:
  try:
    return json.loads(Path(path).read_text())
  except FileNotFoundError:
    return default


def run_dirs(out: Path) -> list[Path]:
  order = read_json(Path(out) / "study.json", {}).get("run_order", [])
  return [Path(out) / "runs" / rid for rid in order]


def load_study(out: Path) -> study_lib.Study:
  d = read_json(Path(out) / "study.json")
  if d is None:
    raise FileNotFoundError(f"{out}/study.json not found: is {out} a study folder "
                            "(made by `python -m experiments run`)?")
  return study_lib.from_json(d["study"])


def plan(study: study_lib.Study, out: Path) -> list[Path]:
  """Writes study.json and one folder per run (existing folders are kept as they are)."""
  out = Path(out)
  (out / "runs").mkdir(parents=True, exist_ok=True)
  specs, skipped = study.runs()
  for spec in specs:
    d = out / "runs" / spec.run_id
    d.mkdir(exist_ok=True)
    if not (d / "spec.json").exists():
      write_json(d / "spec.json", {**to_dict(spec), "run_id": spec.run_id, "label": spec.label})
  write_json(out / "study.json", {"study": study_lib.to_json(study),
                                  "run_order": [s.run_id for s in specs], "skipped": skipped})
  return [out / "runs" / s.run_id for s in specs]


def load_spec(run_dir: Path) -> RunSpec:
  return _spec(read_json(Path(run_dir) / "spec.json"))


def _spec(written: dict[str, Any]) -> RunSpec:
  """The RunSpec of a spec.json's contents (which add the derived run_id and label)."""
  return spec_from_dict({k: v for k, v in written.items() if k not in ("run_id", "label")})


def job_record(run_dir: Path) -> dict[str, Any]:
  return read_json(Path(run_dir) / "job.json", {"state": "pending", "attempts": 0})


def state(run_dir: Path, eval_key: str | None = None) -> str:
  """pending / running / preempted / failed / done (done = evaluated with `eval_key`)."""
  rec = job_record(run_dir)
  if rec["state"] == "done" and eval_key is not None:
    ev = read_json(Path(run_dir) / "eval.json")
    if ev is None or ev.get("eval_key") != eval_key:
      return "pending"  # trained, but evaluated with other settings: evaluate again
  return rec["state"]


def _primary() -> bool:
  """Process 0 of a pod run (or any single-process run): the one that writes the run folder."""
  return int(os.environ.get("EXPERIMENTS_PROCESS_ID", "0")) == 0


def _update(run_dir: Path, **fields: Any) -> dict[str, Any]:
  rec = {**job_record(run_dir), **fields}
  if _primary():
    write_json(Path(run_dir) / "job.json", rec)
  return rec


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
  result = train.run(train_config(spec, run_dir, study, progress=_progress_bars()))
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
  for a run's own failure, so one bad run cannot stop a sweep."""
  from experiments import evaluate as eval_lib
  run_dir = Path(run_dir)
  out = run_dir.parent.parent
  _compilation_cache(out)
  study = load_study(out)
  spec = load_spec(run_dir)
  trainer, loader = trainer or real_trainer, loader or trained_model
  # On a pod every process runs this same code (training and loading are collective); only
  # process 0 writes job.json, eval.json and W&B.
  rec = job_record(run_dir)
  rec = _update(run_dir, state="running", attempts=rec.get("attempts", 0) + 1,
                host=os.uname().nodename, pid=os.getpid(), started=time.time(), error=None,
                slurm_job=_slurm_job_id())
  t0 = time.time()
  try:
    result = trainer(spec, run_dir, study)
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
    if s == "done":
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
              stop_after: float | None = None,
              log: Callable[[str], None] = print) -> dict[str, list[str]]:
  """Plans, runs every unfinished run (with retries), collects results.csv. Returns run ids
  by final state.

  stop_after: a time limit in seconds for this call, for machines lent for a fixed time. Runs
  then go one at a time, and a run is started only if it should end inside the limit (judged by
  `expected_wall`); the rest stay pending for the next call, which continues where this one
  stopped. A run the estimate gets wrong is not cut: wrap the call in `timeout -s TERM`, which
  preempts it cleanly (the trainer saves and the sweep stops)."""
  out = Path(out)
  t_start = time.time()
  with study_lock(out):
    dirs = plan(study, out)
    skipped = read_json(out / "study.json")["skipped"]
    for s in skipped:
      log(f"grid point skipped: {s}")
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
      log(f"FAILED {rid} ({read_json(out / 'runs' / rid / 'spec.json')['label']}) after "
          f"{rec.get('attempts')} attempt(s): {rec.get('error')}")
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
    if state(d, study.eval.key) != "done":
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
  tmp = path.with_suffix(".csv.tmp")
  with open(tmp, "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=COLUMNS)
    w.writeheader()
    for r in result_rows(out):
      w.writerow({k: _fmt(r.get(k)) for k in COLUMNS})
  os.replace(tmp, path)
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
  study = load_study(out)
  rows = []
  for d in run_dirs(out):
    spec = read_json(d / "spec.json")
    if spec is None:  # planned but not here (e.g. a copied results folder): nothing to say
      continue
    rec = job_record(d)
    st = state(d, study.eval.key)
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
  status = read_json(run_dir / "status.json") or {}
  step = status.get("step", 0) or 0
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
