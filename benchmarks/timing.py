"""Wall-clock timing of jitted calls: the one rule every benchmark here uses.

The first call compiles and warms up and is timed apart; each later call is waited for
(`jax.block_until_ready`) before the clock stops, so asynchronous dispatch is not mistaken for
speed. Benchmarks report the median of the later calls.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from typing import Any, Callable

import jax


@dataclasses.dataclass(frozen=True)
class Timing:
  median: float  # seconds, over the timed calls
  first: float  # the first call: compile + warm-up
  times: list[float]


def time_calls(call: Callable[[], Any], reps: int) -> Timing:
  """`call()` once untimed-for-the-median, then `reps` timed calls."""
  if reps < 1:
    raise ValueError(f"reps={reps} must be >= 1: the median needs a timed call")
  t0 = time.perf_counter()
  jax.block_until_ready(call())
  first = time.perf_counter() - t0
  times = []
  for _ in range(reps):
    t0 = time.perf_counter()
    jax.block_until_ready(call())
    times.append(time.perf_counter() - t0)
  return Timing(statistics.median(times), first, times)
