"""Flax NNX decoder family with pluggable sparse attention (attention comes from sparse_ops).

    from models import family, Transformer, param_counts, flops_per_token
    cfg = family("100k", vocab_size=512, attention=AttentionConfig("local", window=64))
    model = Transformer(cfg, rngs=nnx.Rngs(0))
    logits_btv = model(tokens_bt)
"""

from models.config import PATTERNS, SIZES, AttentionConfig, ModelConfig, family
from models.counts import ParamCounts, attention_flops_per_token, flops_per_token, param_counts
from models.transformer import Transformer

__all__ = ["PATTERNS", "SIZES", "AttentionConfig", "ModelConfig", "ParamCounts", "Transformer",
           "attention_flops_per_token", "family", "flops_per_token", "param_counts"]
