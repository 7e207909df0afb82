"""Scores for answers under teacher forcing, vectorised over a batch.

Position p predicts token p + 1, and `weights` is 1 exactly where that target is an
answer token. Because answers are in canonical order, "argmax right at every weighted
position" is the same event as "greedy decoding reproduces the answer", so exact match
here is the generation exact match. To score decoded text instead, write the generated
tokens into `predictions` at the weighted positions (missing ones as PAD): an empty or
truncated answer is then simply wrong, never skipped.
"""

from __future__ import annotations

import numpy as np

METRICS = ("exact_match", "token_accuracy", "set_recall", "set_iou")


def _first_occurrence(tokens: np.ndarray, valid: np.ndarray) -> np.ndarray:
  """[B, A] tokens, [B, A] bool -> [B, A] bool: valid and no earlier valid equal token."""
  same = (tokens[:, :, None] == tokens[:, None, :]) & valid[:, :, None] & valid[:, None, :]
  earlier = np.tril(np.ones(tokens.shape[1:] * 2, bool), k=-1)  # [j, k]: k < j
  return valid & ~np.any(same & earlier, axis=2)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
  return np.where(den > 0, num / np.maximum(den, 1), 0.0).astype(np.float32)


def score(predictions, targets, weights) -> dict[str, np.ndarray]:
  """Per-example answer scores.

  Args:
    predictions: int [B, T] predicted next tokens, or float logits [B, T, V] (argmaxed).
    targets: int [B, T] (inputs shifted left).
    weights: [B, T], nonzero exactly at answer targets.

  Returns:
    float32 [B] per metric in METRICS. exact_match: every answer token right;
    token_accuracy: fraction right; set_recall and set_iou: over the sets of answer tokens
    (order-free, for set answers). All are 0 for an example with no answer positions.
  """
  predictions, targets = np.asarray(predictions), np.asarray(targets)
  if predictions.ndim == 3:
    predictions = predictions.argmax(-1)
  mask = np.asarray(weights) > 0
  if not predictions.shape == targets.shape == mask.shape or predictions.ndim != 2:
    raise ValueError(f"predictions {predictions.shape}, targets {targets.shape} and weights "
                     f"{mask.shape} must all be [B, T]")
  n = mask.sum(1)
  width = max(int(n.max(initial=0)), 1)
  # Gather answer positions to the front: [B, A] with A the longest answer in the batch.
  order = np.argsort(~mask, axis=1, kind="stable")[:, :width]
  valid = np.take_along_axis(mask, order, 1)
  pred = np.take_along_axis(predictions, order, 1)
  gold = np.take_along_axis(targets, order, 1)

  right = (pred == gold) & valid
  exact = (n > 0) & (right.sum(1) == n)

  gold_first = _first_occurrence(gold, valid)
  pred_first = _first_occurrence(pred, valid)
  hit = np.any((pred[:, :, None] == gold[:, None, :]) & valid[:, :, None], axis=1)  # [B, A_gold]
  inter = (gold_first & hit).sum(1)
  union = gold_first.sum(1) + pred_first.sum(1) - inter
  return {
      "exact_match": exact.astype(np.float32),
      "token_accuracy": _ratio(right.sum(1), n),
      "set_recall": _ratio(inter, gold_first.sum(1)),
      "set_iou": _ratio(inter, union),
  }
