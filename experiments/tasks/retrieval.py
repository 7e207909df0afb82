"""Retrieval: needles `key BIND value` in a filler haystack, asked back by key (RULER NIAH).

- niah_single: one needle; `QUERY key` -> its value.
- niah_multikey: `num_needles` needles with distinct keys; one is asked.
- niah_multivalue: one key bound to `num_values` values (plus `num_distractors` needles
  with other keys); the answer is all its values in context order.
- niah_multiquery: `num_needles` needles, `num_queries` of them asked as
  `QUERY k1 QUERY k2 ...`; the answer is their values in query order (MQAR-like).

Keys are `key_len` tokens and values `value_len` tokens; values are distinct across
needles so every answer is unambiguous. `depth=(lo, hi)` confines needles to that
fraction of the context (uniform over the whole context by default).

Multi-question forms (`questions=n`), each question `QUERY key ANSWER value(s)` (multiquery:
its group of `num_queries` keys, then ANSWER and their values), asked in random order:
- niah_single: n needles, each asked once.
- niah_multikey: `num_needles` needles, n of them asked (distinct keys).
- niah_multivalue: n keys of `num_values` needles each (plus the distractors), each asked.
- niah_multiquery: n groups of distinct keys among `num_needles` needles.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from experiments.tasks import base, device


@dataclasses.dataclass(frozen=True, kw_only=True)
class _Niah(base.Task):
  key_len: int = 1
  value_len: int = 1
  depth: tuple[float, float] = (0.0, 1.0)

  category = "retrieval"

  # -- what differs per task: how many keys and needles, which needles are asked --------
  @property
  def num_keys(self) -> int:
    """Distinct keys in the context."""
    raise NotImplementedError

  @property
  def num_needles_total(self) -> int:
    raise NotImplementedError

  def _layout(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """-> needle_key [N] (index into the distinct keys, context order), asked keys
    [questions, keys per question]."""
    raise NotImplementedError

  def _device_layout(self, key: jax.Array) -> tuple[jax.Array, jax.Array]:
    """`_layout` on device."""
    raise NotImplementedError

  @property
  def needles_per_asked_key(self) -> int:
    """Needles each asked key binds (every asked key binds the same number)."""
    return 1

  # -- shared ------------------------------------------------------------------------------
  def _validate(self):
    check = base.check_int
    check(self.name, "key_len", self.key_len, 1, 4)
    check(self.name, "value_len", self.value_len, 1, 4)
    base.check_depth(self.name, self.depth)
    v = self.vocab
    self._validate_counts(len(v.keys) ** self.key_len, len(v.values) ** self.value_len)

  def _validate_counts(self, keys: int, values: int) -> None:
    """Checks the count knobs given how many distinct keys and values the vocab offers."""

  def _why(self, what: str) -> str:
    width = self.key_len if what == "keys" else self.value_len
    return f"distinct {what} of {what[:-1]}_len={width} at vocab_size={self.vocab_size}"

  @property
  def needle_len(self) -> int:
    return self.key_len + 1 + self.value_len

  @property
  def min_context_len(self) -> int:
    return self.num_needles_total * self.needle_len

  def _sample(self, rng):
    v = self.vocab
    keys = base.distinct(rng, v.keys, self.num_keys, self.key_len)
    values = base.distinct(rng, v.values, self.num_needles_total, self.value_len)
    needle_key, asked = self._layout(rng)
    n = len(needle_key)
    needles = np.concatenate([keys[needle_key], np.full((n, 1), v.BIND), values], axis=1)
    starts = base.place(rng, self.context_len, n, self.needle_len, self.depth)
    context = base.fill(rng, v, self.context_len, starts, needles)
    n, per = asked.shape
    questions = np.concatenate([np.full((n, per, 1), v.QUERY), keys[asked]], axis=2)
    # Needles answering each asked key, asked order first, then context order.
    hit = np.concatenate([np.flatnonzero(needle_key == k) for k in asked.ravel()])
    answers = values[hit].reshape(n, -1)
    return context, questions.reshape(n, -1), answers, starts[hit]

  def _device_sample(self, key):
    v = self.vocab
    k_keys, k_values, k_layout, k_place, k_fill = jax.random.split(key, 5)
    keys = device.distinct(k_keys, v.keys, self.num_keys, self.key_len)
    values = device.distinct(k_values, v.values, self.num_needles_total, self.value_len)
    needle_key, asked = self._device_layout(k_layout)
    n = needle_key.shape[0]
    needles = jnp.concatenate([keys[needle_key], jnp.full((n, 1), v.BIND, jnp.int32), values],
                              axis=1)
    starts = device.place(k_place, self.context_len, n, self.needle_len, self.depth)
    context = device.fill(k_fill, v, self.context_len, starts, needles)
    n, per = asked.shape
    questions = jnp.concatenate([jnp.full((n, per, 1), v.QUERY, jnp.int32), keys[asked]], axis=2)
    # Needles answering each asked key, asked order first, then context order: sorting the
    # needles by key (stably) groups each key's needles in context order.
    order = jnp.argsort(needle_key, stable=True)
    first = jnp.searchsorted(needle_key[order], asked.ravel())
    hit = order[first[:, None] + jnp.arange(self.needles_per_asked_key)].ravel()
    answers = values[hit].reshape(n, -1)
    return context, questions.reshape(n, -1), answers


@dataclasses.dataclass(frozen=True, kw_only=True)
class NiahSingle(_Niah):
  name = "niah_single"

  @property
  def num_keys(self):
    return self.questions

  @property
  def num_needles_total(self):
    return self.questions

  @property
  def max_questions(self):
    v = self.vocab
    return min(len(v.keys) ** self.key_len, len(v.values) ** self.value_len)

  @property
  def question_len(self):
    return 1 + self.key_len

  @property
  def answer_len(self):
    return self.value_len

  def _layout(self, rng):
    n = self.questions
    asked = np.zeros(1, np.int64) if n == 1 else rng.permutation(n)
    return np.arange(n), asked[:, None]

  def _device_layout(self, key):
    n = self.questions
    asked = jnp.zeros(1, jnp.int32) if n == 1 else jax.random.permutation(key, n)
    return jnp.arange(n), asked[:, None]


@dataclasses.dataclass(frozen=True, kw_only=True)
class NiahMultikey(_Niah):
  num_needles: int = 4

  name = "niah_multikey"

  def _validate_counts(self, keys, values):
    base.check_int(self.name, "num_needles", self.num_needles, 2, min(keys, values),
                   self._why("keys" if keys <= values else "values"))

  @property
  def num_keys(self):
    return self.num_needles

  @property
  def num_needles_total(self):
    return self.num_needles

  @property
  def max_questions(self):
    return self.num_needles

  @property
  def question_len(self):
    return 1 + self.key_len

  @property
  def answer_len(self):
    return self.value_len

  def _layout(self, rng):
    n = self.questions
    asked = (rng.integers(self.num_needles, size=1) if n == 1
             else rng.choice(self.num_needles, n, replace=False))
    return np.arange(self.num_needles), asked[:, None]

  def _device_layout(self, key):
    n = self.questions
    asked = (jax.random.randint(key, (1,), 0, self.num_needles) if n == 1
             else device.sample(key, self.num_needles, n))
    return jnp.arange(self.num_needles), asked[:, None]


@dataclasses.dataclass(frozen=True, kw_only=True)
class NiahMultivalue(_Niah):
  num_values: int = 4
  num_distractors: int = 0

  name = "niah_multivalue"

  def _validate_counts(self, keys, values):
    n = self.questions
    base.check_int(self.name, "num_values", self.num_values, 2, values // n,
                   f"{self._why('values')}, shared by questions={n} keys")
    base.check_int(self.name, "num_distractors", self.num_distractors, 0,
                   min(keys - n, values - n * self.num_values),
                   f"one distinct key and value each; {self._why('keys')}, minus "
                   f"questions={n} keys of num_values={self.num_values} values")

  @property
  def num_keys(self):
    return self.questions + self.num_distractors

  @property
  def num_needles_total(self):
    return self.questions * self.num_values + self.num_distractors

  @property
  def max_questions(self):
    v = self.vocab
    return max(1, min(len(v.keys) ** self.key_len - self.num_distractors,
                      (len(v.values) ** self.value_len - self.num_distractors) // self.num_values))

  @property
  def question_len(self):
    return 1 + self.key_len

  @property
  def answer_len(self):
    return self.num_values * self.value_len

  def _layout(self, rng):
    # Keys 0..n-1 are asked; each owns num_values needles, each distractor key one.
    n = self.questions
    owners = np.concatenate([np.repeat(np.arange(n), self.num_values),
                             np.arange(n, n + self.num_distractors)])
    needle_key = rng.permutation(owners)
    asked = np.zeros(1, np.int64) if n == 1 else rng.permutation(n)
    return needle_key, asked[:, None]

  def _device_layout(self, key):
    n = self.questions
    k_needles, k_asked = jax.random.split(key)
    owners = jnp.concatenate([jnp.repeat(jnp.arange(n), self.num_values),
                              jnp.arange(n, n + self.num_distractors)])
    needle_key = jax.random.permutation(k_needles, owners)
    asked = jnp.zeros(1, jnp.int32) if n == 1 else jax.random.permutation(k_asked, n)
    return needle_key, asked[:, None]

  @property
  def needles_per_asked_key(self):
    return self.num_values


@dataclasses.dataclass(frozen=True, kw_only=True)
class NiahMultiquery(_Niah):
  num_needles: int = 8
  num_queries: int = 4

  name = "niah_multiquery"

  def _validate_counts(self, keys, values):
    base.check_int(self.name, "num_needles", self.num_needles, 2, min(keys, values),
                   self._why("keys" if keys <= values else "values"))
    base.check_int(self.name, "num_queries", self.num_queries, 2,
                   self.num_needles // self.questions,
                   f"questions={self.questions} groups of distinct keys among "
                   f"num_needles={self.num_needles}")

  @property
  def num_keys(self):
    return self.num_needles

  @property
  def num_needles_total(self):
    return self.num_needles

  @property
  def max_questions(self):
    return self.num_needles // self.num_queries

  @property
  def question_len(self):
    return self.num_queries * (1 + self.key_len)

  @property
  def answer_len(self):
    return self.num_queries * self.value_len

  def _layout(self, rng):
    n, per = self.questions, self.num_queries
    asked = rng.choice(self.num_needles, n * per, replace=False)
    return np.arange(self.num_needles), asked.reshape(n, per)

  def _device_layout(self, key):
    n, per = self.questions, self.num_queries
    asked = device.sample(key, self.num_needles, n * per)
    return jnp.arange(self.num_needles), asked.reshape(n, per)
