"""Oracle check: is content-based selection better than a static pattern of the same density?

    python -m experiments.tools.oracle [--run RUN_DIR] [--out studies/oracle]

A model trained dense on the `smoke` preset (its 100k dense run: the one clearly above chance
on both tasks; trained into --train-dir unless --run names a finished run folder) is evaluated on
retrieval (`niah_single`) and aggregation (`common_words`) at T=256, twice its training length:
dense; content-based selection (topk_blocks, quest, vertical_slash) at exactly 90% block
sparsity; and a static twin, the block-local pattern that keeps the same number of blocks in
every row, the most recent ones (Local at block granularity, same FLOPs to the pair).

Why these numbers: at block 4 a row of n causal blocks keeps the sink block, its diagonal
block and the best others up to ceil(d·n); T=256 gives 64 q-blocks and 2080 causal blocks, of
which 127 are forced (64 diagonal + 63 sink). A density budget is solved so the kept blocks are
exactly 10% of the causal ones (208): d = `solve_density()`. At block 8 and T=256 the forced
blocks alone (32 + 31 = 63) already exceed 10% of 528.

Phases as in the study: prefill (every query sparse; the 90% holds here) and decode (context
queries dense, each question/answer query selects its own blocks: `accounting.decode_attention`).
Writes oracle.json (every number, with Wilson 95% intervals) and oracle.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import sparse_ops as so
from experiments.evaluation import accounting
from experiments.evaluation import evaluate as ev
from experiments import stats as stats_lib
from experiments.stats import proportion_ci
from experiments import tasks as tasks_lib
from models import AttentionConfig, ModelConfig

LENGTH, BLOCK, SINK = 256, 4, 4  # SINK tokens = one sink block
TARGET = 0.9  # block sparsity of the content selection, prefill
TASKS = ("niah_single", "common_words")
SCORINGS = ("topk_blocks", "quest", "vertical_slash")


def content(pattern: str, density: float, implementation: str | None = None) -> AttentionConfig:
  return AttentionConfig(pattern, block_q=BLOCK, block_kv=BLOCK, sink=SINK, budget="density",
                         budget_value=density, implementation=implementation)


def solve_density(length: int = LENGTH, target: float = TARGET) -> float:
  """The density budget whose prefill selection keeps exactly (1 - target) of the causal blocks.

  Raises if no density lands on it (the kept count moves in steps of whole blocks).
  """
  causal = so.flops.causal_blocks(length, length, BLOCK, BLOCK)
  want = round((1 - target) * causal)
  if abs(want - (1 - target) * causal) > 1e-9:
    raise ValueError(f"{1 - target:g} of {causal} causal blocks is not a whole number of blocks")
  visited = lambda d: content("topk_blocks", d).selection_counts(length)[1]
  lo, hi = 1e-6, 1.0
  for _ in range(50):  # smallest density keeping at least `want` blocks
    mid = (lo + hi) / 2
    lo, hi = (lo, mid) if visited(mid) >= want else (mid, hi)
  for d in (round(hi, 4), round(hi, 6), hi):
    if visited(d) == want:
      return d
  raise ValueError(f"no density budget keeps exactly {want} of {causal} causal blocks at "
                   f"T={length}, block {BLOCK}, sink {SINK} (closest: {visited(hi)})")


# ------------------------------------------------------------------------- the static twin
@dataclasses.dataclass(frozen=True, eq=False)
class BlockTable(so.masks.Mask):
  """Causal pairs of the kept blocks of a fixed [nq, nk] table (block_q × block_kv tiles).

  Block bounds are exact for any rectangle, from a summed-area table of the element grid.
  Hashed by identity (one table per evaluation), so jit caches it like any static mask.
  """

  keep: np.ndarray
  block_q: int
  block_kv: int

  def _grid(self) -> np.ndarray:
    g = self.__dict__.get("_sat")
    if g is None:
      nq, nk = self.keep.shape
      q = np.arange(nq * self.block_q)[:, None]
      k = np.arange(nk * self.block_kv)[None, :]
      elem = self.keep[q // self.block_q, k // self.block_kv] & (k <= q)
      g = np.zeros((elem.shape[0] + 1, elem.shape[1] + 1), np.int64)
      g[1:, 1:] = elem.cumsum(0).cumsum(1)
      object.__setattr__(self, "_sat", g)
    return g

  def __call__(self, q_idx, kv_idx):
    xp = jnp if isinstance(q_idx, jnp.ndarray) or isinstance(kv_idx, jnp.ndarray) else np
    keep = xp.asarray(self.keep)
    return keep[q_idx // self.block_q, kv_idx // self.block_kv] & (kv_idx <= q_idx)

  def block_bounds(self, q0, q1, k0, k1):
    g = self._grid()
    hi_q, hi_k = g.shape[0] - 1, g.shape[1] - 1
    q0, q1 = np.clip(q0, 0, hi_q), np.clip(q1, 0, hi_q)
    k0, k1 = np.clip(k0, 0, hi_k), np.clip(k1, 0, hi_k)
    total = g[q1, k1] - g[q0, k1] - g[q1, k0] + g[q0, k0]
    return total > 0, total == (q1 - q0) * (k1 - k0)


def recency_twin(attention: AttentionConfig, length: int, dense_before: int | None) -> BlockTable:
  """The blocks `attention`'s selection would keep if every score were the block's recency.

  Built by the selection itself (same forced blocks, same per-row counts): keys whose value
  grows with position make the mean-pooled score rise with the kv-block index.
  """
  block_q, block_kv = attention.blocks(length)
  pos = jnp.arange(length, dtype=jnp.float32)[None, :, None, None]
  q, k = jnp.ones((1, length, 1, 2)), jnp.concatenate([pos, pos], -1)
  keep = jax.jit(lambda q, k: so.select_block_mask(  # jit: many small ops, one dispatch
      q, k, block_q=block_q, block_kv=block_kv, budget=attention.selection_budget(),
      scoring="mean", sink_blocks=-(-attention.sink // block_kv), dense_before=dense_before))(q, k)
  return BlockTable(np.asarray(keep[0, 0]), block_q, block_kv)


# ------------------------------------------------------------------------------ evaluation
def stats(model: ModelConfig, phased, blocks: tuple[int, int] | None,
          prefix: int | None) -> dict[str, float]:
  """The study's exact counts (`accounting.stats`: a Selection's own blocks, the twin's and
  dense's `blocks`), and the block sparsity of the sparse rows alone (decode: the q-blocks from
  the question on; the context rows keep every causal block)."""
  s = accounting.stats(model, phased, LENGTH, blocks)
  if isinstance(phased, accounting.Selection):
    blocks = phased.attention.blocks(LENGTH)
  bq, bk = blocks
  last = np.minimum((np.arange(LENGTH // bq) + 1) * bq, LENGTH) - 1
  n = last // bk + 1  # causal kv-blocks of each q-block row
  dense = np.arange(LENGTH // bq) * bq < (prefix or 0)
  visited = (1 - s["block"]) * n.sum()
  sparse_rows = 1 - (visited - n[dense].sum()) / n[~dense].sum()
  return {"element": s["element"], "block": s["block"], "block_sparse_rows": float(sparse_rows),
          "inference_flops_per_token": s["inference_flops_per_token"]}


def evaluate(model, cfg: ModelConfig, compute_dtype: str, *, examples: int, batch: int,
             log=print) -> dict[str, Any]:
  density = solve_density()
  forward = ev.make_forward(model, compute_dtype)
  impl = cfg.attention.implementation
  rows = []
  for task_name in TASKS:
    task = tasks_lib.make(task_name, length=LENGTH, vocab_size=cfg.vocab_size, seed=0)
    data = ev.stacked_examples(task, "test", examples)
    prefix = accounting.dense_prefix(task)
    for phase in ("prefill", "decode"):
      runs = [("dense", so.masks.Causal(), (BLOCK, BLOCK))]
      for pattern in SCORINGS:
        att = content(pattern, density, impl)
        runs.append((pattern, accounting.phase_attention(att, LENGTH, phase, prefix), None))
      sel = runs[-1][1]  # the twin copies the content selection's blocks and per-row counts
      twin = recency_twin(sel.attention, LENGTH, sel.dense_before)
      runs.append(("block_local", twin, (twin.block_q, twin.block_kv)))
      for name, phased, blocks in runs:
        t0 = time.time()
        scores = ev.score_phase(forward, phased, data, batch)  # the study's loop and scorer
        correct = scores["correct"]
        lo, hi = proportion_ci(correct.sum(), len(correct))
        s = stats(cfg, phased, blocks, prefix if phase == "decode" else None)
        rows.append(dict(task=task_name, category=task.category, phase=phase, setting=name,
                         accuracy=float(correct.mean()), ci_low=lo, ci_high=hi, n=len(correct),
                         chance=ev.chance_exact_match(task), sparsity_block=s["block"],
                         sparsity_element=s["element"],
                         sparsity_block_sparse_rows=s["block_sparse_rows"],
                         inference_flops_per_token=s["inference_flops_per_token"],
                         dense_prefix=prefix, correct=correct.tolist(),
                         context=scores["context"].tolist()))
        log(f"{task_name} {phase} {name}: {correct.mean():.3f} [{lo:.3f}, {hi:.3f}] "
            f"block sparsity {s['block']:.4f} (sparse rows {s['block_sparse_rows']:.4f}, "
            f"{time.time() - t0:.1f}s)")
  return dict(length=LENGTH, block=BLOCK, sink_tokens=SINK, target_block_sparsity=TARGET,
              density_budget=density, examples=examples, rows=rows)


# --------------------------------------------------------------------------------- the model
def trained_dense_run(train_dir: Path, log=print) -> Path:
  """The smoke preset's 100k dense run, trained into `train_dir` if not finished there."""
  from experiments.runs import executors, sweep
  from experiments.spec import study as study_lib
  smoke = study_lib.load_preset("smoke")
  grid = dataclasses.replace(smoke.grid, sizes=("100k",), sparsities=(0.0,), sparse_sizes=None)
  # The run id hashes what determines the model, so it is the smoke study's own 100k dense run.
  study = dataclasses.replace(smoke, name="oracle", grid=grid, wandb="disabled",
                              eval=dataclasses.replace(smoke.eval, tasks=("niah_single",),
                                                       lengths=(128,), settings=(),
                                                       phases=("prefill",), examples=2))
  by_state = sweep.run_sweep(study, train_dir, executors.make("local"), log=log)
  if len(by_state["done"]) != 1:
    raise RuntimeError(f"training the oracle's model failed: {by_state}")
  return Path(train_dir) / "runs" / by_state["done"][0]


def markdown(result: dict[str, Any], label: str) -> str:
  rows = result["rows"]
  find = lambda t, p, s: next(r for r in rows if (r["task"], r["phase"], r["setting"]) == (t, p, s))
  md = ["# Oracle check: content-based selection vs a static pattern at 90% block sparsity", "",
        f"Model: `{label}` (smoke preset, trained dense at T=128). Eval at T={result['length']}, "
        f"{result['examples']} test examples per task, blocks of {result['block']} tokens, one "
        f"sink block; density budget {result['density_budget']:g} per row, solved so the kept "
        "blocks are exactly 10% of the causal blocks in prefill. `block_local` keeps the same "
        "number of blocks in every row (same FLOPs), the most recent ones. Accuracy: exact "
        "match, 95% Wilson interval. Numbers from `python -m experiments.tools.oracle`.", "",
        "| task | phase | setting | exact match | 95% CI | block sparsity (all rows / sparse "
        "rows) | element sparsity | drop vs dense |", "|---|---|---|---|---|---|---|---|"]
  for r in rows:
    drop = find(r["task"], r["phase"], "dense")["accuracy"] - r["accuracy"]
    md.append(f"| {r['task']} | {r['phase']} | {r['setting']} | {r['accuracy']:.3f} | "
              f"[{r['ci_low']:.3f}, {r['ci_high']:.3f}] | {r['sparsity_block']:.4f} / "
              f"{r['sparsity_block_sparse_rows']:.4f} | "
              f"{r['sparsity_element']:.4f} | {drop:+.3f} |")
  md += ["", "## Reading", "",
         "\"Within dense's interval\": the setting's accuracy lies inside the dense accuracy's "
         "Wilson interval; \"below dense\": one-sided Welch, alpha 0.05 (as the study's report). "
         "Decode: the context queries are dense and each question/answer query selects its own "
         "blocks (one-query q-blocks) under the same density budget; \"sparse rows\" is the "
         "block sparsity of those queries alone.", ""]
  arm = lambda r: stats_lib.Arm.of(r["correct"])
  for phase in ("prefill", "decode"):
    for t in TASKS:
      d = find(t, phase, "dense")
      inside = [s for s in SCORINGS  # 1e-9: a Wilson bound of 1 can round to 1 - 1e-16
                if d["ci_low"] - 1e-9 <= find(t, phase, s)["accuracy"] <= d["ci_high"] + 1e-9]
      below = [s for s in SCORINGS + ("block_local",)
               if stats_lib.significantly_greater(arm(d), arm(find(t, phase, s)))]
      twin = find(t, phase, "block_local")
      better = [s for s in SCORINGS if stats_lib.significantly_greater(arm(find(t, phase, s)), arm(twin))]
      md.append(f"- {t}, {phase}: dense {d['accuracy']:.3f}; within dense's interval: "
                f"{', '.join(inside) or 'none'}; below dense: {', '.join(below) or 'none'}; "
                f"significantly above block_local ({twin['accuracy']:.3f}): "
                f"{', '.join(better) or 'none'}.")
    rel = lambda t, s: ((find(t, phase, "dense")["accuracy"] - find(t, phase, s)["accuracy"])
                        / max(find(t, phase, "dense")["accuracy"], 1e-9))
    md.append(f"- {phase}: share of the dense accuracy lost, retrieval vs aggregation: " + "; ".join(
        f"{s} {rel(TASKS[0], s):.0%} vs {rel(TASKS[1], s):.0%}" for s in SCORINGS) + ".")
  return "\n".join(md) + "\n"


def main(argv=None) -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--run", type=Path, help="a finished run folder of a dense model")
  ap.add_argument("--train-dir", type=Path, default=Path("runs/oracle-train"))
  ap.add_argument("--out", type=Path, default=Path("studies/oracle"))
  ap.add_argument("--examples", type=int, default=200)
  ap.add_argument("--batch", type=int, default=50)
  args = ap.parse_args(argv)
  from experiments.runs import job, store
  run = args.run or trained_dense_run(args.train_dir)
  spec = store.load_spec(run)
  if spec.model.attention.pattern != "dense":
    raise ValueError(f"--run {run} was trained with {spec.model.attention.pattern!r}; the oracle "
                     "check needs a dense model")
  model, dtype = job.trained_model(run)
  t0 = time.time()
  result = evaluate(model, spec.model, dtype, examples=args.examples, batch=args.batch)
  result.update(run_id=spec.run_id, label=spec.label, wall_s=round(time.time() - t0, 1))
  args.out.mkdir(parents=True, exist_ok=True)
  (args.out / "oracle.json").write_text(json.dumps(result, indent=1) + "\n")
  (args.out / "oracle.md").write_text(markdown(result, spec.label))
  print(f"wrote {args.out}/oracle.json and oracle.md ({result['wall_s']} s)")


if __name__ == "__main__":
  main()
