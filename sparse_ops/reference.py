"""The ground truth: dense masked softmax attention in float32 at HIGHEST precision.

Materialises the [B, H, T, S] scores, so it is for tests and small shapes only.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from sparse_ops.layout import BlockLayout

_HI = jax.lax.Precision.HIGHEST


def attention(q, k, v, layout: BlockLayout, scale: float) -> jax.Array:
  """q [B, T, Hq, D], k [B, S, Hkv, D], v [B, S, Hkv, Dv] -> [B, T, Hq, Dv]."""
  b, t, hq, _ = q.shape
  hkv = k.shape[2]
  allowed = _allowed(layout, b, hq, hkv).reshape(b, hkv, hq // hkv, t, -1)
  return masked(q, k, v, allowed, scale)


def masked(q, k, v, allowed, scale: float) -> jax.Array:
  """The same math over an explicit element mask `allowed`, broadcastable to
  [B, Hkv, Hq/Hkv, T, S] (query heads grouped by their kv head). Rows with no allowed key
  give zeros."""
  b, t, hq, _ = q.shape
  hkv = k.shape[2]
  qf = q.astype(jnp.float32).reshape(b, t, hkv, hq // hkv, -1)
  s = jnp.einsum("btkgd,bskd->bkgts", qf, k.astype(jnp.float32), precision=_HI) * scale
  s = jnp.where(allowed, s, -jnp.inf)
  m = jnp.max(s, -1, keepdims=True)
  p = jnp.exp(s - jnp.where(jnp.isfinite(m), m, 0.0))  # empty rows: all zeros, no NaN
  l = p.sum(-1, keepdims=True)
  p = p / jnp.where(l > 0, l, 1.0)
  out = jnp.einsum("bkgts,bskd->btkgd", p, v.astype(jnp.float32), precision=_HI)
  return out.reshape(b, t, hq, -1).astype(q.dtype)


def _allowed(layout: BlockLayout, b: int, hq: int, hkv: int) -> jax.Array:
  dense = layout.to_dense()  # [Bl, Hl, T, S]
  hl = dense.shape[1]
  if hl == hkv and hl != hq:
    dense = jnp.repeat(dense, hq // hkv, axis=1)
  return jnp.broadcast_to(dense, (b, hq) + dense.shape[2:])
