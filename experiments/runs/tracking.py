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


def model_run(study, spec, run_dir: Path, rows: list[dict[str, Any]]) -> None:
  """A W&B run per model: flat config + accuracy per category × length × setting × phase."""
  import wandb
  summary = defaultdict(list)
  for r in rows:
    summary[f"acc/{r['category']}/T{r['eval_length']}/{r['eval_setting']}/{r['phase']}"] += \
        r["correct"]
  run = wandb.init(project=study.wandb_project, group=study.name, job_type="eval",
                   name=spec.label, id=f"{spec.run_id}-eval", dir=str(run_dir), resume="allow",
                   mode=study.wandb, config=_flat_config(study, spec),
                   settings=wandb.Settings(silent=True, console="off"))
  run.summary.update({k: sum(v) / len(v) for k, v in summary.items()})
  run.finish()


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
