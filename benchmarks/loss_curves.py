"""Same training run, different machinery: do the loss curves agree?

    python -m benchmarks.loss_curves --case kernel         # one GPU: pallas_triton vs xla
    python -m benchmarks.loss_curves --case data_parallel  # two GPUs vs one, same global batch
    python -m benchmarks.loss_curves --case data_parallel_f32  # the same in f32 (xla)
    python -m benchmarks.loss_curves --case tiny           # CPU smoke of this script
    python -m benchmarks.loss_curves --case tiny_data_parallel  # the 2-device path on a CPU

Each variant is one `train.run` of the same ladder model, data, seed and global batch, in its own
subprocess (so `CUDA_VISIBLE_DEVICES` can give it 1 or 2 GPUs), logging every step. The result
(`benchmarks/results/loss_curves_<case>.json`) holds every variant's per-step loss and step
time, and for each variant against the first: max and mean |Δloss| over the steps.

"Within bf16 noise" needs a scale: the `kernel` case also trains the `xla` implementation in
f32, and |loss(bf16) - loss(f32)| of the same implementation is that scale. The data-parallel
case reuses the kernel case's model and data, so the same scale applies to it.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import pathlib
import platform
import subprocess
import sys
import tempfile

import numpy as np

# The model, data and optimiser every variant shares (overridable per case).
BASE = dict(size="20m", seq_len=2048, batch_size=16, steps=100, lr=1e-3, warmup=10,
            tasks=("niah_single", "chain_resolve", "common_words"), vocab_size=512,
            pattern="block_random", density=0.25, block=128, impl="pallas_triton",
            compute_dtype="bfloat16", devices=1, seed=0)

CASES = {
    "kernel": [dict(name="xla_bf16", impl="xla"),
               dict(name="pallas_triton_bf16", impl="pallas_triton"),
               dict(name="xla_f32", impl="xla", compute_dtype="float32"),
               # Layouts chosen inside jit from the model's own q/k (per batch element):
               dict(name="topk_xla_bf16", impl="xla", pattern="topk_blocks"),
               dict(name="topk_pallas_triton_bf16", impl="pallas_triton",
                    pattern="topk_blocks")],
    "data_parallel": [dict(name="1_gpu", devices=1), dict(name="2_gpus", devices=2)],
    # The same pair in f32 (xla: the f32 Triton tiles are slow): separates a data-parallel bug,
    # which would show here too, from bf16 rounding that the split changes and training amplifies.
    "data_parallel_f32": [dict(name="1_gpu_f32", devices=1, impl="xla", compute_dtype="float32"),
                          dict(name="2_gpus_f32", devices=2, impl="xla",
                               compute_dtype="float32")],
    "tiny": [dict(name="xla_f32", impl="xla", compute_dtype="float32"),
             dict(name="reference_f32", impl="reference", compute_dtype="float32")],
    # The data-parallel path on a CPU (devices are host-platform devices there).
    "tiny_data_parallel": [dict(name="1_device", devices=1, impl="xla", compute_dtype="float32"),
                           dict(name="2_devices", devices=2, impl="xla",
                                compute_dtype="float32")],
}
TINY = dict(size="100k", seq_len=128, batch_size=4, steps=6, block=32, vocab_size=128,
            tasks=("niah_single",))


def train_variant(v: dict, run_dir: str) -> dict:
  """One run in this process; returns its per-step loss and step times."""
  import models
  import train
  from train import log as train_log
  from train.config import (CheckpointConfig, Config, DataConfig, EvalConfig, LogConfig,
                            OptimConfig)
  if v["pattern"] == "dense":
    attention = models.AttentionConfig("dense", implementation=v["impl"])
  else:
    attention = models.AttentionConfig(v["pattern"], density=v["density"],
                                       implementation=v["impl"], block_q=v["block"],
                                       block_kv=v["block"])
  model = models.family(v["size"], vocab_size=v["vocab_size"], attention=attention)
  cfg = Config(run_dir=run_dir, model=model,
               data=DataConfig(tasks=tuple(v["tasks"]), seq_len=v["seq_len"], seed=v["seed"],
                               shards=1),
               optim=OptimConfig(lr=v["lr"], warmup_steps=v["warmup"]),
               checkpoint=CheckpointConfig(every=10 ** 9, async_save=False),
               log=LogConfig(every=1, progress=False, wandb="disabled"),
               eval=EvalConfig(examples=0), batch_size=v["batch_size"], steps=v["steps"],
               compute_dtype=v["compute_dtype"], seed=v["seed"])
  result = train.run(cfg)
  records = [r for r in train_log.read_metrics(run_dir) if "loss" in r and "step" in r]
  import jax
  return dict(status=result.status, devices=jax.device_count(),
              loss=[r["loss"] for r in records], step=[r["step"] for r in records],
              step_time_s=[r.get("step_time_s") for r in records])


def compare(base: list[float], other: list[float]) -> dict:
  n = min(len(base), len(other))
  d = np.abs(np.asarray(base[:n]) - np.asarray(other[:n]))
  return dict(steps=n, max_abs_diff=float(d.max()), mean_abs_diff=float(d.mean()),
              final_base=base[n - 1], final_other=other[n - 1])


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--case", choices=sorted(CASES), default="tiny")
  p.add_argument("--steps", type=int, default=0, help="override the case's step count")
  p.add_argument("--only", nargs="*", default=None, help="variant names to run (default all)")
  p.add_argument("--out", default="")
  p.add_argument("--child", help=argparse.SUPPRESS)  # internal: one variant, JSON in, JSON out
  a = p.parse_args(argv)
  if a.child:
    v, run_dir, out = json.loads(a.child)
    pathlib.Path(out).write_text(json.dumps(train_variant(v, run_dir)))
    return

  variants = []
  for over in CASES[a.case]:
    if a.only is not None and over["name"] not in a.only:
      continue
    v = {**BASE, **(TINY if a.case.startswith("tiny") else {}), **over}
    if a.steps:
      v["steps"] = a.steps
    variants.append(v)
  results = {}
  with tempfile.TemporaryDirectory() as tmp:
    for v in variants:
      env = dict(os.environ)
      if v["devices"] and "CUDA_VISIBLE_DEVICES" not in os.environ:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in range(v["devices"]))
      # On a CPU backend the same count of host devices (no effect on GPUs).
      env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") +
                          f" --xla_force_host_platform_device_count={v['devices']}").strip()
      out = os.path.join(tmp, v["name"] + ".json")
      arg = json.dumps([v, os.path.join(tmp, v["name"]), out])
      proc = subprocess.run([sys.executable, "-m", "benchmarks.loss_curves", "--child", arg],
                            env=env, capture_output=True, text=True)
      if proc.returncode:
        results[v["name"]] = dict(error=proc.stderr[-2000:])
        print(f"{v['name']}: FAILED\n{proc.stderr[-2000:]}", flush=True)
        continue
      results[v["name"]] = json.loads(pathlib.Path(out).read_text())
      r = results[v["name"]]
      times = [t for t in r["step_time_s"][5:] if t]
      r["median_step_time_s"] = float(np.median(times)) if times else None
      print(f"{v['name']}: {r['status']} on {r['devices']} device(s), loss "
            f"{r['loss'][0]:.4f} -> {r['loss'][-1]:.4f}, median step "
            f"{r['median_step_time_s']}", flush=True)

  ok = [v["name"] for v in variants if "loss" in results[v["name"]]]
  comparisons = {}
  if ok:
    first = ok[0]
    for name in ok[1:]:
      comparisons[f"{name} vs {first}"] = compare(results[first]["loss"], results[name]["loss"])
    if "xla_f32" in ok and "xla_bf16" in ok:
      comparisons["bf16 noise: xla_bf16 vs xla_f32"] = compare(results["xla_bf16"]["loss"],
                                                               results["xla_f32"]["loss"])
    if "topk_xla_bf16" in ok and "topk_pallas_triton_bf16" in ok:
      comparisons["topk_pallas_triton_bf16 vs topk_xla_bf16"] = compare(
          results["topk_xla_bf16"]["loss"], results["topk_pallas_triton_bf16"]["loss"])
    one = results.get("1_gpu") or results.get("1_device") or {}
    two = results.get("2_gpus") or results.get("2_devices") or {}
    if one.get("median_step_time_s") and two.get("median_step_time_s"):
      # Same global batch: perfect scaling halves the step time.
      comparisons["scaling efficiency 2 devices"] = {
          "speedup": one["median_step_time_s"] / two["median_step_time_s"],
          "efficiency": one["median_step_time_s"] / (2 * two["median_step_time_s"])}
  import jax
  dev = jax.devices()[0]
  report = dict(case=a.case, date=datetime.date.today().isoformat(),
                device=dict(kind=getattr(dev, "device_kind", str(dev)),
                            count=jax.device_count(), backend=jax.default_backend()),
                versions=dict(python=platform.python_version(), jax=jax.__version__),
                variants=variants, comparisons=comparisons, results=results)
  out = a.out or str(pathlib.Path(__file__).parent / "results" / f"loss_curves_{a.case}.json")
  pathlib.Path(out).write_text(json.dumps(report, indent=1) + "\n")
  for k, c in comparisons.items():
    print(f"{k:48} " + "  ".join(f"{m}={val:.4g}" for m, val in c.items()), flush=True)
  print(f"wrote {out}")


if __name__ == "__main__":
  main()
