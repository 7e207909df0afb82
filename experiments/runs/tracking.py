"""W&B: one run per model (group = the study) and one summary run with the results table and
the report's plots. wandb is imported only when a study logs (it is the study extra's)."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

def _flat_config(study, spec) -> dict[str, Any]:
  return dict(study=study.name, size=spec.size, params=spec.params,
              nonembed_params=spec.nonembed_params, pattern=spec.pattern,
              train_sparsity=spec.train_sparsity, budget=spec.budget, steps=spec.steps,
              seq_len=spec.seq_len, lr=spec.optim.lr, batch_size=spec.batch_size,
              width=spec.model.width, depth=spec.model.depth, run_id=spec.run_id)


def model_run(study, spec, run_dir: Path, rows: list[dict[str, Any]], mode: str | None = None,
              history: list[dict[str, Any]] = ()) -> None:
  """A W&B run per model: flat config + accuracy per category × length × setting × phase, and
  `history` (the trainer's metrics records, for a run trained with W&B off) as its curves."""
  import wandb
  summary = defaultdict(list)
  for r in rows:
    summary[f"acc/{r['category']}/T{r['eval_length']}/{r['eval_setting']}/{r['phase']}"] += \
        r["correct"]
  run = wandb.init(project=study.wandb_project, group=study.name, job_type="eval",
                   name=spec.label, id=f"{spec.run_id}-eval", dir=str(run_dir), resume="allow",
                   mode=mode or study.wandb, config=_flat_config(study, spec),
                   settings=wandb.Settings(silent=True, console="off"))
  for record in history:
    if "step" in record:
      run.log({f"train/{k}": v for k, v in record.items() if k != "step"
               and isinstance(v, (int, float))}, step=record["step"])
  run.summary.update({k: sum(v) / len(v) for k, v in summary.items()})
  run.finish()


def backfill(study, out: Path, mode: str) -> list[str]:
  """W&B runs for the done runs of a study folder that have none yet (trained and evaluated
  with W&B off, e.g. on a machine without wandb): each gets its eval summary and its training
  curve from metrics.jsonl, then job.json notes it (so a later report does not log it twice).
  Returns the run ids logged."""
  from experiments.runs import store
  from experiments.runs.files import read_json
  from train.log import read_metrics
  logged = []
  for d in store.run_dirs(out):
    if store.state(d, study.eval.key) != "done" or store.job_record(d).get("wandb"):
      continue
    model_run(study, store.load_spec(d), d, read_json(d / store.EVAL_FILE)["rows"], mode=mode,
              history=read_metrics(d))
    store.update(d, wandb=mode)
    logged.append(d.name)
  return logged


def summary(study, out: Path, rows: list[dict[str, Any]], figs: list[Path],
                  mode: str) -> None:
  """The results table and plots logged to one summary run of the study's group."""
  import wandb
  cols = list(rows[0])
  run = wandb.init(project=study.wandb_project, group=study.name, job_type="summary",
                   name=f"{study.name}-summary", id=f"{study.name}-summary", dir=str(out),
                   resume="allow", mode=mode, settings=wandb.Settings(silent=True, console="off"))
  run.log({"results": wandb.Table(columns=cols, data=[[r[c] for c in cols] for r in rows]),
           **{f"plots/{f.stem}": wandb.Image(str(f)) for f in figs}})
  run.finish()
