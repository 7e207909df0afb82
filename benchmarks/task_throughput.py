"""Task generation throughput on one CPU core -> benchmarks/results/task_throughput_cpu.json.

    python benchmarks/task_throughput.py [--seconds 2]

Per task: tokens/s of `task.example` at T=4096 and T=65536 (median of 5 timed runs),
and the train.data pipeline over a mixture of all tasks at T=4096, both pinned to one
core. TARGETS.md asks for >= 10x what training consumes (~100k tokens/s: >= 1M tokens/s).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import platform
import time

import grain
import jax
import numpy as np

from experiments import tasks
from experiments.tasks import speed
from train import data

LENGTHS = (4096, 65536)
TARGET = 1_000_000


def cpu_name() -> str:
  try:
    for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
      if line.startswith("model name"):
        return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or "unknown"


def pipeline_tokens_per_second(seconds: float, length: int = 4096, batch: int = 8) -> float:
  sources = [tasks.make(n, length=length).source("train") for n in tasks.TASKS]
  ds = data.mixture(sources, [1] * len(sources), batch_size=batch, seed=0, shard_index=0,
                    shard_count=1, num_threads=1, prefetch=1)
  it = iter(ds)
  next(it)
  start, n = time.perf_counter(), 0
  while time.perf_counter() - start < seconds:
    next(it)
    n += 1
  return n * batch * length / (time.perf_counter() - start)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--seconds", type=float, default=2.0)
  parser.add_argument("--out", default=str(pathlib.Path(__file__).parent / "results" /
                                            "task_throughput_cpu.json"))
  args = parser.parse_args()
  os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # one core

  per_task = {}
  for name in tasks.TASKS:
    per_task[name] = {f"T={n}": round(speed.tokens_per_second(
        tasks.make(name, length=n), min_seconds=args.seconds)) for n in LENGTHS}
    print(name, per_task[name], flush=True)
  pipeline = round(pipeline_tokens_per_second(args.seconds))
  print("pipeline (all tasks, T=4096, B=8)", pipeline)
  worst = min(v for row in per_task.values() for v in row.values())
  result = {
      "benchmark": "task generation tokens/s, one CPU core",
      "date": datetime.date.today().isoformat(),
      "device": {"cpu": cpu_name(), "cores_used": 1, "machine": platform.machine()},
      "versions": {"python": platform.python_version(), "numpy": np.__version__,
                   "jax": jax.__version__, "grain": grain.__version__},
      "settings": {"vocab_size": 512, "knobs": "defaults", "split": "train",
                   "statistic": "median of 5 timed runs", "seconds_per_measurement": args.seconds},
      "tokens_per_second": per_task,
      "pipeline_tokens_per_second": {"tasks": "all 8, equal weights", "T": 4096, "batch": 8,
                                     "threads": 1, "value": pipeline},
      "target_tokens_per_second": TARGET,
      "slowest_over_target": round(worst / TARGET, 1),
  }
  pathlib.Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
