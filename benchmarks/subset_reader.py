"""How much of an answer survives in part of its context, for an ideal reader: no model.

    python -m benchmarks.subset_reader [--length 4096] [--contexts 48] [--out benchmarks/results]

The h200 study's tasks read task by task (report section "(a) task by task") put frequent_words
far above every other task in tolerated sparsity, and the multi-needle retrieval forms below
niah_single. The guess is that the answer of frequent_words survives in any part of its context,
so it is a property of the task, not of attention. This checks the guess without a model: an
ideal reader that sees only the kept tokens answers each question of the study's test contexts
(the h200 task specs, split "test"), and we count how often it is right, at compression
c = 1, 2, 4, 8, 16, 20 with two content-blind kept sets of T/c context tokens:
- `local`: the first 64 tokens (the study's sink) and the last T/c − 64 before the questions,
  roughly what the study's `local` pattern leaves a question;
- `random blocks`: T/c tokens in random 64-token blocks (the mean over 8 draws a context).

The reader: niah_single is right when the asked key's whole needle is kept; common_words when
the `num_common` most counted kept words are unique (no tie at the boundary) and the asked rank
of them by token id is right; frequent_words when the asked rank's word is the kept count's
unique word at that rank. A content-based selector can do better than either set (it can pick
the needle's block), so these are what is left to a pattern that ignores content.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from experiments import tasks
from experiments.spec.presets.h200 import TASKS

SINK, BLOCK, DRAWS = 64, 64, 8
COMPRESSIONS = (1, 2, 4, 8, 16, 20)
READ = ("niah_single", "common_words", "frequent_words")


def kept_sets(context_len: int, c: int, rng: np.random.Generator) -> dict[str, list[np.ndarray]]:
  """Boolean masks over the context, `context_len // c` tokens kept in each (random blocks:
  that many rounded up to whole blocks)."""
  n = max(context_len // c, SINK)
  local = np.zeros(context_len, bool)
  local[:SINK] = True
  local[context_len - (n - SINK):] = True
  blocks = -(-context_len // BLOCK)
  draws = []
  for _ in range(DRAWS):
    keep = np.zeros(blocks * BLOCK, bool)
    for b in rng.choice(blocks, min(blocks, -(-n // BLOCK)), replace=False):
      keep[b * BLOCK:(b + 1) * BLOCK] = True
    draws.append(keep[:context_len])
  return {"local": [local], "random blocks": draws}


def ranked(words: np.ndarray) -> list[tuple[int, int]]:
  """[(word, count)], most counted first, ties by lower id."""
  w, n = np.unique(words, return_counts=True)
  order = np.lexsort((w, -n))
  return list(zip(w[order].tolist(), n[order].tolist()))


def read(task, inputs: np.ndarray, keep: np.ndarray) -> list[bool]:
  """Per question: does an ideal reader of the kept context tokens answer it right?"""
  v = task.vocab
  context = inputs[1:1 + task.context_len]
  tail = inputs[2 + task.context_len:].reshape(task.questions, -1)  # Q.. ANSWER A..
  q_len = task.question_len
  out = []
  for row in tail:
    question, answer = row[:q_len], row[q_len + 1:]
    if task.name == "niah_single":
      key = question[1:]
      binds = np.flatnonzero(context == v.BIND)
      (b,) = [b for b in binds if np.array_equal(context[b - len(key):b], key)]
      out.append(bool(keep[b - len(key):b + 1 + len(answer)].all()))
      continue
    counts = ranked(context[keep & v.in_range(context, "words")])
    rank = int(question[1]) - v.keys.start
    if task.name == "common_words":
      k = task.num_common
      top = counts[:k]
      unique = len(counts) >= k and (len(counts) == k or counts[k - 1][1] > counts[k][1])
      out.append(unique and sorted(w for w, _ in top)[rank] == int(answer[0]))
    else:
      cs = [n for _, n in counts] + [0, 0]
      unique = rank < len(counts) and cs[rank] > cs[rank + 1] and (rank == 0
                                                                   or cs[rank - 1] > cs[rank])
      out.append(unique and counts[rank][0] == int(answer[0]))
  return out


def main(argv=None) -> dict:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--length", type=int, default=4096)
  ap.add_argument("--contexts", type=int, default=48)
  ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
  a = ap.parse_args(argv)
  rng = np.random.default_rng(0)
  table = {}
  for spec in TASKS:
    task = tasks.make(spec, length=a.length)
    if task.name not in READ:
      continue
    right: dict[tuple[str, int], list[float]] = {}
    for i in range(a.contexts):
      inputs = task.example("test", i)["inputs"]
      for c in COMPRESSIONS:
        for kind, masks in kept_sets(task.context_len, c, rng).items():
          right.setdefault((kind, c), []).extend(
              np.mean([read(task, inputs, m) for m in masks], 0).tolist())
    table[task.name] = {f"{kind} c={c}": float(np.mean(r)) for (kind, c), r in right.items()}
  a.out.mkdir(parents=True, exist_ok=True)
  (a.out / "subset_reader_cpu.json").write_text(json.dumps(
      dict(length=a.length, contexts=a.contexts, tasks=[t for t in TASKS
                                                        if t.split("(")[0] in READ],
           right=table), indent=1))
  lines = ["| task | kept set | " + " | ".join(f"c={c}" for c in COMPRESSIONS) + " |",
           "|---|---|" + "---|" * len(COMPRESSIONS)]
  for name, row in table.items():
    for kind in ("local", "random blocks"):
      lines.append(f"| {name} | {kind} | "
                   + " | ".join(f"{row[f'{kind} c={c}']:.3f}" for c in COMPRESSIONS) + " |")
  print("\n".join(lines))
  return table


if __name__ == "__main__":
  main()
