"""Training-step throughput of ladder models -> benchmarks/results/train_throughput_<preset>.json.

    python -m benchmarks.train_throughput --preset h100   # one H100: 21 rows, about 11 minutes
    python -m benchmarks.train_throughput --preset cpu    # the smallest sizes on a CPU

Times the trainer's own jitted step (`train.step.make_train_step`: bf16 compute, f32 params,
AdamW, clipping, donated state) on random tokens; median step time over `--steps` steps after one
compile + warm-up step. No data pipeline (its own benchmark is task_throughput.py). Each row
runs in its own subprocess with a time limit, so one failing or slow-compiling row is recorded
as an error and the sweep goes on.

Per row: step time, tokens/s, model TFLOP/s (`models.flops_per_token`, the study's counter:
6·N per token plus attention over the pattern's exact pairs), MFU against the device's dense
bf16 peak (`train.log.PEAKS`) and against a bf16 matmul ceiling measured in the same process,
and the time of the attention op alone (forward + backward of `sparse_ops.attention` at the
model's shapes, times depth) so a slow step can be split into attention and the rest.
Sparse rows (block-random layouts of block density d over the causal blocks) also report their
FLOPs-proportional step time: the dense row's time × (sparse FLOPs / dense FLOPs), and the
ratio actual / proportional (target ≤ 1.15, TARGETS.md).
"""

from __future__ import annotations

import argparse
import datetime
import json
import pathlib
import platform
import subprocess
import sys
import time

import flax
import jax
import jax.numpy as jnp
import numpy as np

import models
import sparse_ops as so
from benchmarks.timing import time_calls
from train import step as step_lib
from train.config import Config, DataConfig
from train.log import device_peak

# (sizes, lengths, block densities, implementations, tokens per step): each preset is a list of
# such groups; a group's rows are its cross product.
PRESETS = {
    "cpu": [(("100k", "300k", "800k"), (128, 512), (1.0,), ("xla",), 4096)],
    "h100": [
        # The TARGETS.md row: ~100M dense at T=4096, and its sparse versions, at three lengths
        # (issue 8's grid; about 30 s a row with its compile: where one call may not run 11
        # minutes, run it in --only pieces that each include the dense rows they compare with).
        (("100m",), (2048, 4096, 8192), (1.0, 0.5, 0.25, 0.1), ("pallas_triton",), 65536),
        (("100m",), (4096,), (1.0,), ("xla",), 65536),
        # The smaller sizes the GPU study trains.
        (("20m", "50m"), (4096,), (1.0, 0.5, 0.25, 0.1), ("pallas_triton",), 65536),
    ],
}


def matmul_ceiling(n: int = 8192, reps: int = 10) -> float:
  """bf16 n³ matmul FLOP/s on the default device (the arithmetic ceiling seen)."""
  a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.bfloat16)
  f = jax.jit(lambda a: a @ a)
  return 2 * n ** 3 / time_calls(lambda: f(a), reps).median


def attention_config(density: float, impl: str, block: int) -> models.AttentionConfig:
  if density >= 1.0:
    return models.AttentionConfig("dense", implementation=impl, block_q=block, block_kv=block)
  return models.AttentionConfig("block_random", density=density, implementation=impl,
                                block_q=block, block_kv=block)


def _phase(msg: str) -> None:
  print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def attention_time(model: models.ModelConfig, batch: int, seq_len: int, steps: int) -> float:
  """Forward + backward of one layer's attention op at the model's shapes, × depth."""
  a = model.attention
  layout = a.layout(seq_len)
  ks = jax.random.split(jax.random.PRNGKey(1), 4)
  shape_q = (batch, seq_len, model.num_heads, model.head_size)
  shape_k = (batch, seq_len, model.kv_heads, model.head_size)
  q = jax.random.normal(ks[0], shape_q, jnp.bfloat16)
  k = jax.random.normal(ks[1], shape_k, jnp.bfloat16)
  v = jax.random.normal(ks[2], shape_k, jnp.bfloat16)
  g = jax.random.normal(ks[3], shape_q, jnp.bfloat16)
  layout = jax.device_put(layout)

  # Everything as an argument: a closed-over layout or cotangent becomes an HLO constant, and
  # one such program (block-random layout, 100m shapes) spent 8 minutes in XLA's compiler.
  def fwd_bwd(q, k, v, g, layout):
    return jax.vjp(lambda q, k, v: so.attention(q, k, v, layout=layout,
                                                implementation=a.implementation), q, k, v)[1](g)

  f = jax.jit(fwd_bwd)
  median = time_calls(lambda: f(q, k, v, g, layout), steps).median
  return median * model.depth


def time_train_step(cfg: Config, steps: int):
  """The trainer's jitted step (`train.step.make_train_step`, donated state) on one batch of
  random tokens, timed by the one rule (`time_calls`) -> (timing, init seconds, `one()` that
  runs one more step and returns its metrics)."""
  model, batch, seq_len = cfg.model, cfg.batch_size, cfg.data.seq_len
  codec = step_lib.Params(model)
  tx = step_lib.optimizer(cfg.optim, cfg.total_steps)
  t0 = time.perf_counter()
  state = jax.block_until_ready(step_lib.init_state(codec, tx, model, jax.random.key(0)))
  init_s = time.perf_counter() - t0
  rng = np.random.default_rng(0)
  tokens = jnp.asarray(rng.integers(0, model.vocab_size, (1, batch, seq_len + 1)), jnp.int32)
  data = {"inputs": tokens[..., :-1], "targets": tokens[..., 1:],
          "weights": jnp.ones((1, batch, seq_len), jnp.float32)}
  step = jax.jit(step_lib.make_train_step(cfg, codec, tx), donate_argnums=0)
  holder = {"state": state}
  del state

  def one():
    holder["state"], metrics = step(holder["state"], data)
    return metrics

  return time_calls(one, steps), init_s, one


def measure(size: str, seq_len: int, density: float, impl: str, tokens: int, steps: int,
            block: int, ceiling: float) -> dict:
  batch = max(1, tokens // seq_len)
  model = models.family(size, vocab_size=512, attention=attention_config(density, impl, block))
  cfg = Config(model=model, data=DataConfig(seq_len=seq_len), batch_size=batch,
               compute_dtype="bfloat16", steps=steps + 1)
  timing, init_s, one = time_train_step(cfg, steps)
  _phase(f"{size} T={seq_len} d={density} {impl}: init {init_s:.1f}s")
  median, first = timing.median, timing.first
  _phase(f"  first step {first:.1f}s, median {median * 1e3:.1f} ms")
  del one  # frees the train state before the attention timing
  t0 = time.perf_counter()
  attention_s = attention_time(model, batch, seq_len, steps)
  attention_wall = time.perf_counter() - t0
  _phase(f"  attention alone {attention_s * 1e3:.1f} ms (timing took {attention_wall:.1f}s)")
  peak, _ = device_peak()
  layout = model.attention.layout(seq_len)
  counts = models.param_counts(model)
  flops = cfg.flops_per_step
  achieved = flops / median
  return {"size": size, "params": counts.total, "nonembed_params": counts.nonembed,
          "depth": model.depth, "width": model.width, "heads": model.num_heads,
          "head_dim": model.head_size, "seq_len": seq_len, "batch": batch,
          "implementation": impl, "block": block, "density_target": density,
          "block_density": round(1.0 - so.flops.block_sparsity(layout), 4),
          "step_flops": flops, "step_time_s": round(median, 5),
          "tokens_per_s": round(batch * seq_len / median),
          "model_tflops_per_s": round(achieved / 1e12, 2),
          "mfu_vs_peak": round(achieved / peak, 4) if peak else None,
          "mfu_vs_ceiling": round(achieved / ceiling, 4),
          "attention_fwd_bwd_s": round(attention_s, 5),
          "init_s_with_compile": round(init_s, 2), "first_step_s_with_compile": round(first, 2),
          "attention_timing_wall_s": round(attention_wall, 2),
          "device_kind": jax.devices()[0].device_kind, "peak_flops": peak}


def add_proportional(rows: list[dict]) -> None:
  """Sparse rows: step time proportional to FLOPs from the dense row of the same model/impl."""
  dense = {(r["size"], r["seq_len"], r["implementation"]): r for r in rows
           if r.get("density_target") == 1.0 and "step_time_s" in r}
  for r in rows:
    d = dense.get((r["size"], r["seq_len"], r["implementation"]))
    if d is None or r is d or "step_time_s" not in r:
      continue
    proportional = d["step_time_s"] * r["step_flops"] / d["step_flops"]
    r["proportional_step_time_s"] = round(proportional, 5)
    r["time_vs_proportional"] = round(r["step_time_s"] / proportional, 3)


def write(rows: list[dict], args, ceiling: float, device: dict) -> str:
  add_proportional(rows)
  peak = next((r["peak_flops"] for r in rows if r.get("peak_flops")), None)
  out = args.out or str(pathlib.Path(__file__).parent / "results" /
                        f"train_throughput_{args.preset}.json")
  result = {
      "benchmark": "trainer step throughput of ladder models, dense and block-random sparse",
      "date": datetime.date.today().isoformat(),
      "device": device,
      "versions": {"python": platform.python_version(), "jax": jax.__version__,
                   "flax": flax.__version__},
      "settings": {"preset": args.preset, "groups": PRESETS[args.preset],
                   "compute_dtype": "bfloat16", "vocab_size": 512,
                   "peak_flops": peak, "matmul_ceiling_flops": ceiling,
                   "statistic": f"median of {args.steps} steps after one warm-up step"},
      "rows": rows,
  }
  pathlib.Path(out).write_text(json.dumps(result, indent=1) + "\n")
  return out


def child(spec: dict) -> dict:
  """One measurement in this process (the parent never touches the GPU)."""
  if spec["what"] == "ceiling":
    backend = jax.default_backend()
    return {"ceiling": matmul_ceiling(4096 if backend == "cpu" else 8192,
                                      3 if backend == "cpu" else 10),
            "device": {"backend": backend, "kind": jax.devices()[0].device_kind,
                       "count": jax.device_count(), "machine": platform.machine()}}
  return measure(**spec["row"])


def run_child(spec: dict, timeout: float) -> dict:
  """A subprocess per row: a row that fails, runs out of memory or compiles pathologically
  slowly costs at most `timeout` seconds and is recorded as an error, not a lost sweep."""
  try:
    proc = subprocess.run([sys.executable, "-m", "benchmarks.train_throughput", "--child",
                           json.dumps(spec)], capture_output=True, text=True, timeout=timeout)
  except subprocess.TimeoutExpired as e:
    err = e.stderr.decode() if isinstance(e.stderr, bytes) else (e.stderr or "")
    return {"error": f"timed out after {timeout:.0f} s; its last phases: {err[-600:]}"}
  sys.stderr.write("".join(l + "\n" for l in proc.stderr.splitlines() if l.startswith("[")))
  lines = [l for l in proc.stdout.splitlines() if l.startswith("{")]
  if proc.returncode or not lines:
    return {"error": f"exit {proc.returncode}: {proc.stderr[-400:]}"}
  return json.loads(lines[-1])


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
  parser.add_argument("--steps", type=int, default=10)
  parser.add_argument("--block", type=int, default=128)
  parser.add_argument("--row-timeout", type=float, default=240.0)
  parser.add_argument("--out", default="")
  parser.add_argument("--only", default="", help="SIZE:T:DENSITY:IMPL rows to run, comma-separated")
  parser.add_argument("--child", help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.child:
    print(json.dumps(child(json.loads(args.child))), flush=True)
    return
  todo = [dict(size=size, seq_len=t, density=d, impl=impl, tokens=tokens)
          for sizes, lengths, densities, impls, tokens in PRESETS[args.preset]
          for size in sizes for t in lengths for impl in impls for d in densities
          if not args.only or f"{size}:{t}:{d:g}:{impl}" in args.only.split(",")]
  if not todo:
    raise SystemExit(f"--only {args.only!r} names no row of preset {args.preset!r} "
                     "(rows are SIZE:T:DENSITY:IMPL, e.g. 100m:4096:1:pallas_triton)")
  head = run_child({"what": "ceiling"}, args.row_timeout)
  if "error" in head:
    raise SystemExit(f"could not measure the matmul ceiling: {head['error']}")
  ceiling, device = head["ceiling"], head["device"]
  print(f"bf16 matmul ceiling: {ceiling / 1e12:.1f} TFLOP/s on {device['kind']}", flush=True)
  rows = []
  for spec in todo:
    row = run_child({"what": "row", "row": dict(spec, steps=args.steps, block=args.block,
                                                ceiling=ceiling)}, args.row_timeout)
    if "error" in row:
      row = {"size": spec["size"], "seq_len": spec["seq_len"], "implementation": spec["impl"],
             "density_target": spec["density"], **row}
    print(json.dumps(row), flush=True)
    rows.append(row)
    out = write(rows, args, ceiling, device)  # after every row: a cut-short run keeps them
  print(f"\n{'size':>5} {'T':>5} {'impl':>13} {'d':>5} {'step ms':>8} {'TFLOP/s':>8} "
        f"{'MFU':>6} {'MFU/ceil':>8} {'attn ms':>8} {'vs prop':>7}")
  for r in rows:
    if "error" in r:
      print(f"{r['size']:>5} {r['seq_len']:>5} {r['implementation']:>13} "
            f"{r['density_target']:>5} ERROR {r['error'][:60]}")
      continue
    print(f"{r['size']:>5} {r['seq_len']:>5} {r['implementation']:>13} {r['block_density']:>5.2f} "
          f"{1e3 * r['step_time_s']:>8.1f} {r['model_tflops_per_s']:>8.1f} "
          f"{r['mfu_vs_peak'] or 0:>6.3f} {r['mfu_vs_ceiling']:>8.3f} "
          f"{1e3 * r['attention_fwd_bwd_s']:>8.1f} {r.get('time_vs_proportional', ''):>7}")
  print(f"wrote {out}")


if __name__ == "__main__":
  main()
