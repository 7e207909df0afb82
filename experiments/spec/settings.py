"""Inference settings: which attention an evaluation runs a trained model with.

A setting is a plain tuple (a list in study.json), so presets and saved studies stay data:

  ("dense", 0.0)                      dense causal attention
  (pattern, sparsity)                 static (local, strided, block_random): that element sparsity;
                                      content (topk_blocks, quest, vertical_slash): a fixed block
                                      density 1 - sparsity, i.e. ("topk_blocks", 0.9) keeps 10%
                                      of each row's causal blocks (forced blocks on top)
  (pattern, "density", d)             content: keep a fraction d of each row's causal blocks
  (pattern, "blocks", k)              content: keep k blocks per row
  (pattern, "adaptive", c[, alpha])   content: keep c·n**alpha of a row's n causal blocks
                                      (alpha 0.5 if left out): longer rows keep a smaller fraction

Content settings select per layer from the layer's own q and k (`sparse_ops.select_blocks`) at
the study's `EvalSpec.selection_block` (or the model's blocks). Coverage budgets are refused: the
number of blocks they keep depends on the content, and every FLOP number the study reports is an
exact count known before any content is seen (`sparse_ops.selected_pairs`).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

import sparse_ops as so
from models import AttentionConfig, ModelConfig
from models.config import CONTENT_PATTERNS, STATIC_PATTERNS

PATTERNS = STATIC_PATTERNS + tuple(CONTENT_PATTERNS)
BUDGETS = ("density", "blocks", "adaptive")
FORMATS = ("(pattern, sparsity)", "(content pattern, 'density', d)",
           "(content pattern, 'blocks', k)", "(content pattern, 'adaptive', c[, alpha])")


@dataclasses.dataclass(frozen=True)
class Setting:
  """A parsed setting. `budget` is None for static patterns (and dense)."""

  name: str  # the eval_setting column: "dense", "local@0.75", "topk_blocks@adaptive_c0.8_a0.5"
  pattern: str
  sparsity: float = 0.0  # static: element sparsity target
  budget: str | None = None  # content: density | blocks | adaptive
  value: float = 0.0  # d, k or c
  alpha: float = 0.5

  @property
  def is_content(self) -> bool:
    return self.budget is not None

  def attention(self, model: ModelConfig, block: int | None = None,
                queries: int | None = None) -> AttentionConfig:
    """The AttentionConfig of this setting for `model` (its sink and implementation).

    Static patterns keep the model's blocks (they change how the mask is tiled, not what it
    means); content patterns select kv-blocks of `block` keys (None: the model's blocks), since
    their blocks are the unit of selection, once per `queries` queries (None: per `block`;
    1: every query from itself).
    """
    base = model.attention
    common = dict(implementation=base.implementation)
    if self.pattern == "dense":
      return AttentionConfig("dense", block_q=base.block_q, block_kv=base.block_kv, **common)
    if not self.is_content:
      return AttentionConfig(self.pattern, sparsity=self.sparsity, sink=base.sink,
                             block_q=base.block_q, block_kv=base.block_kv, **common)
    # One query per selection is laid out in the setting's q-blocks (`per_query`), so the
    # tiled kernels run it; other counts are the layout's q-blocks themselves.
    per_query = queries == 1
    block_q = queries if queries and not per_query else block or base.block_q
    return AttentionConfig(self.pattern, sink=base.sink, block_q=block_q,
                           block_kv=block or base.block_kv, per_query=per_query,
                           budget=self.budget, budget_value=self.value, budget_alpha=self.alpha,
                           **common)


def parse(setting: Sequence[Any]) -> Setting:
  """A setting tuple → Setting; ValueError naming the bad part and the valid options."""
  if isinstance(setting, Setting):
    return setting
  if isinstance(setting, str) or not isinstance(setting, (tuple, list)) or \
      not 2 <= len(setting) <= 4:
    raise ValueError(f"eval.settings has {setting!r}; valid formats: {', '.join(FORMATS)}")
  pattern = setting[0]
  if pattern not in PATTERNS:
    raise ValueError(f"eval.settings has {tuple(setting)!r}: pattern {pattern!r} is unknown; "
                     f"valid: {', '.join(PATTERNS)}")
  content = pattern in CONTENT_PATTERNS
  if len(setting) == 2:
    sparsity = setting[1]
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) or \
        not 0.0 <= sparsity < 1.0 or (pattern == "dense") != (sparsity == 0.0):
      raise ValueError(f"eval.settings has {tuple(setting)!r}: sparsity must be a number in "
                       "[0, 1), 0 exactly for 'dense' and > 0 for a sparse pattern")
    if pattern == "dense":
      return Setting("dense", "dense")
    name = f"{pattern}@{sparsity:g}"
    if content:  # the shorthand: a fixed block density
      return _content(setting, name, pattern, "density", 1.0 - float(sparsity), 0.5)
    return Setting(name, pattern, sparsity=float(sparsity))
  if not content:
    raise ValueError(f"eval.settings has {tuple(setting)!r}: budgets apply to content-based "
                     f"patterns ({', '.join(CONTENT_PATTERNS)}); a static pattern takes "
                     f"(pattern, sparsity)")
  budget, value = setting[1], setting[2]
  if budget == "coverage":
    raise ValueError(f"eval.settings has {tuple(setting)!r}: a coverage budget keeps a "
                     "content-dependent number of blocks, so its FLOPs have no exact count "
                     f"ahead of time; valid budgets: {', '.join(BUDGETS)}")
  if budget not in BUDGETS:
    raise ValueError(f"eval.settings has {tuple(setting)!r}: budget {budget!r} is unknown; "
                     f"valid: {', '.join(BUDGETS)}")
  if len(setting) == 4 and budget != "adaptive":
    raise ValueError(f"eval.settings has {tuple(setting)!r}: only 'adaptive' takes a 4th "
                     "element (alpha)")
  alpha = setting[3] if len(setting) == 4 else 0.5
  if budget == "density":
    name = f"{pattern}@density_{value:g}"
  elif budget == "blocks":
    name = f"{pattern}@blocks_{value}"
  else:
    name = f"{pattern}@adaptive_c{value:g}_a{alpha:g}"
  return _content(setting, name, pattern, budget, value, alpha)


def _content(setting, name, pattern, budget, value, alpha) -> Setting:
  for what, v in (("value", value), ("alpha", alpha)):
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
      raise ValueError(f"eval.settings has {tuple(setting)!r}: {what}={v!r} must be a number")
  try:  # the Budget constructors own the valid ranges
    if budget == "density":
      so.Budget.density(float(value))
    elif budget == "blocks":
      if value != int(value):
        raise ValueError(f"Budget.blocks(k={value!r}): k must be a positive integer")
      value = int(value)
      so.Budget.blocks(value)
    else:
      so.Budget.adaptive(float(value), float(alpha))
  except ValueError as e:
    raise ValueError(f"eval.settings has {tuple(setting)!r}: {e}") from None
  value = value if budget == "blocks" else float(value)
  return Setting(name, pattern, budget=budget, value=value, alpha=float(alpha))


def setting_from_json(value: list[Any]) -> tuple[Any, ...]:
  """study.json's list → the tuple a preset wrote (the 2-element form's number as a float)."""
  if len(value) == 2:
    return (value[0], float(value[1]))
  return tuple(value)


def mean_pairs_per_token(attention: AttentionConfig, lengths: Sequence[int]) -> float:
  """Mean over `lengths` of allowed pairs per query (prefill, one head): what average attention
  FLOPs per token are proportional to for every model with these blocks and sink."""
  return sum(attention.pairs(t) / t for t in lengths) / len(lengths)


def matched_adaptive(pattern: str, density: float, lengths: Sequence[int], block: int, *,
                     sink: int = 0, alpha: float = 0.5) -> tuple[tuple[Any, ...], float]:
  """An adaptive setting with the average prefill FLOPs across `lengths` of a fixed density.

  Returns (setting tuple, relative difference of the averages): c is bisected over the step
  function mean-pairs(c), then rounded to the fewest significant digits that keep the match as
  close. Presets write the result down as a literal (tests recheck it).
  """
  att = lambda **kw: AttentionConfig(pattern, block_q=block, block_kv=block, sink=sink, **kw)
  target = mean_pairs_per_token(att(budget="density", budget_value=density), lengths)
  mean = lambda c: mean_pairs_per_token(
      att(budget="adaptive", budget_value=c, budget_alpha=alpha), lengths)
  top = max(lengths) / block  # c = n_max keeps every block

  def first_reaching(value, strict=False):  # smallest c with mean(c) >= value (> if strict)
    lo, hi = 1e-6, top
    for _ in range(60):
      mid = (lo + hi) / 2
      ok = mean(mid) > value if strict else mean(mid) >= value
      lo, hi = (lo, mid) if ok else (mid, hi)
    return hi

  above = first_reaching(target)
  below = max(1e-6, above - 1e-9)  # on the step just under the target
  best = min((above, below), key=lambda c: abs(mean(c) - target))
  # mean(c) is a step function: every c of best's step gives the same FLOPs; write the shortest
  step_lo, step_hi = first_reaching(mean(best)), first_reaching(mean(best), strict=True)
  for digits in range(1, 8):
    for c in (float(f"{(step_lo + step_hi) / 2:.{digits}g}"),
              float(f"{step_lo:.{digits}g}"), float(f"{step_hi:.{digits}g}")):
      if step_lo <= c < step_hi and mean(c) == mean(best):
        return (pattern, "adaptive", c, alpha), mean(c) / target - 1.0
  return (pattern, "adaptive", best, alpha), mean(best) / target - 1.0
