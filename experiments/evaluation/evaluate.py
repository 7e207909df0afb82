"""Evaluation of one trained model: task × context length × inference setting × phase.

Teacher-forced: one forward pass per batch, argmax at the answer positions, scored by the task
suite's `scoring.score` (exact match = greedy decoding reproduces the answer).

Phases (DESIGN.md): `prefill` makes every query sparse. `decode` keeps the context dense and makes
only the question/answer queries sparse, as a decoding-time sparse method would. For a static
pattern the mask is
    sparse | (so.masks.QueryPrefix(first question query) & Causal)
so queries before the question see every earlier key, the later ones follow the sparse pattern.
A content-based setting (`experiments.spec.settings`) selects per layer from its own q and k; in
decode it does so with `dense_before=` the first question query and one-query q-blocks
(`decode_attention`), so the context queries are dense and each question/answer query picks its
own kv-blocks. The model runs that as one dense causal attention with its own implementation
plus a small masked-softmax slab for the question/answer rows (`models.transformer`).

Every reported sparsity and FLOP number is an exact count: `sparse_ops.flops` on the very mask
the forward pass used, or, for content selection, `sparse_ops.selected_pairs` for the budget,
blocks and phase the forward pass used (the count of any layout the selection can produce).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

import sparse_ops as so
from experiments.spec import settings as settings_lib
from experiments.stats import proportion_ci
from experiments import tasks as tasks_lib
from experiments.tasks import scoring
from models import AttentionConfig, ModelConfig, attention_flops_per_token, flops_per_token
from models.config import CONTENT_PATTERNS


def setting_attention(model: ModelConfig, setting, block: int | None = None) -> AttentionConfig:
  """The inference AttentionConfig of a setting; "native" is the model's training attention.

  Static patterns keep the model's blocks, sink and implementation, so only the pattern changes;
  sparsity 0 is plain dense causal: the same mask as a dense model's own, hence bitwise the same
  logits. Content patterns select at `block` (None: the model's blocks).
  """
  if setting == "native":
    att = model.attention
    if att.is_content and att.budget == "density" and att.budget_value is None:
      # A model trained at sparsity s selects with density 1 - s: written that way, its native
      # setting equals the fixed setting of that density and shares its rows and programs.
      att = dataclasses.replace(att, sparsity=None,
                                budget_value=att.selection_budget().value)
    return att
  return settings_lib.parse(setting).attention(model, block)


@dataclasses.dataclass(frozen=True)
class Selection:
  """A content-based setting in one phase: each layer selects from its own q and k.

  dense_before: the first sparse query (decode: queries before it attend densely); None: every
  query is sparse (prefill).
  """

  attention: AttentionConfig
  dense_before: int | None = None
  decode_floor: int = 0  # EvalSpec.decode_rows


def dense_prefix(task) -> int:
  """Queries before the question: BOS and the context (the SEP query starts the question)."""
  return 1 + task.context_len


def phase_mask(attention: AttentionConfig, length: int, phase: str, prefix: int) -> so.masks.Mask:
  if attention.is_content:
    raise ValueError(f"attention.pattern={attention.pattern!r} is content-based: it has no mask "
                     "(use phase_attention)")
  mask = attention.mask(length)
  if phase == "prefill" or attention.pattern == "dense":
    return mask
  if phase != "decode":
    raise ValueError(f"phase={phase!r} must be 'prefill' or 'decode'")
  return mask | (so.masks.QueryPrefix(prefix) & so.masks.Causal())


def phase_attention(attention: AttentionConfig, length: int, phase: str, prefix: int,
                    decode_floor: int = 0) -> so.masks.Mask | Selection:
  """What the forward pass runs in `phase`: a static mask, or a content Selection
  (`decode_floor`: `EvalSpec.decode_rows`)."""
  if not attention.is_content:
    return phase_mask(attention, length, phase, prefix)
  if phase not in ("prefill", "decode"):
    raise ValueError(f"phase={phase!r} must be 'prefill' or 'decode'")
  attention.validate(length)
  if phase == "prefill":
    return Selection(attention)
  return Selection(decode_attention(attention, length), prefix, decode_floor)


def decode_attention(attention: AttentionConfig, length: int) -> AttentionConfig:
  """A content setting's decode-phase config: selection per query (block_q=1).

  Decoding runs one query at a time, so a decoding-time method picks kv-blocks for each query
  from that query (Quest). With q-blocks of several queries, the block holding the first
  question query would also hold context queries and be dense (`select_blocks`' rule for
  `dense_before`), and with it most question/answer queries. The kv-blocks and implementation
  stay the setting's: the one-query blocks only shape the selection, never a kernel's tiles
  (`models.transformer.decode_attention` runs the dense part with the implementation and the
  sparse rows as plain masked softmax).
  """
  return dataclasses.replace(attention, block_q=1, block_kv=attention.blocks(length)[1])


def decode_rows(length: int, dense_before: int, floor: int = 0) -> int:
  """The static tail size the decode forward computes: T - dense_before rounded up to a power
  of two (at most T), and at least `floor` (`EvalSpec.decode_rows`), so tasks with similar
  question lengths share one compiled program while the tail slab stays O(rows · T)."""
  rows = max(length - dense_before, 0)
  bucket = min(length, 1 << (rows - 1).bit_length()) if rows else 0
  return max(bucket, min(floor, length)) if rows else 0


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
          "inference_flops_per_token": rest + attn, "selection_flops_per_token": 0.0}


def selection_stats(model: ModelConfig, selection: Selection, length: int) -> dict[str, float]:
  """The same numbers for a content Selection, from `selected_pairs` (exact for any content),
  plus the selection's own arithmetic per token (pooling and block scores, every layer)."""
  att = selection.attention
  pairs, _ = att.selection_counts(length, selection.dense_before)
  block_q, block_kv = att.blocks(length)
  attn = model.depth * so.flops.per_pair(model.head_size) * model.num_heads * pairs / length
  rest = flops_per_token(model, length, training=False) - attention_flops_per_token(model, length)
  select = so.flops.selection_flops(length, length, num_heads=model.num_heads,
                                    num_kv_heads=model.kv_heads, head_dim=model.head_size,
                                    block_q=block_q, block_kv=block_kv,
                                    scoring=CONTENT_PATTERNS[att.pattern])
  return {**att.selection_sparsity(length, selection.dense_before),
          "inference_flops_per_token": rest + attn,
          "selection_flops_per_token": model.depth * select / length}


def phase_stats(model: ModelConfig, attention: AttentionConfig, phased, length: int):
  if isinstance(phased, Selection):
    return selection_stats(model, phased, length)
  return mask_stats(model, attention, phased, length)


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


Forward = Callable[[np.ndarray, "so.masks.Mask | Selection"], np.ndarray]


def make_forward(model, compute_dtype: str = "float32") -> Forward:
  """(tokens int [B, T], mask or Selection) -> argmax predictions int32 [B, T].

  One compiled program per (mask, shape), or per (content config, phase, shape, decode rows): a
  mask is static (hashable) and its layout is built at trace time; a Selection's dense_before is
  a traced argument, so decode bounds with the same power-of-two tail (`decode_rows`) share one
  program.
  """
  from flax import nnx
  graphdef, state = nnx.split(model)
  dtype = jnp.dtype(compute_dtype)
  cast = lambda state: jax.tree.map(
      lambda p: p.astype(dtype) if jnp.issubdtype(p.dtype, jnp.floating) else p, state)

  cache: dict[Any, Callable] = {}

  def compiled(key, attention, decode: bool, rows: int | None = None) -> Callable:
    fn = cache.get(key)
    if fn is None:
      def predict(state, tokens, dense_before):
        logits = nnx.merge(graphdef, cast(state))(
            tokens, attention=attention, dense_before=dense_before if decode else None,
            decode_rows=rows)
        return logits.argmax(-1).astype(jnp.int32)
      fn = cache[key] = jax.jit(predict)
    return fn

  def forward(tokens: np.ndarray, phased) -> np.ndarray:
    if isinstance(phased, Selection):
      decode = phased.dense_before is not None
      rows = (decode_rows(tokens.shape[1], phased.dense_before, phased.decode_floor) if decode
              else None)
      fn = compiled((phased.attention, decode, rows), phased.attention, decode, rows)
      bound = jnp.int32(phased.dense_before if decode else 0)
    elif isinstance(phased, so.masks.Mask):
      fn, bound = compiled(phased, phased, False), jnp.int32(0)
    else:
      raise ValueError(f"forward takes a sparse_ops mask or a Selection, got {phased!r}")
    return np.asarray(fn(state, jnp.asarray(tokens), bound))

  return forward


def evaluate(forward: Forward, model: ModelConfig, eval_spec, vocab_size: int,
             progress: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
  """Rows {task, category, length, setting, phase, sparsities, FLOPs, correct: [n] 0/1, ...}.

  Settings whose mask (or selection) is identical (e.g. sparsity 0 in both phases) are computed
  once. All settings are parsed and their configs checked at every length before anything runs.
  """
  settings: list[tuple[str, Any]] = []
  if eval_spec.native:
    settings.append(("native", "native"))
  for s in eval_spec.settings:
    parsed = settings_lib.parse(s)
    settings.append((parsed.name, parsed))
  block = eval_spec.selection_block
  attentions = {name: setting_attention(model, setting, block) for name, setting in settings}
  for length in eval_spec.lengths:  # bad blocks or unreachable sparsities fail here, not mid-way
    for att in attentions.values():
      att.validate(length)
  rows, computed = [], {}
  for length in eval_spec.lengths:
    for task_name in eval_spec.tasks:
      task = tasks_lib.make(task_name, length=length, vocab_size=vocab_size, seed=eval_spec.seed)
      examples = [task.example(eval_spec.split, i) for i in range(eval_spec.examples)]
      batch = {k: np.stack([e[k] for e in examples]) for k in ("inputs", "targets", "weights")}
      chance = chance_exact_match(task)
      for name, setting in settings:
        attention = attentions[name]
        for phase in eval_spec.phases:
          phased = phase_attention(attention, length, phase, dense_prefix(task),
                                   eval_spec.decode_rows)
          key = (task_name, length, phased)
          if key not in computed:
            preds = np.concatenate([
                forward(batch["inputs"][i:i + eval_spec.batch_size], phased)
                for i in range(0, len(examples), eval_spec.batch_size)])
            computed[key] = scoring.score(preds, batch["targets"], batch["weights"])
            if progress:
              progress(f"eval {task_name} T={length} {name} {phase}: "
                       f"{computed[key]['exact_match'].mean():.3f}")
          scores = computed[key]
          stats = phase_stats(model, attention, phased, length)
          correct = scores["exact_match"].astype(int)
          lo, hi = proportion_ci(correct.sum(), len(correct))
          rows.append(dict(
              task=task_name, category=task.category, eval_length=length, phase=phase,
              eval_setting=name, eval_pattern=attention.pattern,
              eval_budget=attention.budget if attention.is_content else "",
              eval_sparsity_target=_target(model, attention, length),
              eval_sparsity_element=stats["element"], eval_sparsity_block=stats["block"],
              inference_flops_per_token=stats["inference_flops_per_token"],
              selection_flops_per_token=stats["selection_flops_per_token"],
              n=len(correct), accuracy=float(correct.mean()), ci_low=lo, ci_high=hi,
              accuracy_std=float(correct.std(ddof=1)) if len(correct) > 1 else 0.0,
              token_accuracy=float(scores["token_accuracy"].mean()),
              set_recall=float(scores["set_recall"].mean()), chance=chance,
              correct=correct.tolist()))
  return rows


def _target(model: ModelConfig, attention: AttentionConfig, length: int) -> float:
  """The pattern's own element sparsity before the decode phase densifies the context rows:
  the static target, or what a content budget gives at this length (prefill, exact count)."""
  if attention.is_content:
    return attention.selection_sparsity(length)["element"]
  return attention.sparsity or 0.0
