"""experiments.tasks: format, an independent solver, determinism, validation, length range.

The solver below is written from DESIGN.md's token format and the Vocab only; it never
calls the generators' helpers, so a generator bug cannot hide behind shared code.
"""

import collections
import hashlib
import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from experiments import tasks
from experiments.tasks import Vocab

ALL = list(tasks.TASKS)


# -- the independent solver -------------------------------------------------------------------

def _runs(tokens, vocab, name, start, step):
  """Indices of the maximal run of range-`name` tokens starting at `start`, walking by `step`."""
  out, p = [], start
  while 0 <= p < len(tokens) and vocab.in_range(tokens[p], name):
    out.append(p)
    p += step
  return out[::step]


def parse(inputs, vocab):
  """-> context, question, number of answer tokens; checks the outer layout."""
  inputs = np.asarray(inputs)
  assert inputs[0] == vocab.BOS and np.count_nonzero(inputs == vocab.BOS) == 1
  assert np.count_nonzero(inputs == vocab.PAD) == 0
  seps = np.flatnonzero(inputs == vocab.SEP)
  assert len(seps) == 1
  answer_at = np.flatnonzero(inputs == vocab.ANSWER)[-1]
  return inputs[:seps[0]], inputs[seps[0] + 1:answer_at], len(inputs) - answer_at - 1


def solve(name, inputs, vocab):
  """-> (answer tokens, evidence positions in `inputs`) from the token stream alone."""
  context, question, n_answer = parse(inputs, vocab)
  context = context[1:]
  offset = 1  # positions below index `context`; inputs has BOS first
  allowed = {"niah": (["keys", "values"], vocab.BIND), "vari": (["variables", "values"], vocab.ASSIGN),
             "chai": (["variables", "values"], vocab.ASSIGN), "comm": (["words"], None),
             "freq": (["words"], None)}[name[:4]]
  ok = np.isin(context, [allowed[1]]) | vocab.in_range(context, "filler")
  for r in allowed[0]:
    ok |= vocab.in_range(context, r)
  assert ok.all(), "context holds a token outside the task's ranges"
  words = vocab.in_range(context, "words")
  if name.startswith("niah"):
    needles = []  # (key tuple, value tuple, key start)
    for b in np.flatnonzero(context == vocab.BIND):
      key = _runs(context, vocab, "keys", b - 1, -1)
      value = _runs(context, vocab, "values", b + 1, 1)
      assert key and value
      needles.append((tuple(context[key]), tuple(context[value]), key[0]))
    assert question[0] == vocab.QUERY
    asked = [tuple(q) for q in np.split(question, np.flatnonzero(question == vocab.QUERY))[1:]]
    answer, evidence = [], []
    for q in asked:
      hits = [(v, p) for k, v, p in needles if k == q[1:]]
      assert hits, "asked key not in context"
      for v, p in hits:
        answer += v
        evidence.append(p + offset)
    return answer, evidence
  if name in ("variable_tracking", "chain_resolve"):
    assign = {}  # lhs -> (rhs, position)
    for p in np.flatnonzero(context == vocab.ASSIGN):
      lhs, rhs = context[p - 1], context[p + 1]
      assert vocab.in_range(lhs, "variables") and lhs not in assign
      assign[int(lhs)] = (int(rhs), p - 1 + offset)
    assert len(question) == 2 and question[0] == vocab.QUERY
    if name == "chain_resolve":
      # The walk from the asked variable to the value; the answer is its value or (path=True,
      # an answer of num_hops tokens) the whole walk.
      cur, walked, evidence = int(question[1]), [], []
      while vocab.in_range(cur, "variables"):
        cur, p = assign[cur]
        walked.append(cur)
        evidence.append(p)
      assert n_answer in (1, len(walked))
      return walked[-n_answer:], sorted(evidence)
    chain, cur = [], int(question[1])
    while True:
      nxt = [lhs for lhs, (rhs, _) in assign.items() if rhs == cur]
      assert len(nxt) <= 1
      if not nxt:
        return chain, [assign[v][1] for v in chain]
      chain.append(nxt[0])
      cur = nxt[0]
  if name in ("common_words", "frequent_words"):
    assert list(question) == [vocab.QUERY]
    counts = collections.Counter(context[words].tolist())
    if name == "common_words":
      top = max(counts.values())
      answer = sorted(w for w, c in counts.items() if c == top)
    else:
      ranked = sorted(counts.items(), key=lambda wc: -wc[1])
      cs = [c for _, c in ranked[:n_answer + 1]]
      assert all(a > b for a, b in zip(cs, cs[1:])), "top counts must be strictly distinct"
      answer = [w for w, _ in ranked[:n_answer]]
    return answer, (np.flatnonzero(np.isin(context, answer)) + offset).tolist()
  raise AssertionError(name)


def check_example(task, ex):
  """Format invariants plus agreement with the independent solver."""
  t, v = task.length, task.vocab
  inputs, targets, weights = ex["inputs"], ex["targets"], ex["weights"]
  assert inputs.shape == targets.shape == weights.shape == (t,)
  assert inputs.dtype == targets.dtype == ex["answer"].dtype == ex["evidence"].dtype == np.int32
  assert weights.dtype == np.float32
  assert inputs.min() >= 0 and inputs.max() < task.vocab_size
  np.testing.assert_array_equal(targets[:-1], inputs[1:])
  assert targets[-1] == v.PAD
  a = len(ex["answer"])
  assert a >= 1
  np.testing.assert_array_equal(inputs[t - a:], ex["answer"])
  assert inputs[t - a - 1] == v.ANSWER
  # Weight 1 exactly where the *target* is an answer token.
  expected = np.zeros(t, np.float32)
  expected[t - a - 1:t - 1] = 1
  np.testing.assert_array_equal(weights, expected)
  assert ex["task"] == task.name and ex["category"] == task.category
  answer, evidence = solve(task.name, inputs, v)
  np.testing.assert_array_equal(ex["answer"], answer)
  np.testing.assert_array_equal(ex["evidence"], evidence)


# -- the solver agrees with every task ---------------------------------------------------------

SAMPLES = {128: 150, 1024: 80, 4096: 25}  # 8 tasks x 255 = 2040 examples


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("length", list(SAMPLES))
def test_solver_agrees(name, length):
  task = tasks.make(name, length=length, seed=3)
  for split in ("train", "test"):
    for i in range(SAMPLES[length] // 2):
      check_example(task, task.example(split, i))


@pytest.mark.parametrize("name", ALL)
def test_longest_length(name):
  task = tasks.make(name, length=131072, vocab_size=1024, seed=1)
  check_example(task, task.example("test", 7))


KNOBS = {
    "niah_single": dict(key_len=st.integers(1, 3), value_len=st.integers(1, 3)),
    "niah_multikey": dict(num_needles=st.integers(2, 20), key_len=st.integers(1, 2),
                          value_len=st.integers(1, 2)),
    "niah_multivalue": dict(num_values=st.integers(2, 8), num_distractors=st.integers(0, 8),
                            value_len=st.integers(1, 2)),
    "niah_multiquery": dict(num_needles=st.integers(4, 16), num_queries=st.integers(2, 4),
                            key_len=st.integers(1, 2)),
    "variable_tracking": dict(num_chains=st.integers(1, 6), num_hops=st.integers(1, 6)),
    "chain_resolve": dict(num_chains=st.integers(1, 6), num_hops=st.integers(1, 6),
                          path=st.booleans()),
    "common_words": dict(num_common=st.integers(1, 8), num_uncommon=st.integers(0, 30),
                         uncommon_count=st.integers(1, 3), common_count=st.integers(4, 9)),
    "frequent_words": dict(alpha=st.floats(1.0, 3.0), num_types=st.integers(5, 40),
                           num_top=st.integers(1, 4), density=st.floats(0.2, 1.0)),
}


@st.composite
def configs(draw):
  name = draw(st.sampled_from(ALL))
  knobs = {k: draw(s) for k, s in KNOBS[name].items()}
  if name in ("niah_single", "niah_multikey", "variable_tracking", "chain_resolve"):
    lo = draw(st.floats(0.0, 1.0))
    knobs["depth"] = (lo, draw(st.floats(lo, 1.0)))
  return name, knobs, draw(st.integers(0, 2**40)), draw(st.integers(0, 2**40))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(configs(), st.sampled_from([64, 300, 2048]))
def test_solver_agrees_on_random_knobs(config, extra):
  name, knobs, seed, index = config
  probe = tasks.make(name, length=2**20, seed=seed, vocab_size=1024, **knobs)
  task = tasks.make(name, length=probe.length - probe.context_len + probe.min_context_len + extra,
                    seed=seed, vocab_size=1024, **knobs)
  ex = task.example("validation", index)
  check_example(task, ex)
  if "depth" in knobs:
    lo, hi = knobs["depth"]
    free = task.context_len - task.min_context_len
    # Every evidence item starts inside its depth window of the free space.
    rel = ex["evidence"] - 1
    assert rel.min() >= np.floor(lo * free) and rel.max() <= np.floor(hi * free) + task.min_context_len


# -- determinism and independence --------------------------------------------------------------

def _digest(names, lengths, splits, indices, seed=0):
  h = {}
  for name in names:
    for n in lengths:
      task = tasks.make(name, length=n, seed=seed)
      for split in splits:
        m = hashlib.sha256()
        for i in indices:
          ex = task.example(split, i)
          for k in ("inputs", "targets", "weights", "answer", "evidence"):
            m.update(ex[k].tobytes())
        h[f"{name}/{n}/{split}"] = m.hexdigest()
  return h


def test_identical_across_processes():
  args = (ALL, [128, 4096], ["train", "test"], [0, 1, 17, 2**40])
  here = pathlib.Path(__file__).resolve().parent
  code = (f"import json, sys; sys.path[:0] = [{str(here.parents[1])!r}, {str(here)!r}]; "
          f"import test_tasks as t; print(json.dumps(t._digest(*{args!r})))")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                       cwd=here.parents[1])
  assert json.loads(out.stdout) == _digest(*args)


def test_random_access_is_pure():
  task = tasks.make("niah_multiquery", length=512)
  first = [task.example("test", i)["inputs"] for i in (5, 3, 9)]
  again = [task.example("test", i)["inputs"] for i in (9, 5, 3)]
  for a, b in zip(first, [again[1], again[2], again[0]]):
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("name", ALL)
def test_splits_and_seeds_do_not_overlap(name):
  seen = set()
  for seed in (0, 1):
    task = tasks.make(name, length=512, seed=seed)
    for split in tasks.SPLITS:
      for i in range(20):
        seen.add(task.example(split, i)["inputs"].tobytes())
  assert len(seen) == 2 * len(tasks.SPLITS) * 20


def test_streams_differ_per_task():
  # Same seed/split/index on different tasks must not reuse one random stream.
  a = tasks.make("variable_tracking", length=256).example("test", 0)["inputs"]
  b = tasks.make("chain_resolve", length=256).example("test", 0)["inputs"]
  assert not np.array_equal(a[:200], b[:200])


def test_needles_sit_at_uniform_depth():
  task = tasks.make("niah_single", length=1024)
  depth = np.array([task.example("train", i)["evidence"][0] for i in range(2000)]) / task.length
  hist, _ = np.histogram(depth, bins=10, range=(0, 1))
  assert hist.min() > 140 and hist.max() < 260  # 200 expected per bin


def test_multikey_asks_every_needle_position_equally():
  task = tasks.make("niah_multikey", length=512, num_needles=4)
  rank = []
  for i in range(2000):
    ex = task.example("train", i)
    starts = np.flatnonzero(ex["inputs"] == task.vocab.BIND) - 1
    rank.append(int(np.searchsorted(starts, ex["evidence"][0])))
  counts = np.bincount(rank, minlength=4)
  assert counts.min() > 420 and counts.max() < 580  # 500 expected each


# -- validation --------------------------------------------------------------------------------

BAD = [
    ("niah_single", dict(length=8), "length=8", "[9, "),
    ("niah_single", dict(length=256, key_len=0), "key_len=0", "[1, 4]"),
    ("niah_single", dict(length=256, depth=(0.7, 0.2)), "depth[1]=0.2", "[0.7, 1.0]"),
    ("niah_multikey", dict(length=256, num_needles=500), "num_needles=500", "[2, 126]"),
    ("niah_multikey", dict(length=64, num_needles=30), "length=64", "[96, "),
    ("niah_multivalue", dict(length=256, num_values=1), "num_values=1", "[2, 126]"),
    ("niah_multiquery", dict(length=256, num_needles=4, num_queries=5), "num_queries=5", "[2, 4]"),
    ("variable_tracking", dict(length=256, num_chains=10, num_hops=10), "num_hops=10", "[1, 9]"),
    ("chain_resolve", dict(length=256, num_chains=0), "num_chains=0", "[1, 126]"),
    ("common_words", dict(length=256, common_count=2, uncommon_count=2), "common_count=2", "[3, "),
    ("common_words", dict(length=256, num_common=50, num_uncommon=50), "num_uncommon=50", "[0, 44]"),
    ("frequent_words", dict(length=256, alpha=0.5), "alpha=0.5", "[1.0, 8.0]"),
    ("frequent_words", dict(length=256, num_top=16), "num_top=16", "[1, 15]"),
    ("frequent_words", dict(length=256, vocab_size=100), "vocab_size=100", "[128, "),
]


@pytest.mark.parametrize("name,kwargs,field,valid", BAD)
def test_bad_config_names_field_and_range(name, kwargs, field, valid):
  with pytest.raises(ValueError) as e:
    tasks.make(name, **kwargs)
  assert f"{name}: {field} must be" in str(e.value) and valid in str(e.value), str(e.value)


def test_bad_names_split_and_index():
  with pytest.raises(ValueError, match="must be one of"):
    tasks.make("niah_double", length=128)
  with pytest.raises(ValueError, match=r"unknown knob\(s\) \['num_needles'\]"):
    tasks.make("niah_single", length=128, num_needles=3)
  task = tasks.make("niah_single", length=128)
  with pytest.raises(ValueError, match=r"split='dev' must be one of"):
    task.example("dev", 0)
  with pytest.raises(ValueError, match=r"index=-1 must be an int in \[0, "):
    task.example("test", -1)


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(ALL), st.dictionaries(
    st.sampled_from(sorted({k for ks in KNOBS.values() for k in ks}) + ["length"]),
    st.integers(-5, 300), max_size=3))
def test_any_config_builds_or_names_a_field(name, kwargs):
  kwargs = {"length": 256, **kwargs}
  fields = set(tasks.TASKS[name].__dataclass_fields__)
  try:
    task = tasks.make(name, **kwargs)
  except ValueError as e:
    msg = str(e)
    assert "unknown knob" in msg or any(f"{f}=" in msg for f in kwargs if f in fields), msg
    return
  check_example(task, task.example("test", 0))


def test_vocab_ranges_partition_the_ids():
  for size in (128, 512, 1000, 50257):
    v = Vocab(size)
    ids = [i for r in v.ranges.values() for i in r]
    assert ids == list(range(7, size))
    assert all(len(r) >= 16 for r in v.ranges.values())
  assert (Vocab.PAD, Vocab.BOS, Vocab.SEP, Vocab.QUERY, Vocab.ANSWER, Vocab.BIND,
          Vocab.ASSIGN) == tuple(range(7))


def test_decode_collapses_filler():
  v = Vocab(512)
  f = v.filler.start
  tokens = [v.BOS, f, f, f, v.keys.start + 2, v.BIND, v.values.start, f, v.SEP, v.QUERY]
  assert v.decode(tokens) == "<s> .×3 k2 : v0 .×1 | ?"


def test_show_takes_a_task_spec(capsys):
  from experiments.tasks import __main__ as cli
  cli.main(["show", "chain_resolve(path=True, questions=2)", "--length", "128",
            "--vocab-size", "128"])
  out = capsys.readouterr().out
  assert "path=True" in out and "answer (2 question(s), 8 tokens" in out
  with pytest.raises(SystemExit, match=r"unknown knob\(s\) \['pth'\]"):
    cli.main(["show", "chain_resolve(pth=True)"])
