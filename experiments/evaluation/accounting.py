"""The accounting of one evaluation setting: what the forward pass runs in each phase, and its
exact sparsity and FLOP numbers. Read top to bottom, this is the whole path from a setting to
its row's numbers; the only things it asks elsewhere are the config's own pattern
(`AttentionConfig.mask` / `counted` / `blocks`) and the one counter (`sparse_ops.flops`).

Phases (DESIGN.md): `prefill` makes every query sparse. `decode` keeps the context dense and makes
only the question/answer queries sparse, as a decoding-time sparse method would. For a static
pattern the pairs are those of
    sparse | (so.masks.QueryPrefix(first question query) & Causal)
so queries before the question see every earlier key, the later ones follow the sparse pattern
(`Decode`: the model runs it as it runs content decode, below, so one compiled program serves
every task's prefix).
A content-based setting (`experiments.spec.settings`) selects per layer from its own q and k; in
decode it does so with `dense_before=` the first question query and one-query q-blocks
(`decode_attention`), so the context queries are dense and each question/answer query picks its
own kv-blocks. The model runs that as one dense causal attention with its own implementation
plus a small masked-softmax slab for the question/answer rows (`models.transformer`).

Every reported number is an exact count by `sparse_ops.flops`: on the very mask the forward pass
used, or, for content selection, on the `so.flops.Selected` of the budget, blocks and phase the
forward pass used (the count of any layout the selection can produce).
"""

from __future__ import annotations

import dataclasses

import sparse_ops as so
from experiments.spec import settings as settings_lib
from models import AttentionConfig, ModelConfig, flops_per_token
from models.config import CONTENT_PATTERNS


def setting_attention(model: ModelConfig, setting, block: int | None = None,
                      queries: int | None = None) -> AttentionConfig:
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
  return settings_lib.parse(setting).attention(model, block, queries)


# ------------------------------------------------------------------------- what the pass runs
@dataclasses.dataclass(frozen=True)
class Selection:
  """A content-based setting in one phase: each layer selects from its own q and k.

  dense_before: the first sparse query (decode: queries before it attend densely); None: every
  query is sparse (prefill).
  """

  attention: AttentionConfig
  dense_before: int | None = None
  decode_floor: int = 0  # EvalSpec.decode_rows


@dataclasses.dataclass(frozen=True)
class Decode:
  """A static pattern in the decode phase: queries before `dense_before` attend densely
  (causal), later ones follow `mask`. Its pairs are `pairs`; the model runs it with
  `dense_before=` (`models.transformer.decode_attention`), traced, so the study's tasks share one
  program per tail size instead of one per prefix."""

  mask: so.masks.Mask
  dense_before: int
  decode_floor: int = 0  # EvalSpec.decode_rows

  @property
  def pairs(self) -> so.masks.Mask:
    return self.mask | (so.masks.QueryPrefix(self.dense_before) & so.masks.Causal())


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
  return Decode(mask, prefix).pairs


def phase_attention(attention: AttentionConfig, length: int, phase: str, prefix: int,
                    decode_floor: int = 0) -> so.masks.Mask | Decode | Selection:
  """What the forward pass runs in `phase`: a static mask (prefill, or dense in both phases), a
  static pattern's `Decode`, or a content Selection (`decode_floor`: `EvalSpec.decode_rows`)."""
  if not attention.is_content:
    if phase == "decode" and attention.pattern != "dense":
      return Decode(attention.mask(length), prefix, decode_floor)
    return phase_mask(attention, length, phase, prefix)
  if phase not in ("prefill", "decode"):
    raise ValueError(f"phase={phase!r} must be 'prefill' or 'decode'")
  attention.validate(length)
  if phase == "prefill":
    return Selection(attention)
  return Selection(decode_attention(attention), prefix, decode_floor)


def decode_attention(attention: AttentionConfig) -> AttentionConfig:
  """A content setting's decode-phase config: selection per query (`per_query`).

  Decoding runs one query at a time, so a decoding-time method picks kv-blocks for each query
  from that query (Quest). With q-blocks of several queries, the block holding the first
  question query would also hold context queries and be dense (`select_blocks`' rule for
  `dense_before`), and with it most question/answer queries. The kv-blocks and implementation
  stay the setting's (`models.transformer.decode_attention` runs the dense part with the
  implementation and the sparse rows as plain masked softmax).
  """
  return dataclasses.replace(attention, per_query=True)


def decode_rows(length: int, dense_before: int, floor: int = 0) -> int:
  """The static tail size the decode forward computes: T - dense_before rounded up to a power
  of two (at most T), and at least `floor` (`EvalSpec.decode_rows`), so tasks with similar
  question lengths share one compiled program while the tail slab stays O(rows · T)."""
  rows = max(length - dense_before, 0)
  bucket = min(length, 1 << (rows - 1).bit_length()) if rows else 0
  return max(bucket, min(floor, length)) if rows else 0


# ------------------------------------------------------------------------------- its numbers
def counted(phased: so.masks.Mask | Decode | Selection, length: int,
            blocks: tuple[int, int] | None = None):
  """(what the pairs are counted on, what the blocks are counted on) for a phase's pass: a mask
  (a `Decode`'s pairs) and its layout at `blocks`, or a selection's `so.flops.Selected` (its own
  blocks) for both."""
  if isinstance(phased, Selection):
    sel = phased.attention.counted(length, phased.dense_before)
    return sel, sel
  if isinstance(phased, Decode):
    phased = phased.pairs
  if blocks is None:
    raise ValueError(f"blocks=None: a static mask's block sparsity needs (block_q, block_kv); "
                     f"got mask {phased!r}")
  block_q, block_kv = blocks
  return phased, so.BlockLayout.from_mask(phased, length, length, block_q=block_q,
                                          block_kv=block_kv)


def stats(model: ModelConfig, phased: so.masks.Mask | Decode | Selection, length: int,
          blocks: tuple[int, int] | None = None) -> dict[str, float]:
  """Element and block sparsity of the pass, inference FLOPs per token with it, and a content
  selection's own arithmetic per token (pooling and block scores, every layer; 0 for a mask).
  `blocks`: the (block_q, block_kv) a static mask's block sparsity is counted at."""
  pairs_of, blocks_of = counted(phased, length, blocks)
  select = 0.0
  if isinstance(phased, Selection):
    block_q, block_kv = phased.attention.selection_blocks(length)
    select = model.depth * so.flops.selection_flops(
        length, length, num_heads=model.num_heads, num_kv_heads=model.kv_heads,
        head_dim=model.head_size, block_q=block_q, block_kv=block_kv,
        scoring=CONTENT_PATTERNS[phased.attention.pattern]) / length
  return {"element": so.flops.sparsity(pairs_of, length),
          "block": so.flops.block_sparsity(blocks_of, length),
          "inference_flops_per_token": flops_per_token(model, length, training=False,
                                                       attention=pairs_of),
          "selection_flops_per_token": select}


def phase_stats(model: ModelConfig, attention: AttentionConfig, phased,
                length: int) -> dict[str, float]:
  """`stats` of a setting's pass, a static mask's blocks being the setting's own."""
  return stats(model, phased, length, attention.blocks(length))


def target(attention: AttentionConfig, length: int) -> float:
  """The pattern's own element sparsity before the decode phase densifies the context rows:
  the static target, or what a content budget gives at this length (prefill, exact count)."""
  if attention.is_content:
    return so.flops.sparsity(attention.counted(length), length)
  return attention.sparsity or 0.0
