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

METRICS = ("exact_match", "token_accuracy", "set_recall", "set_iou", "question_accuracy")


def _first_occurrence(tokens: np.ndarray, valid: np.ndarray) -> np.ndarray:
  """[B, A] tokens, [B, A] bool -> [B, A] bool: valid and no earlier valid equal token."""
  same = (tokens[:, :, None] == tokens[:, None, :]) & valid[:, :, None] & valid[:, None, :]
  earlier = np.tril(np.ones(tokens.shape[1:] * 2, bool), k=-1)  # [j, k]: k < j
  return valid & ~np.any(same & earlier, axis=2)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
  return np.where(den > 0, num / np.maximum(den, 1), 0.0).astype(np.float32)


def question_ids(weights) -> np.ndarray:
  """[B, T] weights -> int [B, T]: the question each answer target belongs to (0, 1, ...; a
  question's answer is a maximal run of weighted positions), -1 at unweighted positions."""
  mask = np.asarray(weights) > 0
  first = mask & ~np.pad(mask, ((0, 0), (1, 0)))[:, :-1]
  return np.where(mask, np.cumsum(first, axis=1) - 1, -1)


def question_scores(predictions, targets, weights) -> tuple[np.ndarray, np.ndarray]:
  """Exact match per question: (right [B, n] bool, asked [B, n] bool), n the most questions of
  any row; a question is right when every token of its answer is."""
  predictions, targets = _predicted(predictions, targets, weights)
  ids = question_ids(weights)
  n = max(int(ids.max(initial=-1)) + 1, 1)
  rows = np.broadcast_to(np.arange(ids.shape[0])[:, None], ids.shape)
  wrong = np.zeros((ids.shape[0], n), np.int64)
  asked = np.zeros((ids.shape[0], n), bool)
  at = ids >= 0
  np.add.at(wrong, (rows[at], ids[at]), (predictions != targets)[at])
  asked[rows[at], ids[at]] = True
  return asked & (wrong == 0), asked


def _predicted(predictions, targets, weights) -> tuple[np.ndarray, np.ndarray]:
  predictions, targets = np.asarray(predictions), np.asarray(targets)
  if predictions.ndim == 3:
    predictions = predictions.argmax(-1)
  if not predictions.shape == targets.shape == np.shape(weights) or predictions.ndim != 2:
    raise ValueError(f"predictions {predictions.shape}, targets {targets.shape} and weights "
                     f"{np.shape(weights)} must all be [B, T]")
  return predictions, targets


def score(predictions, targets, weights) -> dict[str, np.ndarray]:
  """Per-example answer scores.

  Args:
    predictions: int [B, T] predicted next tokens, or float logits [B, T, V] (argmaxed).
    targets: int [B, T] (inputs shifted left).
    weights: [B, T], nonzero exactly at answer targets.

  Returns:
    float32 [B] per metric in METRICS. exact_match: every answer token right;
    token_accuracy: fraction right; set_recall and set_iou: over the sets of answer tokens
    (order-free, for set answers); question_accuracy: the fraction of the row's questions
    answered exactly (`question_scores`; = exact_match for single-question forms). All are 0
    for an example with no answer positions.
  """
  predictions, targets = _predicted(predictions, targets, weights)
  mask = np.asarray(weights) > 0
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
  right_q, asked_q = question_scores(predictions, targets, weights)
  return {
      "question_accuracy": _ratio(right_q.sum(1), asked_q.sum(1)),
      "exact_match": exact.astype(np.float32),
      "token_accuracy": _ratio(right.sum(1), n),
      "set_recall": _ratio(inter, gold_first.sum(1)),
      "set_iou": _ratio(inter, union),
  }
