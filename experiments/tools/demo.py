"""A two-minute tour of sparse_ops on this machine: implementations × patterns, with times.

    python -m experiments demo [--length 2048] [--heads 4] [--head-dim 64]

Prints, for dense causal and a few sparse patterns, the element and block sparsity, the model
FLOPs, the forward+backward median time of each available implementation, and the speedup over
the dense run of the same implementation. The study itself (grid → train → evaluate → report)
is the main job once it lands; this is the embedded default until then.
"""

from __future__ import annotations

import statistics
import time

import jax
import jax.numpy as jnp

import sparse_ops as so
from sparse_ops import masks as M


def _median_seconds(fn, args, reps=3):
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(reps):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t0)
  return statistics.median(times)


def run(length: int = 2048, heads: int = 4, head_dim: int = 64, batch: int = 1) -> list[dict]:
  t = length
  patterns = {
      "dense causal": M.Causal(),
      "local 256": M.Local(256),
      "sink 64 + local 256": (M.Sink(64) | M.Local(256)) & M.Causal(),
      "block-random 25% + diag": (M.BlockRandom(0.25, seed=0) | M.Local(1)) & M.Causal(),
      "vertical-slash": M.VerticalSlash(columns=range(0, t, 512), diagonals=(0, 1, 2, 64, 128)),
  }
  impls = [n for n in so.available_implementations() if n != "reference" or t <= 4096]
  ks = jax.random.split(jax.random.PRNGKey(0), 3)
  q, k, v = (jax.random.normal(kk, (batch, t, heads, head_dim), jnp.float32) for kk in ks)
  rows, dense_time = [], {}
  for name, mask in patterns.items():
    layout = so.BlockLayout.from_mask(mask, t, t)
    for impl in impls:
      # The layout is an argument, not a closure: closed-over arrays become XLA constants that
      # the compiler may spend seconds constant-folding through the mask arithmetic.
      loss = lambda q, k, v, lay: so.attention(q, k, v, layout=lay, implementation=impl).sum()
      sec = _median_seconds(jax.jit(jax.grad(loss, argnums=(0, 1, 2))), (q, k, v, layout))
      dense_time.setdefault(impl, sec)
      rows.append(dict(pattern=name, impl=impl, sparsity=so.flops.sparsity(mask, t),
                       block_sparsity=so.flops.block_sparsity(layout),
                       gflop=so.flops.model_flops(mask, t, t, num_heads=heads, head_dim=head_dim,
                                                  batch=batch, backward=True) / 1e9,
                       ms=sec * 1e3, speedup=dense_time[impl] / sec))
  return rows


def main(length: int, heads: int, head_dim: int) -> None:
  """The tour's table; `python -m experiments demo` parses the flags (experiments.cli.Demo)."""
  dev = jax.devices()[0]
  print(f"sparse_ops demo on {dev.platform} ({getattr(dev, 'device_kind', dev)}), "
        f"T={length}, H={heads}, D={head_dim}, f32, forward+backward")
  rows = run(length, heads, head_dim)
  print(f"{'pattern':26} {'impl':10} {'sparsity':>9} {'block sp.':>9} {'GFLOP':>8} "
        f"{'ms':>9} {'vs dense':>9}")
  for r in rows:
    print(f"{r['pattern']:26} {r['impl']:10} {r['sparsity']:9.3f} {r['block_sparsity']:9.3f} "
          f"{r['gflop']:8.2f} {r['ms']:9.1f} {r['speedup']:8.2f}×")
