"""Times sparse_ops attention implementations over lengths and block densities.

    python benchmarks/attention.py                       # default sweep on this backend
    python benchmarks/attention.py --preset cpu          # what benchmarks/results/attention_cpu.json holds
    python benchmarks/attention.py --lengths 4096 8192 --densities 1 0.25 --impls xla

Each row: implementation, pattern, T, block density d (visited blocks / dense-causal blocks),
element sparsity, forward or forward+backward median seconds over repeated calls after warm-up,
achieved TFLOP/s (model FLOPs of the allowed pairs; fwd+bwd counted as 3.5× forward, as in
TARGETS.md), the speedup over the same implementation's dense causal run in this process, the
ideal speedup (dense causal pairs / allowed pairs), and XLA's compiled temp-buffer bytes (the
peak scratch memory of the jitted call, from ``memory_analysis()``).

Sparse layouts are "block-causal random": every diagonal block plus random causal blocks, so no
row is empty, at the requested fraction of the causal blocks. ``--local`` adds a sliding-window
pattern (``Local(w)``), the case where a block-sparse kernel must not touch T×S memory.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

import sparse_ops as so
from sparse_ops import masks

PRESETS = {
    # The committed CPU run: a sweep small enough for 2 cores, plus the long-context local case.
    "cpu": dict(lengths=[1024, 4096], densities=[1.0, 0.5, 0.25, 0.1], impls=["xla", "reference"],
                batch=1, heads=4, head_dim=64, dtype="float32", local=[], reps=3,
                reference_max_len=4096),
    "cpu-local": dict(lengths=[32768], densities=[1.0], impls=["xla"], batch=1, heads=4,
                      head_dim=64, dtype="float32", local=[1024], reps=2, reference_max_len=0),
    "gpu": dict(lengths=[4096, 8192, 32768], densities=[1.0, 0.5, 0.25, 0.1, 0.05],
                impls=None, batch=4, heads=16, head_dim=128, dtype="bfloat16", local=[],
                reps=10, reference_max_len=0),
}


def block_causal_random(t: int, block: int, density: float, seed: int = 0) -> masks.Mask:
  """Diagonal blocks + random causal blocks, ``density`` of all causal blocks in expectation."""
  if density >= 1.0:
    return masks.Causal()
  n = -(-t // block)
  causal_blocks, diag = n * (n + 1) // 2, n
  p = max(0.0, (density * causal_blocks - diag) / max(1, causal_blocks - diag))
  # Local(1) (each query sees itself) keeps exactly the diagonal blocks, so no row is empty.
  return (masks.BlockRandom(min(1.0, p), seed, block) | masks.Local(1)) & masks.Causal()


def _time(fn, args, reps: int) -> tuple[float, list[float]]:
  out = fn(*args)
  jax.block_until_ready(out)  # compile + warm-up
  times = []
  for _ in range(reps):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t0)
  return statistics.median(times), times


def _temp_bytes(fn, args) -> int | None:
  try:
    stats = fn.lower(*args).compile().memory_analysis()
    return int(stats.temp_size_in_bytes) if stats is not None else None
  except Exception:  # some backends do not report; the row says null rather than guessing
    return None


def run_case(impl: str, mask: masks.Mask, t: int, cfg: dict, key) -> list[dict]:
  b, h, d = cfg["batch"], cfg["heads"], cfg["head_dim"]
  dtype = jnp.dtype(cfg["dtype"])
  kq, kk, kv, kg = jax.random.split(key, 4)
  q = jax.random.normal(kq, (b, t, h, d), dtype)
  k = jax.random.normal(kk, (b, t, h, d), dtype)
  v = jax.random.normal(kv, (b, t, h, d), dtype)
  g = jax.random.normal(kg, (b, t, h, d), dtype)
  blocks = so.IMPLEMENTATIONS[impl].default_blocks(t, t, d)
  layout = so.BlockLayout.from_mask(mask, t, t, block_q=blocks[0], block_kv=blocks[1])

  def fwd(q, k, v):
    return so.attention(q, k, v, layout=layout, implementation=impl)

  def fwd_bwd(q, k, v):
    out, vjp = jax.vjp(fwd, q, k, v)
    return vjp(g)

  model_fwd = so.flops.model_flops(mask, t, t, num_heads=h, head_dim=d, batch=b)
  rows = []
  for name, fn, mult in (("fwd", fwd, 1.0), ("fwd_bwd", fwd_bwd, 3.5)):
    jfn = jax.jit(fn)
    med, times = _time(jfn, (q, k, v), cfg["reps"])
    rows.append(dict(
        impl=impl, pattern=repr(mask), T=t, batch=b, heads=h, head_dim=d, dtype=cfg["dtype"],
        block_q=blocks[0], block_kv=blocks[1], pass_=name,
        block_density=1.0 - so.flops.block_sparsity(layout),
        element_sparsity=so.flops.sparsity(mask, t),
        model_tflop=model_fwd * mult / 1e12,
        executed_tflop=so.flops.executed_flops(layout, num_heads=h, head_dim=d, batch=b,
                                               backward=(name == "fwd_bwd")) / 1e12,
        median_s=med, times_s=times, tflops=model_fwd * mult / med / 1e12,
        temp_bytes=_temp_bytes(jfn, (q, k, v))))
  return rows


def environment() -> dict:
  dev = jax.devices()[0]
  return dict(backend=jax.default_backend(), device=getattr(dev, "device_kind", str(dev)),
              device_count=jax.device_count(), cpu_count=os.cpu_count(),
              jax=jax.__version__, jaxlib=jax.lib.__version__ if hasattr(jax, "lib") else None,
              numpy=np.__version__, python=sys.version.split()[0], platform=platform.platform())


def sweep(cfg: dict) -> dict:
  impls = cfg["impls"] or so.available_implementations()
  key = jax.random.PRNGKey(0)
  rows = []
  for t in cfg["lengths"]:
    patterns = [block_causal_random(t, 128, dens) for dens in cfg["densities"]]
    patterns += [masks.Local(w) & masks.Causal() for w in cfg["local"]]
    for impl in impls:
      if impl == "reference" and t > cfg["reference_max_len"]:
        continue  # materialises [B, H, T, T]: skipped above reference_max_len by design
      for mask in patterns:
        rows += run_case(impl, mask, t, cfg, key)
        print(_fmt(rows[-2]), flush=True)
        print(_fmt(rows[-1]), flush=True)
  _add_speedups(rows)
  return dict(environment=environment(), config=cfg, rows=rows)


def _add_speedups(rows: list[dict]) -> None:
  """Speedup of each row over the same implementation's dense causal run (same T, pass)."""
  dense = {(r["impl"], r["T"], r["pass_"]): r for r in rows if r["pattern"] == "Causal()"}
  for r in rows:
    base = dense.get((r["impl"], r["T"], r["pass_"]))
    r["speedup_vs_own_dense"] = base["median_s"] / r["median_s"] if base else None
    # Ideal: the dense causal pairs over this pattern's pairs (model FLOPs ratio).
    r["ideal_speedup"] = base["model_tflop"] / r["model_tflop"] if base else None


def _fmt(r: dict) -> str:
  return (f"{r['impl']:>10} {r['pass_']:>7} T={r['T']:>6} d={r['block_density']:.3f} "
          f"{r['median_s'] * 1e3:10.2f} ms {r['tflops']:8.4f} TFLOP/s "
          f"temp={(r['temp_bytes'] or 0) / 2**20:9.1f} MiB  {r['pattern'][:60]}")


def table(rows: list[dict]) -> str:
  head = "| impl | pass | T | pattern | block density | median ms | TFLOP/s | vs own dense | ideal | temp MiB |"
  lines = [head, "|" + "---|" * 10]
  for r in rows:
    sp = r.get("speedup_vs_own_dense")
    ideal = r.get("ideal_speedup")
    lines.append(
        f"| {r['impl']} | {r['pass_']} | {r['T']} | `{r['pattern'][:48]}` | {r['block_density']:.3f} "
        f"| {r['median_s'] * 1e3:.1f} | {r['tflops']:.4f} | {'' if sp is None else f'{sp:.2f}×'} "
        f"| {'' if ideal is None else f'{ideal:.2f}×'} | {(r['temp_bytes'] or 0) / 2**20:.1f} |")
  return "\n".join(lines)


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--preset", choices=sorted(PRESETS), default=None)
  p.add_argument("--lengths", type=int, nargs="+")
  p.add_argument("--densities", type=float, nargs="+")
  p.add_argument("--local", type=int, nargs="*", help="sliding-window sizes to add")
  p.add_argument("--impls", nargs="+", help=f"from {sorted(so.IMPLEMENTATIONS)}")
  p.add_argument("--batch", type=int)
  p.add_argument("--heads", type=int)
  p.add_argument("--head-dim", type=int, dest="head_dim")
  p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"])
  p.add_argument("--reps", type=int)
  p.add_argument("--out", default=None, help="JSON path (a .md table is written beside it)")
  args = p.parse_args(argv)
  default = "gpu" if jax.default_backend() == "gpu" else "cpu"
  cfg = dict(PRESETS[args.preset or default])
  for field in ("lengths", "densities", "local", "impls", "batch", "heads", "head_dim", "dtype",
                "reps"):
    if getattr(args, field) is not None:
      cfg[field] = getattr(args, field)
  result = sweep(cfg)
  print(table(result["rows"]))
  if args.out:
    with open(args.out, "w") as f:
      json.dump(result, f, indent=1)
    with open(os.path.splitext(args.out)[0] + ".md", "w") as f:
      env = result["environment"]
      f.write(f"# attention benchmark: {env['device']} ({env['backend']}), jax {env['jax']}\n\n")
      f.write(f"config: `{json.dumps(cfg)}`\n\n{table(result['rows'])}\n")


if __name__ == "__main__":
  main()
