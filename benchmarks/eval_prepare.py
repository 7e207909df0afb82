"""Where an evaluation's preparation goes: tracing, lowering and XLA compiling every pass of a
study's evaluation for one run's model (random weights, so no checkpoint is needed), then each
pass run once on zeros. Run it under different XLA_FLAGS (and a fresh JAX_COMPILATION_CACHE_DIR,
or none, so nothing is a cache hit) to compare compile options.

    python -m benchmarks.eval_prepare STUDY/runs/RUN_ID [N_LENGTHS]

Prints the number of passes and programs, the wall of `forward.prepare`, JAX's compile events
(count and summed seconds: tracing, lowering to MLIR, the backend compile) and the wall of the
passes.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import sys
import time
from pathlib import Path

import jax
import numpy as np
from flax import nnx

from experiments.evaluation import evaluate as ev
from experiments.runs import store
from models import Transformer


def main(run: Path, n_lengths: int) -> None:
  seconds, counts = collections.defaultdict(float), collections.Counter()

  def on(event, duration, **_):
    seconds[event] += duration
    counts[event] += 1

  jax.monitoring.register_event_duration_secs_listener(on)
  study, spec = store.load_study(run.parent.parent), store.load_spec(run)
  eval_spec = dataclasses.replace(study.eval, lengths=study.eval.lengths[:n_lengths])
  passes = ev._passes(eval_spec, ev.setting_attentions(spec.model, eval_spec),
                      spec.model.vocab_size)
  forward = ev.make_forward(Transformer(spec.model, rngs=nnx.Rngs(0)), "bfloat16")
  t0 = time.perf_counter()
  forward.prepare(passes)
  prepare_s = time.perf_counter() - t0
  t0 = time.perf_counter()
  for shape, phased in passes:
    forward(np.zeros(shape, np.int32), phased)
  passes_s = time.perf_counter() - t0
  print(f"{spec.label} on {jax.devices()[0].device_kind}, lengths {eval_spec.lengths}, "
        f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")
  print(f"passes {len(passes)}  prepare {prepare_s:.1f} s  passes run {passes_s:.1f} s")
  for event in sorted(seconds):
    print(f"  {event:60s} {counts[event]:5d} {seconds[event]:8.1f} s")


if __name__ == "__main__":
  main(Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 99)
