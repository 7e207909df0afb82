"""What a small model's compiled step spends its time on -> benchmarks/results/step_breakdown_<tag>.json.

    python -m benchmarks.step_breakdown --size 6m --seq-len 512 --batch 64

Times, on one batch of the study's tasks already on the device (`benchmarks.timing`): the
forward loss, forward + backward, and the whole train step (+ clipping and AdamW), for each
attention implementation given, and the attention op alone (forward + backward, × depth). The
differences split the step into attention, the rest of the model, and the optimizer.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import platform

import jax
import jax.numpy as jnp
import numpy as np

import models
import sparse_ops as so
from benchmarks.timing import time_calls
from experiments import tasks as tasks_lib
from train import data as data_lib, step as step_lib
from train.config import Config, DataConfig

ALL_TASKS = ("niah_single", "niah_multikey", "niah_multivalue", "niah_multiquery",
             "variable_tracking", "chain_resolve", "common_words", "frequent_words")


def breakdown(size: str, seq_len: int, batch: int, impl: str | None, conv: int,
              reps: int) -> dict:
  model = models.family(size, vocab_size=512, conv_kernel=conv,
                        attention=models.AttentionConfig(implementation=impl))
  cfg = Config(model=model, data=DataConfig(seq_len=seq_len), batch_size=batch,
               compute_dtype="bfloat16", steps=10**6)
  codec = step_lib.Params(model)
  tx = step_lib.optimizer(cfg.optim, cfg.total_steps)
  state = step_lib.init_state(codec, tx, model, jax.random.key(0))
  tasks = [tasks_lib.make(n, length=seq_len, vocab_size=512) for n in ALL_TASKS]
  make = data_lib.device_batches(tasks, [1.0] * len(tasks), batch_size=batch, accum=1, seed=0)
  data = jax.jit(make)(3)
  micro = jax.tree.map(lambda x: x[0], data)

  def loss(params, micro):
    compute = jax.tree.map(lambda p: p.astype(jnp.bfloat16), params)
    n, w = step_lib.weighted_nll(codec.model(compute), micro)
    return n / w

  fwd = jax.jit(loss)
  grad = jax.jit(jax.grad(loss))
  one = jax.jit(step_lib.make_train_step(cfg, codec, tx), donate_argnums=0)
  holder = {"state": state}

  def step():
    holder["state"], m = one(holder["state"], data)
    return m

  params = state["params"]
  out = {"impl": impl or so.default_implementation(), "conv": conv}
  out["forward_ms"] = 1e3 * time_calls(lambda: fwd(params, micro), reps).median
  out["forward_backward_ms"] = 1e3 * time_calls(lambda: grad(params, micro), reps).median
  params = None
  out["train_step_ms"] = 1e3 * time_calls(step, reps).median
  # The attention op alone at the model's shapes (fwd + bwd), times depth.
  ks = jax.random.split(jax.random.key(1), 4)
  shape_q = (batch, seq_len, model.num_heads, model.head_size)
  shape_k = (batch, seq_len, model.kv_heads, model.head_size)
  q, g = (jax.random.normal(k, shape_q, jnp.bfloat16) for k in ks[:2])
  k, v = (jax.random.normal(k, shape_k, jnp.bfloat16) for k in ks[2:])
  layout = jax.device_put(model.attention.layout(seq_len))
  att = jax.jit(lambda q, k, v, g, layout: jax.vjp(
      lambda q, k, v: so.attention(q, k, v, layout=layout, implementation=impl), q, k, v)[1](g))
  out["attention_fwd_bwd_ms_x_depth"] = (
      1e3 * time_calls(lambda: att(q, k, v, g, layout), reps).median * model.depth)
  out["step_tflop"] = cfg.flops_per_step / 1e12
  out["train_step_tflops_per_s"] = cfg.flops_per_step / (out["train_step_ms"] / 1e3) / 1e12
  return out


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--size", default="6m")
  parser.add_argument("--seq-len", type=int, default=512)
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--impls", nargs="+", default=["default"])
  parser.add_argument("--conv", type=int, nargs="+", default=[0])
  parser.add_argument("--reps", type=int, default=30)
  parser.add_argument("--embed", nargs="+", default=["auto"], choices=["auto", "take"],
                      help="auto: the model's own lookup; take: always the gather (to compare)")
  parser.add_argument("--out", default="")
  args = parser.parse_args(argv)
  from models import transformer
  own = transformer.embed_lookup
  out = pathlib.Path(args.out or pathlib.Path(__file__).parent / "results" /
                     f"step_breakdown_{args.size}_T{args.seq_len}.json")
  rows = []
  for embed in args.embed:
    transformer.embed_lookup = own if embed == "auto" else (
        lambda e, t: jnp.take(e, t, axis=0))
    for impl in args.impls:
      for conv in args.conv:
        row = breakdown(args.size, args.seq_len, args.batch,
                        None if impl == "default" else impl, conv, args.reps)
        row["embed"] = embed
        print(json.dumps(row), flush=True)
        rows.append(row)
        out.write_text(json.dumps({  # after every row: a time limit keeps what ran
            "benchmark": "compiled-step breakdown", "size": args.size, "seq_len": args.seq_len,
            "batch": args.batch, "device": jax.devices()[0].device_kind,
            "versions": {"python": platform.python_version(), "jax": jax.__version__},
            "rows": rows}, indent=1) + "\n")
  transformer.embed_lookup = own
  print(f"{'embed':>5} {'impl':>14} {'conv':>4} {'fwd ms':>8} {'fwd+bwd':>8} {'step ms':>8} {'attn×L':>8} {'TFLOP/s':>8}")
  for r in rows:
    print(f"{r['embed']:>5} {r['impl']:>14} {r['conv']:>4} {r['forward_ms']:>8.2f} {r['forward_backward_ms']:>8.2f} "
          f"{r['train_step_ms']:>8.2f} {r['attention_fwd_bwd_ms_x_depth']:>8.2f} "
          f"{r['train_step_tflops_per_s']:>8.1f}")


if __name__ == "__main__":
  main()
