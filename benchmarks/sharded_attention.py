"""Pallas attention on batch-sharded inputs, with and without the mesh set (sparse_ops.partition).

    python -m benchmarks.sharded_attention --out benchmarks/results/sharded_attention_<gpu>.json

On every device of the machine, q, k and v split over the batch, forward + backward of
`so.attention` (pallas_triton) under jit, three ways:
  - "per shard": `jax.set_mesh(mesh)` is in effect, so the kernel runs under shard_map on each
    device's rows;
  - "no mesh": the same sharded inputs without it, which is what XLA does with an opaque kernel;
  - "one device, B/n": one device computing its share alone, the floor for "per shard".
Per way: the median time, and the all-gathers and all-reduces in the compiled program.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import pathlib
import platform

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

import sparse_ops as so
from benchmarks.timing import time_calls


def fwd_bwd(layout):
  def loss(q, k, v, g):
    return jnp.sum(so.attention(q, k, v, layout=layout, implementation="pallas_triton") * g)
  return jax.jit(jax.grad(loss, argnums=(0, 1, 2)))


def collectives(compiled) -> dict[str, int]:
  text = compiled.as_text()
  return {op: text.count(f" {op}(") + text.count(f" {op}-start(")
          for op in ("all-gather", "all-reduce", "all-to-all", "collective-permute")}


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--batch", type=int, default=16)
  p.add_argument("--length", type=int, default=2048)
  p.add_argument("--heads", type=int, default=6)
  p.add_argument("--head-dim", type=int, default=64)
  p.add_argument("--density", type=float, default=0.25)
  p.add_argument("--reps", type=int, default=200)  # sub-millisecond calls: many, for a stable median
  p.add_argument("--out", default="")
  a = p.parse_args(argv)
  n = jax.device_count()
  if n < 2 or a.batch % n:
    raise SystemExit(f"needs several devices dividing --batch={a.batch}; have {n}")
  mesh = Mesh(np.asarray(jax.devices()), ("data",))
  mask = so.masks.Causal() & so.masks.BlockRandom(a.density, seed=0, block=128)
  layout = so.BlockLayout.from_mask(mask, a.length, a.length, block_q=128, block_kv=128)
  keys = jax.random.split(jax.random.key(0), 4)
  shape = (a.batch, a.length, a.heads, a.head_dim)
  whole = [jax.random.normal(k, shape, jnp.bfloat16) for k in keys]
  sharded = [jax.device_put(x, NamedSharding(mesh, P("data"))) for x in whole]
  share = [jax.device_put(x[: a.batch // n], jax.devices()[0]) for x in whole]

  rows = []
  for way, args, use_mesh in (("per shard", sharded, True), ("no mesh", sharded, False),
                              (f"one device, B/{n}", share, False)):
    # Compiled under the way's mesh context (or none): one program, timed and inspected.
    with jax.set_mesh(mesh) if use_mesh else contextlib.nullcontext():
      compiled = fwd_bwd(layout).lower(*args).compile()
    rows.append(dict(way=way, median_s=time_calls(lambda: compiled(*args), a.reps).median,
                     **collectives(compiled)))
  floor = rows[2]["median_s"]
  for r in rows:
    r["vs_one_device_share"] = round(r["median_s"] / floor, 3)
  result = dict(benchmark="pallas_triton fwd+bwd on batch-sharded inputs",
                date=datetime.date.today().isoformat(),
                device=dict(kind=jax.devices()[0].device_kind, count=n),
                versions=dict(python=platform.python_version(), jax=jax.__version__),
                shapes=dict(q=list(shape), dtype="bfloat16", density=a.density, block=128,
                            block_density=round(1 - so.flops.block_sparsity(layout), 4)),
                statistic=f"median of {a.reps} after one warm-up call", rows=rows)
  out = a.out or str(pathlib.Path(__file__).parent / "results" / "sharded_attention.json")
  pathlib.Path(out).write_text(json.dumps(result, indent=1) + "\n")
  print(f"{'way':>20} {'ms':>8} {'vs share':>9} {'all-gather':>10} {'all-reduce':>10}")
  for r in rows:
    print(f"{r['way']:>20} {1e3 * r['median_s']:>8.2f} {r['vs_one_device_share']:>9} "
          f"{r['all-gather']:>10} {r['all-reduce']:>10}")
  print(f"wrote {out}")


if __name__ == "__main__":
  main()
