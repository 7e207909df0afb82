"""Task names -> classes, categories, and `make`.

A task can be named with its knobs, as a call: `"niah_multikey(num_needles=32, questions=16)"`
(`spec`). Configs that hold task names as strings (the trainer's `DataConfig.tasks`, a study's
grid) train on such forms without knowing about knobs.
"""

from __future__ import annotations

import ast
import dataclasses
from typing import Any

from experiments.tasks import aggregation, base, multihop, retrieval

TASKS: dict[str, type[base.Task]] = {
    cls.name: cls
    for cls in (
        retrieval.NiahSingle, retrieval.NiahMultikey, retrieval.NiahMultivalue,
        retrieval.NiahMultiquery, multihop.VariableTracking, multihop.ChainResolve,
        aggregation.CommonWords, aggregation.FrequentWords,
    )
}

CATEGORIES: dict[str, list[str]] = {}
for _name, _cls in TASKS.items():
  CATEGORIES.setdefault(_cls.category, []).append(_name)


def spec(text: str) -> tuple[str, dict[str, Any]]:
  """`"name"` or `"name(knob=literal, ...)"` -> (name, knobs)."""
  try:
    call = ast.parse(text.strip(), mode="eval").body
  except SyntaxError:
    call = None
  if isinstance(call, ast.Name):
    return call.id, {}
  if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and not call.args
          and all(kw.arg for kw in call.keywords)):
    raise ValueError(f"task {text!r} must be a name or name(knob=value, ...), e.g. "
                     "'niah_multikey(questions=8)'")
  try:
    return call.func.id, {kw.arg: ast.literal_eval(kw.value) for kw in call.keywords}
  except ValueError:
    raise ValueError(f"task {text!r}: knob values must be Python literals") from None


def make(name: str, *, length: int, vocab_size: int = 512, seed: int = 0, **knobs: Any) -> base.Task:
  """The task `name` at `length` tokens; `knobs` are the task's difficulty fields. `name` may
  carry knobs itself (`spec`); keyword knobs override those."""
  if "(" in name:
    name, named = spec(name)
    knobs = {**named, **knobs}
  if name not in TASKS:
    raise ValueError(f"task name={name!r} must be one of {sorted(TASKS)}")
  cls = TASKS[name]
  known = {f.name for f in dataclasses.fields(cls)} - {"length", "vocab_size", "seed"}
  unknown = sorted(set(knobs) - known)
  if unknown:
    raise ValueError(f"{name}: unknown knob(s) {unknown}; valid knobs: {sorted(known)}")
  if "depth" in knobs:
    knobs["depth"] = tuple(knobs["depth"])
  return cls(length=length, vocab_size=vocab_size, seed=seed, **knobs)
