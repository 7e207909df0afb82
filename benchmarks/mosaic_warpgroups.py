"""The Mosaic GPU kernels with one and with two compute warpgroups, beside cuDNN, in one process.

    python -m benchmarks.mosaic_warpgroups --lengths 8192 --head-dim 128 --out OUT.json

The lever `benchmarks/results/attention_mosaic_gpu_plan.md` ranks first (128 q rows a program,
two compute warpgroups sharing each K/V stage, in the forward and dQ passes) against the kernels
every GPU check ran (one compute warpgroup): forward, and forward + backward through
`mosaic_gpu.attention(..., compute_wgs=)` (its dK/dV pass is the same in both). Shapes and
layouts are those of `benchmarks.attention` (B = 4, H = 16, bf16, 128 × 128 block-causal random
layouts), so the rows compare with its `pallas_mosaic_gpu` rows. Needs a Hopper GPU.
"""

from __future__ import annotations

import argparse
import json
import os

import jax
import jax.numpy as jnp

import sparse_ops as so
from benchmarks.attention import (_add_cudnn_ratios, _add_speedups, _row, block_causal_random,
                                  environment, gpu_baseline, table)
from benchmarks.timing import time_calls
from sparse_ops.kernels import mosaic_gpu as mg


def rows_for(t: int, densities: list[float], cfg: dict) -> list[dict]:
  b, h, d = cfg["batch"], cfg["heads"], cfg["head_dim"]
  kq, kk, kv, kg = jax.random.split(jax.random.PRNGKey(0), 4)
  q, k, v, g = (jax.random.normal(x, (b, t, h, d), jnp.dtype(cfg["dtype"]))
                for x in (kq, kk, kv, kg))
  rows = gpu_baseline("cudnn", [], t, cfg, jax.random.PRNGKey(0))
  for dens in densities:
    mask = block_causal_random(t, 128, dens)
    layout = so.BlockLayout.from_mask(mask, t, t, block_q=128, block_kv=128)
    model_fwd = so.flops.model_flops(mask, t, t, num_heads=h, head_dim=d, batch=b)
    for wgs in (1, 2):
      fwd = lambda q, k, v, wgs=wgs: mg.attention(q, k, v, layout, compute_wgs=wgs)
      passes = (("fwd", jax.jit(fwd)),
                ("fwd_bwd", jax.jit(lambda q, k, v, fwd=fwd: jax.vjp(fwd, q, k, v)[1](g))))
      for pass_, fn in passes:
        times = time_calls(lambda: fn(q, k, v), cfg["reps"]).times
        rows.append(_row(f"pallas_mosaic_gpu[wg{wgs}]", mask, t, cfg, pass_, times, model_fwd,
                         layout))
  return rows


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--lengths", type=int, nargs="+", default=[8192])
  p.add_argument("--densities", type=float, nargs="+", default=[1.0, 0.25, 0.05])
  p.add_argument("--head-dim", type=int, default=128, dest="head_dim")
  p.add_argument("--batch", type=int, default=4)
  p.add_argument("--heads", type=int, default=16)
  p.add_argument("--reps", type=int, default=10)
  p.add_argument("--out", default=None, help="JSON path (a .md table is written beside it)")
  a = p.parse_args(argv)
  why = mg.unavailable()
  if why:
    raise SystemExit(why)
  cfg = dict(batch=a.batch, heads=a.heads, head_dim=a.head_dim, dtype="bfloat16", reps=a.reps)
  rows = [r for t in a.lengths for r in rows_for(t, a.densities, cfg)]
  _add_speedups(rows)  # the same ratio columns and table as benchmarks.attention
  _add_cudnn_ratios(rows)
  print(table(rows))
  if a.out:
    env = environment()
    with open(a.out, "w") as f:
      json.dump(dict(environment=env, config=cfg, rows=rows), f, indent=1)
    with open(os.path.splitext(a.out)[0] + ".md", "w") as f:
      f.write(f"# Mosaic GPU kernels, 1 vs 2 compute warpgroups: {env['device']}, jax "
              f"{env['jax']}\n\nconfig: `{json.dumps(cfg)}`\n\n{table(rows)}\n")


if __name__ == "__main__":
  main()
