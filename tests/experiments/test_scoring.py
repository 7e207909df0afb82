"""experiments.tasks.scoring against a plain-Python reference and hand-made cases."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from experiments import tasks
from experiments.tasks import scoring


def reference(pred, tgt, w):
  out = {m: [] for m in scoring.METRICS}
  for pr, tg, m in zip(pred, tgt, w > 0):
    p, t = list(pr[m]), list(tg[m])
    right = sum(a == b for a, b in zip(p, t))
    inter, union = len(set(p) & set(t)), len(set(p) | set(t))
    out["exact_match"].append(float(bool(t) and right == len(t)))
    out["token_accuracy"].append(right / len(t) if t else 0.0)
    out["set_recall"].append(inter / len(set(t)) if t else 0.0)
    out["set_iou"].append(inter / union if union else 0.0)
    # Questions: maximal runs of weighted positions, each right iff all its tokens are.
    runs, prev = [], False
    for pos, on in enumerate(m):
      if on and not prev:
        runs.append([])
      if on:
        runs[-1].append(pos)
      prev = on
    right_runs = sum(all(pp[i] == tt[i] for i in run) for run in runs for pp, tt in [(pr, tg)])
    out["question_accuracy"].append(right_runs / len(runs) if runs else 0.0)
  return out


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 5), st.integers(2, 12), st.data())
def test_matches_reference(batch, length, data):
  draw = lambda lo, hi: np.array(data.draw(st.lists(st.lists(
      st.integers(lo, hi), min_size=length, max_size=length), min_size=batch, max_size=batch)))
  pred, tgt, w = draw(0, 4), draw(0, 4), draw(0, 1).astype(np.float32)
  got, want = scoring.score(pred, tgt, w), reference(pred, tgt, w)
  for m in scoring.METRICS:
    np.testing.assert_allclose(got[m], want[m], rtol=1e-6, err_msg=m)


def test_question_scores_on_a_multi_question_form():
  task = tasks.make("niah_multikey(num_needles=8, questions=5)", length=128)
  ex = task.example("test", 3)
  pred = ex["targets"][None].copy()
  ids = scoring.question_ids(ex["weights"][None])
  assert sorted(set(ids[ids >= 0].tolist())) == [0, 1, 2, 3, 4]
  pred[ids == 2] = 0  # question 2 wrong
  right, asked = scoring.question_scores(pred, ex["targets"][None], ex["weights"][None])
  assert asked.tolist() == [[True] * 5] and right.tolist() == [[True, True, False, True, True]]
  assert scoring.score(pred, ex["targets"][None], ex["weights"][None])[
      "question_accuracy"].tolist() == [np.float32(0.8)]


def _batch(length=256):
  exs = [tasks.make(n, length=length).example("test", 0) for n in tasks.TASKS]
  return {k: np.stack([ex[k] for ex in exs]) for k in ("inputs", "targets", "weights")}, exs


def test_teacher_forced_truth_scores_one_and_logits_work():
  b, _ = _batch()
  for pred in (b["targets"], np.eye(512, dtype=np.float32)[b["targets"]]):
    s = scoring.score(pred, b["targets"], b["weights"])
    for m in scoring.METRICS:
      np.testing.assert_array_equal(s[m], 1.0, err_msg=m)


def test_only_answer_positions_count():
  b, _ = _batch()
  pred = b["targets"].copy()
  pred[b["weights"] == 0] = 0  # everything outside the answer wrong
  assert scoring.score(pred, b["targets"], b["weights"])["exact_match"].tolist() == [1.0] * 8


def test_wrong_truncated_permuted_and_empty_answers():
  b, exs = _batch()
  tgt, w = b["targets"], b["weights"]
  mv = list(tasks.TASKS).index("niah_multivalue")
  pos = np.flatnonzero(w[mv])  # 4 answer positions
  one_wrong = tgt.copy()
  one_wrong[mv, pos[0]] = tasks.Vocab.PAD
  s = scoring.score(one_wrong, tgt, w)
  assert s["exact_match"][mv] == 0 and s["token_accuracy"][mv] == 0.75
  assert s["set_recall"][mv] == 0.75 and s["set_iou"][mv] == pytest.approx(3 / 5)
  truncated = tgt.copy()
  truncated[mv, pos[2:]] = tasks.Vocab.PAD  # decoding stopped after two tokens
  s = scoring.score(truncated, tgt, w)
  assert s["exact_match"][mv] == 0 and s["set_recall"][mv] == 0.5
  permuted = tgt.copy()
  permuted[mv, pos] = tgt[mv, pos[::-1]]
  s = scoring.score(permuted, tgt, w)
  assert s["exact_match"][mv] == 0 and s["set_recall"][mv] == 1 and s["set_iou"][mv] == 1
  empty = w.copy()
  empty[0] = 0  # an example whose answer was cut off counts as 0, not as missing
  s = scoring.score(tgt, tgt, empty)
  assert [s[m][0] for m in scoring.METRICS] == [0.0] * len(scoring.METRICS) and s["exact_match"][1:].min() == 1


def test_shape_errors():
  with pytest.raises(ValueError, match=r"must all be \[B, T\]"):
    scoring.score(np.zeros((2, 4)), np.zeros((2, 5)), np.zeros((2, 5)))
