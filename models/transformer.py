"""The decoder: token embedding, `depth` pre-norm blocks (GQA attention with RoPE, SwiGLU MLP),
a final RMSNorm and a tied or untied head. Attention is `sparse_ops.attention` with the layout
of `ModelConfig.attention` at the input's length.

Parameters are created in f32. Compute runs in the dtype of the parameters the module holds: the
trainer merges a bf16 copy for bf16 compute (see `train/step.py`); norms, RoPE, softmax statistics
and logits stay in f32 whatever that dtype is.

Axis names in einsums: b batch, t query position, s key position, d width, h query heads,
k kv heads, g query heads per kv head, e head dim, f mlp hidden, v vocab.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

import sparse_ops as so
from models.config import AttentionConfig, ModelConfig


def _normal(rngs: nnx.Rngs, shape, std: float) -> nnx.Param:
  return nnx.Param(std * jax.random.truncated_normal(rngs.params(), -2.0, 2.0, shape, jnp.float32))


class RMSNorm(nnx.Module):
  def __init__(self, width: int, eps: float):
    self.scale = nnx.Param(jnp.ones((width,), jnp.float32))
    self.eps = eps

  def __call__(self, x_btd: jax.Array) -> jax.Array:
    x = x_btd.astype(jnp.float32)  # the mean square overflows/rounds badly in bf16
    x = x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + self.eps)
    return (x * self.scale[...].astype(jnp.float32)).astype(x_btd.dtype)


def rope(x_bthe: jax.Array, base: float) -> jax.Array:
  """Rotary embedding over positions 0..T-1 (rotate-half convention), computed in f32."""
  t, e = x_bthe.shape[1], x_bthe.shape[3]
  freq_e = base ** (-jnp.arange(0, e // 2, dtype=jnp.float32) * 2 / e)
  angle_te = jnp.arange(t, dtype=jnp.float32)[:, None] * freq_e[None, :]
  sin, cos = jnp.sin(angle_te)[None, :, None, :], jnp.cos(angle_te)[None, :, None, :]
  x = x_bthe.astype(jnp.float32)
  x1, x2 = x[..., : e // 2], x[..., e // 2:]
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x_bthe.dtype)


class Attention(nnx.Module):
  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    d, h, k, e = cfg.width, cfg.num_heads, cfg.kv_heads, cfg.head_size
    self.cfg = cfg
    self.wq_dhe = _normal(rngs, (d, h, e), d ** -0.5)
    self.wk_dke = _normal(rngs, (d, k, e), d ** -0.5)
    self.wv_dke = _normal(rngs, (d, k, e), d ** -0.5)
    # Residual-branch outputs shrink with depth so the stream's variance stays O(1) at init.
    self.wo_hed = _normal(rngs, (h, e, d), (h * e * 2 * cfg.depth) ** -0.5)

  def __call__(self, x_btd: jax.Array, layout, implementation: str | None):
    """`layout`: a BlockLayout, or (content-based AttentionConfig, dense_before) to select one."""
    q = rope(jnp.einsum("btd,dhe->bthe", x_btd, self.wq_dhe[...]), self.cfg.rope_base)
    k = rope(jnp.einsum("bsd,dke->bske", x_btd, self.wk_dke[...]), self.cfg.rope_base)
    v = jnp.einsum("bsd,dke->bske", x_btd, self.wv_dke[...])
    if isinstance(layout, tuple):  # content-based: this layer's own blocks from its q and k
      attention, dense_before = layout
      layout = attention.select(q, k, dense_before)
    out_bthe = so.attention(q, k, v, layout=layout, implementation=implementation)
    return jnp.einsum("bthe,hed->btd", out_bthe, self.wo_hed[...])


class Mlp(nnx.Module):
  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    d, f = cfg.width, cfg.hidden
    self.w_gate_df = _normal(rngs, (d, f), d ** -0.5)
    self.w_up_df = _normal(rngs, (d, f), d ** -0.5)
    self.w_down_fd = _normal(rngs, (f, d), (f * 2 * cfg.depth) ** -0.5)

  def __call__(self, x_btd: jax.Array) -> jax.Array:
    gate = jnp.einsum("btd,df->btf", x_btd, self.w_gate_df[...])
    up = jnp.einsum("btd,df->btf", x_btd, self.w_up_df[...])
    return jnp.einsum("btf,fd->btd", jax.nn.silu(gate) * up, self.w_down_fd[...])


class Block(nnx.Module):
  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    self.attn_norm = RMSNorm(cfg.width, cfg.norm_eps)
    self.attn = Attention(cfg, rngs=rngs)
    self.mlp_norm = RMSNorm(cfg.width, cfg.norm_eps)
    self.mlp = Mlp(cfg, rngs=rngs)

  def __call__(self, x_btd, layout, implementation):
    x_btd = x_btd + self.attn(self.attn_norm(x_btd), layout, implementation)
    return x_btd + self.mlp(self.mlp_norm(x_btd))


class Transformer(nnx.Module):
  """tokens int [B, T] -> logits f32 [B, T, V]."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    # std 1/sqrt(d): a tied head then starts with O(1) logits; pre-norm blocks don't mind.
    self.embed_vd = _normal(rngs, (cfg.vocab_size, cfg.width), cfg.width ** -0.5)
    self.blocks = nnx.List([Block(cfg, rngs=rngs) for _ in range(cfg.depth)])
    self.final_norm = RMSNorm(cfg.width, cfg.norm_eps)
    self.head_dv = None if cfg.tie_embeddings else _normal(
        rngs, (cfg.width, cfg.vocab_size), cfg.width ** -0.5)

  def __call__(self, tokens_bt: jax.Array,
               attention: AttentionConfig | so.masks.Mask | None = None,
               dense_before: jax.Array | int | None = None) -> jax.Array:
    """`attention` overrides the config's pattern (e.g. evaluating at another sparsity).

    `dense_before` (content-based patterns only; scalar or [B]): queries before this position
    attend densely, later ones sparsely (the "decode" evaluation phase).
    """
    t = tokens_bt.shape[1]
    attention = self.cfg.attention if attention is None else attention
    if isinstance(attention, so.masks.Mask):
      impl = self.cfg.attention.implementation
      block_q, block_kv = self.cfg.attention.blocks(t)
      layout = so.BlockLayout.from_mask(attention, t, t, block_q=block_q, block_kv=block_kv)
    else:
      attention.validate(t)
      impl = attention.implementation
      layout = (attention, dense_before) if attention.is_content else attention.layout(t)
    if dense_before is not None and not isinstance(layout, tuple):
      raise ValueError("dense_before applies to content-based patterns; for static ones put "
                       "the phase in the mask")
    embed = self.embed_vd[...]
    x_btd = jnp.take(embed, tokens_bt, axis=0)
    apply = lambda block, x_btd: block(x_btd, layout, impl)
    if self.cfg.remat:  # keeps only each block's input for the backward pass
      apply = nnx.remat(apply)
    for block in self.blocks:
      x_btd = apply(block, x_btd)
    x_btd = self.final_norm(x_btd)
    head = embed.T if self.head_dv is None else self.head_dv[...]
    # f32 logits: the softmax over V in bf16 loses the small differences the loss needs.
    return jnp.einsum("btd,dv->btv", x_btd, head, preferred_element_type=jnp.float32)
