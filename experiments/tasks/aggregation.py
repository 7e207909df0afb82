"""Aggregation: the answer is a statistic of word counts over the whole context (RULER CWE/FWE).

- common_words: `num_common` words appear `common_count` times each and `num_uncommon`
  words `uncommon_count` times each, scattered uniformly through filler. `QUERY` -> the
  common words in ascending token id.
- frequent_words: a `density` fraction of the context holds words drawn from a Zipf(`alpha`)
  law over `num_types` word types (ranks assigned to tokens at random per example).
  `QUERY` -> the `num_top` most frequent words, most frequent first. Draws are redone
  (deterministically) until the top `num_top + 1` counts are strictly distinct, so the
  answer and its order are unique.

Multi-question form (`questions=n > 1`): the answer is asked one word at a time, n of its ranks
in rank order: `QUERY k_r ANSWER w_r`, where k_r, the r-th token of the key range, names the
rank r and w_r is the answer's r-th word (common_words: ascending id; frequent_words: most
frequent first). n is at most the answer's length.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from experiments.tasks import base, device

_MAX_REDRAWS = 1000


@dataclasses.dataclass(frozen=True, kw_only=True)
class CommonWords(base.Task):
  num_common: int = 4
  common_count: int = 6
  num_uncommon: int = 12
  uncommon_count: int = 2

  name = "common_words"
  category = "aggregation"

  def _validate(self):
    n_words = len(self.vocab.words)
    why = f"num_common + num_uncommon distinct words; {n_words} at vocab_size={self.vocab_size}"
    base.check_int(self.name, "num_common", self.num_common, 1, n_words, why)
    base.check_int(self.name, "num_uncommon", self.num_uncommon, 0, n_words - self.num_common,
                   f"{why}, num_common={self.num_common}")
    base.check_int(self.name, "uncommon_count", self.uncommon_count, 1, 2**20)
    base.check_int(self.name, "common_count", self.common_count, self.uncommon_count + 1, 2**20,
                   f"common words must be strictly more frequent than uncommon ones: "
                   f"uncommon_count={self.uncommon_count}")

  @property
  def max_questions(self):
    return self.num_common

  @property
  def question_len(self):
    return 1 if self.questions == 1 else 2

  @property
  def answer_len(self):
    return self.num_common if self.questions == 1 else 1

  @property
  def min_context_len(self):
    return self.num_common * self.common_count + self.num_uncommon * self.uncommon_count

  def _sample(self, rng):
    v = self.vocab
    words = base.distinct(rng, v.words, self.num_common + self.num_uncommon)[:, 0]
    counts = np.where(np.arange(len(words)) < self.num_common, self.common_count, self.uncommon_count)
    tokens = rng.permutation(np.repeat(words, counts))
    starts = base.place(rng, self.context_len, len(tokens), 1)
    context = base.fill(rng, v, self.context_len, starts, tokens[:, None])
    answer = np.sort(words[:self.num_common])
    return (context, *_ranked(rng, self, answer), starts[np.isin(tokens, answer)])

  def _device_sample(self, key):
    v = self.vocab
    k_words, k_tokens, k_place, k_fill, k_ranked = jax.random.split(key, 5)
    words = device.distinct(k_words, v.words, self.num_common + self.num_uncommon)[:, 0]
    counts = np.where(np.arange(len(words)) < self.num_common, self.common_count,
                      self.uncommon_count)
    tokens = jax.random.permutation(
        k_tokens, jnp.repeat(words, counts, total_repeat_length=int(counts.sum())))
    starts = device.place(k_place, self.context_len, len(tokens), 1)
    context = device.fill(k_fill, v, self.context_len, starts, tokens[:, None])
    answer = jnp.sort(words[:self.num_common])
    return (context, *_device_ranked(k_ranked, self, answer))


@dataclasses.dataclass(frozen=True, kw_only=True)
class FrequentWords(base.Task):
  alpha: float = 2.0
  num_types: int = 16
  num_top: int = 3
  density: float = 1.0

  name = "frequent_words"
  category = "aggregation"

  def _validate(self):
    n_words = len(self.vocab.words)
    base.check_range(self.name, "alpha", self.alpha, 1.0, 8.0)
    base.check_int(self.name, "num_types", self.num_types, 2, n_words,
                   f"distinct words; {n_words} at vocab_size={self.vocab_size}")
    base.check_int(self.name, "num_top", self.num_top, 1, self.num_types - 1,
                   f"below num_types={self.num_types}")
    base.check_range(self.name, "density", self.density, 1e-3, 1.0)

  @property
  def max_questions(self):
    return self.num_top

  @property
  def question_len(self):
    return 1 if self.questions == 1 else 2

  @property
  def answer_len(self):
    return self.num_top if self.questions == 1 else 1

  @property
  def probs(self) -> np.ndarray:
    """[num_types] Zipf probabilities by rank."""
    p = np.arange(1, self.num_types + 1, dtype=np.float64) ** -self.alpha
    return p / p.sum()

  @property
  def min_words(self) -> int:
    # Enough draws that the count gap between ranks num_top and num_top + 1 (the
    # narrowest one that matters) is at least one standard deviation, so redraws stay rare.
    p = self.probs
    pk, pk1 = p[self.num_top - 1], p[self.num_top]
    return max(4 * (self.num_top + 1) ** 2, math.ceil((pk + pk1) / (pk - pk1) ** 2))

  @property
  def min_context_len(self):
    return math.ceil(self.min_words / self.density)

  @property
  def num_words(self) -> int:
    """Word tokens in the context."""
    n = max(self.min_words, round(self.density * self.context_len))
    return min(n, self.context_len)

  def _sample(self, rng):
    v = self.vocab
    n = self.num_words
    p = self.probs
    for _ in range(_MAX_REDRAWS):
      counts = rng.multinomial(n, p)
      top = np.argsort(-counts, kind="stable")[:self.num_top + 1]
      if np.all(np.diff(counts[top]) < 0):
        break
    else:
      raise RuntimeError(f"{self.name}: no draw with distinct top counts in {_MAX_REDRAWS} "
                         f"tries; raise length or density, or lower num_top")
    types = base.distinct(rng, v.words, self.num_types)[:, 0]
    tokens = rng.permutation(np.repeat(types, counts))
    starts = base.place(rng, self.context_len, n, 1)
    context = base.fill(rng, v, self.context_len, starts, tokens[:, None])
    answer = types[top[:self.num_top]]
    return (context, *_ranked(rng, self, answer), starts[np.isin(tokens, answer)])

  def _device_sample(self, key):
    v = self.vocab
    n = self.num_words
    k_draws, k_types, k_place, k_fill, k_ranked = jax.random.split(key, 5)
    # The ranks of the n word tokens, drawn i.i.d. from the Zipf law: their counts are the
    # multinomial draw and, given the counts, their order is a uniform shuffle, so this is
    # `_sample`'s multinomial-then-permutation in one step (also under the redraw, which
    # looks at the counts only). float32 inverse CDF (`_sample` draws in float64).
    cdf = jnp.asarray(np.cumsum(self.probs)[:-1], jnp.float32)

    def draw(i, key):
      key, draw_key = jax.random.split(key)
      ranks = jnp.searchsorted(cdf, jax.random.uniform(draw_key, (n,)), side="right")
      counts = jnp.bincount(ranks, length=self.num_types)
      top = jnp.argsort(-counts, stable=True)[:self.num_top + 1]
      return i + 1, key, ranks.astype(jnp.int32), top, jnp.all(jnp.diff(counts[top]) < 0)

    # Redrawn until the top num_top + 1 counts are strictly distinct. A jitted draw cannot
    # raise: after _MAX_REDRAWS tries (where `_sample` raises) the row is marked invalid and
    # gets no weight (`Task.device_example`), rather than teach an ambiguous answer.
    _, _, ranks, top, distinct = jax.lax.while_loop(
        lambda s: ~s[4] & (s[0] < _MAX_REDRAWS), lambda s: draw(s[0], s[1]), draw(0, k_draws))
    types = device.distinct(k_types, v.words, self.num_types)[:, 0]
    tokens = types[ranks]
    starts = device.place(k_place, self.context_len, n, 1)
    context = device.fill(k_fill, v, self.context_len, starts, tokens[:, None])
    answer = types[top[:self.num_top]]
    return (context, *_device_ranked(k_ranked, self, answer), distinct)


def _ranked(rng: np.random.Generator, task: base.Task,
            answer: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(questions [n, Q], answers [n, A]): the whole answer after `QUERY` (n = 1), or n of its
  ranks r, in order, each asked as `QUERY k_r` (see the module docstring)."""
  v = task.vocab
  if task.questions == 1:
    return np.array([[v.QUERY]]), answer[None, :]
  ranks = np.sort(rng.choice(len(answer), task.questions, replace=False))
  questions = np.stack([np.full(len(ranks), v.QUERY), v.keys.start + ranks], axis=1)
  return questions, answer[ranks][:, None]


def _device_ranked(key: jax.Array, task: base.Task,
                   answer: jax.Array) -> tuple[jax.Array, jax.Array]:
  """`_ranked` on device."""
  v = task.vocab
  if task.questions == 1:
    return jnp.full((1, 1), v.QUERY, jnp.int32), answer[None, :]
  ranks = jnp.sort(device.sample(key, len(answer), task.questions))
  questions = jnp.stack([jnp.full(len(ranks), v.QUERY, jnp.int32), v.keys.start + ranks], axis=1)
  return questions, answer[ranks][:, None]
