"""Local execution: in-process and sequential (default), or one subprocess per accelerator."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable


@dataclasses.dataclass
class LocalExecutor:
  """workers=0: runs in this process (compiled programs and imports are shared between runs,
  which matters on a small CPU). workers=N: N subprocesses `python -m experiments job DIR`, worker
  i pinned to accelerator i through `visible_env` (e.g. CUDA_VISIBLE_DEVICES)."""

  workers: int = 0
  visible_env: str = "CUDA_VISIBLE_DEVICES"
  name: str = "local"
  trainer: Callable | None = None  # in-process only: replaces train.run (tests, dry runs)
  loader: Callable | None = None

  def run(self, run_dirs: list[Path], log: Callable[[str], None] = print) -> None:
    from experiments import sweep
    if self.workers <= 0:
      t0 = time.time()
      for i, d in enumerate(run_dirs):
        label = sweep.read_json(Path(d) / "spec.json")["label"]
        log(f"[{i + 1}/{len(run_dirs)}] {label} (run {Path(d).name}), "
            f"{time.time() - t0:.0f}s into this round")
        rec = sweep.run_job(d, trainer=self.trainer, loader=self.loader, log=log)
        log(f"[{i + 1}/{len(run_dirs)}] {label}: {rec['state']}"
            + (f" — {rec.get('error')}" if rec["state"] != "done" else ""))
        if rec["state"] == "preempted":
          return
      return
    queue = list(run_dirs)
    running: dict[int, tuple[subprocess.Popen, Path]] = {}
    while queue or running:
      for slot in range(self.workers):
        if slot not in running and queue:
          d = queue.pop(0)
          env = {**os.environ, self.visible_env: str(slot), "EXPERIMENTS_PROGRESS": "0"}
          proc = subprocess.Popen([sys.executable, "-m", "experiments", "job", str(d)], env=env)
          running[slot] = (proc, Path(d))
          log(f"worker {slot}: started {Path(d).name}")
      for slot, (proc, d) in list(running.items()):
        if proc.poll() is not None:
          log(f"worker {slot}: {d.name} exited {proc.returncode}: "
              f"{sweep.job_record(d)['state']}")
          del running[slot]
      time.sleep(0.5)
