"""Times sparse_ops attention implementations over lengths and block densities.

    python -m benchmarks.attention                       # default sweep on this backend
    python -m benchmarks.attention --preset cpu          # what benchmarks/results/attention_cpu.json holds
    python -m benchmarks.attention --lengths 4096 8192 --densities 1 0.25 --impls xla

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
import dataclasses
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
from benchmarks.timing import time_calls

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
    # The committed H100 run (benchmarks/results/attention_h100.*): our Triton kernel against cuDNN
    # dense and PyTorch FlexAttention on the same layouts, side by side in one process.
    "h100": dict(lengths=[4096, 8192, 32768], densities=[1.0, 0.5, 0.25, 0.1, 0.05],
                 impls=["pallas_triton"], batch=4, heads=16, head_dim=128, dtype="bfloat16",
                 local=[], reps=10, reference_max_len=0, baselines=["cudnn", "flex"],
                 temp_bytes=False),
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


def _temp_bytes(fn, args) -> int | None:
  try:
    stats = fn.lower(*args).compile().memory_analysis()
    return int(stats.temp_size_in_bytes) if stats is not None else None
  except Exception:  # some backends do not report; the row says null rather than guessing
    return None


def run_case(impl: str, mask: masks.Mask, t: int, cfg: dict, key,
             partial_mask: masks.Mask | None = None, label: str | None = None) -> list[dict]:
  b, h, d = cfg["batch"], cfg["heads"], cfg["head_dim"]
  dtype = jnp.dtype(cfg["dtype"])
  kq, kk, kv, kg = jax.random.split(key, 4)
  q = jax.random.normal(kq, (b, t, h, d), dtype)
  k = jax.random.normal(kk, (b, t, h, d), dtype)
  v = jax.random.normal(kv, (b, t, h, d), dtype)
  g = jax.random.normal(kg, (b, t, h, d), dtype)
  blocks = so.IMPLEMENTATIONS[impl].default_blocks(t, t, d)
  layout = so.BlockLayout.from_mask(mask, t, t, block_q=blocks[0], block_kv=blocks[1])
  if partial_mask is not None:  # same kept blocks, a different elementwise mask on partial ones
    layout = dataclasses.replace(layout, mask=partial_mask)
  # On the device once: numpy leaves would be copied host-to-device on every timed call (about
  # 0.3 ms per call on an H100 host, which swamped the sparse kernels at T <= 8192).
  layout = jax.device_put(layout)

  def fwd(q, k, v, layout):  # layout as an argument: no constant folding through it
    return so.attention(q, k, v, layout=layout, implementation=impl)

  def fwd_bwd(q, k, v, layout):
    out, vjp = jax.vjp(lambda q, k, v: fwd(q, k, v, layout), q, k, v)
    return vjp(g)

  model_fwd = so.flops.model_flops(mask, t, t, num_heads=h, head_dim=d, batch=b)
  rows = []
  for name, fn, mult in (("fwd", fwd, 1.0), ("fwd_bwd", fwd_bwd, 3.5)):
    jfn = jax.jit(fn)
    timing = time_calls(lambda: jfn(q, k, v, layout), cfg["reps"])
    med, times = timing.median, timing.times
    rows.append(dict(
        impl=label or impl, pattern=repr(mask), T=t, batch=b, heads=h, head_dim=d,
        dtype=cfg["dtype"], block_q=blocks[0], block_kv=blocks[1], pass_=name,
        block_density=1.0 - so.flops.block_sparsity(layout),
        element_sparsity=so.flops.sparsity(mask, t),
        model_tflop=model_fwd * mult / 1e12,
        executed_tflop=so.flops.executed_flops(layout, num_heads=h, head_dim=d, batch=b,
                                               backward=(name == "fwd_bwd")) / 1e12,
        median_s=med, times_s=times, tflops=model_fwd * mult / med / 1e12,
        temp_bytes=_temp_bytes(jfn, (q, k, v, layout)) if cfg.get("temp_bytes", True) else None))
  return rows

# ------------------------------------------------------------------------------ GPU baselines


def _row(impl, mask, t, cfg, pass_, times, model_fwd, layout=None, **extra) -> dict:
  b, h, d = cfg["batch"], cfg["heads"], cfg["head_dim"]
  mult = 3.5 if pass_ == "fwd_bwd" else 1.0
  med = statistics.median(times)
  return dict(
      impl=impl, pattern=repr(mask), T=t, batch=b, heads=h, head_dim=d, dtype=cfg["dtype"],
      block_q=128, block_kv=128, pass_=pass_,
      block_density=1.0 if layout is None else 1.0 - so.flops.block_sparsity(layout),
      element_sparsity=so.flops.sparsity(mask, t), model_tflop=model_fwd * mult / 1e12,
      executed_tflop=None, median_s=med, times_s=times, tflops=model_fwd * mult / med / 1e12,
      temp_bytes=None, **extra)


def gpu_baseline(name: str, patterns: list, t: int, cfg: dict, key) -> list[dict]:
  """Rows for a GPU baseline on the same shapes (and, for FlexAttention, the same layouts).

  ``cudnn`` / ``xla``: ``jax.nn.dot_product_attention(implementation=name)``, dense causal, on the
  same inputs as our kernel (``xla`` materialises the [B, H, T, T] scores: a short-T candidate).
  ``flex``: PyTorch FlexAttention under torch.compile on a BlockMask made from *our*
  BlockLayout's lists (same kept blocks, 128 × 128; its partial blocks apply the causal
  mask_mod), plus torch SDPA dense causal as its own dense reference.
  """
  b, h, d = cfg["batch"], cfg["heads"], cfg["head_dim"]
  dtype = jnp.dtype(cfg["dtype"])
  if name in ("cudnn", "xla"):
    kq, kk, kv, kg = jax.random.split(key, 4)
    q, k, v, g = (jax.random.normal(x, (b, t, h, d), dtype) for x in (kq, kk, kv, kg))
    fwd = lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=True,
                                                       implementation=name)

    def fwd_bwd(q, k, v):
      return jax.vjp(fwd, q, k, v)[1](g)

    mask = masks.Causal()
    model_fwd = so.flops.model_flops(mask, t, t, num_heads=h, head_dim=d, batch=b)
    rows = []
    for pass_, fn in (("fwd", fwd), ("fwd_bwd", fwd_bwd)):
      jfn = jax.jit(fn)
      times = time_calls(lambda: jfn(q, k, v), cfg["reps"]).times
      rows.append(_row(f"{name}_dense", mask, t, cfg, pass_, times, model_fwd))
    return rows
  if name == "flex":
    return _flex_rows(patterns, t, cfg)
  raise ValueError(f"baseline={name!r}; valid: 'cudnn', 'xla', 'flex'")


def _torch_time(fn, reps: int) -> list[float]:
  import torch
  for _ in range(2):
    fn()
  torch.cuda.synchronize()
  times = []
  for _ in range(reps):
    t0 = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    times.append(time.perf_counter() - t0)
  return times


def _flex_rows(patterns: list, t: int, cfg: dict) -> list[dict]:
  try:
    import torch
    import torch.nn.functional as F
    from torch.nn.attention.flex_attention import BlockMask, flex_attention
  except Exception as e:  # the row says why rather than the run failing
    print(f"flex baseline skipped: {e!r}", flush=True)
    return []
  b, h, d = cfg["batch"], cfg["heads"], cfg["head_dim"]
  tdtype = {"bfloat16": torch.bfloat16, "float16": torch.float16,
            "float32": torch.float32}[cfg["dtype"]]
  gen = torch.Generator(device="cuda").manual_seed(0)
  q, k, v, g = (torch.randn(b, h, t, d, device="cuda", dtype=tdtype, generator=gen)
                for _ in range(4))
  q.requires_grad_(), k.requires_grad_(), v.requires_grad_()
  flex = torch.compile(flex_attention)
  causal = lambda bb, hh, qi, ki: ki <= qi
  extra = dict(torch=torch.__version__)
  rows = []

  def both(impl, mask, run, model_fwd, layout=None):
    def fwd():
      with torch.no_grad():
        run()

    def fwd_bwd():
      torch.autograd.grad(run(), (q, k, v), g)

    for pass_, fn in (("fwd", fwd), ("fwd_bwd", fwd_bwd)):
      times = _torch_time(fn, cfg["reps"])
      rows.append(_row(impl, mask, t, cfg, pass_, times, model_fwd, layout, **extra))
      print(_fmt(rows[-1]), flush=True)

  dense = masks.Causal()
  both("torch_sdpa_dense", dense,
       lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True),
       so.flops.model_flops(dense, t, t, num_heads=h, head_dim=d, batch=b))
  for mask in patterns:
    layout = so.BlockLayout.from_mask(mask, t, t, block_q=128, block_kv=128)
    nk = layout.num_kv_blocks

    def cuda(x, width=None):  # torch infers the kv-block count from the indices' width
      x = np.asarray(x, np.int32)
      if width is not None and x.shape[-1] < width:
        x = np.concatenate([x, np.repeat(x[..., -1:], width - x.shape[-1], -1)], -1)
      return torch.as_tensor(x).cuda()

    block_mask = BlockMask.from_kv_blocks(
        cuda(layout.kv_num_blocks), cuda(layout.kv_indices, nk),
        cuda(layout.full_kv_num_blocks), cuda(layout.full_kv_indices, nk), BLOCK_SIZE=128,
        mask_mod=causal)
    both("torch_flex", mask, lambda: flex(q, k, v, block_mask=block_mask),
         so.flops.model_flops(mask, t, t, num_heads=h, head_dim=d, batch=b), layout)
  return rows


def _add_cudnn_ratios(rows: list[dict]) -> None:
  """Speedup over cuDNN dense causal (same T, pass); torch rows also over torch SDPA dense."""
  ref = {(r["impl"], r["T"], r["pass_"]): r["median_s"] for r in rows
         if r["impl"] in ("cudnn_dense", "torch_sdpa_dense")}
  for r in rows:
    base = ref.get(("cudnn_dense", r["T"], r["pass_"]))
    r["speedup_vs_cudnn"] = base / r["median_s"] if base else None
    tbase = ref.get(("torch_sdpa_dense", r["T"], r["pass_"]))
    r["speedup_vs_torch_sdpa"] = tbase / r["median_s"] if tbase else None


# ------------------------------------------------------------------------------- tile tuning


def tune(cfg: dict, head_dims=(128, 64), t: int = 8192, density: float = 1.0,
         passes=("fwd", "dq", "dkv"), save=lambda out: None, block: int = 128) -> dict:
  """Sweeps the Triton kernels' tiles per pass (dense causal, cfg's dtype), one pass at a time,
  on a layout of `block` × `block` blocks (tiles larger than a block are clipped to it).

  fwd: times the forward; dq / dkv: times forward+backward with the other tiles fixed.
  `save(out)` runs after every pass, so a sweep cut short keeps what it measured.
  """
  from sparse_ops.kernels import triton as kt
  P = kt.PassTiles
  cands = {
      "fwd": [P(128, 64, 4, 3), P(128, 64, 8, 3), P(128, 128, 8, 2), P(128, 128, 8, 3),
              P(64, 64, 4, 3), P(128, 32, 4, 4), P(64, 128, 4, 2), P(128, 64, 8, 4),
              P(64, 64, 4, 2), P(32, 64, 4, 2), P(64, 32, 4, 3)],
      "dq": [P(64, 64, 4, 2), P(64, 64, 4, 3), P(128, 64, 8, 2), P(64, 128, 8, 2),
             P(128, 128, 8, 2), P(32, 64, 4, 2), P(128, 32, 8, 2)],
      "dkv": [P(64, 64, 4, 2), P(64, 64, 4, 3), P(64, 128, 8, 2), P(128, 64, 8, 2),
              P(128, 128, 8, 2), P(32, 64, 4, 2), P(32, 128, 8, 2)],
  }
  b, h = cfg["batch"], cfg["heads"]
  dtype = jnp.dtype(cfg["dtype"])
  if dtype.itemsize == 4:
    # f32 tiles hold twice the bytes and TF32x3 splits each operand in two: at D=128 every
    # candidate above ran out of shared memory on an H100, so smaller ones are tried as well.
    small = [P(32, 32, 4, 2), P(32, 32, 8, 2), P(64, 32, 4, 2), P(64, 32, 8, 2),
             P(32, 64, 4, 2), P(32, 64, 8, 2), P(16, 64, 4, 2), P(64, 16, 4, 2),
             P(16, 32, 4, 2), P(32, 16, 4, 2), P(16, 16, 4, 2), P(16, 32, 8, 2)]
    cands = {k: v + [c for c in small if c not in v] for k, v in cands.items()}
  out = {}
  for d in head_dims:
    kq, kk, kv, kg = jax.random.split(jax.random.PRNGKey(0), 4)
    q, k, v, g = (jax.random.normal(x, (b, t, h, d), dtype) for x in (kq, kk, kv, kg))
    layout = so.BlockLayout.from_mask(block_causal_random(t, block, density), t, t,
                                      block_q=block, block_kv=block)
    best = kt.default_tiles(d, dtype)
    # executed FLOPs (whole visited blocks), so sparse sweeps read as kernel efficiency
    flops = so.flops.executed_flops(layout, num_heads=h, head_dim=d, batch=b, backward=False)
    log = []
    for pass_ in passes:
      results = []
      for c in cands[pass_]:
        tiles = dataclasses.replace(best, **{pass_: c})
        fwd = lambda q, k, v, tiles=tiles: kt.attention(q, k, v, layout, tiles=tiles)
        fn = fwd if pass_ == "fwd" else (lambda q, k, v, fwd=fwd: jax.vjp(fwd, q, k, v)[1](g))
        try:
          jfn = jax.jit(fn)
          med = time_calls(lambda: jfn(q, k, v), 5).median
        except Exception as e:  # e.g. out of shared memory: recorded, not fatal
          print(f"tune d={d} {pass_} {c}: failed {type(e).__name__}: {str(e)[:200]}", flush=True)
          log.append(dict(head_dim=d, pass_=pass_, tiles=dataclasses.asdict(c), error=str(e)[:300]))
          continue
        tf = flops * (1.0 if pass_ == "fwd" else 3.5) / med / 1e12
        print(f"tune d={d} {pass_:>3} {c}: {med * 1e3:8.3f} ms {tf:7.1f} TFLOP/s", flush=True)
        log.append(dict(head_dim=d, pass_=pass_, tiles=dataclasses.asdict(c), median_s=med,
                        tflops=tf))
        results.append((med, c))
      if results:
        best = dataclasses.replace(best, **{pass_: min(results, key=lambda x: x[0])[1]})
      out[d] = dict(chosen=dataclasses.asdict(best), log=log, passes=list(passes),
                    complete=pass_ == passes[-1])
      save(out)
    print(f"tune d={d} chosen: {best}", flush=True)
  return out



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
        if (impl == "pallas_triton" and "flex" in cfg.get("baselines", [])
            and cfg.get("causal_partial", True) and mask != masks.Causal()):
          # FlexAttention's partial (diagonal) blocks apply a plain causal mask_mod; this row does
          # the same, so the two differ only in the kernels, not in the elementwise predicate.
          rows += run_case(impl, mask, t, cfg, key, partial_mask=masks.Causal(),
                           label="pallas_triton[causal partial]")
          print(_fmt(rows[-2]), flush=True)
          print(_fmt(rows[-1]), flush=True)
    for base in cfg.get("baselines", []):
      new = gpu_baseline(base, patterns, t, cfg, key)
      for r in new:
        print(_fmt(r), flush=True)
      rows += new
  _add_speedups(rows)
  _add_cudnn_ratios(rows)
  import resource  # the whole process's peak resident memory, after every case ran
  peak_rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  print(f"peak resident memory of this process: {peak_rss_mib:.0f} MiB", flush=True)
  return dict(environment=environment(), config=cfg, rows=rows, peak_rss_mib=peak_rss_mib)


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
  head = ("| impl | pass | T | pattern | block density | median ms | TFLOP/s | vs own dense | "
          "ideal | temp MiB | vs cuDNN dense |")
  lines = [head, "|" + "---|" * 11]
  for r in rows:
    sp = r.get("speedup_vs_own_dense")
    ideal = r.get("ideal_speedup")
    vs_cudnn = r.get("speedup_vs_cudnn")
    lines.append(
        f"| {r['impl']} | {r['pass_']} | {r['T']} | `{r['pattern'][:48]}` | {r['block_density']:.3f} "
        f"| {r['median_s'] * 1e3:.1f} | {r['tflops']:.4f} | {'' if sp is None else f'{sp:.2f}×'} "
        f"| {'' if ideal is None else f'{ideal:.2f}×'} | {(r['temp_bytes'] or 0) / 2**20:.1f} "
        f"| {'' if vs_cudnn is None else f'{vs_cudnn:.2f}×'} |")
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
  p.add_argument("--baselines", nargs="*", help="GPU baselines to add: cudnn xla flex")
  p.add_argument("--tune", default=None, metavar="JSON",
                 help="sweep the pallas_triton tiles (T=--tune-length, the first of --densities) "
                      "into this JSON, then exit")
  p.add_argument("--tune-length", type=int, default=8192, dest="tune_length",
                 help="sequence length of the tile sweep (the study's short steps: 512 with "
                      "--batch 64 --heads 4 --tune-head-dims 64 --tune-block 64)")
  p.add_argument("--tune-block", type=int, default=128, dest="tune_block",
                 help="layout block of the tile sweep (the h200 study's models use 64)")
  p.add_argument("--tune-head-dims", type=int, nargs="+", default=[128, 64], dest="tune_head_dims")
  p.add_argument("--tune-passes", nargs="+", default=["fwd", "dq", "dkv"],
                 choices=["fwd", "dq", "dkv"], dest="tune_passes",
                 help="passes to sweep, in order (the others keep their tuned tiles)")
  p.add_argument("--no-causal-partial", action="store_true",
                 help="skip the pallas_triton rows with FlexAttention's causal partial-block mask")
  args = p.parse_args(argv)
  default = "gpu" if jax.default_backend() == "gpu" else "cpu"
  cfg = dict(PRESETS[args.preset or default])
  for field in ("lengths", "densities", "local", "impls", "batch", "heads", "head_dim", "dtype",
                "reps", "baselines"):
    if getattr(args, field) is not None:
      cfg[field] = getattr(args, field)
  cfg["tune_head_dims"] = args.tune_head_dims
  cfg["tune_passes"] = args.tune_passes
  cfg["causal_partial"] = not args.no_causal_partial
  if args.tune:
    def save(out):
      with open(args.tune, "w") as f:
        json.dump(dict(environment=environment(), config=cfg, tune=out), f, indent=1)
    tune(cfg, head_dims=cfg["tune_head_dims"], t=args.tune_length, block=args.tune_block,
         density=cfg["densities"][0],
         passes=tuple(args.tune_passes), save=save)
    return
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
