"""How long would a preset take here? Trains each distinct model of the grid for a few steps with
the real trainer, measures the step time, evaluates one model with the preset's eval settings,
and extrapolates the sweep's wall time (training steps × measured step time + per-run overhead
+ evaluation per model).

    python -m experiments calibrate --preset h100 [--steps 30] [--out /tmp/calibrate]

The estimate is printed and written as JSON; nothing in the study folder is touched.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any


def calibrate(preset: str, out: Path, steps: int = 30, log=print) -> dict[str, Any]:
  import jax

  import train
  from train import log as train_log
  from experiments.evaluation import evaluate as ev
  from experiments.runs import job
  from experiments.spec import study as study_lib
  os.environ.setdefault("EXPERIMENTS_PROGRESS", "0")
  study = dataclasses.replace(study_lib.load_preset(preset), wandb="disabled")
  specs, _ = study.runs()
  out = Path(out)
  shutil.rmtree(out, ignore_errors=True)
  out.mkdir(parents=True)
  measured: dict[str, dict[str, float]] = {}
  for spec in specs:
    key = f"{spec.size}/{spec.pattern}@{spec.train_sparsity:g}/T{spec.seq_len}/B{spec.batch_size}"
    if key in measured:
      continue
    # The long phase's steps only: a curriculum's short steps are costed below by their FLOPs.
    trial = dataclasses.replace(spec, config=dataclasses.replace(
        spec.config, steps=steps,
        data=dataclasses.replace(spec.config.data, short_len=0, short_steps=0)))
    run_dir = out / spec.run_id
    cfg = job.train_config(trial, run_dir, study, progress=False)
    cfg = dataclasses.replace(cfg, log=dataclasses.replace(cfg.log, every=max(1, steps // 3)))
    t0 = time.time()
    result = train.run(cfg)
    wall = time.time() - t0
    records = [r for r in train_log.read_metrics(run_dir) if "step_time_s" in r]
    step_s = records[-1]["step_time_s"]  # after compilation and warm-up
    measured[key] = {"step_s": step_s, "overhead_s": max(0.0, wall - steps * step_s),
                     "status": result.status}
    log(f"{key}: {step_s * 1e3:.1f} ms/step, {measured[key]['overhead_s']:.1f}s start/compile")
    if "_eval" not in measured:
      loaded, tcfg, _ = train.load(run_dir)
      t1 = time.time()
      ev.evaluate(ev.make_forward(loaded, tcfg.compute_dtype), spec.model, study.eval,
                  spec.model.vocab_size)
      measured["_eval"] = {"eval_s": time.time() - t1}
      log(f"evaluation of one model: {measured['_eval']['eval_s']:.0f}s")
  eval_s = measured["_eval"]["eval_s"]
  total = 0.0
  per_run = []
  for spec in specs:
    key = f"{spec.size}/{spec.pattern}@{spec.train_sparsity:g}/T{spec.seq_len}/B{spec.batch_size}"
    m = measured[key]
    # Short curriculum steps are timed as long ones scaled by their FLOPs (an estimate).
    long_equiv = (spec.steps - spec.short_steps
                  + spec.short_steps * spec.short_step_flops / spec.step_flops)
    t = long_equiv * m["step_s"] + m["overhead_s"] + eval_s
    per_run.append({"label": spec.label, "steps": spec.steps, "estimate_s": t})
    total += t
  summary = {"preset": preset, "device": str(jax.devices()[0].device_kind),
             "runs": len(specs), "calibration_steps": steps, "estimate_total_s": total,
             "eval_per_model_s": eval_s, "per_run": per_run,
             "measured": {k: v for k, v in measured.items() if not k.startswith("_")}}
  (out / "calibration.json").write_text(json.dumps(summary, indent=1))
  log(f"{preset}: {len(specs)} runs, estimated {total / 60:.1f} min on "
      f"{summary['device']} (training at measured step times + {eval_s:.0f}s eval per model)")
  return summary

