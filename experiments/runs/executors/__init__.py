"""Executors run a list of run folders to completion: `executor.run(run_dirs, log=print)`.

Every executor calls the same unit of work, `experiments.runs.job.run_job(run_dir)`, which records
its outcome in the run folder; executors only decide where and how that function runs.

  local   in this process, one run after another; or `workers=N` subprocesses, one per local
          accelerator (CUDA_VISIBLE_DEVICES / TPU_VISIBLE_CHIPS set per worker)
  slurm   one Slurm job per run, as a job array through submitit
  pod     one run at a time over all hosts of a pod (jax.distributed), per-host commands
          printed or launched (ssh, or local processes for a single-machine rehearsal)
"""

from __future__ import annotations

from typing import Any

NAMES = ("local", "slurm", "pod")


def make(name: str, **options: Any):
  if name == "local":
    from experiments.runs.executors.local import LocalExecutor
    return LocalExecutor(**options)
  if name == "slurm":
    from experiments.runs.executors.slurm import SlurmExecutor
    return SlurmExecutor(**options)
  if name == "pod":
    from experiments.runs.executors.pod import PodExecutor
    return PodExecutor(**options)
  raise ValueError(f"executor={name!r} is unknown; valid: {NAMES}")
