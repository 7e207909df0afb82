"""Slurm through submitit: one job per run, submitted as a job array.

The jobs run `experiments.runs.job.run_job(run_dir)` on the compute nodes; the study folder must be
on a filesystem the nodes share (as submitit's own folder is). Each job records its outcome in
its run folder, so this process can die while jobs run: rerunning the sweep picks up their
results and resubmits only what is unfinished.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any, Callable

from experiments.runs import job, store


def _job(run_dir: str) -> dict[str, Any]:
  import os
  os.environ.setdefault("EXPERIMENTS_PROGRESS", "0")  # no progress bars in a batch log
  return job.run_job(run_dir)


def _active_jobs() -> set[str]:
  """Ids (array tasks as JOB_TASK) of this user's jobs Slurm still has queued or running."""
  import subprocess
  out = subprocess.run(["squeue", "-h", "-r", "--me", "-o", "%i"], capture_output=True, text=True,
                       timeout=60)
  if out.returncode != 0:
    raise RuntimeError(f"squeue failed: {out.stderr.strip()}")
  return {line.strip() for line in out.stdout.splitlines() if line.strip()}


@dataclasses.dataclass
class SlurmExecutor:
  """partition: Slurm partition (None: the cluster's default). timeout_min: per run.
  cpus_per_task, gpus_per_node, mem_gb: per job. parallelism: array jobs running at once.
  poll_s: how often job states are checked. extra: more submitit parameters
  (e.g. {"slurm_account": "x", "slurm_qos": "y"})."""

  partition: str | None = None
  timeout_min: int = 60
  cpus_per_task: int = 1
  gpus_per_node: int = 0
  mem_gb: float | None = None
  parallelism: int = 64
  poll_s: float = 2.0
  folder: str | None = None
  extra: dict[str, Any] = dataclasses.field(default_factory=dict)
  name: str = "slurm"

  def executor(self, out: Path):
    import submitit
    ex = submitit.AutoExecutor(folder=self.folder or str(Path(out) / "slurm" / "%j"),
                               cluster="slurm")
    params: dict[str, Any] = dict(timeout_min=self.timeout_min, cpus_per_task=self.cpus_per_task,
                                  slurm_array_parallelism=self.parallelism, name="experiments")
    if self.partition:
      params["slurm_partition"] = self.partition
    if self.gpus_per_node:
      params["gpus_per_node"] = self.gpus_per_node
    if self.mem_gb:
      params["mem_gb"] = self.mem_gb
    ex.update_parameters(**params, **self.extra)
    return ex

  def submit(self, run_dirs: list[Path]):
    """Submits one array job over `run_dirs`; records each job id in its run's job.json, so a
    later sweep waits for a job still queued or running instead of submitting it twice."""
    out = Path(run_dirs[0]).parent.parent
    jobs = self.executor(out).map_array(_job, [str(d) for d in run_dirs])
    for j, d in zip(jobs, run_dirs):
      store.update(Path(d), slurm_submitted=j.job_id)
    return jobs

  def run(self, run_dirs: list[Path], log: Callable[[str], None] = print) -> None:
    if not run_dirs:
      return
    active = _active_jobs()
    waiting = {}
    for d in run_dirs:
      jid = store.job_record(d).get("slurm_submitted")
      if jid and jid in active:
        waiting[jid] = d
    if waiting:
      log(f"slurm: {len(waiting)} run(s) already queued/running as job(s) "
          f"{', '.join(waiting)}: waiting for them instead of submitting again")
      while waiting.keys() & _active_jobs():
        time.sleep(self.poll_s)
    fresh = [d for d in run_dirs if d not in waiting.values()]
    if not fresh:
      return
    jobs = self.submit(fresh)
    log(f"slurm: submitted {len(jobs)} job(s): {', '.join(j.job_id for j in jobs)}")
    last: dict[str, str] = {}
    while True:
      states = {j.job_id: j.state for j in jobs}
      for jid, s in states.items():
        if last.get(jid) != s:
          log(f"slurm: job {jid} {s}")
      last = states
      if all(j.done() for j in jobs):
        break
      time.sleep(self.poll_s)
    for j, d in zip(jobs, fresh):
      try:
        j.result()
      except Exception as e:  # noqa: BLE001 — the job died outside run_job (OOM, node, timeout)
        if store.job_record(d)["state"] in ("running", "pending"):
          store.update(Path(d), state="failed",
                        error=f"slurm job {j.job_id}: {type(e).__name__}: {str(e)[-500:]}")
