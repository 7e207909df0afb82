"""On-device task generation (`Task.device_example`): the same task as the numpy `example`.

For every task, at a default config (questions=1) and a non-default one with questions > 1
(plus wide keys and depth windows for retrieval): the layout and weights are numpy's exactly;
an independent solver (below, written from the token format and the Vocab alone: it never
calls the generators' helpers) recomputes every answer from the inputs, on device examples
and on numpy ones (which tests the solver); the task's uniqueness guarantees hold; and
two-sample tests compare device and numpy statistics (depths, token histograms, which item
is asked, count laws) at p > 1e-3 with fixed seeds. The statistics were chosen to catch
broken generators: placement biased to the start, a filler token missing, sorted or repeated
keys, unshuffled chains or words, always asking the first needle, no redraw of tied counts
each fail here. Then jit/vmap behaviour, and the helpers in `device` directly.

Device batches compile at XLA's lowest backend optimisation level: the same program,
compiled several times faster, which keeps this file inside its CPU budget.
"""

import collections
import functools
import hashlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from experiments import tasks
from experiments.tasks import base, device
from train import data as data_lib

ALPHA = 1e-3
SAMPLES = 300  # examples per generator per config
FAST = {"xla_backend_optimization_level": 0}

# (name, length, knobs): every task at a default config (questions=1) and a non-default one
# with questions > 1.
CONFIGS = [
    ("niah_single", 128, {}),
    ("niah_single", 512, dict(questions=3, key_len=2, value_len=2)),
    ("niah_multikey", 128, {}),
    ("niah_multikey", 512, dict(questions=3, num_needles=6, depth=(0.25, 0.75))),
    ("niah_multikey", 512, dict(key_len=3, value_len=2, num_needles=5)),
    ("niah_multivalue", 128, {}),
    ("niah_multivalue", 512, dict(questions=2, num_values=3, num_distractors=3, value_len=2)),
    ("niah_multiquery", 128, {}),
    ("niah_multiquery", 512, dict(questions=2, key_len=2)),
    ("variable_tracking", 128, {}),
    ("variable_tracking", 512, dict(questions=3, num_hops=2)),
    ("chain_resolve", 128, {}),
    ("chain_resolve", 512, dict(questions=2, num_chains=3, depth=(0.5, 1.0))),
    ("chain_resolve", 512, dict(questions=3, path=True)),
    ("common_words", 128, {}),
    ("common_words", 512, dict(questions=3, num_uncommon=20, uncommon_count=3)),
    ("frequent_words", 128, {}),
    ("frequent_words", 512, dict(questions=2, alpha=1.5, num_types=24, density=0.5)),
]
IDS = [f"{n}-{t}-" + ",".join(f"{k}={v}" for k, v in kn.items()) for n, t, kn in CONFIGS]
WIDE_KEYS = next(c for c in CONFIGS if c[2].get("key_len") == 3)  # distinct redraws repeats
FREQUENT = next(c for c in CONFIGS if c[0] == "frequent_words" and c[2])  # redraws ties


def _task(config):
  name, length, knobs = config
  return tasks.make(name, length=length, seed=11, **knobs)


@functools.cache
def _program():
  """Every config's `jax.vmap(device_example)` over SAMPLES keys, as one compiled program (one
  compile of all of them is much faster than one per config)."""
  fns = [jax.vmap(_task(c).device_example) for c in CONFIGS]
  keys = jax.random.split(jax.random.key(0), SAMPLES)
  return jax.jit(lambda keys: [f(keys) for f in fns]).lower(keys).compile(FAST)


@functools.cache
def _device_batches(seed, reverse=False):
  keys = jax.random.split(jax.random.key(seed), SAMPLES)
  out = _program()(keys[::-1] if reverse else keys)
  return [{k: np.asarray(v) for k, v in batch.items()} for batch in out]


def _device_batch(config, seed=1234):
  return _device_batches(seed)[CONFIGS.index(config)]


@functools.cache
def _numpy_batches(i):
  task = _task(CONFIGS[i])
  exs = [task.example("train", j) for j in range(SAMPLES)]
  return {k: np.stack([ex[k] for ex in exs]) for k in ("inputs", "targets", "weights")}


def _numpy_batch(config):
  return _numpy_batches(CONFIGS.index(config))


# -- the independent solver -------------------------------------------------------------------

def _in(v, tokens, name):
  return v.in_range(tokens, name)


def parse(inputs, v):
  """-> context (BOS stripped), [(question tokens, answer tokens)]: `BOS context SEP Q1 ANSWER A1
  ... Qn ANSWER An`, answers ending where the next question's QUERY begins."""
  inputs = np.asarray(inputs)
  assert inputs[0] == v.BOS and np.count_nonzero(inputs == v.BOS) == 1
  assert np.count_nonzero(inputs == v.PAD) == 0
  (sep,) = np.flatnonzero(inputs == v.SEP)
  context, tail = inputs[1:sep], inputs[sep + 1:]
  assert not np.isin(context, [v.QUERY, v.ANSWER]).any()
  out, start = [], 0
  for a in np.flatnonzero(tail == v.ANSWER):
    nxt = np.flatnonzero(tail[a + 1:] == v.QUERY)
    end = a + 1 + nxt[0] if len(nxt) else len(tail)
    question, answer = tail[start:a], tail[a + 1:end]
    assert question[0] == v.QUERY and len(answer) >= 1
    out.append((question, answer))
    start = end
  assert start == len(tail) and out
  return context, out


def _run(context, v, name, start, step):
  """Positions of the maximal run of range-`name` tokens from `start`, walking by `step`."""
  out, p = [], start
  while 0 <= p < len(context) and _in(v, context[p], name):
    out.append(p)
    p += step
  return out[::step]


def needles(context, v):
  """[(key tuple, value tuple, start)] in context order."""
  out = []
  for b in np.flatnonzero(context == v.BIND):
    key, value = _run(context, v, "keys", b - 1, -1), _run(context, v, "values", b + 1, 1)
    assert key and value
    out.append((tuple(context[key].tolist()), tuple(context[value].tolist()), key[0]))
  return out


def assignments(context, v):
  """[(lhs, rhs, start)] in context order."""
  return [(int(context[p - 1]), int(context[p + 1]), p - 1)
          for p in np.flatnonzero(context == v.ASSIGN)]


def word_counts(context, v):
  """[(word, count)], most frequent first (ties: lower id first)."""
  words, counts = np.unique(context[_in(v, context, "words")], return_counts=True)
  order = np.lexsort((words, -counts))
  return list(zip(words[order].tolist(), counts[order].tolist()))


def walk(cur, step, more):
  """[cur, step[cur], ...] while `more` holds, the last one failing it; at most len(step)
  steps (a broken generator could make a cycle)."""
  path = [cur]
  while more(cur):
    assert len(path) <= len(step) and cur in step, "chain is cyclic or broken"
    cur = step[cur]
    path.append(cur)
  return path


def solve(name, context, question, n_answer, v):
  """-> the answer tokens to `question` about `context`, from the token stream alone."""
  kinds = {"niah": ("keys", "values"), "vari": ("variables", "values"),
           "chai": ("variables", "values"), "comm": ("words",), "freq": ("words",)}[name[:4]]
  ok = _in(v, context, "filler") | np.isin(context, [v.BIND if name[:4] == "niah" else v.ASSIGN])
  for r in kinds:
    ok |= _in(v, context, r)
  assert ok.all(), "context holds a token outside the task's ranges"
  if name.startswith("niah"):
    found = needles(context, v)
    answer = []
    for group in np.split(question, np.flatnonzero(question == v.QUERY))[1:]:
      hits = [val for key, val, _ in found if key == tuple(group[1:].tolist())]
      assert hits, "asked key not in context"
      answer += [t for val in hits for t in val]
    return answer
  if name in ("variable_tracking", "chain_resolve"):
    assert len(question) == 2
    rhs = {lhs: r for lhs, r, _ in assignments(context, v)}
    if name == "chain_resolve":
      walked = walk(int(question[1]), rhs, lambda x: _in(v, x, "variables"))[1:]
      assert n_answer in (1, len(walked))  # the value, or (path=True) the whole walk
      return walked[-n_answer:]
    lhs_of = {r: lhs for lhs, r in rhs.items()}
    return walk(int(question[1]), lhs_of, lambda x: x in lhs_of)[1:]
  counts = word_counts(context, v)
  if name == "common_words":
    top = counts[0][1]
    common = sorted(w for w, c in counts if c == top)
    if len(question) == 1:
      return common
    return [common[int(question[1]) - v.keys.start]]
  if name == "frequent_words":
    cs = [c for _, c in counts] + [0]
    if len(question) == 1:
      ranks = list(range(n_answer))
    else:
      ranks = [int(question[1]) - v.keys.start]
    need = max(ranks) + 2
    assert all(a > b for a, b in zip(cs[:need], cs[1:need])), "top counts must be distinct"
    return [counts[r][0] for r in ranks]
  raise AssertionError(name)


def guarantees(task, context, qa):
  """The task's uniqueness guarantees, from the config's knobs."""
  v, name = task.vocab, task.name
  if name.startswith("niah"):
    found = needles(context, v)
    assert len(found) == task.num_needles_total
    assert all(len(k) == task.key_len and len(val) == task.value_len for k, val, _ in found)
    assert len({val for _, val, _ in found}) == len(found), "values must be distinct"
    per_key = collections.Counter(k for k, _, _ in found)
    assert len(per_key) == task.num_keys, "keys must be distinct"
    asked = [tuple(g[1:].tolist()) for q, _ in qa
             for g in np.split(q, np.flatnonzero(q == v.QUERY))[1:]]
    assert len(set(asked)) == len(asked), "asked keys must be distinct"
    if name == "niah_multivalue":  # questions keys of num_values needles, distractors of one
      assert all(per_key[k] == task.num_values for k in asked)
      assert sorted(per_key.values()) == sorted([task.num_values] * task.questions
                                                + [1] * task.num_distractors)
    else:
      assert set(per_key.values()) == {1}
  elif name in ("variable_tracking", "chain_resolve"):
    found = assignments(context, v)
    c, h = task.num_chains, task.num_hops
    assert len(found) == c * h
    lhs = [l for l, _, _ in found]
    assert len(set(lhs)) == c * h, "variables must be distinct"
    assert all(_in(v, l, "variables") for l in lhs)
    values = [r for _, r, _ in found if _in(v, r, "values")]
    assert len(values) == len(set(values)) == c, "one distinct value per chain"
    position = {l: i for i, (l, _, _) in enumerate(found)}
    for l, r, _ in found:  # each chain in order: a variable's rhs is assigned before it
      assert _in(v, r, "values") or position[r] < position[l]
    lhs_of = {r: l for l, r, _ in found}
    assert len(lhs_of) == c * h, "each variable and value is used once as a rhs"
    for val in values:
      assert len(walk(val, lhs_of, lambda x: x in lhs_of)) == h + 1
    keys = [int(q[1]) for q, _ in qa]
    assert len(set(keys)) == len(keys), "asked chains must be distinct"
  else:
    counts = word_counts(context, v)
    if name == "common_words":
      got = sorted(c for _, c in counts)
      assert got == sorted([task.common_count] * task.num_common
                           + [task.uncommon_count] * task.num_uncommon)
    else:
      assert sum(c for _, c in counts) == task.num_words
      assert len(counts) <= task.num_types
      cs = ([c for _, c in counts] + [0] * (task.num_top + 1))[:task.num_top + 1]
      assert all(a > b for a, b in zip(cs, cs[1:])), "top num_top + 1 counts must be distinct"
    if task.questions > 1:
      ranks = [int(q[1]) - v.keys.start for q, _ in qa]
      assert ranks == sorted(set(ranks)) and all(_in(v, q[1], "keys") for q, _ in qa)


def check_batch(task, batch, reference):
  """Format, exact layout vs numpy's `reference` example, solver agreement, guarantees."""
  v, t = task.vocab, task.length
  assert batch["inputs"].dtype == batch["targets"].dtype == np.int32
  assert batch["weights"].dtype == np.float32
  shape = (len(batch["inputs"]), t)
  assert batch["inputs"].shape == batch["targets"].shape == batch["weights"].shape == shape
  np.testing.assert_array_equal(batch["targets"][:, :-1], batch["inputs"][:, 1:])
  assert (batch["targets"][:, -1] == v.PAD).all()
  assert batch["inputs"].min() >= 0 and batch["inputs"].max() < task.vocab_size
  np.testing.assert_array_equal(batch["weights"], np.broadcast_to(reference["weights"], shape))
  for tok in (v.BOS, v.SEP, v.QUERY, v.ANSWER, v.PAD):  # the tail sits where numpy puts it
    np.testing.assert_array_equal(batch["inputs"] == tok,
                                  np.broadcast_to(reference["inputs"] == tok, shape))
  for inputs, weights in zip(batch["inputs"], batch["weights"]):
    context, qa = parse(inputs, v)
    assert len(context) == task.context_len and len(qa) == task.questions
    assert all(len(q) == task.question_len and len(a) == task.answer_len for q, a in qa)
    np.testing.assert_array_equal(inputs[1:][weights[:-1] > 0], np.concatenate([a for _, a in qa]))
    for question, answer in qa:
      np.testing.assert_array_equal(answer, solve(task.name, context, question, len(answer), v))
    guarantees(task, context, qa)


@pytest.mark.parametrize("config", CONFIGS, ids=IDS)
def test_device_examples_are_right(config):
  task = _task(config)
  reference = task.example("test", 0)
  check_batch(task, _numpy_batch(config), reference)  # the solver, on numpy's examples
  check_batch(task, _device_batch(config), reference)


# -- the same distribution as numpy's ---------------------------------------------------------

def _chi2(a, b, lo, hi):
  """p of a chi-square homogeneity test of two samples of ints in [lo, hi): equal-width bins,
  about 20 expected counts per bin or more."""
  a, b = np.asarray(a), np.asarray(b)
  assert a.size and b.size
  bins = int(min(hi - lo, max(2, (a.size + b.size) // 40)))
  edges = np.linspace(lo, hi, bins + 1)
  table = np.stack([np.histogram(a, edges)[0], np.histogram(b, edges)[0]])
  assert table.sum() == a.size + b.size, "samples outside [lo, hi)"
  table = table[:, table.sum(0) > 0]
  if table.shape[1] < 2:
    return 1.0
  return stats.chi2_contingency(table).pvalue


def _features(task, inputs):
  """Per-example scalars (two-sample KS) and per-example token lists (pooled chi-square, with
  the range they live in) of one example."""
  v, name, c = task.vocab, task.name, task.context_len
  context, qa = parse(inputs, v)
  scalars, tokens = {}, {"filler": (context[_in(v, context, "filler")], v.filler)}
  if name.startswith("niah"):
    found = needles(context, v)
    starts = [s for _, _, s in found]
    key1 = tuple(qa[0][0][1:1 + task.key_len].tolist())
    asked = [i for i, (k, _, _) in enumerate(found) if k == key1]
    scalars |= {"first_start": starts[0] / c, "last_start": starts[-1] / c,
                "asked_depth": np.mean([starts[i] for i in asked]) / c}
    if len(found) > len(asked):
      scalars["asked_rank"] = asked[0]
    tokens |= {"first_key": (np.array(found[0][0][:1]), v.keys),
               "first_value": (np.array(found[0][1][:1]), v.values)}
    keys = np.array(sorted({k for k, _, _ in found}))
    values = np.array([val for _, val, _ in found])
    for j in range(task.key_len):
      tokens[f"key_digit{j}"] = (keys[:, j], v.keys)
    for j in range(task.value_len):
      tokens[f"value_digit{j}"] = (values[:, j], v.values)
  elif name in ("variable_tracking", "chain_resolve"):
    found = assignments(context, v)
    starts = [s for _, _, s in found]
    rhs = {l: r for l, r, _ in found}
    # The chain of a variable: the value at its end.
    chain_of = {l: walk(l, rhs, lambda x: _in(v, x, "variables"))[-1] for l in rhs}
    asked = int(qa[0][0][1])  # chains are named by their values
    if name == "chain_resolve":
      asked = chain_of[asked]
    items = [i for i, (l, _, _) in enumerate(found) if chain_of[l] == asked]
    first_seen = list(dict.fromkeys(chain_of[l] for l, _, _ in found))
    scalars |= {"first_start": starts[0] / c, "last_start": starts[-1] / c,
                "asked_depth": np.mean([starts[i] for i in items]) / c}
    if task.num_chains > 1:
      scalars |= {"asked_chain_rank": first_seen.index(asked), "asked_items": sum(items),
                  "first_chain_last_item": max(i for i, (l, _, _) in enumerate(found)
                                               if chain_of[l] == first_seen[0])}
    tokens |= {"variables": (np.array(list(rhs)), v.variables),
               "values": (np.array(first_seen), v.values),
               "first_variable": (np.array([found[0][0]]), v.variables),
               "first_value": (np.array(first_seen[:1]), v.values)}
  else:
    words = np.flatnonzero(_in(v, context, "words"))
    counts = word_counts(context, v)
    if len(words) < c:
      scalars |= {"first_start": words[0] / c, "last_start": words[-1] / c}
    if name == "common_words":
      common = [w for w, n in counts if n == task.common_count]
      scalars["common_depth"] = np.mean(words[np.isin(context[words], common)]) / c
      tokens["words"] = (np.array([w for w, _ in counts]), v.words)
      tokens["first_word"] = (context[words[:1]], v.words)
    else:
      cs = [n for _, n in counts] + [0] * task.num_types
      scalars |= {"count1": cs[0], "count2": cs[1], f"count{task.num_top + 1}": cs[task.num_top],
                  "types_present": len(counts)}
      tokens["top_word"] = (np.array([counts[0][0]]), v.words)
    if task.questions > 1:
      scalars["first_asked_rank"] = int(qa[0][0][1]) - v.keys.start
      scalars["last_asked_rank"] = int(qa[-1][0][1]) - v.keys.start
  return scalars, tokens


def _pooled(task, batch):
  scalars, tokens = collections.defaultdict(list), collections.defaultdict(list)
  ranges = {}
  for inputs in batch["inputs"]:
    s, t = _features(task, inputs)
    for k, x in s.items():
      scalars[k].append(x)
    for k, (x, r) in t.items():
      tokens[k].append(np.asarray(x))
      ranges[k] = r
  return scalars, {k: (np.concatenate(x), ranges[k]) for k, x in tokens.items()}


@pytest.mark.parametrize("config", CONFIGS, ids=IDS)
def test_same_distribution_as_numpy(config):
  task = _task(config)
  dev_s, dev_t = _pooled(task, _device_batch(config))
  np_s, np_t = _pooled(task, _numpy_batch(config))
  assert dev_s.keys() == np_s.keys() and dev_t.keys() == np_t.keys()
  pvalues = {}
  for k in np_s:
    a, b = np.asarray(dev_s[k]), np.asarray(np_s[k])
    _, pooled = np.unique(np.concatenate([a, b]), return_counts=True)
    if np.issubdtype(b.dtype, np.integer) and pooled.min() >= 10:  # categorical: chi-square
      pvalues[k] = _chi2(a, b, min(a.min(), b.min()), max(a.max(), b.max()) + 1)
    else:  # ordinal (conservative for discrete values)
      pvalues[k] = stats.ks_2samp(a, b).pvalue
  for k, (b, r) in np_t.items():
    if b.size or dev_t[k][0].size:
      pvalues[k] = _chi2(dev_t[k][0], b, r.start, r.stop)
  low = {k: p for k, p in pvalues.items() if p <= ALPHA}
  assert not low, f"device and numpy statistics differ: {low} (all: {pvalues})"
  assert len(pvalues) >= 4


@pytest.mark.parametrize("config", [c for c in CONFIGS if "depth" in c[2]],
                         ids=[i for c, i in zip(CONFIGS, IDS) if "depth" in c[2]])
def test_depth_window_is_respected(config):
  task = _task(config)
  lo, hi = config[2]["depth"]
  free = task.context_len - task.min_context_len
  items = needles if task.name.startswith("niah") else assignments
  for inputs in _device_batch(config)["inputs"]:
    starts = [s for *_, s in items(parse(inputs, task.vocab)[0], task.vocab)]
    assert min(starts) >= np.floor(lo * free)
    item_len = task.min_context_len // len(starts)
    assert max(starts) <= np.floor(hi * free) + task.min_context_len - item_len


# -- jit, vmap, keys ---------------------------------------------------------------------------

@pytest.mark.parametrize("config", CONFIGS, ids=IDS)
def test_keys_determine_examples(config):
  out = _device_batches(7)[CONFIGS.index(config)]
  again = _device_batches(7, reverse=True)[CONFIGS.index(config)]
  for k in out:  # the same key gives the same example, wherever it sits in the batch
    np.testing.assert_array_equal(out[k], again[k][::-1])
  # Different keys, different examples.
  assert len({row.tobytes() for row in out["inputs"]}) == SAMPLES


def test_default_jit_over_64_keys():
  """The plain `jax.jit(jax.vmap(...))` path (full optimisation) over 64 keys gives the same
  examples as the batch compiled above (the redraw loop under vmap included)."""
  config = FREQUENT
  keys = jax.random.split(jax.random.key(7), SAMPLES)
  out = jax.jit(jax.vmap(_task(config).device_example))(keys[:64])
  batch = _device_batches(7)[CONFIGS.index(config)]
  for k in out:
    assert out[k].shape == (64, config[1])
    np.testing.assert_array_equal(np.asarray(out[k]), batch[k][:64])


@pytest.mark.parametrize("config", [WIDE_KEYS, FREQUENT], ids=["wide_keys", "frequent_words"])
def test_unbatched_matches_vmapped(config):
  """One key without vmap gives that key's row of the vmapped batch (while loops included:
  key_len=3 redraws repeated keys, frequent_words redraws ties)."""
  task = _task(config)
  keys = jax.random.split(jax.random.key(7), SAMPLES)
  one = jax.jit(task.device_example).lower(keys[5]).compile(FAST)(keys[5])
  batch = _device_batches(7)[CONFIGS.index(config)]
  for k in one:
    assert one[k].shape == (task.length,)
    np.testing.assert_array_equal(np.asarray(one[k]), batch[k][5])


# -- the helpers ------------------------------------------------------------------------------

DISTINCT = [
    (range(7, 27), 5, 1),        # shuffles the tuple space
    (range(3, 43), 30, 2),       # redraws repeats (many: 30 of 1600 tuples)
    (range(0, 10**6), 300, 1),   # redraws repeats, a space too big to shuffle
    (range(5, 9), 20, 3),        # shuffles (64 tuples)
]
DRAWS = 2000


@functools.cache
def _distinct_draws():
  keys = jax.random.split(jax.random.key(3), DRAWS)
  fns = [jax.vmap(functools.partial(device.distinct, r=r, count=c, width=w))
         for r, c, w in DISTINCT]
  program = jax.jit(lambda k: [f(k) for f in fns]).lower(keys).compile(FAST)
  return [np.asarray(x) for x in program(keys)]


@pytest.mark.parametrize("case", range(len(DISTINCT)))
def test_distinct_is_uniform(case):
  r, count, width = DISTINCT[case]
  out = _distinct_draws()[case]
  assert out.shape == (DRAWS, count, width) and out.dtype == np.int32
  assert out.min() >= r.start and out.max() < r.stop
  for row in out:
    assert len({tuple(t) for t in row}) == count
  n = len(r)
  codes = (out - r.start).astype(np.int64) @ (n ** np.arange(width - 1, -1, -1))
  for what, x, cells in [("first tuple", codes[:, 0], n**width),
                         ("last tuple", codes[:, -1], n**width),
                         ("all tuples", codes.ravel(), n**width),
                         ("first digit", out[:, :, 0].ravel() - r.start, n),
                         ("last digit", out[:, :, -1].ravel() - r.start, n)]:
    # Uniform over `cells` values; binned to about 20 expected per bin.
    x = np.asarray(x, np.int64)
    bins = min(cells, x.size // 20)
    size = np.bincount(np.arange(cells) * bins // cells, minlength=bins)
    observed = np.bincount(x * bins // cells, minlength=bins)
    assert stats.chisquare(observed, size * x.size / cells).pvalue > ALPHA, (what, observed)


def test_place_and_fill():
  keys = jax.random.split(jax.random.key(4), 2000)
  v = tasks.Vocab(512)

  def one(k):
    k1, k2 = jax.random.split(k)
    starts = device.place(k1, 100, 4, 3, (0.1, 0.9))
    return starts, device.fill(k2, v, 100, starts, jnp.full((4, 3), v.BIND))

  starts, context = map(np.asarray, jax.jit(jax.vmap(one)).lower(keys).compile(FAST)(keys))
  free = 100 - 12
  assert (np.diff(starts, axis=1) >= 3).all()
  assert starts.min() >= np.floor(0.1 * free) and starts.max() <= np.floor(0.9 * free) + 9
  assert ((context == v.BIND).sum(1) == 12).all()
  filler = context[context != v.BIND]
  assert filler.min() >= v.filler.start and filler.max() < v.filler.stop
  histogram = np.bincount(filler - v.filler.start, minlength=len(v.filler))
  assert stats.chisquare(histogram).pvalue > ALPHA
  # The gaps are sorted uniform draws: compare with numpy's place.
  rng = np.random.default_rng(0)
  ref = np.stack([base.place(rng, 100, 4, 3, (0.1, 0.9)) for _ in range(2000)])
  for j in range(4):
    assert stats.ks_2samp(starts[:, j], ref[:, j]).pvalue > ALPHA


def test_the_device_stream_is_pinned():
  """The smoke study trains on this stream (`Grid(data_source="device")`): a change to any
  task's device generator, to the row keys or to the batch layout changes what it learns, so
  it must show up here as a deliberate update, not pass unnoticed."""
  import hashlib
  from train import data as data_lib
  names = ("niah_single(questions=4)", "niah_multikey(questions=4)",
           "chain_resolve(questions=4)", "common_words")
  made = [tasks.make(n, length=128, vocab_size=128) for n in names]
  batch = jax.jit(data_lib.device_batches(made, [1.0] * 4, batch_size=8, accum=1, seed=0))
  digest = hashlib.sha256()
  for step in (0, 1):
    b = batch(step)
    for k in ("inputs", "targets", "weights"):
      digest.update(np.asarray(b[k]).tobytes())
  assert digest.hexdigest() == (
      "97a412084422f8414a3388b51ea239c9c624aa27a54e46759b39f2e5ccfc11f5")


def test_a_frequent_words_draw_out_of_redraws_gets_no_weight(monkeypatch):
  """Jitted code cannot raise where `_sample` does (no strictly ordered top counts after the
  redraws): such a row must teach nothing. With the redraws cut to one draw, rows whose top
  counts tie get zero weights and the others keep theirs."""
  from experiments.tasks import aggregation
  monkeypatch.setattr(aggregation, "_MAX_REDRAWS", 1)
  task = tasks.make("frequent_words", length=128)  # ~11% of single draws tie
  keys = jax.random.split(jax.random.key(5), 128)
  ex = jax.tree.map(np.asarray, jax.jit(jax.vmap(task.device_example))(keys))
  words = task.vocab.words
  tied = []
  for inputs in ex["inputs"]:
    context = inputs[1:1 + task.context_len]
    counts = np.bincount(context[(context >= words.start) & (context < words.stop)])
    top = np.sort(counts[counts > 0])[::-1][:task.num_top + 1]
    tied.append(not np.all(np.diff(top) < 0))
  tied = np.asarray(tied)
  assert tied.any() and not tied.all()  # the config ties often enough to test both sides
  np.testing.assert_array_equal(ex["weights"][tied], 0.0)
  np.testing.assert_array_equal(ex["weights"][~tied], np.broadcast_to(
      task.answer_weights, ex["weights"][~tied].shape))
