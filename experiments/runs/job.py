"""One run's job: train it (`train.run`), evaluate it, record the outcome in job.json.

The unit of work is `run_job(run_dir)`, a plain module-level function, so every executor
(in-process, subprocess, Slurm via submitit, pod hosts) runs the same code.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Callable

from experiments.evaluation import evaluate as eval_lib
from experiments.runs import store, tracking
from experiments.runs.files import write_json
from experiments.spec import study as study_lib
from experiments.spec.grid import RunSpec


def train_config(spec: RunSpec, run_dir: Path, study: study_lib.Study, *, progress: bool = True):
  """The trainer's Config of a run: the spec's, plus the run folder and how the run is executed
  and watched (none of which changes its result). The study never trains itself, it calls
  `train.run`; it evaluates on its own settings afterwards, so the trainer's eval is off."""
  from train.config import CheckpointConfig, DistributedConfig, EvalConfig, LogConfig
  env = os.environ
  distributed = DistributedConfig()
  if env.get("EXPERIMENTS_NUM_PROCESSES"):  # set per host by the pod launcher
    distributed = DistributedConfig(coordinator=env["EXPERIMENTS_COORDINATOR"],
                                    num_processes=int(env["EXPERIMENTS_NUM_PROCESSES"]),
                                    process_id=int(env["EXPERIMENTS_PROCESS_ID"]))
  return dataclasses.replace(
      spec.config, run_dir=str(run_dir),
      checkpoint=CheckpointConfig(every=study.checkpoint_every, keep=2),
      log=LogConfig(every=study.log_every, progress=progress, wandb=study.wandb,
                    project=study.wandb_project, group=study.name),
      distributed=distributed, eval=EvalConfig(examples=0),
      # With data.long_lens the planned dispatch sets each step's length (the run's FLOPs).
      steps_per_call=(spec.config.steps_per_call if spec.config.data.long_lens
                      else study.steps_per_call), resume=True)


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
  # Every program, not only those over 1 s (the default): an evaluation's ~150 programs take
  # ~1 s each on a GPU, and every later run of the same size needs the same ones.
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


def run_job(run_dir: str | Path, trainer: Trainer | None = None,
            loader: Loader | None = None, log: Callable[[str], None] = print) -> dict[str, Any]:
  """Trains (or resumes) and evaluates one run; records the outcome in job.json; never raises
  for a run's own failure, so one bad run cannot stop a sweep. A run another process holds is
  left to it untouched (state "running", `elsewhere`)."""
  run_dir = Path(run_dir)
  store.forget(run_dir)
  try:
    with store.job_lock(run_dir):
      return _run_job(run_dir, trainer, loader, log)
  except store.Held as e:
    log(f"  {e}: left to it")
    return store.mark_elsewhere(run_dir, str(e))
  except OSError as e:  # the lock file cannot be made: an unwritable run dir
    return store.remember_failed(run_dir, store.job_record(run_dir), f"cannot write in {run_dir}: {e}")


class _Compiles:
  """XLA compilations while open: how many and their summed seconds (compiled side by side they
  overlap, so the sum can exceed the wall time). job.json keeps them per phase, so a study's
  pieces show what compiling cost without a separate measurement."""
  EVENT = "/jax/core/compile/backend_compile_duration"

  def __enter__(self):
    import jax
    self.count, self.seconds, self._lock = 0, 0.0, threading.Lock()
    jax.monitoring.register_event_duration_secs_listener(self._on)
    return self

  def _on(self, event: str, seconds: float, **_) -> None:
    if event == self.EVENT:
      with self._lock:  # compile threads report from their own threads
        self.count, self.seconds = self.count + 1, self.seconds + seconds

  def __exit__(self, *exc):
    import jax
    jax.monitoring.unregister_event_duration_listener(self._on)


def _run_job(run_dir: Path, trainer: Trainer | None, loader: Loader | None,
             log: Callable[[str], None]) -> dict[str, Any]:
  out = run_dir.parent.parent
  _compilation_cache(out)
  study = store.load_study(out)
  spec = store.load_spec(run_dir)
  trainer, loader = trainer or real_trainer, loader or trained_model
  # On a pod every process runs this same code (training and loading are collective); only
  # process 0 writes job.json, eval.json.gz and W&B.
  before = store.job_record(run_dir)
  rec = store.update(run_dir, state="running", attempts=before.get("attempts", 0) + 1,
                host=os.uname().nodename, pid=os.getpid(), started=time.time(), error=None,
                slurm_job=_slurm_job_id())
  if rec["state"] == "failed":  # job.json could not be written: do not train unrecorded
    return rec
  t0 = time.time()
  try:
    with _Compiles() as train_compiles:
      result = trainer(spec, run_dir, study)
    if result["status"] == "locked":  # not a failed attempt: put the record back as it was
      log(f"  {run_dir}: {result.get('message')}: left to it")
      with contextlib.suppress(OSError):
        write_json(run_dir / "job.json", {k: v for k, v in before.items() if k != "damaged"})
      return store.mark_elsewhere(run_dir, result.get("message"))
    if result["status"] == "preempted":
      return store.update(run_dir, state="preempted", error=result.get("message"),
                     attempts=rec["attempts"] - 1,  # an interruption is not a failed attempt
                     preempted_wall_s=_lost(rec, t0))
    if result["status"] != "finished":
      return store.update(run_dir, state="failed", error=result.get("message") or result["status"],
                     train_wall_s=time.time() - t0)
    t1 = time.time()
    model, compute_dtype = loader(run_dir)
    forward = eval_lib.make_forward(model, compute_dtype)
    timings = {}
    with _Compiles() as eval_compiles:
      rows = eval_lib.evaluate(forward, spec.model, study.eval, spec.model.vocab_size,
                               timings=timings)
    if store.is_primary():
      write_json(run_dir / store.EVAL_FILE, {"eval_key": study.eval.key, "rows": rows}, compact=True)
      log(f"  evaluated {spec.label} in {time.time() - t1:.0f}s")
      if study.wandb != "disabled":
        tracking.model_run(study, spec, run_dir, rows)
        store.update(run_dir, wandb=study.wandb)  # tracking.backfill skips it
    return store.update(run_dir, state="done", train_wall_s=t1 - t0, eval_wall_s=time.time() - t1,
                   finished=time.time(), train_compiles=train_compiles.count,
                   train_compile_s=round(train_compiles.seconds, 1),
                   eval_compiles=eval_compiles.count,
                   eval_compile_s=round(eval_compiles.seconds, 1),
                   # where the evaluation's wall went: compiling ahead, then passes per length
                   eval_prepare_s=round(timings["prepare_s"], 1),
                   eval_length_s={str(n): round(v, 1) for n, v in timings["length_s"].items()})
  except KeyboardInterrupt:
    store.update(run_dir, state="preempted", error="interrupted", attempts=rec["attempts"] - 1,
            preempted_wall_s=_lost(rec, t0))
    raise
  except Exception as e:  # noqa: BLE001 — any failure of one run is recorded, not propagated
    return store.update(run_dir, state="failed", error=f"{type(e).__name__}: {e}",
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
