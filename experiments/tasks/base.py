"""What every task shares: the config base class, the per-example RNG, placement, assembly.

An example is `BOS context SEP question ANSWER answer`, exactly `length` tokens. The
context is filler with fixed-length items (needles, assignments, words) placed at
random non-overlapping positions; the filler absorbs all slack so length is exact.

Multi-question form (`questions=n > 1`): `BOS context SEP Q1 ANSWER A1 Q2 ANSWER A2 ... Qn
ANSWER An`, n independent questions about the same context, each followed directly by its
answer, with the loss on every answer token. One context then teaches (and scores) n
questions. A question's answer is a maximal run of weighted positions, so scoring needs no
other marker (`scoring.question_scores`). `questions=1` is exactly the single-question form.

On device: `device_example(key)` draws the same task from a JAX PRNG key inside a jitted step
(vmappable over keys; helpers in `device`, each task's `_device_sample` beside its `_sample`).
"""

from __future__ import annotations

import dataclasses
import functools
import zlib
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from experiments.tasks import vocab as vocab_lib

SPLITS = {"train": 0, "validation": 1, "test": 2}
MAX_INDEX = 2**63 - 1
# A source's nominal size: examples are procedural, so this only bounds the index space.
SOURCE_LEN = 2**31 - 1


def check_range(task: str, field: str, value: Any, lo: float, hi: float, why: str = "") -> None:
  """Raises ValueError naming `field` and the valid range `[lo, hi]` unless lo <= value <= hi."""
  ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
  if not ok or not lo <= value <= hi:
    suffix = f" ({why})" if why else ""
    raise ValueError(f"{task}: {field}={value!r} must be in [{lo}, {hi}]{suffix}")


def check_int(task: str, field: str, value: Any, lo: int, hi: int, why: str = "") -> None:
  if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
    raise ValueError(f"{task}: {field}={value!r} must be an int in [{lo}, {hi}]")
  check_range(task, field, value, lo, hi, why)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Task:
  """A task config; examples are pure functions of (config, split, index).

  Subclasses are frozen dataclasses adding difficulty knobs. They define `name`,
  `category`, `question_len`, `answer_len`, `min_context_len`, `_sample` and its on-device
  twin `_device_sample`.
  """

  length: int
  vocab_size: int = 512
  seed: int = 0
  questions: int = 1

  name: ClassVar[str]
  category: ClassVar[str]

  def __post_init__(self):
    check_int(self.name, "vocab_size", self.vocab_size, vocab_lib.MIN_SIZE, vocab_lib.MAX_SIZE)
    check_int(self.name, "seed", self.seed, 0, 2**63 - 1)
    check_int(self.name, "questions", self.questions, 1, 2**20)
    self._validate()
    check_int(self.name, "questions", self.questions, 1, self.max_questions,
              f"{self.name} can ask at most {self.max_questions} independent questions here")
    need = self.min_context_len + self.tail_len + 1
    check_int(self.name, "length", self.length, need, 2**31 - 1,
              "the minimum holds BOS, SEP, the questions with their ANSWER tokens and answers, "
              "and all context items")

  # -- subclass interface -------------------------------------------------------------
  def _validate(self) -> None:
    """Checks the knobs (not length) with `check_int` / `check_range`."""

  @property
  def question_len(self) -> int:
    """Tokens of one question (they may depend on `questions`)."""
    raise NotImplementedError

  @property
  def answer_len(self) -> int:
    """Tokens of one question's answer."""
    raise NotImplementedError

  @property
  def max_questions(self) -> int:
    """The most independent questions one context of this config can carry."""
    raise NotImplementedError

  @property
  def min_context_len(self) -> int:
    """Context tokens the items need; the rest of the context is filler."""
    raise NotImplementedError

  def _sample(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """-> context [C], questions [n, Q], answers [n, A], evidence [E] (positions in the
    context), n = `questions`."""
    raise NotImplementedError

  def _device_sample(self, key: jax.Array) -> tuple[jax.Array, ...]:
    """`_sample` on device: -> context [C], questions [n, Q], answers [n, A] (jnp int32), the
    same law as `_sample`'s from another random stream; optionally a fourth element, a bool
    scalar that is False where the draw failed a guarantee `_sample` would have raised for
    (jitted code cannot raise): such a row keeps its tokens but gets zero weights, so nothing
    is learnt from it."""
    raise NotImplementedError

  # -- public API ---------------------------------------------------------------------
  @functools.cached_property
  def vocab(self) -> vocab_lib.Vocab:
    return vocab_lib.Vocab(self.vocab_size)

  @property
  def tail_len(self) -> int:
    """SEP and every question with its ANSWER token and answer."""
    return 1 + self.questions * (self.question_len + 1 + self.answer_len)

  @property
  def context_len(self) -> int:
    return self.length - 1 - self.tail_len

  def rng(self, split: str, index: int) -> np.random.Generator:
    """The example's own generator: counter-based in (task, seed, split, index), no shared state."""
    if split not in SPLITS:
      raise ValueError(f"{self.name}: split={split!r} must be one of {sorted(SPLITS)}")
    if not isinstance(index, (int, np.integer)) or not 0 <= index <= MAX_INDEX:
      raise ValueError(f"{self.name}: index={index!r} must be an int in [0, {MAX_INDEX}]")
    return np.random.default_rng([zlib.crc32(self.name.encode()), self.seed, SPLITS[split], int(index)])

  def example(self, split: str, index: int) -> dict[str, Any]:
    """Example `index` of `split`.

    Returns inputs/targets int32 [T], weights float32 [T] (1 where the target is an answer
    token), answer int32 [n·A] (every question's answer, in question order), evidence int32
    [E] (positions in `inputs` of the items the answers depend on), and the strings task and
    category.
    """
    context, questions, answers, evidence = self._sample(self.rng(split, index))
    inputs, targets = self._assemble(np, context, questions, answers)
    weights = self.answer_weights.copy()
    answer = answers.ravel()
    return {
        "inputs": inputs,
        "targets": targets,
        "weights": weights,
        "answer": answer.astype(np.int32),
        "evidence": (evidence + 1).astype(np.int32),  # +1: BOS precedes the context
        "task": self.name,
        "category": self.category,
    }

  def device_example(self, key: jax.Array) -> dict[str, jax.Array]:
    """An example drawn on device from a PRNG key: inputs/targets int32 [T], weights float32 [T].

    Traceable, jittable and vmappable over `key`; every shape is static from the config. A
    different random stream from `example` (not bit-identical) but the same task: the same
    layout (the tail and `weights` are exactly `example`'s), the same law for every draw, and
    every answer right for its inputs. `device` has the sampling helpers; each task samples
    in `_device_sample`.
    """
    context, questions, answers, *valid = self._device_sample(key)
    inputs, targets = self._assemble(jnp, context, questions, answers)
    weights = jnp.asarray(self.answer_weights)
    if valid:
      weights = jnp.where(valid[0], weights, 0.0)
    return {"inputs": inputs, "targets": targets, "weights": weights}

  @functools.cached_property
  def answer_weights(self) -> np.ndarray:
    """float32 [T]: 1 where the target is an answer token. A pure function of the config (the
    layout of the tail is fixed), shared by `example` and `device_example`."""
    n, q, a = self.questions, self.question_len, self.answer_len
    weights = np.zeros(self.length, np.float32)
    # Position p predicts inputs[p + 1]: question i's answer tokens are inputs
    # start_i + q + 1 + j, predicted at the position before each.
    starts = 2 + self.context_len + np.arange(n) * (q + 1 + a)
    weights[(starts[:, None] + q + np.arange(a)).ravel()] = 1.0
    weights.flags.writeable = False
    return weights

  def _assemble(self, xp, context, questions, answers):
    """(inputs, targets) int32 [T] from context [C], questions [n, Q], answers [n, A]: `BOS
    context SEP Q1 ANSWER A1 ... Qn ANSWER An`, targets shifted left with PAD last. `xp` is
    numpy (`example`) or jax.numpy (`device_example`)."""
    v = self.vocab
    n, q, a = self.questions, self.question_len, self.answer_len
    assert questions.shape == (n, q) and answers.shape == (n, a), (questions.shape, answers.shape)
    assert context.shape == (self.context_len,), (context.shape, self.context_len)
    i32 = xp.int32
    tail = xp.concatenate([questions.astype(i32), xp.full((n, 1), v.ANSWER, i32),
                           answers.astype(i32)], axis=1)
    inputs = xp.concatenate([xp.full(1, v.BOS, i32), context.astype(i32), xp.full(1, v.SEP, i32),
                             tail.reshape(-1)])
    assert inputs.shape == (self.length,), (inputs.shape, self.length)
    targets = xp.concatenate([inputs[1:], xp.full(1, v.PAD, i32)])
    return inputs, targets

  def source(self, split: str, num_examples: int = SOURCE_LEN) -> "Source":
    """A random-access source of this split for `train.data` (grain)."""
    return Source(self, split, num_examples)


@dataclasses.dataclass(frozen=True)
class Source:
  """Random-access view of one split: `source[i]` -> inputs/targets/weights of example i."""

  task: Task
  split: str
  num_examples: int = SOURCE_LEN

  def __post_init__(self):
    self.task.rng(self.split, 0)  # validates the split name
    check_int(self.task.name, "num_examples", self.num_examples, 1, SOURCE_LEN)

  def __len__(self) -> int:
    return self.num_examples

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    ex = self.task.example(self.split, int(index))
    return {k: ex[k] for k in ("inputs", "targets", "weights")}


# -- sampling helpers shared by the task modules -------------------------------------------

def distinct(rng: np.random.Generator, r: range, count: int, width: int = 1) -> np.ndarray:
  """-> int64 [count, width]: `count` distinct tuples of `width` tokens from range `r`."""
  n = len(r)
  codes = rng.choice(n**width, size=count, replace=False)
  digits = codes[:, None] // (n ** np.arange(width - 1, -1, -1)) % n
  return digits + r.start


def place(rng: np.random.Generator, context_len: int, count: int, item_len: int,
          depth: tuple[float, float] = (0.0, 1.0)) -> np.ndarray:
  """-> int64 [count]: sorted starts of `count` non-overlapping items of `item_len` tokens.

  Uniform over arrangements: the free tokens before each item are sorted uniform draws,
  restricted to the fraction `depth` of the free space.
  """
  free = context_len - count * item_len
  lo, hi = int(np.floor(depth[0] * free)), int(np.floor(depth[1] * free))
  gaps = np.sort(rng.integers(lo, hi + 1, size=count))
  return gaps + item_len * np.arange(count)


def fill(rng: np.random.Generator, v: vocab_lib.Vocab, context_len: int, starts: np.ndarray,
         items: np.ndarray) -> np.ndarray:
  """Filler context [C] with `items` [n, L] written at `starts` [n]."""
  context = rng.integers(v.filler.start, v.filler.stop, size=context_len, dtype=np.int32)
  positions = starts[:, None] + np.arange(items.shape[1])
  context[positions.ravel()] = items.ravel()
  return context


def check_depth(task: str, depth: Any) -> None:
  if not (isinstance(depth, tuple) and len(depth) == 2):
    raise ValueError(f"{task}: depth={depth!r} must be a tuple (lo, hi) with 0 <= lo <= hi <= 1")
  check_range(task, "depth[0]", depth[0], 0.0, 1.0)
  check_range(task, "depth[1]", depth[1], depth[0], 1.0, "depth[1] must be >= depth[0]")
