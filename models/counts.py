"""Exact parameter counts and FLOPs per token, from the config alone: the one counter the study
uses to match compute (no model is built).

FLOPs per trained token at context T (DESIGN.md):
    6·N_nonembed + 6·d·V + 3 · 2·(Dqk+Dv)·H·L · nnz/T
where N_nonembed counts every parameter but the token embedding and the head (norm scales
included, by that convention, although they cost no matmul), the head's matmul costs 6·d·V
whether or not it is tied, and nnz is the number of (query, key) pairs the attention pattern
allows over T positions (``sparse_ops.flops``). Inference FLOPs per token are the forward third.
"""

from __future__ import annotations

import dataclasses
import functools

import sparse_ops as so
from models.config import AttentionConfig, ModelConfig


@dataclasses.dataclass(frozen=True)
class ParamCounts:
  total: int
  nonembed: int  # everything but the token embedding and the (untied) head
  embed: int  # token embedding + untied head


def param_counts(cfg: ModelConfig) -> ParamCounts:
  d, h, k, e, f = cfg.width, cfg.num_heads, cfg.kv_heads, cfg.head_size, cfg.hidden
  attention = d * h * e + 2 * d * k * e + h * e * d
  mlp = 3 * d * f
  norms = 2 * d
  conv = cfg.conv_kernel * d  # depthwise: one weight per (tap, channel), 2 FLOPs per token each
  nonembed = cfg.depth * (attention + mlp + norms + conv) + d  # + the final norm
  embed = cfg.vocab_size * d * (1 if cfg.tie_embeddings else 2)
  return ParamCounts(total=nonembed + embed, nonembed=nonembed, embed=embed)


@functools.lru_cache(maxsize=1024)  # exact counts of composite masks can take seconds at 32k
def attention_flops_per_token(cfg: ModelConfig, seq_len: int,
                              attention: AttentionConfig | so.masks.Mask | so.flops.Selected
                              | None = None) -> float:
  """Forward attention-score FLOPs (QKᵀ and PV over the allowed pairs) per token, all layers.

  `attention`: another config than the model's, or directly what `so.flops` counts (a mask,
  such as an evaluation phase's, or a `so.flops.Selected`).
  """
  attention = cfg.attention if attention is None else attention
  if isinstance(attention, AttentionConfig):
    attention = attention.counted(seq_len)
  fwd = so.flops.model_flops(attention, seq_len, seq_len, num_heads=cfg.num_heads,
                             head_dim=cfg.head_size)
  return cfg.depth * fwd / seq_len


def flops_per_token(cfg: ModelConfig, seq_len: int, *, training: bool = True,
                    attention: AttentionConfig | so.masks.Mask | so.flops.Selected
                    | None = None) -> float:
  """FLOPs per token at context `seq_len`: training (fwd+bwd, 3×) or inference (forward).

  `attention` evaluates another pattern/sparsity than the config's (e.g. sparse inference of a
  densely trained model), as a config or as a mask / selection (`attention_flops_per_token`).
  """
  fwd = 2 * param_counts(cfg).nonembed + 2 * cfg.width * cfg.vocab_size
  fwd += attention_flops_per_token(cfg, seq_len, attention)
  return 3 * fwd if training else fwd
