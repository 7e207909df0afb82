"""The one evaluation loop: predict every batch, then score all predictions at once.

The trainer's periodic validation (`train.loop`), the study's evaluation
(`experiments.evaluation.evaluate`) and the oracle check (`experiments.tools.oracle`) all run
`score_batches`; they differ only in the `predict` they pass (sharded and padded for the
devices, or one model under an inference mask) and the `scorer` (per example, or per question).
Generic over the model and the task suite, so `train` needs nothing from `experiments`.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

import numpy as np

# predictions [B, T], targets [B, T], weights [B, T] -> {metric: array over rows or questions}
Scorer = Callable[[np.ndarray, np.ndarray, np.ndarray], dict[str, Any]]


def score_batches(predict: Callable[[np.ndarray], Any], batches: Iterable[dict[str, np.ndarray]],
                  scorer: Scorer) -> dict[str, Any]:
  """`scorer` over the predictions of every batch ({"inputs", "targets", "weights"}: [B, T]).

  predict: inputs [B, T] -> argmax predictions [B, T]. Scored once over the concatenation, so a
  scorer that indexes rows (a question's context) sees each example's index in the whole set.
  """
  preds, targets, weights = [], [], []
  for batch in batches:
    preds.append(np.asarray(predict(batch["inputs"])))
    targets.append(np.asarray(batch["targets"]))
    weights.append(np.asarray(batch["weights"]))
  if not preds:
    raise ValueError("batches is empty: nothing to evaluate")
  return scorer(np.concatenate(preds), np.concatenate(targets), np.concatenate(weights))
