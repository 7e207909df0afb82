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
import numpy as np
from flax import nnx

import sparse_ops as so
from sparse_ops import reference
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
    """`layout`: a BlockLayout, or (content-based AttentionConfig or a static mask in the
    decode phase, dense_before, decode_rows, budget_value) (see `Transformer.__call__`)."""
    q = rope(jnp.einsum("btd,dhe->bthe", x_btd, self.wq_dhe[...]), self.cfg.rope_base)
    k = rope(jnp.einsum("bsd,dke->bske", x_btd, self.wk_dke[...]), self.cfg.rope_base)
    v = jnp.einsum("bsd,dke->bske", x_btd, self.wv_dke[...])
    if isinstance(layout, tuple):  # decode phase, or content-based: blocks from this q and k
      attention, dense_before, decode_rows, budget_value = layout
      if dense_before is not None:
        out_bthe = decode_attention(attention, q, k, v, dense_before, decode_rows, implementation,
                                    budget_value)
        return jnp.einsum("bthe,hed->btd", out_bthe, self.wo_hed[...])
      layout = attention.select(q, k, budget_value=budget_value)
    out_bthe = so.attention(q, k, v, layout=layout, implementation=implementation)
    return jnp.einsum("bthe,hed->btd", out_bthe, self.wo_hed[...])


def decode_keep(attention: AttentionConfig, q: jax.Array, k: jax.Array,
                dense_before, budget_value=None) -> jax.Array:
  """Kept-block booleans [B, Hkv, nq, nk] (nq = T when selecting per query) of a content pattern
  in the decode phase: the blocks `attention.select(q, k, dense_before)` would lay out (q-blocks
  holding a query before `dense_before` keep every causal block), so `selection_counts` counts
  what runs."""
  return attention.select_mask(q, k, dense_before, budget_value)


def decode_allowed(keep: jax.Array, first: int, t: int, block_q: int,
                   block_kv: int) -> jax.Array:
  """Element mask [B, Hkv, t - first, t] of rows first..t-1: their kept blocks ∩ causal."""
  rows = jnp.arange(first, t)
  cols = jnp.arange(t)
  keep_r = jnp.take(keep, rows // block_q, axis=2)  # [B, Hkv, R, nk]
  return jnp.take(keep_r, cols // block_kv, axis=3) & (cols[None, :] <= rows[:, None])


def static_allowed(mask: so.masks.Mask, first: int, t: int, hq: int, hkv: int) -> jax.Array:
  """Element mask of rows first..t-1 of a static `mask`, broadcastable to [B, Hkv, Hq/Hkv, R,
  T] (a per-head mask's heads are query heads, or kv heads when it has as many)."""
  allowed = so.masks.dense(mask, t, t, q_start=first)
  if mask.num_heads is None:
    return jnp.asarray(allowed)
  if mask.num_heads not in (hq, hkv):
    raise ValueError(f"mask has {mask.num_heads} heads; the model has {hq} query and {hkv} kv "
                     "heads")
  return jnp.asarray(allowed.reshape(hkv, -1, t - first, t))


def decode_attention(attention: AttentionConfig | so.masks.Mask, q, k, v, dense_before,
                     decode_rows, implementation: str | None, budget_value=None) -> jax.Array:
  """Decode-phase attention: rows before `dense_before` dense causal, later rows a content
  pattern's selected blocks ∩ causal (exactly `select_blocks(..., dense_before=)`'s layout) or
  a static mask's pairs (exactly `mask | (QueryPrefix(dense_before) & Causal)`).

  Cost: one attention over all rows with the model's own implementation, dense causal (with a
  static mask: `mask | Causal`, what the rows before the bound see), right for the context rows
  (the others are overwritten); for content, the block scores ([T, nk] per head); and a
  masked-softmax slab in f32 over only the last R rows ([B, Hq, R, T]). R is static:
  `decode_rows` if given, else T - dense_before when that is concrete, else T (every row: correct
  but O(T²) memory; the evaluator passes a bucketed R). The tail never reaches a kernel, so any
  implementation runs this, and a traced `dense_before` lets every prefix with the same R share
  one compiled program.
  """
  b, t, hq, d = q.shape
  static = isinstance(attention, so.masks.Mask)
  before = attention | so.masks.Causal() if static else so.masks.Causal()
  out = so.attention(q, k, v, mask=before, implementation=implementation)
  traced = isinstance(dense_before, jax.core.Tracer)
  lowest = None if traced else int(np.clip(np.min(np.asarray(dense_before)), 0, t))
  rows = int(decode_rows) if decode_rows is not None else (t if traced else t - lowest)
  first = t - rows
  bound = jnp.broadcast_to(jnp.asarray(dense_before), (b,))
  if lowest is not None and lowest < first:
    raise ValueError(f"dense_before={dense_before!r} is before T - decode_rows = {t} - {rows}: "
                     f"the rows from it on need decode_rows >= {t - lowest}")
  # A bound before the slab would leave rows bound..first-1 dense where they should be sparse:
  # poison the output rather than return wrong values (a traced bound can't raise).
  poison = lambda out: jnp.where(jnp.any(bound < first), jnp.nan, out) if first > 0 else out
  if rows == 0:
    return poison(out)
  if static:
    allowed = static_allowed(attention, first, t, hq, k.shape[2])
  else:
    block_q, block_kv = attention.selection_blocks(t)
    keep = decode_keep(attention, q, k, dense_before, budget_value)
    allowed = decode_allowed(keep, first, t, block_q, block_kv)[:, :, None]  # [B, Hkv, 1, R, T]
  # The reference math (f32, HIGHEST) over the R tail rows only: an [B, Hq, R, T] slab.
  tail = reference.masked(q[:, first:], k, v, allowed, d ** -0.5)
  sparse = jnp.arange(first, t)[None, :] >= bound[:, None]  # [B, R]: rows at/after the bound
  tail = jnp.where(sparse[:, :, None, None], tail, out[:, first:])
  return poison(jnp.concatenate([out[:, :first], tail], axis=1))


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


class ShortConv(nnx.Module):
  """x + causal depthwise conv: out_t = x_t + sum_j w_j ⊙ x_{t-j}, j < kernel (zeros before 0)."""

  def __init__(self, width: int, kernel: int, *, rngs: nnx.Rngs):
    self.w_kd = _normal(rngs, (kernel, width), kernel ** -0.5)

  def __call__(self, x_btd: jax.Array) -> jax.Array:
    w_kd = self.w_kd[...].astype(x_btd.dtype)
    out = x_btd
    for j in range(w_kd.shape[0]):  # kernel is a handful of taps: shifted adds, no conv op
      shifted = jnp.pad(x_btd, ((0, 0), (j, 0), (0, 0)))[:, :x_btd.shape[1]]
      out = out + shifted * w_kd[j]
    return out


class Block(nnx.Module):
  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    self.attn_norm = RMSNorm(cfg.width, cfg.norm_eps)
    self.conv = ShortConv(cfg.width, cfg.conv_kernel, rngs=rngs) if cfg.conv_kernel else None
    self.attn = Attention(cfg, rngs=rngs)
    self.mlp_norm = RMSNorm(cfg.width, cfg.norm_eps)
    self.mlp = Mlp(cfg, rngs=rngs)

  def __call__(self, x_btd, layout, implementation):
    h_btd = self.attn_norm(x_btd)
    if self.conv is not None:
      h_btd = self.conv(h_btd)
    x_btd = x_btd + self.attn(h_btd, layout, implementation)
    return x_btd + self.mlp(self.mlp_norm(x_btd))


# Vocabularies up to this size embed by a one-hot matmul instead of a gather: the gather's
# backward is a scatter-add of every token's gradient into V rows, which serialises on a GPU when
# V is small and tokens many (it cost more than the whole forward pass of the 6m model at
# 64 × 512 tokens on an H200: benchmarks/results/step_breakdown_6m_T512.json); the matmul costs
# 2·V·d FLOPs a token (not counted in model FLOPs, like the gather it replaces).
ONE_HOT_MAX_VOCAB = 4096


def embed_lookup(embed_vd: jax.Array, tokens_bt: jax.Array) -> jax.Array:
  """tokens [B, T] -> rows of embed [B, T, d] (one-hot matmul for small vocabularies)."""
  if embed_vd.shape[0] > ONE_HOT_MAX_VOCAB:
    return jnp.take(embed_vd, tokens_bt, axis=0)
  one_hot = jax.nn.one_hot(tokens_bt, embed_vd.shape[0], dtype=embed_vd.dtype)
  # HIGHEST: f32 rows come back exactly (a TF32 matmul would round them); bf16 is exact anyway.
  return jnp.einsum("btv,vd->btd", one_hot, embed_vd, precision=jax.lax.Precision.HIGHEST)


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
               dense_before: jax.Array | int | None = None,
               decode_rows: int | None = None, return_hidden: bool = False,
               budget_value: jax.Array | None = None):
    """`attention` overrides the config's pattern (e.g. evaluating at another sparsity).

    `dense_before` (scalar or [B]): queries before this position attend densely, later ones
    sparsely (the "decode" evaluation phase; `decode_attention`): a content pattern's selection
    or a static mask's pairs (then the same as `mask | (QueryPrefix(dense_before) & Causal)`,
    but one program for every bound when it is traced).
    `decode_rows` (with `dense_before`): a static bound on T - dense_before, the rows the sparse
    tail computes; needed to keep that O(R·T) when `dense_before` is traced. A bound before
    T - decode_rows raises, or makes the output NaN if it is traced.

    `budget_value` (content-based patterns only; a jax scalar, may be traced): the selection
    budget's value in place of the config's, same kind (`sparse_ops.Budget.traced`): one
    compiled program serves every value, and selects exactly what the constant would.

    `return_hidden`: return (logits, hidden [depth + 1, B, T, d]) from the same pass instead of
    the logits alone: entry i < depth is the residual stream after block i, entry depth the
    final-normed stream the head reads (the "last layer"). The logits are the same either way.
    """
    t = tokens_bt.shape[1]
    attention = self.cfg.attention if attention is None else attention
    if isinstance(attention, so.masks.Mask):
      impl = self.cfg.attention.implementation
      block_q, block_kv = self.cfg.attention.blocks(t)
      layout = ((attention, dense_before, decode_rows, None) if dense_before is not None else
                so.BlockLayout.from_mask(attention, t, t, block_q=block_q, block_kv=block_kv))
    else:
      attention.validate(t)
      impl = attention.implementation
      layout = ((attention, dense_before, decode_rows, budget_value) if attention.is_content
                else attention.layout(t))
    if dense_before is not None and not isinstance(layout, tuple):
      raise ValueError(f"dense_before={dense_before!r} applies to content-based patterns and "
                       f"static masks, not the static pattern {attention.pattern!r}: pass its "
                       "mask (`attention.mask(T)`)")
    if budget_value is not None and (isinstance(attention, so.masks.Mask) or
                                     not attention.is_content):
      raise ValueError(f"budget_value={budget_value!r} applies to content-based patterns, not "
                       f"{attention!r}")
    if decode_rows is not None and (dense_before is None or isinstance(decode_rows, bool) or
                                    not isinstance(decode_rows, (int, np.integer)) or
                                    not 0 <= decode_rows <= t):
      raise ValueError(f"decode_rows={decode_rows!r} must be an int in [0, T={t}] and comes "
                       f"with dense_before (got dense_before={dense_before!r})")
    embed = self.embed_vd[...]
    x_btd = embed_lookup(embed, tokens_bt)
    def apply(graphdef, state, x_btd):  # one block from its parts: pure, so jax.jit can hold it
      return nnx.merge(graphdef, state)(x_btd, layout, impl)
    if self.cfg.remat:  # keeps only each block's input for the backward pass
      apply = jax.checkpoint(apply, static_argnums=0)
    # One trace for all `depth` blocks: they share structure and shapes, so the jit traces and
    # lowers the first and reuses it for the rest (XLA inlines the calls: the same program).
    # Tracing and lowering were most of an evaluation's host time: the h200 study's 187
    # programs of an 800k model took 83 s on a 2-core CPU with every layer traced anew, 33 s so.
    apply = jax.jit(apply, static_argnums=0)
    hidden = []
    for block in self.blocks:
      x_btd = apply(*nnx.split(block), x_btd)
      hidden.append(x_btd)
    x_btd = self.final_norm(x_btd)
    head = embed.T if self.head_dv is None else self.head_dv[...]
    # f32 logits: the softmax over V in bf16 loses the small differences the loss needs.
    logits = jnp.einsum("btd,dv->btv", x_btd, head, preferred_element_type=jnp.float32)
    if return_hidden:
      return logits, jnp.stack(hidden + [x_btd])
    return logits
