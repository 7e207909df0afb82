"""Generation throughput of one task, in tokens per second on the calling thread."""

from __future__ import annotations

import time

from experiments.tasks import base


def tokens_per_second(task: base.Task, *, min_seconds: float = 1.0, repeats: int = 5,
                      split: str = "train") -> float:
  """Median over `repeats` timed runs of >= min_seconds / repeats each, fresh indices throughout."""
  task.example(split, 0)  # warm caches (vocab, imports) outside the timing
  rates, index = [], 1
  for _ in range(repeats):
    start, count = time.perf_counter(), 0
    while (elapsed := time.perf_counter() - start) < min_seconds / repeats or count == 0:
      task.example(split, index)
      index += 1
      count += 1
    rates.append(count * task.length / elapsed)
  return sorted(rates)[len(rates) // 2]
