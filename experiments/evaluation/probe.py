"""Emergent activation sparsity of a trained model on the evaluation's own questions (issue 21).

`probe_model` runs `evaluate` once with the capture on: the dense setting's pass also returns
the sparsity of every layer's hidden state (`experiments.stats.activation_metrics`, at the
question position and averaged over the answer positions of each question), and the sparse
settings score the same questions, so per question we have its correctness dense and under every
sparsity beside its activation sparsity. Difficulty axes: the eval length against the trained one
(shorter, trained, longer) and task knobs beyond the trained ones at the trained length
(`shifted_tasks`: more needles, hops, distractors than trained). Results go to a folder as probe.json (meta + rows, the
`evaluate` rows with their per-question `correct`) and probe.npz (the per-question activation
arrays); `load` reads them back. Loading a run folder's model is `experiments.tools.probe`'s
(evaluation must not import the run store).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from experiments import tasks as tasks_lib
from experiments.evaluation.evaluate import evaluate
from experiments.stats import ACTIVATION_METRICS

PROBE_JSON, PROBE_NPZ = "probe.json", "probe.npz"
# Knob shifts beyond training: (knob, most factor) per task name (`shifted_tasks`).
SHIFTS = {"niah_multikey": ("num_needles", 2), "chain_resolve": ("num_hops", 2),
          "common_words": ("num_uncommon", 2)}


def shifted_tasks(trained: Sequence[str], length: int, vocab_size: int
                  ) -> list[tuple[str, str, str]]:
  """(eval task, trained task it shifts, label) for each trained task's knob-shifted form at
  `length` (the trained length), where SHIFTS has one: the knob raised to the largest value up
  to its factor times the trained one that the task can hold at this length and vocabulary
  (a small vocabulary caps hops and distractors), e.g. "chain_resolve(questions=4)" ->
  "chain_resolve(questions=4, num_hops=5)" labelled "num_hops 4->5". None where it cannot be
  raised at all."""
  out = []
  for t in trained:
    name, knobs = tasks_lib.spec(t)
    if name not in SHIFTS:
      continue
    knob, factor = SHIFTS[name]
    base = int(getattr(tasks_lib.make(t, length=length, vocab_size=vocab_size), knob))
    for v in range(int(base * factor), base, -1):
      shifted = {**knobs, knob: v}
      text = f"{name}({', '.join(f'{k}={x!r}' for k, x in shifted.items())})"
      try:
        tasks_lib.make(text, length=length, vocab_size=vocab_size)
      except ValueError:
        continue
      out.append((text, t, f"{knob} {base}->{v}"))
      break
  return out


def probe_model(forward, model, eval_spec, vocab_size: int, *, trained_length: int,
                shifted: Sequence[tuple[str, str, str]] = (),
                lengths: Sequence[int] | None = None,
                progress: Callable[[str], None] | None = None) -> dict[str, Any]:
  """{"rows": `evaluate` rows, "activations": {(task, length): arrays}, "meta": {...}}.

  `forward` from `make_forward`; `eval_spec`: the trained task forms, probed at `lengths`
  (default its own) where each fits (`_fitting`; an EvalSpec itself wants every task to fit
  every length, so a caller with forms that do not can give `lengths` here)
  must hold a ("dense", 0.0) setting (the captured pass) and the sparse settings whose
  tolerance is stratified. `shifted` (from `shifted_tasks`): knob-shifted forms, evaluated the
  same way at the trained length only (the knob is then the one shift)."""
  activations: dict = {}
  rows = []
  lengths = tuple(lengths or eval_spec.lengths)
  for tasks, fit in _fitting(eval_spec.tasks, lengths, vocab_size):
    rows += evaluate(forward, model, dataclasses.replace(eval_spec, tasks=tasks, lengths=fit),
                     vocab_size, progress, activations=activations)
  if shifted:
    knob_spec = dataclasses.replace(eval_spec, tasks=tuple(t for t, _, _ in shifted),
                                    lengths=(int(trained_length),))
    rows += evaluate(forward, model, knob_spec, vocab_size, progress, activations=activations)
  task_shift = {t: (t, "trained") for t in eval_spec.tasks}
  task_shift.update({t: (b, k) for t, b, k in shifted})
  meta = dict(trained_length=int(trained_length), metrics=list(ACTIVATION_METRICS),
              depth=int(model.depth), layers="0..depth-1: residual stream after each block; "
              "depth: final-normed (the last layer, what the head reads)",
              tasks={t: dict(trained_task=b, knob_shift=k,
                             category=tasks_lib.make(b, length=int(trained_length),
                                                     vocab_size=vocab_size).category)
                     for t, (b, k) in task_shift.items()},
              lengths=list(lengths), examples=int(eval_spec.examples))
  return {"rows": rows, "activations": activations, "meta": meta}


def _fitting(tasks: Sequence[str], lengths: Sequence[int], vocab_size: int
             ) -> list[tuple[tuple[str, ...], tuple[int, ...]]]:
  """The tasks grouped by the lengths each can be built at (a short length cannot hold every
  form: "chain_resolve(questions=4)" needs 66 tokens), one evaluate call per group; a task
  that fits nowhere is left out."""
  groups: dict = {}
  for t in tasks:
    fits = []
    for n in lengths:
      try:
        tasks_lib.make(t, length=n, vocab_size=vocab_size)
        fits.append(n)
      except ValueError:
        pass
    if fits:
      groups.setdefault(tuple(fits), []).append(t)
  return [(tuple(ts), ls) for ls, ts in groups.items()]


def _key(task: str, length: int, field: str) -> str:
  return f"{task}|{length}|{field}"


def save(folder: Path, result: dict[str, Any], extra_meta: dict[str, Any] | None = None
         ) -> list[Path]:
  """Writes probe.json and probe.npz into `folder`; returns their paths."""
  folder = Path(folder)
  folder.mkdir(parents=True, exist_ok=True)
  meta = {**result["meta"], **(extra_meta or {})}
  arrays = {_key(t, n, f): np.asarray(v) for (t, n), fields in result["activations"].items()
            for f, v in fields.items()}
  np.savez_compressed(folder / PROBE_NPZ, **arrays)
  (folder / PROBE_JSON).write_text(json.dumps({"meta": meta, "rows": result["rows"]}, indent=1))
  return [folder / PROBE_JSON, folder / PROBE_NPZ]


def load(folder: Path) -> dict[str, Any]:
  """`save`'s files back: {"meta", "rows", "activations": {(task, length): {field: array}}}."""
  folder = Path(folder)
  written = json.loads((folder / PROBE_JSON).read_text())
  acts: dict = {}
  with np.load(folder / PROBE_NPZ) as z:
    for k in z.files:
      task, length, field = k.rsplit("|", 2)
      acts.setdefault((task, int(length)), {})[field] = z[k]
  return {"meta": written["meta"], "rows": written["rows"], "activations": acts}
