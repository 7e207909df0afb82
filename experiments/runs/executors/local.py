"""Local execution: in-process and sequential (default), or one subprocess per accelerator."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

from experiments.runs import files, job, store


@dataclasses.dataclass
class LocalExecutor:
  """workers=0: runs in this process (compiled programs and imports are shared between runs,
  which matters on a small CPU). workers=N: N subprocesses `python -m experiments job DIR`, worker
  i pinned to accelerator i // runs_per_device through `visible_env` (e.g. CUDA_VISIBLE_DEVICES).

  runs_per_device=R > 1 puts R runs side by side on each accelerator, each allowed 0.9 / R of its
  memory (XLA_PYTHON_CLIENT_MEM_FRACTION): a small model leaves the GPU idle while it compiles
  and evaluates (about a third of an h200 run's wall, benchmarks/results/study_costs_h200.md),
  which a second run's steps can fill.

  Workers allocate GPU memory as they need it (XLA_PYTHON_CLIENT_PREALLOCATE=false unless the
  caller set it): an evaluation loads ~150 programs, whose modules, CUDA graphs and cuBLAS
  handles live outside XLA's pool; on an 80 GB H100 the default 75% pool left them too little
  and every h200-preset evaluation died CUDA_ERROR_OUT_OF_MEMORY, alone or two to a GPU
  (studies/h200/README.md, 2026-12-07)."""

  workers: int = 0
  runs_per_device: int = 1
  visible_env: str = "CUDA_VISIBLE_DEVICES"
  name: str = "local"
  trainer: Callable | None = None  # in-process only: replaces train.run (tests, dry runs)
  loader: Callable | None = None

  def __post_init__(self):
    if isinstance(self.workers, bool) or not isinstance(self.workers, int) or self.workers < 0:
      raise ValueError(f"local workers={self.workers!r} must be 0 (in-process) or a positive "
                       "number of subprocesses")
    if isinstance(self.runs_per_device, bool) or not isinstance(self.runs_per_device, int) \
        or self.runs_per_device < 1 or (self.runs_per_device > 1 and self.workers < 2):
      raise ValueError(f"local runs_per_device={self.runs_per_device!r} must be a positive "
                       "number of runs, above 1 only with workers >= 2")

  def run(self, run_dirs: list[Path], log: Callable[[str], None] = print) -> None:
    if self.workers <= 0:
      t0 = time.time()
      for i, d in enumerate(run_dirs):
        label = files.read_json(Path(d) / "spec.json")["label"]
        log(f"[{i + 1}/{len(run_dirs)}] {label} (run {Path(d).name}), "
            f"{time.time() - t0:.0f}s into this round")
        rec = job.run_job(d, trainer=self.trainer, loader=self.loader, log=log)
        why = rec.get("elsewhere") or rec.get("error")
        log(f"[{i + 1}/{len(run_dirs)}] {label}: {rec['state']}"
            + (f" — {why}" if rec["state"] != "done" else ""))
        if rec["state"] == "preempted":
          return
      return
    queue = list(run_dirs)
    running: dict[int, tuple[subprocess.Popen, Path]] = {}
    while queue or running:
      for slot in range(self.workers):
        if slot not in running and queue:
          d = queue.pop(0)
          # EXPERIMENTS_PARENT_PID: the worker asks to be SIGTERMed when this process dies
          # (prctl PDEATHSIG in `experiments job`), so a killed sweep leaves no orphan training.
          env = {**os.environ, self.visible_env: str(slot // self.runs_per_device),
                 "EXPERIMENTS_PROGRESS": "0", "EXPERIMENTS_PARENT_PID": str(os.getpid()),
                 "XLA_PYTHON_CLIENT_PREALLOCATE": os.environ.get(
                     "XLA_PYTHON_CLIENT_PREALLOCATE", "false")}
          if self.runs_per_device > 1:
            env["XLA_PYTHON_CLIENT_MEM_FRACTION"] = f"{0.9 / self.runs_per_device:.3f}"
          proc = subprocess.Popen([sys.executable, "-m", "experiments", "job", str(d)], env=env)
          running[slot] = (proc, Path(d))
          log(f"worker {slot}: started {Path(d).name}")
      for slot, (proc, d) in list(running.items()):
        if proc.poll() is not None:
          rec = store.job_record(d)
          if proc.returncode != 0 and rec["state"] in ("pending", "running") \
              and not store.held_elsewhere(d):
            # It died outside run_job's own record (killed, out of memory, or unable to write
            # job.json): fail it here, in this process's memory if the folder is unwritable.
            rec = store.update(d, state="failed", error=f"worker exited {proc.returncode} "
                                f"with job.json saying {rec['state']!r}")
          log(f"worker {slot}: {d.name} exited {proc.returncode}: {rec['state']}")
          del running[slot]
      time.sleep(0.5)
