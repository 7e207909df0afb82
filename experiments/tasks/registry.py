"""Task names -> classes, categories, and `make`."""

from __future__ import annotations

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


def make(name: str, *, length: int, vocab_size: int = 512, seed: int = 0, **knobs: Any) -> base.Task:
  """The task `name` at `length` tokens; `knobs` are the task's difficulty fields."""
  if name not in TASKS:
    raise ValueError(f"task name={name!r} must be one of {sorted(TASKS)}")
  cls = TASKS[name]
  known = {f.name for f in cls.__dataclass_fields__.values()} - {"length", "vocab_size", "seed"}
  unknown = sorted(set(knobs) - known)
  if unknown:
    raise ValueError(f"{name}: unknown knob(s) {unknown}; valid knobs: {sorted(known)}")
  if "depth" in knobs:
    knobs["depth"] = tuple(knobs["depth"])
  return cls(length=length, vocab_size=vocab_size, seed=seed, **knobs)
