"""Multi-host pods: one run at a time over every host, joined by `jax.distributed`.

Each host runs `python -m experiments job RUN_DIR` with the coordinator address, the process
count and its process id in the environment; the trainer initialises `jax.distributed` from
them (`train.config.DistributedConfig`), shards the data per process, and only process 0 writes
the run folder. This launcher prints those per-host commands (`launch="print"`), runs them over
ssh (`launch="ssh"`), or, for a rehearsal on one machine, as local processes (`launch="local"`).
"""

from __future__ import annotations

import dataclasses
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Callable

ENV = ("EXPERIMENTS_COORDINATOR", "EXPERIMENTS_NUM_PROCESSES", "EXPERIMENTS_PROCESS_ID")


@dataclasses.dataclass
class PodExecutor:
  hosts: tuple[str, ...] = ("localhost",)
  port: int = 8476
  launch: str = "print"  # print | ssh | local
  python: str = ""  # interpreter on the hosts (default: this one's path)
  workdir: str = ""  # repository on the hosts (default: this one's)
  name: str = "pod"

  def __post_init__(self):
    if self.launch not in ("print", "ssh", "local"):
      raise ValueError(f"pod launch={self.launch!r} must be print, ssh or local")
    if not self.hosts:
      raise ValueError("pod hosts=() must name at least one host")

  def commands(self, run_dir: Path) -> list[tuple[str, str]]:
    """(host, shell command) per host for one run."""
    python = self.python or sys.executable
    workdir = self.workdir or str(Path.cwd())
    coord = f"{self.hosts[0]}:{self.port}"
    out = []
    for i, host in enumerate(self.hosts):
      env = (f"EXPERIMENTS_COORDINATOR={coord} EXPERIMENTS_NUM_PROCESSES={len(self.hosts)} "
             f"EXPERIMENTS_PROCESS_ID={i} EXPERIMENTS_PROGRESS={'1' if i == 0 else '0'}")
      out.append((host, f"cd {shlex.quote(workdir)} && {env} {shlex.quote(python)} -m "
                        f"experiments job {shlex.quote(str(run_dir))}"))
    return out

  def run(self, run_dirs: list[Path], log: Callable[[str], None] = print) -> None:
    for d in run_dirs:
      cmds = self.commands(Path(d))
      if self.launch == "print":
        log(f"run {Path(d).name}: start these on the {len(cmds)} host(s), then rerun the sweep "
            "to collect:")
        for host, cmd in cmds:
          log(f"  [{host}] {cmd}")
        continue
      if self.launch == "ssh":
        procs = [subprocess.Popen(["ssh", host, cmd]) for host, cmd in cmds]
      else:
        procs = [subprocess.Popen(["bash", "-c", cmd]) for _, cmd in cmds]
      codes = [p.wait() for p in procs]
      log(f"run {Path(d).name}: host exit codes {codes}")
