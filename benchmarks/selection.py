"""Overhead of content-based block selection next to the sparse attention it enables.

    python benchmarks/selection.py --out benchmarks/results/selection_cpu.json

Times, in one process on the current backend, for each scoring and budget: ``select_blocks``
alone (it returns the whole layout, transposed lists included); attention (forward, and
forward+backward) over a precomputed selected layout; and selection + attention compiled as one
program, as a model runs them. The overhead is what selection adds to the sparse attention:
(selection + attention) / attention - 1, for the forward and for forward+backward; the
standalone ratio is kept too. The FLOP ratio comes from ``sparse_ops.flops``.
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
  p.add_argument("--batch", type=int, default=1)
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
  b = a.batch
  q = jax.random.normal(ks[0], (b, t, h, d), dt)
  k = jax.random.normal(ks[1], (b, t, hkv, d), dt)
  v = jax.random.normal(ks[2], (b, t, hkv, d), dt)
  rows = []
  for scoring in ("mean", "quest", "vertical_slash"):
    for budget in (so.Budget.density(0.1), so.Budget.adaptive(2.0, 0.5), so.Budget.coverage(0.9)):
      select = jax.jit(lambda q, k: so.select_blocks(q, k, block_q=blk, block_kv=blk,
                                                     budget=budget, scoring=scoring))
      layout = select(q, k)
      attend = lambda q, k, v, lay: so.attention(q, k, v, layout=lay, implementation=impl)
      fwd = jax.jit(attend)
      fwd_bwd = jax.jit(jax.grad(lambda *args: attend(*args).sum(), argnums=(0, 1, 2)))
      # Selection inside the same program, as in a model (unused outputs, e.g. the transposed
      # lists in a forward-only call, are dropped by the compiler).
      both = lambda q, k, v: attend(q, k, v, select(q, k))
      sel_fwd = jax.jit(both)
      sel_fwd_bwd = jax.jit(jax.grad(lambda *args: both(*args).sum(), argnums=(0, 1, 2)))
      t_sel, _ = _time(select, (q, k), a.reps)
      t_fwd, _ = _time(fwd, (q, k, v, layout), a.reps)
      t_fb, _ = _time(fwd_bwd, (q, k, v, layout), a.reps)
      t_sel_fwd, _ = _time(sel_fwd, (q, k, v), a.reps)
      t_sel_fb, _ = _time(sel_fwd_bwd, (q, k, v), a.reps)
      sel_flops = so.flops.selection_flops(t, t, num_heads=h, num_kv_heads=hkv, head_dim=d,
                                           block_q=blk, block_kv=blk, scoring=scoring, batch=b)
      att_flops = so.flops.executed_flops(layout, num_heads=h, head_dim=d, batch=b)
      rows.append(dict(scoring=scoring, budget=repr(budget), T=t, batch=b, impl=impl,
                       block_sparsity=so.flops.block_sparsity(layout),
                       select_ms=t_sel * 1e3, attention_fwd_ms=t_fwd * 1e3,
                       attention_fwd_bwd_ms=t_fb * 1e3,
                       select_and_fwd_ms=t_sel_fwd * 1e3, select_and_fwd_bwd_ms=t_sel_fb * 1e3,
                       overhead_fwd=t_sel_fwd / t_fwd - 1, overhead_fwd_bwd=t_sel_fb / t_fb - 1,
                       standalone_vs_fwd=t_sel / t_fwd, standalone_vs_fwd_bwd=t_sel / t_fb,
                       flop_ratio_vs_fwd=sel_flops / att_flops))
      r = rows[-1]
      print(f"{scoring:14} {r['budget']:55} block sparsity {r['block_sparsity']:.3f}  select "
            f"{r['select_ms']:8.1f} ms  fwd {r['attention_fwd_ms']:8.1f} ms  fwd+bwd "
            f"{r['attention_fwd_bwd_ms']:8.1f} ms  selection adds {100 * r['overhead_fwd']:5.1f}% to "
            f"fwd, {100 * r['overhead_fwd_bwd']:5.1f}% to fwd+bwd (standalone: "
            f"{100 * r['standalone_vs_fwd']:5.1f}%, {100 * r['standalone_vs_fwd_bwd']:5.1f}%)",
            flush=True)
  if a.out:
    with open(a.out, "w") as f:
      json.dump(dict(environment=environment(), args=vars(a), rows=rows), f, indent=1)


if __name__ == "__main__":
  main()
