"""How much a per-query layout makes the kernel visit, on a trained model -> results/<name>.json.

    python -m benchmarks.per_query_union --runs /tmp/recipe_runs --models dense \
        quest75_warm_bq1 --preset cpu_sparse_512_flops_450 --name per_query_union_cpu_512

Per-query selection (`select_blocks(per_query=True)`) keeps each query's own kv-blocks, but a
tiled kernel visits, for each q-block of `block_q` queries, the union of its queries' blocks
(`BlockLayout.row_keep` masks the rest). Its work is the visited blocks, not the kept pairs.
This runs each model (a `benchmarks.recipe` run folder) eagerly on test contexts of its task,
with every layer's attention replaced by per-query Quest at each sparsity and laid out at each
q-block size, and records per layer: the kept pairs over the causal pairs (what the FLOP
counter charges) and the visited blocks' pairs over the causal pairs (what a tiled kernel
computes; 1 = dense causal).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import pathlib
import platform

import numpy as np

from benchmarks import recipe

SPARSITIES = (0.75, 0.9)
LAYOUT_BLOCKS = (16, 32, 64)


def measure(run_dir: str, examples: int) -> list[dict]:
  import jax
  import sparse_ops as so
  import train
  from models import config as config_lib
  model, cfg, _ = train.load(run_dir)
  t = cfg.data.seq_len
  task = recipe._task(cfg.data.tasks[0], t, cfg.model.vocab_size)
  x = np.stack([task.example("test", i)["inputs"] for i in range(examples)])
  causal = t * (t + 1) // 2
  rows = []
  real = so.select_blocks
  for sparsity in SPARSITIES:
    for block_q in LAYOUT_BLOCKS:
      seen = []

      def spy(q, k, **kw):
        layout = real(q, k, **kw)
        kept = so.flops.pairs(layout) / (layout.batch_size * layout.num_heads)
        visited = so.flops.visited_blocks(layout) * layout.block_q * layout.block_kv
        seen.append((kept / causal, visited / causal))
        return layout

      att = dataclasses.replace(cfg.model.attention, pattern="quest", sparsity=sparsity,
                                budget_value=None, block_q=block_q, per_query=True,
                                implementation="reference")
      config_lib.so.select_blocks = spy
      try:
        with jax.disable_jit():
          model(x, attention=att)
      finally:
        config_lib.so.select_blocks = real
      for layer, (kept, visited) in enumerate(seen):
        rows.append({"sparsity": sparsity, "layout_block_q": block_q,
                     "block_kv": att.blocks(t)[1], "layer": layer,
                     "kept_pair_density": round(kept, 4),
                     "visited_pair_density": round(visited, 4)})
  return rows


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--runs", default="/tmp/recipe_runs")
  parser.add_argument("--models", nargs="+", required=True)
  parser.add_argument("--preset", required=True, help="the recipe preset that trained them")
  parser.add_argument("--examples", type=int, default=8)
  parser.add_argument("--name", required=True)
  args = parser.parse_args(argv)
  if args.preset not in recipe.PRESETS:
    raise SystemExit(f"--preset {args.preset!r}; valid: {sorted(recipe.PRESETS)}")
  import jax
  out = {"benchmark": "per-query layouts: kept pairs vs the pairs of the blocks a tiled kernel "
                      "visits, per layer, on trained models",
         "date": datetime.date.today().isoformat(), "preset": args.preset,
         "examples": args.examples, "device": jax.devices()[0].device_kind,
         "versions": {"python": platform.python_version(), "jax": jax.__version__},
         "models": {m: measure(f"{args.runs}/{m}", args.examples) for m in args.models}}
  path = pathlib.Path(__file__).parent / "results" / args.name
  path.with_suffix(".json").write_text(json.dumps(out, indent=1) + "\n")
  lines = ["| model | sparsity | layout block_q | kept pairs / causal | visited / causal "
           "(mean over layers) | visited / kept |", "|---|---|---|---|---|---|"]
  for name, rows in out["models"].items():
    for sparsity in SPARSITIES:
      for block_q in LAYOUT_BLOCKS:
        sel = [r for r in rows if r["sparsity"] == sparsity and r["layout_block_q"] == block_q]
        kept = np.mean([r["kept_pair_density"] for r in sel])
        visited = np.mean([r["visited_pair_density"] for r in sel])
        lines.append(f"| {name} | {sparsity} | {block_q} | {kept:.3f} | {visited:.3f} | "
                     f"{visited / kept:.2f} |")
  table = "\n".join(lines)
  path.with_suffix(".md").write_text(
      f"# Per-query layouts on trained models ({args.preset}, {out['date']})\n\n"
      f"`python -m benchmarks.per_query_union --models {' '.join(args.models)} --preset "
      f"{args.preset} --name {args.name}`; {args.examples} test contexts, every layer, CPU "
      f"(jax {jax.__version__}).\n\n{table}\n")
  print(table)


if __name__ == "__main__":
  main()
