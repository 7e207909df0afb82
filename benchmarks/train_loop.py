"""Where a small model's training step goes, and the old loop against the new one, on the real
data path -> benchmarks/results/train_loop_<preset>.json.

    python -m benchmarks.train_loop --preset h200    # one H200: 5 rows
    python -m benchmarks.train_loop --preset cpu     # a quick check of the machinery
    python -m benchmarks.train_loop --preset h200 --only 6m:512 --impl pallas_triton
    python -m benchmarks.train_loop --preset h200 --only 6m:512 --block 64 --out OUT.json
    python -m benchmarks.train_loop --preset h200 --only 6m:4096 --block 64 --sink 64  # the study's

Each row (ladder size, sequence length, batch) runs in its own subprocess and measures, on the
study's eight tasks (equal weights):
- the phases of the old loop, timed apart: one host batch from the grain pipeline
  (`train.loop.Batches`, `data.num_threads` threads), its transfer to the device, and the
  compiled train step alone on a batch already there (`benchmarks.timing.time_calls`);
- the new loop's own part: batches made on the device (`train.data.device_batches`), one
  alone and the `steps_per_call` of one call made together in one program (as the trainer
  does: that program runs before the call's steps, so its time per step adds to the step);
- both loops end to end, as a run uses them (`train.run`): the old one (`data.source="host"`,
  one step per call) and the new one (`data.source="device"`, `steps_per_call` steps per call),
  step time as the median of the logged `step_time_s` after the first record.
Step FLOPs are the study's counter (`Config.flops_per_step`); MFU is against the device's dense
bf16 peak (`train.log.PEAKS`).
"""

from __future__ import annotations

import argparse
import datetime
import json
import pathlib
import platform
import shutil
import subprocess
import sys
import tempfile
import time

ALL_TASKS = ("niah_single", "niah_multikey", "niah_multivalue", "niah_multiquery",
             "variable_tracking", "chain_resolve", "common_words", "frequent_words")

# (size, seq_len, batch); old/new steps: how many steps each end-to-end run trains.
PRESETS = {
    "cpu": dict(rows=[("100k", 128, 8)], old_steps=40, new_steps=80, steps_per_call=20,
                threads=2, impl="xla"),
    "h200": dict(rows=[("3m", 512, 64), ("6m", 512, 64), ("3m", 4096, 8), ("6m", 4096, 8),
                       ("20m", 4096, 8)],
                 old_steps=200, new_steps=1000, steps_per_call=50, threads=4, impl=None),
}


def _phase(msg: str) -> None:
  print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _median(xs):
  xs = sorted(xs)
  return xs[len(xs) // 2] if xs else None


def config(size: str, seq_len: int, batch: int, *, source: str, steps: int, steps_per_call: int,
           threads: int, attention: dict, run_dir: str):
  """`attention`: the model's AttentionConfig fields (implementation, blocks, sink)."""
  import models
  import train
  model = models.family(size, vocab_size=512, attention=models.AttentionConfig(**attention))
  return train.Config(
      run_dir=run_dir, model=model, batch_size=batch, steps=steps, compute_dtype="bfloat16",
      steps_per_call=steps_per_call,
      data=train.DataConfig(tasks=ALL_TASKS, seq_len=seq_len, source=source, num_threads=threads),
      optim=train.OptimConfig(lr=1e-3, warmup_steps=10),
      eval=train.EvalConfig(examples=0), checkpoint=train.CheckpointConfig(every=10**9, keep=1),
      log=train.LogConfig(every=steps_per_call if source == "device" else 10, progress=False,
                          wandb="disabled"))


def loop_step_time(cfg) -> tuple[float, float]:
  """(median logged step time after the first record, wall time of the run) of `train.run`."""
  import train
  from train import log as log_lib
  shutil.rmtree(cfg.run_dir, ignore_errors=True)
  t0 = time.perf_counter()
  result = train.run(cfg)
  wall = time.perf_counter() - t0
  if result.status != "finished":
    raise RuntimeError(f"run ended {result.status}: {result.message}")
  times = [r["step_time_s"] for r in log_lib.read_metrics(cfg.run_dir) if "step_time_s" in r]
  return _median(times[1:]), wall


def phases(size: str, seq_len: int, batch: int, *, steps_per_call: int, threads: int,
           attention: dict) -> dict:
  """The old loop's phases and the new loop's parts, each timed on its own."""
  import jax
  import numpy as np
  from benchmarks.timing import time_calls
  from experiments import tasks as tasks_lib
  from train import data as data_lib, mesh as mesh_lib, step as step_lib
  from train.loop import Batches
  tmp = tempfile.mkdtemp()
  cfg = config(size, seq_len, batch, source="host", steps=10**6, steps_per_call=1,
               threads=threads, attention=attention, run_dir=tmp)
  tasks = [tasks_lib.make(n, length=seq_len, vocab_size=512) for n in ALL_TASKS]
  mesh = mesh_lib.make_mesh(cfg.mesh)
  out = {}
  batches = Batches(cfg, [t.source("train") for t in tasks])
  for _ in range(5):  # warm the prefetch threads
    next(batches)
  t0 = time.perf_counter()
  n = 50
  for _ in range(n):
    host = next(batches)
  out["host_batch_ms"] = 1e3 * (time.perf_counter() - t0) / n
  _phase(f"{size} T={seq_len}: host batch {out['host_batch_ms']:.2f} ms")
  out["transfer_ms"] = 1e3 * time_calls(lambda: mesh_lib.global_batch(host, mesh), 20).median
  codec = step_lib.Params(cfg.model)
  tx = step_lib.optimizer(cfg.optim, 10**6)
  state = step_lib.init_state(codec, tx, cfg.model, jax.random.key(0))
  device_batch = mesh_lib.global_batch(host, mesh)
  with jax.set_mesh(mesh):
    one = jax.jit(step_lib.make_train_step(cfg, codec, tx), donate_argnums=0)
    holder = {"state": state}

    def step():
      holder["state"], m = one(holder["state"], device_batch)
      return m

    out["compiled_step_ms"] = 1e3 * time_calls(step, 50).median
    _phase(f"  compiled step {out['compiled_step_ms']:.2f} ms")
    make = data_lib.device_batches(tasks, [1.0] * len(tasks), batch_size=batch, accum=1, seed=0)
    gen = jax.jit(make)
    out["device_batch_ms"] = 1e3 * time_calls(lambda: gen(7), 20).median
    per_call = jax.jit(data_lib.device_batches(tasks, [1.0] * len(tasks), batch_size=batch,
                                               accum=1, seed=0, steps=steps_per_call))
    out["device_batch_per_call_ms"] = (1e3 * time_calls(lambda: per_call(7), 10).median
                                       / steps_per_call)
    _phase(f"  device batch {out['device_batch_ms']:.2f} ms alone, "
           f"{out['device_batch_per_call_ms']:.3f} ms a step in calls of {steps_per_call}")
  shutil.rmtree(tmp, ignore_errors=True)
  return out


def measure(size: str, seq_len: int, batch: int, *, old_steps: int, new_steps: int,
            steps_per_call: int, threads: int, attention: dict) -> dict:
  import jax
  import models
  from train.log import device_peak
  row = {"size": size, "seq_len": seq_len, "batch": batch,
         "params": models.param_counts(models.family(size, vocab_size=512)).total}
  row.update(phases(size, seq_len, batch, steps_per_call=steps_per_call, threads=threads,
                    attention=attention))
  tmp = tempfile.mkdtemp()
  old = config(size, seq_len, batch, source="host", steps=old_steps, steps_per_call=1,
               threads=threads, attention=attention, run_dir=f"{tmp}/old")
  new = config(size, seq_len, batch, source="device", steps=new_steps,
               steps_per_call=steps_per_call, threads=threads, attention=attention,
               run_dir=f"{tmp}/new")
  _phase("  old loop run")
  row["old_loop_step_s"], row["old_run_wall_s"] = loop_step_time(old)
  _phase(f"  old loop {1e3 * row['old_loop_step_s']:.2f} ms/step; new loop run")
  row["new_loop_step_s"], row["new_run_wall_s"] = loop_step_time(new)
  _phase(f"  new loop {1e3 * row['new_loop_step_s']:.2f} ms/step")
  shutil.rmtree(tmp, ignore_errors=True)
  flops = old.flops_per_step
  peak, _ = device_peak()
  row["step_flops"] = flops
  for which in ("old", "new"):
    t = row[f"{which}_loop_step_s"]
    row[f"{which}_tokens_per_s"] = batch * seq_len / t
    row[f"{which}_tflops_per_s"] = flops / t / 1e12
    row[f"{which}_mfu"] = flops / t / peak if peak else None
  row["speedup_tokens_per_s"] = row["old_loop_step_s"] / row["new_loop_step_s"]
  row["device_kind"] = jax.devices()[0].device_kind
  row["peak_flops"] = peak
  row["attention_impl"] = attention_impl(old.model, seq_len, batch)
  row["attention_blocks"] = list(old.model.attention.blocks(seq_len))
  row["attention_sink"] = old.model.attention.sink
  return row


def attention_impl(model, seq_len: int, batch: int) -> str:
  """The `sparse_ops` implementation the model's attention calls run here (bf16 compute)."""
  import jax
  import jax.numpy as jnp
  import sparse_ops as so
  if model.attention.implementation is not None:
    return model.attention.implementation
  d = model.head_size
  q = jax.ShapeDtypeStruct((batch, seq_len, model.num_heads, d), jnp.bfloat16)
  kv = jax.ShapeDtypeStruct((batch, seq_len, model.kv_heads, d), jnp.bfloat16)
  return so.best_implementation(q, kv, kv, model.attention.layout(seq_len))


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
  parser.add_argument("--only", default="", help="SIZE:T rows to run, comma-separated")
  parser.add_argument("--row-timeout", type=float, default=300.0,
                      help="seconds per row; a 3m or 6m row compiles four programs (~90-110 s on "
                           "an H200); 20m at 4096 needs more than 140 s")
  parser.add_argument("--out", default="")
  parser.add_argument("--impl", default=None,
                      help="pin the model's attention implementation (default: the preset's; "
                           "h200: None, chosen per call by sparse_ops.best_implementation)")
  parser.add_argument("--block", type=int, default=None,
                      help="the model's attention blocks (default: the implementation's, 128; "
                           "the h200 study's models use 64)")
  parser.add_argument("--sink", type=int, default=0,
                      help="the model's attention sink (the h200 study's models: 64)")
  parser.add_argument("--child", help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  preset = PRESETS[args.preset]
  if args.impl:
    preset = {**preset, "impl": args.impl}
  if args.block is not None:
    preset = {**preset, "block": args.block}
  if args.sink:
    preset = {**preset, "sink": args.sink}
  if args.child:  # one row, in its own process: [(size, seq_len, batch), attention fields]
    (size, seq_len, batch), attention = json.loads(args.child)
    print("ROW " + json.dumps(measure(
        size, seq_len, batch, old_steps=preset["old_steps"], new_steps=preset["new_steps"],
        steps_per_call=preset["steps_per_call"], threads=preset["threads"],
        attention=attention)), flush=True)
    return
  attention = dict(implementation=preset["impl"], block_q=preset.get("block"),
                   block_kv=preset.get("block"), sink=preset.get("sink", 0))
  out = pathlib.Path(args.out or pathlib.Path(__file__).parent / "results" /
                     f"train_loop_{args.preset}.json")
  rows = [r for r in preset["rows"] if not args.only or f"{r[0]}:{r[1]}" in args.only.split(",")]
  if not rows:
    raise SystemExit(f"--only {args.only!r} names no row of {args.preset!r} (SIZE:T)")
  import flax
  import jax
  result = json.loads(out.read_text()) if out.exists() and args.only else {"rows": []}
  result.update(benchmark="training loop: old (host grain, 1 step/call) vs new (on-device "
                "batches, several steps per call), and the old loop's phases",
                date=datetime.date.today().isoformat(),
                preset={**preset, "rows": None},
                versions={"python": platform.python_version(), "jax": jax.__version__,
                          "flax": flax.__version__}, tasks=list(ALL_TASKS))
  for r in rows:
    t0 = time.perf_counter()
    try:
      proc = subprocess.run([sys.executable, "-m", "benchmarks.train_loop", "--preset",
                             args.preset, "--child", json.dumps([r, attention])],
                            capture_output=True, text=True, timeout=args.row_timeout)
      lines = [l for l in proc.stdout.splitlines() if l.startswith("ROW ")]
      row = json.loads(lines[-1][4:]) if lines else {"error": proc.stderr[-1500:]}
    except subprocess.TimeoutExpired as e:
      err = e.stderr.decode() if isinstance(e.stderr, bytes) else (e.stderr or "")
      row = {"error": f"timed out after {args.row_timeout} s; its last phases: {err[-600:]}"}
    row.update(size=r[0], seq_len=r[1], batch=r[2], row_wall_s=time.perf_counter() - t0)
    result["rows"] = [x for x in result["rows"]
                      if (x["size"], x["seq_len"]) != (r[0], r[1])] + [row]
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(row), flush=True)
  print(table(result))


def table(result: dict) -> str:
  head = ("| size | T | batch | host batch ms | transfer ms | compiled step ms | device batch ms "
          "| device batches of a call, ms/step | old loop ms | new loop ms | old tok/s "
          "| new tok/s | speedup | old MFU | new MFU | attention |")
  lines = [head, "|" + "---|" * 16]
  for r in result["rows"]:
    if "error" in r:
      lines.append(f"| {r['size']} | {r['seq_len']} | {r['batch']} | error: "
                   f"{r['error'][-100:]!r} |" + " |" * 14)
      continue
    mfu = lambda x: f"{100 * x:.1f}%" if x else ""
    per_call = r.get("device_batch_per_call_ms")  # rows measured before it existed lack it
    lines.append(
        f"| {r['size']} | {r['seq_len']} | {r['batch']} | {r['host_batch_ms']:.2f} | "
        f"{r['transfer_ms']:.2f} | {r['compiled_step_ms']:.2f} | {r['device_batch_ms']:.2f} | "
        f"{'' if per_call is None else f'{per_call:.3f}'} | {1e3 * r['old_loop_step_s']:.2f} | "
        f"{1e3 * r['new_loop_step_s']:.2f} | {r['old_tokens_per_s']:.3g} | "
        f"{r['new_tokens_per_s']:.3g} | {r['speedup_tokens_per_s']:.2f}× | "
        f"{mfu(r['old_mfu'])} | {mfu(r['new_mfu'])} | {r.get('attention_impl', '')} |")
  return "\n".join(lines)


if __name__ == "__main__":
  main()
