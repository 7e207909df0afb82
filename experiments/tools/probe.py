"""Activation-sparsity probe of a trained run folder (issue 21):

    python -m experiments probe RUN_DIR [RUN_DIR ...] [--examples 48] [--lengths 64 128 256]

Loads the run's finished model (`experiments.runs.job.trained_model`), evaluates it on its own
training tasks at the study's eval lengths (or --lengths) and on their knob-shifted forms
(`experiments.evaluation.probe.shifted_tasks`) at the trained length, under dense (captured: hidden-state sparsity of every
layer at the question and answer positions, from the same pass) and the study's sparse settings,
and writes probe.json + probe.npz into the run folder (`experiments.evaluation.probe.save`).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any, Sequence

from experiments.evaluation import evaluate as eval_lib
from experiments.evaluation import probe as probe_lib
from experiments.runs import job, store


def probe(run_dir: str | Path, *, examples: int | None = None,
          lengths: Sequence[int] | None = None, settings: Sequence[tuple] | None = None,
          shifted: bool = True, log=print) -> list[Path]:
  """Probes one finished run folder; returns the written paths. Defaults from its study: the
  eval lengths, examples and sparse settings (static and fixed-budget ones, the ones that
  name a sparsity), the training tasks with their trained knobs."""
  run_dir = Path(run_dir)
  study = store.load_study(run_dir.parent.parent)
  spec = store.load_spec(run_dir)
  ev = study.eval
  lengths = tuple(lengths or ev.lengths)
  trained = list(spec.config.data.tasks)
  vocab = spec.model.vocab_size
  forms = probe_lib.shifted_tasks(trained, spec.seq_len, vocab) if shifted else []
  if settings is None:  # a tolerance ladder needs settings that name their sparsity
    settings = tuple(s for s in ev.settings if len(s) == 2)
  if ("dense", 0.0) not in [tuple(s) for s in settings]:
    settings = (("dense", 0.0),) + tuple(settings)
  spec_eval = dataclasses.replace(ev, tasks=tuple(trained), lengths=(spec.seq_len,),
                                  settings=tuple(settings), native=False,
                                  examples=examples or ev.examples)
  t0 = time.time()
  model, dtype = job.trained_model(run_dir)
  forward = eval_lib.make_forward(model, dtype)
  result = probe_lib.probe_model(forward, spec.model, spec_eval, vocab,
                                 trained_length=spec.seq_len,
                                 shifted=forms, lengths=lengths)
  extra: dict[str, Any] = dict(run=run_dir.name, label=getattr(spec, "label", run_dir.name),
                               size=spec.size, train_sparsity=spec.train_sparsity,
                               train_pattern=spec.model.attention.pattern,
                               params=_params(spec.model), wall_s=time.time() - t0)
  paths = probe_lib.save(run_dir, result, extra)
  log(f"  probed {run_dir.name} ({spec.size}, train sparsity {spec.train_sparsity}) in "
      f"{time.time() - t0:.0f}s -> {paths[0]}")
  return paths


def _params(model) -> int:
  import models
  return int(models.param_counts(model).nonembed)
