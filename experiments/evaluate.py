"""Evaluation of one trained model: task × context length × inference setting × phase.

Teacher-forced: one forward pass per batch, argmax at the answer positions, scored by the task
suite's `scoring.score` (exact match = greedy decoding reproduces the answer).

Phases (DESIGN.md): `prefill` makes every query sparse. `decode` keeps the context dense and makes
only the question/answer queries sparse, as a decoding-time sparse method would: the mask is
    sparse | (so.masks.QueryPrefix(first question query) & Causal)
so queries before the question see every earlier key, the later ones follow the sparse pattern.

Every reported sparsity and FLOP number is computed by `sparse_ops.flops` on the very mask the
forward pass used.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

import sparse_ops as so
from experiments import tasks as tasks_lib
from experiments.tasks import scoring
from models import AttentionConfig, ModelConfig, attention_flops_per_token, flops_per_token


def setting_attention(model: ModelConfig, setting: tuple[str, float] | str) -> AttentionConfig:
  """The inference AttentionConfig of a setting; "native" is the model's training attention.

  Block sizes, sink and implementation follow the model so only the pattern changes. Sparsity 0
  is plain dense causal: the same mask as a dense model's own, hence bitwise the same logits.
  """
  base = model.attention
  if setting == "native":
    return base
  pattern, sparsity = setting
  common = dict(block_q=base.block_q, block_kv=base.block_kv, implementation=base.implementation)
  if pattern == "dense" or sparsity == 0.0:
    return AttentionConfig("dense", **common)
  return AttentionConfig(pattern, sparsity=sparsity, sink=base.sink, **common)


def dense_prefix(task) -> int:
  """Queries before the question: BOS and the context (the SEP query starts the question)."""
  return 1 + task.context_len


def phase_mask(attention: AttentionConfig, length: int, phase: str, prefix: int) -> so.masks.Mask:
  mask = attention.mask(length)
  if phase == "prefill" or attention.pattern == "dense":
    return mask
  if phase != "decode":
    raise ValueError(f"phase={phase!r} must be 'prefill' or 'decode'")
  return mask | (so.masks.QueryPrefix(prefix) & so.masks.Causal())


def mask_stats(model: ModelConfig, attention: AttentionConfig, mask: so.masks.Mask,
               length: int) -> dict[str, float]:
  """Element/block sparsity of `mask` and inference FLOPs per token with it (one counter)."""
  block_q, block_kv = attention.blocks(length)
  layout = so.BlockLayout.from_mask(mask, length, length, block_q=block_q, block_kv=block_kv)
  attn = model.depth * so.flops.model_flops(mask, length, length, num_heads=model.num_heads,
                                            head_dim=model.head_size) / length
  # The non-attention part comes from models.flops_per_token; only the attention term changes.
  rest = flops_per_token(model, length, training=False) - attention_flops_per_token(model, length)
  return {"element": so.flops.sparsity(mask, length), "block": so.flops.block_sparsity(layout),
          "inference_flops_per_token": rest + attn}


def wilson(k: float, n: int, z: float = 1.959964) -> tuple[float, float]:
  """95% Wilson score interval of a proportion k/n (sane at 0 and n, unlike the normal one)."""
  if n <= 0:
    return (0.0, 1.0)
  p = k / n
  centre = (p + z * z / (2 * n)) / (1 + z * z / n)
  half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
  return (max(0.0, centre - half), min(1.0, centre + half))


def chance_exact_match(task) -> float:
  """Exact match of a guesser that knows which vocab range each answer token comes from and
  picks uniformly inside it: the floor a model must clear to show it read the context."""
  ranges = task.vocab.ranges
  ex = task.example("test", 0)
  p = 1.0
  for tok in ex["answer"]:
    size = next((len(r) for r in ranges.values() if tok in r), task.vocab.size)
    p /= size
  return p


Forward = Callable[[np.ndarray, so.masks.Mask], np.ndarray]


def make_forward(model, compute_dtype: str = "float32") -> Forward:
  """(tokens int [B, T], mask) -> argmax predictions int32 [B, T].

  One compiled program per (mask, shape); the mask is static (hashable) and its layout is built
  from it at trace time.
  """
  from flax import nnx
  graphdef, state = nnx.split(model)
  dtype = jnp.dtype(compute_dtype)

  cache: dict[Any, Callable] = {}

  def forward(tokens: np.ndarray, mask: so.masks.Mask) -> np.ndarray:
    fn = cache.get(mask)
    if fn is None:
      def predict(state, tokens):
        cast = jax.tree.map(lambda p: p.astype(dtype) if jnp.issubdtype(p.dtype, jnp.floating)
                            else p, state)
        return nnx.merge(graphdef, cast)(tokens, attention=mask).argmax(-1).astype(jnp.int32)
      fn = cache[mask] = jax.jit(predict)
    return np.asarray(fn(state, jnp.asarray(tokens)))

  return forward


def evaluate(forward: Forward, model: ModelConfig, eval_spec, vocab_size: int,
             progress: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
  """Rows {task, category, length, setting, phase, sparsities, FLOPs, correct: [n] 0/1, ...}.

  Settings whose mask is identical (e.g. sparsity 0 in both phases) are computed once.
  """
  settings: list[tuple[str, Any]] = []
  if eval_spec.native:
    settings.append(("native", "native"))
  for s in eval_spec.settings:
    settings.append((f"{s[0]}@{s[1]:g}" if s[0] != "dense" else "dense", tuple(s)))
  rows, computed = [], {}
  for length in eval_spec.lengths:
    for task_name in eval_spec.tasks:
      task = tasks_lib.make(task_name, length=length, vocab_size=vocab_size, seed=eval_spec.seed)
      examples = [task.example(eval_spec.split, i) for i in range(eval_spec.examples)]
      batch = {k: np.stack([e[k] for e in examples]) for k in ("inputs", "targets", "weights")}
      chance = chance_exact_match(task)
      for name, setting in settings:
        attention = setting_attention(model, setting)
        for phase in eval_spec.phases:
          mask = phase_mask(attention, length, phase, dense_prefix(task))
          key = (task_name, length, mask)
          if key not in computed:
            preds = np.concatenate([
                forward(batch["inputs"][i:i + eval_spec.batch_size], mask)
                for i in range(0, len(examples), eval_spec.batch_size)])
            computed[key] = scoring.score(preds, batch["targets"], batch["weights"])
            if progress:
              progress(f"eval {task_name} T={length} {name} {phase}: "
                       f"{computed[key]['exact_match'].mean():.3f}")
          scores = computed[key]
          stats = mask_stats(model, attention, mask, length)
          correct = scores["exact_match"].astype(int)
          lo, hi = wilson(correct.sum(), len(correct))
          rows.append(dict(
              task=task_name, category=task.category, eval_length=length, phase=phase,
              eval_setting=name, eval_pattern=attention.pattern,
              eval_sparsity_target=attention.sparsity or 0.0,
              eval_sparsity_element=stats["element"], eval_sparsity_block=stats["block"],
              inference_flops_per_token=stats["inference_flops_per_token"],
              n=len(correct), accuracy=float(correct.mean()), ci_low=lo, ci_high=hi,
              accuracy_std=float(correct.std(ddof=1)) if len(correct) > 1 else 0.0,
              token_accuracy=float(scores["token_accuracy"].mean()),
              set_recall=float(scores["set_recall"].mean()), chance=chance,
              correct=correct.tolist()))
  return rows
