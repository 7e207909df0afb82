"""Where a study run's wall time goes: compilation, training steps, evaluation, per program.

    python -m benchmarks.study_costs --preset h200_quick --size 800k --steps 1032 --short 385 \
        --checkpoint-every 500 --out /tmp/costs

Trains one run of the preset (its first of that size), cut to `--steps` steps of which `--short`
are the curriculum's short phase, through the study's own path (`job.train_config`, `train.run`)
and then evaluates it with the preset's full evaluation (`evaluation.evaluate`). Every XLA
compilation is recorded through `jax.monitoring` (its program name and seconds, and whether it
happened in training or evaluation), and every evaluation cell's wall time from the evaluation's
progress callback. The step counts are chosen by the caller to reproduce the preset's call
boundaries (a short phase and a checkpoint interval that are not multiples of the
steps-per-call), which decide how many training programs are compiled.

Writes costs.json (events, cells, totals) under --out and prints a short table.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import os
import platform
import time
from pathlib import Path


def main(argv=None) -> dict:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--preset", default="h200_quick")
  p.add_argument("--size", default="800k")
  p.add_argument("--steps", type=int, default=1032)
  p.add_argument("--short", type=int, default=385)
  p.add_argument("--checkpoint-every", type=int, default=500)
  p.add_argument("--out", default="/tmp/study_costs")
  a = p.parse_args(argv)

  import jax
  import flax
  import train
  from jax import monitoring
  from experiments.evaluation import evaluate as ev
  from experiments.runs import job
  from experiments.spec import study as study_lib

  phase = ["setup"]
  t_start = time.time()
  events: list[dict] = []

  def listener(event, seconds, **kw):
    if event.startswith("/jax/core/compile/"):
      events.append(dict(t=round(time.time() - t_start, 2), phase=phase[0],
                         event=event.rsplit("/", 1)[-1], fun=kw.get("fun_name", "?"),
                         seconds=round(seconds, 3)))
  monitoring.register_event_duration_secs_listener(listener)

  study = dataclasses.replace(study_lib.load_preset(a.preset), wandb="disabled",
                              checkpoint_every=a.checkpoint_every)
  specs, _ = study.runs()
  spec = next(s for s in specs if s.size == a.size)
  spec = dataclasses.replace(spec, config=dataclasses.replace(
      spec.config, steps=a.steps, data=dataclasses.replace(
          spec.config.data, short_steps=a.short if spec.config.data.short_len else 0)))
  out = Path(a.out)
  out.mkdir(parents=True, exist_ok=True)
  run_dir = out / "run"
  cfg = job.train_config(spec, run_dir, study, progress=False)
  phase[0] = "train"
  t0 = time.time()
  result = train.run(cfg)
  train_s = time.time() - t0
  model, cfg2, _ = train.load(run_dir)

  phase[0] = "eval"
  cells, last = [], [time.time()]
  real_stacked = ev.stacked_examples
  host_s = [0.0]

  def timed_stacked(*args, **kw):
    t = time.time()
    r = real_stacked(*args, **kw)
    host_s[0] += time.time() - t
    return r
  ev.stacked_examples = timed_stacked

  def progress(msg):
    now = time.time()
    cells.append(dict(cell=msg, seconds=round(now - last[0], 3)))
    last[0] = now
  t1 = time.time()
  try:
    rows = ev.evaluate(ev.make_forward(model, cfg2.compute_dtype), spec.model, study.eval,
                       spec.model.vocab_size, progress=progress)
  except KeyboardInterrupt:  # `timeout -s INT`: keep what was measured so far
    rows, interrupted = [], True
  else:
    interrupted = False
  eval_s = time.time() - t1

  by = collections.defaultdict(lambda: [0, 0.0])
  for e in events:
    k = (e["phase"], e["event"])
    by[k][0] += 1
    by[k][1] += e["seconds"]
  summary = dict(
      preset=a.preset, size=a.size, steps=a.steps, short=a.short,
      checkpoint_every=a.checkpoint_every, steps_per_call=cfg.steps_per_call,
      status=result.status, eval_interrupted=interrupted, train_wall_s=round(train_s, 1),
      eval_wall_s=round(eval_s, 1),
      eval_host_examples_s=round(host_s[0], 1), eval_cells=len(cells), rows=len(rows),
      compile_totals={f"{k[0]}/{k[1]}": dict(count=v[0], seconds=round(v[1], 1))
                      for k, v in sorted(by.items())},
      device=str(jax.devices()[0].device_kind), versions=dict(
          python=platform.python_version(), jax=jax.__version__, flax=flax.__version__),
      events=events, cells=cells)
  (out / "costs.json").write_text(json.dumps(summary, indent=1))
  print(f"{a.preset} {a.size}: train {train_s:.0f}s ({a.steps} steps), eval {eval_s:.0f}s "
        f"({'interrupted, ' if interrupted else ''}{len(cells)} cells, "
        f"host examples {host_s[0]:.0f}s)")
  print(f"{'phase/event':40s} {'count':>6s} {'seconds':>8s}")
  for k, v in summary["compile_totals"].items():
    print(f"{k:40s} {v['count']:6d} {v['seconds']:8.1f}")
  slow = sorted((e for e in events if e["event"] == "backend_compile_duration"),
                key=lambda e: -e["seconds"])[:12]
  for e in slow:
    print(f"  {e['phase']:5s} t={e['t']:7.1f} {e['seconds']:6.1f}s {e['fun'][:60]}")
  return summary


if __name__ == "__main__":
  os.environ.setdefault("EXPERIMENTS_PROGRESS", "0")
  main()
