"""Which test and which interval a report point gets, from what its rows recorded.

A point (`report.category_points`) pools results rows; where outcomes.npz gave every row its
per-question outcomes, the point carries them as a `Sample`. Two points whose samples cover the
same questions (one model, one task set and length, two eval settings: `evaluate` scores every
setting on the same examples) are compared with the paired test; any other pair, or a folder
without outcomes, with Welch's t on the summary statistics. Intervals resample contexts where
several questions share one (a cluster bootstrap), else they are Wilson's.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from experiments import stats
from experiments.runs.results import Outcomes

PAIRED = "paired exact sign test (McNemar)"
PAIRED_MARGIN = "paired t over contexts, drop beyond the margin"
WELCH = "Welch t"


@dataclasses.dataclass(frozen=True, eq=False)
class Sample:
  """A point's questions: `parts` names where each block came from ((task, length) tags, in
  sorted order) with its outcomes; `cluster` numbers their contexts apart across parts."""

  parts: tuple[tuple[tuple, Outcomes], ...]
  correct: np.ndarray
  cluster: np.ndarray

  @property
  def clustered(self) -> bool:
    """Whether some questions share a context (then they are not independent draws)."""
    return len(np.unique(self.cluster)) < len(self.cluster)


def sample(parts: list[tuple[tuple, Outcomes | None]]) -> Sample | None:
  """The Sample of tagged outcomes; None if any part has none (a test on part of a point's
  questions would not be the point's test)."""
  if not parts or any(o is None for _, o in parts):
    return None
  parts = sorted(parts, key=lambda p: p[0])
  clusters, base = [], 0
  for _, o in parts:
    _, which = np.unique(o.context, return_inverse=True)
    clusters.append(which + base)
    base += int(which.max()) + 1 if len(which) else 0
  return Sample(tuple(parts), np.concatenate([o.correct for _, o in parts]).astype(np.int64),
                np.concatenate(clusters))


def pool(samples: list[Sample | None]) -> Sample | None:
  """The Sample of several points' questions together (their tags must differ)."""
  if any(s is None for s in samples):
    return None
  return sample([part for s in samples for part in s.parts])


def same_questions(a: Sample | None, b: Sample | None) -> bool:
  """Whether question i of a is question i of b for every i: same parts, same contexts."""
  return (a is not None and b is not None and len(a.parts) == len(b.parts)
          and all(ta == tb and np.array_equal(oa.context, ob.context)
                  for (ta, oa), (tb, ob) in zip(a.parts, b.parts)))


@dataclasses.dataclass(frozen=True)
class Test:
  p: float
  test: str  # PAIRED or WELCH


def greater(a: dict[str, Any], b: dict[str, Any], margin: float = 0.0) -> Test:
  """One-sided test of accuracy(a) > accuracy(b) + margin for two points ({"arm", "sample"?}):
  paired where they hold the same questions (margin 0: the sign test over contexts where
  questions share them; a margin: `stats.drop_beyond`), else Welch (a's mean less the margin)."""
  sa, sb = a.get("sample"), b.get("sample")
  if same_questions(sa, sb):
    if margin:
      (right_a, asked), (right_b, _) = (stats.per_context(s.correct, s.cluster) for s in (sa, sb))
      return Test(float(stats.drop_beyond(right_a - right_b, asked, margin)), PAIRED_MARGIN)
    contexts = sa.cluster if sa.clustered else None
    return Test(stats.paired_greater(sa.correct, sb.correct, "greater", contexts).p, PAIRED)
  shifted = dataclasses.replace(a["arm"], mean=a["arm"].mean - margin)
  return Test(stats.welch_greater(shifted, b["arm"]).p, WELCH)


def interval(arm: stats.Arm, s: Sample | None) -> tuple[float, float]:
  """95% interval of per-question accuracy: the cluster bootstrap over contexts where questions
  share them, else Wilson."""
  if s is not None and s.clustered:
    return stats.cluster_bootstrap_ci(*stats.per_context(s.correct, s.cluster))
  return stats.proportion_ci(arm.mean * arm.n, arm.n)


def named(tests: set[str]) -> str:
  """The tests a table used, for its text: one name, or both with "where paired"."""
  paired = sorted(tests - {WELCH})
  if not paired:
    return WELCH
  name = " / ".join(paired)
  return name if WELCH not in tests else f"{name} where the arms share questions, else {WELCH}"
