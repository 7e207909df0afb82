"""Trained pilot models scored under several inference selections -> results/<name>.json/.md.

    python -m benchmarks.selection_eval --runs /tmp/recipe_runs --models dense quest75_warm \
        quest75_warm_bq1 --preset cpu_sparse --name selection_eval_cpu

Each model (a `benchmarks.recipe` run folder, trained on the preset's base task) answers the
same test contexts (`final_examples` of them at the preset's `final_lengths`) with its attention
replaced by content selection at each inference setting: Quest at 75% / 90% with kv-blocks
chosen per q-block of 16 queries (the queries ending at the block's first position, as in
training) or per query, in the study's two phases (`prefill`: every query sparse; `decode`:
only the question/answer queries, each choosing from itself; `experiments.evaluation.
accounting`). Per-question exact match with a 95% bootstrap interval over contexts, as the
recipe benchmark reports. It asks: is the per-query gain a property of the training or of the
selection at inference, and how much of "decode tolerates more than prefill" is the q-block?
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import pathlib
import platform

from benchmarks import recipe

SETTINGS = (  # (name, pattern, sparsity, block_q or None for the model's own, phase)
    ("own", None, None, None, "prefill"),
    ("quest75_bq16_prefill", "quest", 0.75, 16, "prefill"),
    ("quest75_bq1_prefill", "quest", 0.75, 1, "prefill"),
    ("quest75_decode", "quest", 0.75, None, "decode"),
    ("quest90_bq16_prefill", "quest", 0.9, 16, "prefill"),
    ("quest90_bq1_prefill", "quest", 0.9, 1, "prefill"),
    ("quest90_decode", "quest", 0.9, None, "decode"),
)


def score(run_dir: str, lengths: list[int], examples: int) -> list[tuple[str, str, dict]]:
  """[(setting, "length/task", scores)] of one run folder's model under every SETTINGS entry:
  loaded once, one forward whose programs are cached per selection."""
  import train
  from experiments.evaluation import accounting, evaluate
  model, cfg, _ = train.load(run_dir)
  forward = evaluate.make_forward(model, cfg.compute_dtype)
  out = []
  for name, pattern, sparsity, block_q, phase in SETTINGS:
    att = cfg.model.attention
    if pattern is not None:
      att = dataclasses.replace(att, pattern=pattern, sparsity=sparsity,
                                block_q=block_q or att.block_q, implementation="reference")
    for length in lengths:
      for spec in cfg.data.tasks:
        task = recipe._task(spec, length, cfg.model.vocab_size)
        phased = accounting.phase_attention(att, length, phase, accounting.dense_prefix(task))
        r = recipe.scores_on_test(forward, phased, task, examples)
        out.append((name, f"{length}/{spec}",
                    {k: v for k, v in r.items() if k not in ("right", "asked")}))
  return out


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--runs", default="/tmp/recipe_runs")
  parser.add_argument("--models", nargs="+", required=True, help="run folders under --runs")
  parser.add_argument("--preset", default="cpu_sparse", choices=sorted(recipe.PRESETS))
  parser.add_argument("--name", default="selection_eval_cpu")
  args = parser.parse_args(argv)
  base = recipe.PRESETS[args.preset]["base"]
  lengths = base.get("final_lengths") or [base["data.seq_len"]]
  missing = [m for m in args.models if not (pathlib.Path(args.runs) / m / "config.json").exists()]
  if missing:
    raise SystemExit(f"--models {missing}: no run folder under {args.runs} (train them with "
                     f"python -m benchmarks.recipe --preset {args.preset} --only ...)")
  import jax
  rows = []
  for m in args.models:
    for name, cell, r in score(str(pathlib.Path(args.runs) / m), lengths,
                               base["final_examples"]):
      rows.append({"model": m, "setting": name, "cell": cell, **r})
      print(json.dumps(rows[-1]), flush=True)
  out = recipe.RESULTS / f"{args.name}.json"
  out.write_text(json.dumps({
      "benchmark": "pilot models under inference selections", "preset": args.preset,
      "date": datetime.date.today().isoformat(), "device": jax.devices()[0].device_kind,
      "versions": {"python": platform.python_version(), "jax": jax.__version__},
      "settings": [list(s) for s in SETTINGS], "rows": rows}, indent=1) + "\n")
  names = [s[0] for s in SETTINGS]
  lines = [f"# Pilot models under inference selections ({args.preset}, "
           f"{datetime.date.today().isoformat()}, {jax.devices()[0].device_kind})", "",
           "Per-question exact match [95% bootstrap over contexts]; `own`: the model's training "
           "attention. `bqN`: kv-blocks chosen per N queries; decode: context dense, each "
           "question/answer query choosing its own blocks.", "",
           "| model | length/task | " + " | ".join(names) + " |",
           "|---|---|" + "---|" * len(names)]
  for m in args.models:
    for cell in dict.fromkeys(r["cell"] for r in rows if r["model"] == m):
      at = {r["setting"]: r for r in rows if r["model"] == m and r["cell"] == cell}
      lines.append(f"| {m} | {cell} | " + " | ".join(
          f"{at[n]['accuracy']:.3f} [{at[n]['ci95'][0]:.2f}, {at[n]['ci95'][1]:.2f}]"
          for n in names) + " |")
  out.with_suffix(".md").write_text("\n".join(lines) + "\n")
  print("\n".join(lines))


if __name__ == "__main__":
  main()
