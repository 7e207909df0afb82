"""Training-step throughput of the smallest ladder sizes -> benchmarks/results/train_throughput_<dev>.json.

    python benchmarks/train_throughput.py [--sizes 100k 300k 800k] [--lengths 128 512] [--steps 10]

Times the trainer's own jitted step (`train.step.make_train_step`, AdamW, clipping) on random
tokens, batch 8, dense causal attention with the default implementation, in bf16 and f32
compute; median step time over `--steps` steps after one compile+warm-up step. Model TFLOP/s
use `models.flops_per_token` (the study's counter). No data pipeline: its own benchmark is
task_throughput.py.
"""

from __future__ import annotations

import argparse
import datetime
import json
import pathlib
import platform
import time

import flax
import jax
import jax.numpy as jnp
import numpy as np

import models
import sparse_ops as so
from train import step as step_lib
from train.config import Config, DataConfig


def measure(size: str, seq_len: int, dtype: str, batch: int, steps: int) -> dict:
  model = models.family(size, vocab_size=512)
  cfg = Config(model=model, data=DataConfig(seq_len=seq_len), batch_size=batch,
               compute_dtype=dtype, steps=steps + 1)
  codec = step_lib.Params(model)
  tx = step_lib.optimizer(cfg.optim, cfg.total_steps)
  params = jax.jit(lambda: codec.init(model, 0))()
  state = {"step": jnp.zeros((), jnp.int32), "params": params, "opt": tx.init(params)}
  rng = np.random.default_rng(0)
  tokens = jnp.asarray(rng.integers(0, 512, (1, batch, seq_len + 1)), jnp.int32)
  batch_ = {"inputs": tokens[..., :-1], "targets": tokens[..., 1:],
            "weights": jnp.ones((1, batch, seq_len), jnp.float32)}
  step = jax.jit(step_lib.make_train_step(cfg, codec, tx), donate_argnums=0)
  t0 = time.perf_counter()
  state, metrics = step(state, batch_)
  jax.block_until_ready(metrics)
  compile_s = time.perf_counter() - t0
  times = []
  for _ in range(steps):
    t0 = time.perf_counter()
    state, metrics = step(state, batch_)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - t0)
  median = float(np.median(times))
  counts = models.param_counts(model)
  return {"size": size, "params": counts.total, "nonembed_params": counts.nonembed,
          "depth": model.depth, "width": model.width, "heads": model.num_heads,
          "seq_len": seq_len, "batch": batch, "compute_dtype": dtype,
          "step_time_s": round(median, 5), "tokens_per_s": round(batch * seq_len / median),
          "model_tflops_per_s": round(cfg.flops_per_step / median / 1e12, 5),
          "first_step_s_with_compile": round(compile_s, 2)}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--sizes", nargs="+", default=["100k", "300k", "800k"])
  parser.add_argument("--lengths", nargs="+", type=int, default=[128, 512])
  parser.add_argument("--dtypes", nargs="+", default=["bfloat16", "float32"])
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--steps", type=int, default=10)
  parser.add_argument("--out", default="")
  args = parser.parse_args()
  backend = jax.default_backend()
  rows = []
  for size in args.sizes:
    for t in args.lengths:
      for dtype in args.dtypes:
        row = measure(size, t, dtype, args.batch, args.steps)
        print(json.dumps(row), flush=True)
        rows.append(row)
  out = args.out or str(pathlib.Path(__file__).parent / "results" /
                        f"train_throughput_{backend}.json")
  result = {
      "benchmark": "trainer step throughput, smallest ladder sizes, dense causal",
      "date": datetime.date.today().isoformat(),
      "device": {"backend": backend, "kind": jax.devices()[0].device_kind,
                 "count": jax.device_count(), "machine": platform.machine(),
                 "cpu_cores": len(__import__("os").sched_getaffinity(0))},
      "versions": {"python": platform.python_version(), "jax": jax.__version__,
                   "flax": flax.__version__},
      "settings": {"attention_implementation": so.default_implementation(),
                   "vocab_size": 512, "statistic": f"median of {args.steps} steps after warm-up"},
      "rows": rows,
  }
  pathlib.Path(out).write_text(json.dumps(result, indent=2) + "\n")
  print(f"wrote {out}")


if __name__ == "__main__":
  main()
