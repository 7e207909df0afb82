"""Evaluation of one trained model: task × context length × inference setting × phase.

Teacher-forced: one forward pass per batch, argmax at the answer positions, through the one
evaluation loop (`train.evaluation.score_batches`) that the trainer and the oracle run too.
Every question is scored on its own (`score_questions`): a multi-question context
("niah_multikey(questions=8)") gives one 0/1 per question, and a row's `correct` lists them with
`context` naming each one's context, so intervals can resample contexts. For a single-question
task that is exact match per context (a question is right when every token of its answer is,
which teacher-forced argmax makes the same event as greedy decoding reproducing it).

What the pass runs in each phase and every sparsity and FLOP number come from
`experiments.evaluation.accounting`.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

import sparse_ops as so
from experiments import tasks as tasks_lib
from experiments.evaluation import accounting
from experiments.evaluation.accounting import (Decode, Selection, decode_rows, dense_prefix,
                                               phase_attention, setting_attention)
from experiments.spec import settings as settings_lib
from experiments.stats import activation_metrics, proportion_ci
from experiments.tasks import scoring
from models import AttentionConfig, ModelConfig
from train.evaluation import score_batches

# What a setting runs and costs lives in `accounting` (imported from there, not through here).
__all__ = ["chance_exact_match", "question_activations", "evaluate", "make_forward",
           "score_phase", "score_questions", "setting_attentions", "shared_program",
           "stacked_examples"]


def score_questions(predictions, targets, weights) -> dict[str, np.ndarray]:
  """The study's scorer: per question, `correct` (0/1) and `context` (its row); per context,
  `token_accuracy` and `set_recall` (`scoring.score`)."""
  right, asked = scoring.question_scores(predictions, targets, weights)
  context, _ = np.nonzero(asked)  # row-major: a context's questions in order, contexts in order
  per_context = scoring.score(predictions, targets, weights)
  return {"correct": right[asked].astype(int), "context": context,
          "token_accuracy": per_context["token_accuracy"], "set_recall": per_context["set_recall"]}


def chance_exact_match(task) -> float:
  """Exact match per question of a guesser that knows which vocab range each answer token comes
  from and picks uniformly inside it, averaged over the questions of the first test context:
  the floor a model must clear to show it read the context."""
  ranges = task.vocab.ranges
  ex = task.example("test", 0)
  weights = ex["weights"][None]
  ids = scoring.question_ids(weights)[0]
  answer = ex["targets"][ids >= 0]
  chances = []
  for q in range(int(ids.max(initial=-1)) + 1):
    p = 1.0
    for tok in answer[ids[ids >= 0] == q]:
      size = next((len(r) for r in ranges.values() if tok in r), task.vocab.size)
      p /= size
    chances.append(p)
  return float(np.mean(chances)) if chances else 1.0


Forward = Callable[[np.ndarray, "so.masks.Mask | Decode | Selection"], np.ndarray]


def make_forward(model, compute_dtype: str = "float32") -> Forward:
  """(tokens int [B, T], mask, Decode or Selection) -> argmax predictions int32 [B, T].

  One compiled program per (mask, shape), per (a Decode's mask, shape, decode rows), or per
  (content config but its budget's value, phase, shape, decode rows): a mask is static
  (hashable) and its layout is built at trace time; the decode bound and a budget's value are
  traced arguments, so decode bounds with the same power-of-two tail (`decode_rows`) share one
  program, and so do the sparsities of one content pattern and budget kind (`shared_program`),
  selecting exactly what their own programs would.

  `forward.with_activations(tokens, phased)` runs the same pass and returns (predictions,
  sparsity [B, depth + 1, T, 4]): `experiments.stats.activation_metrics` of the hidden state at
  every layer (`Transformer(return_hidden=True)`; the last entry is the final-normed stream)
  and position, computed inside the compiled program so only 4 numbers a position leave it.
  """
  from flax import nnx
  graphdef, state = nnx.split(model)
  dtype = jnp.dtype(compute_dtype)
  cast = lambda state: jax.tree.map(
      lambda p: p.astype(dtype) if jnp.issubdtype(p.dtype, jnp.floating) else p, state)

  cache: dict[Any, Callable] = {}

  def compiled(key, attention, decode: bool, rows: int | None = None,
               hidden: bool = False) -> Callable:
    key = (key, hidden)
    fn = cache.get(key)
    if fn is None:
      def predict(state, tokens, dense_before, budget_value=None):  # None: a mask's program
        out = nnx.merge(graphdef, cast(state))(
            tokens, attention=attention, dense_before=dense_before if decode else None,
            decode_rows=rows, return_hidden=hidden, budget_value=budget_value)
        if not hidden:
          return out.argmax(-1).astype(jnp.int32)
        logits, hidden_lbtd = out
        sparsity = activation_metrics(hidden_lbtd.astype(jnp.float32), xp=jnp)  # [L, B, T, 4]
        return logits.argmax(-1).astype(jnp.int32), jnp.moveaxis(sparsity, 0, 1)
      fn = cache[key] = jax.jit(predict)
    return fn

  def program(length: int, phased, hidden: bool) -> tuple[Any, Callable, tuple]:
    """(cache key, jitted program, its bound arguments) of a pass over `length` tokens."""
    if isinstance(phased, Selection):
      decode = phased.dense_before is not None
      rows = decode_rows(length, phased.dense_before, phased.decode_floor) if decode else None
      attention, value = shared_program(phased.attention)
      key = (attention, decode, rows)
      return ((key, hidden), compiled(key, attention, decode, rows, hidden),
              (jnp.int32(phased.dense_before if decode else 0), value))
    if isinstance(phased, Decode):
      rows = decode_rows(length, phased.dense_before, phased.decode_floor)
      key = (phased.mask, True, rows)
      return ((key, hidden), compiled(key, phased.mask, True, rows, hidden),
              (jnp.int32(phased.dense_before),))
    if isinstance(phased, so.masks.Mask):
      return (phased, hidden), compiled(phased, phased, False, hidden=hidden), (jnp.int32(0),)
    raise ValueError(f"forward takes a sparse_ops mask, a Decode or a Selection, got {phased!r}")

  ready: dict[Any, Any] = {}  # (cache key, tokens shape) -> compiled ahead by `prepare`

  def run(tokens: np.ndarray, phased, hidden: bool):
    key, fn, bound = program(tokens.shape[1], phased, hidden)
    return ready.get((key, tokens.shape), fn)(state, jnp.asarray(tokens, jnp.int32), *bound)

  def prepare(passes) -> None:
    """Compiles the programs of `passes` [(tokens shape (B, T), mask or Selection)] ahead, side
    by side: each is lowered here and the XLA compilations, which are nearly all of an
    evaluation's time for the study's small models on a GPU (~1 s each, ~50 per length), run
    in a thread pool."""
    lowered = {}
    for shape, phased in passes:
      key, fn, bound = program(shape[1], phased, False)
      if (key, tuple(shape)) not in ready:
        lowered.setdefault((key, tuple(shape)), (fn, bound))
    lowered = {k: fn.lower(state, jax.ShapeDtypeStruct(k[1], jnp.int32), *bound)
               for k, (fn, bound) in lowered.items()}
    with concurrent.futures.ThreadPoolExecutor(min(16, os.cpu_count() or 1)) as pool:
      ready.update(zip(lowered, pool.map(lambda low: low.compile(), lowered.values())))

  def forward(tokens: np.ndarray, phased) -> np.ndarray:
    return np.asarray(run(tokens, phased, False))

  def with_activations(tokens: np.ndarray, phased) -> tuple[np.ndarray, np.ndarray]:
    preds, sparsity = run(tokens, phased, True)
    return np.asarray(preds), np.asarray(sparsity)

  forward.with_activations = with_activations
  forward.prepare = prepare
  return forward


def shared_program(attention: AttentionConfig) -> tuple[AttentionConfig, jax.Array]:
  """(the config a content setting's program is compiled for, the budget value it is called
  with): the setting's own with its budget's value replaced by a fixed one, so every sparsity of
  a pattern and budget kind shares one program (the h200 study's 12 content settings per phase
  and length compile 3). The value travels traced (`so.Budget.traced`)."""
  # 1.0 is a valid value of every kind (density 1, one block, c = 1, coverage 1)
  return (dataclasses.replace(attention, sparsity=None, budget_value=1.0),
          jnp.float32(attention.selection_budget().value))


def question_activations(sparsity: np.ndarray, weights: np.ndarray) -> dict[str, np.ndarray]:
  """Per question, in `score_questions`' order (contexts in order, a context's questions in
  order), from per-position sparsity [B, L, T, M] and the batch's weights [B, T]:
  "question" [n, L, M], the measures at the question's last position (the one that predicts
  its first answer token, the first weighted position), and "answer" [n, L, M], their mean over
  the positions that predict its answer tokens."""
  ids = scoring.question_ids(weights)
  n_q = max(int(ids.max(initial=-1)) + 1, 1)
  question, answer = [], []
  for b in range(ids.shape[0]):
    for q in range(n_q):
      at = np.flatnonzero(ids[b] == q)
      if at.size:
        question.append(sparsity[b, :, at[0]])
        answer.append(sparsity[b][:, at].mean(axis=1))
  shape = (0,) + sparsity.shape[1:2] + sparsity.shape[3:]
  stack = lambda xs: np.stack(xs).astype(np.float32) if xs else np.zeros(shape, np.float32)
  return {"question": stack(question), "answer": stack(answer)}


def score_phase(forward: Forward, phased, examples: dict[str, np.ndarray],
                batch_size: int, activations: dict[str, list] | None = None
                ) -> dict[str, np.ndarray]:
  """`score_questions` of `forward` under one phase's mask or Selection over `examples`
  ({"inputs", "targets", "weights"}: [N, T]), `batch_size` rows per call, through the one loop
  (`train.evaluation.score_batches`).

  With `activations` (a dict) the same passes run through `forward.with_activations` and each
  batch's `question_activations` are appended to its lists "question" and "answer" (one array
  per batch, questions in the order of the scores): no second forward pass."""
  n = len(examples["inputs"])
  batches = ({k: v[i:i + batch_size] for k, v in examples.items()}
             for i in range(0, n, batch_size))
  if activations is None:
    return score_batches(lambda x: forward(x, phased), batches, score_questions)
  if not hasattr(forward, "with_activations"):
    raise ValueError("capturing activations needs a forward from make_forward "
                     "(forward.with_activations)")
  done = [0]

  def predict(x):
    preds, sparsity = forward.with_activations(x, phased)
    weights = examples["weights"][done[0]:done[0] + len(x)]
    done[0] += len(x)
    for k, v in question_activations(sparsity, weights).items():
      activations.setdefault(k, []).append(v)
    return preds

  return score_batches(predict, batches, score_questions)


def stacked_examples(task, split: str, n: int) -> dict[str, np.ndarray]:
  """The first `n` examples of `split`, stacked: {"inputs", "targets", "weights"}: [n, T]."""
  rows = [task.example(split, i) for i in range(n)]
  return {k: np.stack([e[k] for e in rows]) for k in ("inputs", "targets", "weights")}


def setting_attentions(model: ModelConfig, eval_spec) -> dict[str, AttentionConfig]:
  """{setting name: its inference AttentionConfig}, in the evaluation's order ("native" first
  when the spec asks for it)."""
  parsed = [settings_lib.parse(s) for s in eval_spec.settings]
  named = ([("native", "native")] if eval_spec.native else []) + [(p.name, p) for p in parsed]
  return {name: setting_attention(model, setting, eval_spec.selection_block,
                                  eval_spec.selection_queries) for name, setting in named}


def _passes(eval_spec, attentions: dict[str, Any], vocab_size: int) -> list[tuple[tuple, Any]]:
  """(tokens shape, mask or Selection) of every forward pass `evaluate` runs."""
  passes = []
  b = eval_spec.batch_size
  for length in eval_spec.lengths:
    for task_name in eval_spec.tasks:
      n = eval_spec.examples_of(task_name)
      shapes = [(min(b, n - i), length) for i in range(0, n, b)]
      task = tasks_lib.make(task_name, length=length, vocab_size=vocab_size, seed=eval_spec.seed)
      for attention in attentions.values():
        for phase in eval_spec.phases:
          phased = phase_attention(attention, length, phase, dense_prefix(task),
                                   eval_spec.decode_rows)
          passes += [(shape, phased) for shape in shapes]
  return passes


def evaluate(forward: Forward, model: ModelConfig, eval_spec, vocab_size: int,
             progress: Callable[[str], None] | None = None,
             activations: dict | None = None,
             capture_setting: str = "dense",
             timings: dict | None = None) -> list[dict[str, Any]]:
  """Rows {task, category, length, setting, phase, sparsities, FLOPs, n questions, accuracy per
  question with its interval, correct: [n] 0/1, context: [n] context index, ...}.

  Settings whose mask (or selection) is identical (e.g. sparsity 0 in both phases) are computed
  once. All settings are parsed and their configs checked at every length before anything runs.

  `activations` (a dict, filled in place): the pass of setting `capture_setting` (its first
  phase) also returns the hidden-state sparsity (`score_phase`), and activations[(task, length)]
  gets {"question", "answer": [n, depth + 1, 4] (`question_activations`), "correct", "context":
  [n]} in the order of the rows' `correct`. The rows are the same with or without it.

  `timings` (a dict, filled in place): where the wall went, "prepare_s" (the ahead-of-time
  compiles) and "length_s" {length: seconds of that length's scored passes}.
  """
  attentions = setting_attentions(model, eval_spec)
  for length in eval_spec.lengths:  # bad blocks or unreachable sparsities fail here, not mid-way
    for att in attentions.values():
      att.validate(length)
  timings = {} if timings is None else timings
  t0 = time.perf_counter()
  if hasattr(forward, "prepare"):  # make_forward's: every pass's program compiled ahead
    forward.prepare(_passes(eval_spec, attentions, vocab_size))
  timings["prepare_s"] = time.perf_counter() - t0
  timings["length_s"] = {}
  rows, computed = [], {}
  for length in eval_spec.lengths:
    t0 = time.perf_counter()
    for task_name in eval_spec.tasks:
      task = tasks_lib.make(task_name, length=length, vocab_size=vocab_size, seed=eval_spec.seed)
      data = stacked_examples(task, eval_spec.split, eval_spec.examples_of(task_name))
      chance = chance_exact_match(task)
      if activations is not None:
        if capture_setting not in attentions:
          raise ValueError(f"capture_setting={capture_setting!r} is not one of the settings "
                           f"{list(attentions)}")
        phased = phase_attention(attentions[capture_setting], length, eval_spec.phases[0],
                                 dense_prefix(task), eval_spec.decode_rows)
        key, captured = (task_name, length, phased), {}
        computed[key] = score_phase(forward, phased, data, eval_spec.batch_size, captured)
        activations[(task_name, length)] = dict(
            {k: np.concatenate(v) for k, v in captured.items()},
            correct=computed[key]["correct"], context=computed[key]["context"])
      for name, attention in attentions.items():
        for phase in eval_spec.phases:
          phased = phase_attention(attention, length, phase, dense_prefix(task),
                                   eval_spec.decode_rows)
          key = (task_name, length, phased)
          if key not in computed:
            computed[key] = score_phase(forward, phased, data, eval_spec.batch_size)
            if progress:
              progress(f"eval {task_name} T={length} {name} {phase}: "
                       f"{computed[key]['correct'].mean():.3f}")
          scores = computed[key]
          stats = accounting.phase_stats(model, attention, phased, length)
          correct = scores["correct"]
          lo, hi = proportion_ci(correct.sum(), len(correct))
          rows.append(dict(
              task=task_name, category=task.category, eval_length=length, phase=phase,
              eval_setting=name, eval_pattern=attention.pattern,
              eval_budget=attention.budget if attention.is_content else "",
              eval_sparsity_target=accounting.target(attention, length),
              eval_sparsity_element=stats["element"], eval_sparsity_block=stats["block"],
              inference_flops_per_token=stats["inference_flops_per_token"],
              selection_flops_per_token=stats["selection_flops_per_token"],
              n=len(correct), accuracy=float(correct.mean()), ci_low=lo, ci_high=hi,
              accuracy_std=float(correct.std(ddof=1)) if len(correct) > 1 else 0.0,
              token_accuracy=float(scores["token_accuracy"].mean()),
              set_recall=float(scores["set_recall"].mean()), chance=chance,
              correct=correct.tolist(), context=scores["context"].tolist()))
    timings["length_s"][length] = time.perf_counter() - t0
  return rows
