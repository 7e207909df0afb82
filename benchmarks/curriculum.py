"""Does a length curriculum learn long-context tasks sooner at equal training FLOPs?

    python -m benchmarks.curriculum --length 512 --short 128 --frac 0.7 --budget 2e12

Trains the ladder's 100k model twice on niah_single, niah_multikey, chain_resolve and
common_words with the real trainer: straight at `--length`, and with `--frac` of the same FLOP
budget spent first at `--short` tokens (same tokens per step). Both are evaluated, dense, on 64
test examples per task at `--length`. Writes benchmarks/results/curriculum_cpu_T<length>.json.
This is the evidence behind the h100 preset's curriculum (its first version, trained straight at
4096, left every model at chance).
"""

from __future__ import annotations

import argparse
import datetime
import json
import pathlib
import platform
import tempfile
import time

import jax

TASKS = ("niah_single", "niah_multikey", "chain_resolve", "common_words")


def run(length: int, short: int, frac: float, budget: float, workdir: pathlib.Path) -> dict:
  import train
  from experiments.evaluation import evaluate as ev
  from experiments.runs import job
  from experiments.spec.grid import Grid
  from train.config import OptimConfig
  from experiments.spec.study import EvalSpec, Study
  kw = dict(budgets=(budget,), sizes=("100k",), sparsities=(0.0,), seq_lens=(length,),
            batch_size=8, vocab_size=128, tasks=TASKS, optim=OptimConfig(lr=3e-3, weight_decay=0.0),
            implementation="xla", min_steps=10)
  if short:
    kw.update(short_len=short, short_frac=frac)
  grid = Grid(**kw)
  spec = grid.points()[0][0]
  spec_eval = EvalSpec(tasks=TASKS, lengths=(length,), settings=(("dense", 0.0),), examples=64,
                       batch_size=64, phases=("prefill",))
  study = Study(name="curriculum", grid=grid, eval=spec_eval, wandb="disabled",
                checkpoint_every=10**6, log_every=50)
  run_dir = workdir / spec.run_id
  t0 = time.time()
  result = train.run(job.train_config(spec, run_dir, study, progress=False))
  train_s = time.time() - t0
  model, dtype = job.trained_model(run_dir)
  rows = ev.evaluate(ev.make_forward(model, dtype), spec.model, spec_eval, grid.vocab_size)
  return {"label": spec.label, "steps": spec.steps, "short_steps": spec.short_steps,
          "train_flops": spec.train_flops, "train_s": round(train_s, 1),
          "final_loss": result.loss,
          "accuracy": {r["task"]: r["accuracy"] for r in rows},
          "ci95": {r["task"]: [r["ci_low"], r["ci_high"]] for r in rows},
          "chance": {r["task"]: r["chance"] for r in rows}}


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--length", type=int, default=512)
  p.add_argument("--short", type=int, default=128)
  p.add_argument("--frac", type=float, default=0.7)
  p.add_argument("--budget", type=float, default=2e12)
  p.add_argument("--out", default="")
  a = p.parse_args(argv)
  with tempfile.TemporaryDirectory() as tmp:
    variants = [run(a.length, 0, 0.0, a.budget, pathlib.Path(tmp)),
                run(a.length, a.short, a.frac, a.budget, pathlib.Path(tmp))]
  result = {"benchmark": "length curriculum vs straight training at equal FLOPs",
            "date": datetime.date.today().isoformat(),
            "device": jax.devices()[0].device_kind,
            "versions": {"python": platform.python_version(), "jax": jax.__version__},
            "settings": vars(a), "variants": variants}
  out = a.out or str(pathlib.Path(__file__).parent / "results" / f"curriculum_cpu_T{a.length}.json")
  pathlib.Path(out).write_text(json.dumps(result, indent=1))
  print(f"{'variant':34} {'steps':>6} {'short':>6} {'loss':>6}  " + " ".join(f"{t:>14}" for t in TASKS))
  for v in variants:
    print(f"{v['label']:34} {v['steps']:>6} {v['short_steps']:>6} {v['final_loss']:>6.3f}  "
          + " ".join(f"{v['accuracy'][t]:>14.3f}" for t in TASKS))
  print(f"wrote {out}")


if __name__ == "__main__":
  main()
