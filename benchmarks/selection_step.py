"""What choosing kv-blocks per query costs a training step -> results/selection_step_<device>.json.

    python -m benchmarks.selection_step --size 800k --seq-len 4096 --batch 8    # one GPU
    python -m benchmarks.selection_step --size 100k --seq-len 256 --batch 4 --steps 3  # CPU check

Content selection (`sparse_ops.select_blocks`) represents a q-block by the queries ending at
its first position, so that no query's blocks depend on a later token. With 64-query blocks a
question's own query hardly takes part in choosing its blocks; with one-query blocks
(`block_q=1`) every query chooses from itself, and on the CPU pilot that is what made a Quest
75% model learn (benchmarks/results/recipe_cpu_sparse_q1.md: 0.47 -> 0.88 per question). The
block-sparse GPU kernel tiles q-blocks of >= 16 rows, so one-query blocks run on `xla` (a scan
over the kept slots, gathering each row's blocks) or `reference` (a dense masked softmax); laid
out in 64-query blocks with per-query flags (`per_query=True`) the Triton kernel runs them over
the union of a block's queries' choices.
This times the trainer's jitted step (`train.step.make_train_step`, bf16, AdamW, donated state)
on random tokens for each arm, one process, so the cost of the finer selection is read against
dense and against 64-query selection on the same device.
"""

from __future__ import annotations

import argparse
import datetime
import json
import pathlib
import platform

import flax
import jax
import numpy as np

import models
from benchmarks.train_throughput import time_train_step
from train.config import Config, DataConfig

# (name, AttentionConfig fields); None fields take the backend's defaults.
ARMS = (
    ("dense", dict()),
    ("quest75_bq64", dict(pattern="quest", sparsity=0.75, block_q=64, block_kv=64)),
    # Per query, laid out in 64-query blocks with per-query flags (row_keep): the Triton
    # kernel's tiles (implementation=None picks it on a GPU), over the union of the choices.
    ("quest75_per_query", dict(pattern="quest", sparsity=0.75, block_q=64, block_kv=64,
                               per_query=True)),
    # Narrower q-blocks visit a smaller union (trained 100k at 512 tokens, 75%: 0.82 of the
    # causal pairs at 64 rows, 0.55 at 16; results/per_query_union_cpu_512.md) in smaller tiles.
    ("quest75_per_query_bq32", dict(pattern="quest", sparsity=0.75, block_q=32, block_kv=64,
                                    per_query=True)),
    ("quest75_per_query_bq16", dict(pattern="quest", sparsity=0.75, block_q=16, block_kv=64,
                                    per_query=True)),
    # The same selection in one-query blocks, which no tiled kernel runs (slowest last).
    ("quest75_bq1_reference", dict(pattern="quest", sparsity=0.75, block_q=1, block_kv=64,
                                   implementation="reference")),
    ("quest75_bq1_xla", dict(pattern="quest", sparsity=0.75, block_q=1, block_kv=64,
                             implementation="xla")),
)


def measure(size: str, seq_len: int, batch: int, fields: dict, steps: int) -> dict:
  model = models.family(size, vocab_size=512, conv_kernel=4,
                        attention=models.AttentionConfig(sink=64, **fields))
  cfg = Config(model=model, data=DataConfig(seq_len=seq_len), batch_size=batch,
               compute_dtype="bfloat16", steps=steps + 1)
  timing, _, one = time_train_step(cfg, steps)
  loss = float(one()["loss"])
  return {"step_ms": round(1e3 * timing.median, 3), "first_call_s": round(timing.first, 2),
          "step_flops": cfg.flops_per_step, "finite_loss": bool(np.isfinite(loss))}


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--size", default="800k")
  parser.add_argument("--seq-len", type=int, default=4096, dest="seq_len")
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--steps", type=int, default=20)
  parser.add_argument("--only", nargs="*", help=f"arms, from {[a for a, _ in ARMS]}")
  parser.add_argument("--out", default="")
  args = parser.parse_args(argv)
  names = args.only or [a for a, _ in ARMS]
  unknown = sorted(set(names) - {a for a, _ in ARMS})
  if unknown:
    raise SystemExit(f"--only {unknown}: unknown; valid: {[a for a, _ in ARMS]}")
  device = jax.devices()[0]
  slug = device.device_kind.lower().replace(" ", "_")
  out = pathlib.Path(args.out or pathlib.Path(__file__).parent / "results" /
                     f"selection_step_{slug}_{args.size}_T{args.seq_len}.json")
  rows = []
  for name, fields in ARMS:
    if name not in names:
      continue
    try:
      row = measure(args.size, args.seq_len, args.batch, fields, args.steps)
    except Exception as e:  # noqa: BLE001 - an arm that cannot run (e.g. out of memory) is a result
      row = {"error": f"{type(e).__name__}: {str(e)[:400]}"}
    rows.append({"arm": name, **fields, **row})
    print(json.dumps(rows[-1]), flush=True)
    dense = next((r["step_ms"] for r in rows if r["arm"] == "dense" and "step_ms" in r), None)
    for r in rows:
      if dense and "step_ms" in r:
        r["vs_dense"] = round(r["step_ms"] / dense, 3)
    result = {"benchmark": "training step with per-query vs 64-query content selection",
              "date": datetime.date.today().isoformat(), "device": device.device_kind,
              "versions": {"python": platform.python_version(), "jax": jax.__version__,
                           "flax": flax.__version__},
              "size": args.size, "seq_len": args.seq_len, "batch": args.batch,
              "steps": args.steps, "rows": rows}
    out.write_text(json.dumps(result, indent=1) + "\n")  # after every arm: a time limit keeps some
  print("| arm | step ms | × dense | first call s |\n|---|---|---|---|")
  for r in rows:
    print(f"| {r['arm']} | {r.get('step_ms', r.get('error', ''))} | {r.get('vs_dense', '')} | "
          f"{r.get('first_call_s', '')} |")


if __name__ == "__main__":
  main()
