"""Overhead of content-based block selection next to the sparse attention it enables.

    python benchmarks/selection.py --out benchmarks/results/selection_cpu.json

Times, in one process on the current backend: ``select_blocks`` alone, and attention (forward,
and forward+backward) over the selected layout, for each scoring and budget; reports the
selection time as a fraction of the sparse attention time, and the FLOP ratio from
``sparse_ops.flops``.
"""

from __future__ import annotations

import argparse
import json
import os

import jax
import jax.numpy as jnp

import sparse_ops as so
from benchmarks.attention import _time, environment


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__)
  p.add_argument("--length", type=int, default=16384)
  p.add_argument("--heads", type=int, default=4)
  p.add_argument("--kv-heads", type=int, default=4)
  p.add_argument("--head-dim", type=int, default=64)
  p.add_argument("--block", type=int, default=128)
  p.add_argument("--impl", default=None)
  p.add_argument("--dtype", default="float32")
  p.add_argument("--reps", type=int, default=3)
  p.add_argument("--out")
  a = p.parse_args(argv)
  impl = a.impl or so.default_implementation()
  t, h, hkv, d, blk = a.length, a.heads, a.kv_heads, a.head_dim, a.block
  ks = jax.random.split(jax.random.PRNGKey(0), 3)
  dt = jnp.dtype(a.dtype)
  q = jax.random.normal(ks[0], (1, t, h, d), dt)
  k = jax.random.normal(ks[1], (1, t, hkv, d), dt)
  v = jax.random.normal(ks[2], (1, t, hkv, d), dt)
  rows = []
  for scoring in ("mean", "quest"):
    for budget in (so.Budget.density(0.1), so.Budget.adaptive(2.0, 0.5), so.Budget.coverage(0.9)):
      select = jax.jit(lambda q, k: so.select_blocks(q, k, block_q=blk, block_kv=blk,
                                                     budget=budget, scoring=scoring))
      layout = select(q, k)
      fwd = jax.jit(lambda q, k, v, lay: so.attention(q, k, v, layout=lay, implementation=impl))
      fwd_bwd = jax.jit(jax.grad(lambda q, k, v, lay: so.attention(
          q, k, v, layout=lay, implementation=impl).sum(), argnums=(0, 1, 2)))
      t_sel, _ = _time(select, (q, k), a.reps)
      t_fwd, _ = _time(fwd, (q, k, v, layout), a.reps)
      t_fb, _ = _time(fwd_bwd, (q, k, v, layout), a.reps)
      sel_flops = so.flops.selection_flops(t, t, num_heads=h, num_kv_heads=hkv, head_dim=d,
                                           block_q=blk, block_kv=blk, scoring=scoring)
      att_flops = so.flops.executed_flops(layout, num_heads=h, head_dim=d)
      rows.append(dict(scoring=scoring, budget=repr(budget), T=t, impl=impl,
                       block_sparsity=so.flops.block_sparsity(layout),
                       select_ms=t_sel * 1e3, attention_fwd_ms=t_fwd * 1e3,
                       attention_fwd_bwd_ms=t_fb * 1e3,
                       overhead_vs_fwd=t_sel / t_fwd, overhead_vs_fwd_bwd=t_sel / t_fb,
                       flop_ratio_vs_fwd=sel_flops / att_flops))
      r = rows[-1]
      print(f"{scoring:5} {r['budget']:55} block sparsity {r['block_sparsity']:.3f}  select "
            f"{r['select_ms']:8.1f} ms  fwd {r['attention_fwd_ms']:8.1f} ms  fwd+bwd "
            f"{r['attention_fwd_bwd_ms']:8.1f} ms  overhead {100 * r['overhead_vs_fwd']:5.1f}% of "
            f"fwd, {100 * r['overhead_vs_fwd_bwd']:5.1f}% of fwd+bwd", flush=True)
  if a.out:
    with open(a.out, "w") as f:
      json.dump(dict(environment=environment(), args=vars(a), rows=rows), f, indent=1)


if __name__ == "__main__":
  main()
