"""Block-sparse attention in plain jnp: visits only a layout's kept blocks, runs on any backend.

Tensors are blocked as ``q [B, Hq, nq, bq, D]`` and ``k, v [B, Hkv, nk, bk, D]``. The forward
pass scans over the *slots* of the layout's kv lists: at slot ``j`` every q-block gathers its
``j``-th kv-block, so each step holds ``[B, Hq, T, bk]`` scores and memory grows with T × block,
never T × S. Partial blocks apply the mask elementwise; full blocks skip it. Softmax is online
(running max and sum), so slots can come in any order.

The backward pass is a custom_vjp (autodiff of the scan would keep every step's scores, T × kept
blocks × block, as residuals): one scan over the same slots recomputes probabilities from the
saved log-sum-exp (FlashAttention-2), accumulates dQ per q-block and scatter-adds dK/dV into the
visited kv-blocks. (The Pallas kernels use the layout's transposed lists instead, where a
kernel instance owns a kv-block.)

Cost note: a scan runs ``max slots per row`` steps for every row, so rows with fewer blocks than
the longest row pay for the difference (dense causal executes about 2× its kept blocks here).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from sparse_ops.layout import BlockLayout

_HI = jax.lax.Precision.HIGHEST


def attention(q, k, v, layout: BlockLayout, scale: float) -> jax.Array:
  """q [B, T, Hq, D], k [B, S, Hkv, D], v [B, S, Hkv, Dv] -> [B, T, Hq, Dv]."""
  return _attention(q, k, v, layout, scale)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _attention(q, k, v, layout, scale):
  return _forward(q, k, v, layout, scale)[0]


def _attention_fwd(q, k, v, layout, scale):
  out, lse = _forward(q, k, v, layout, scale)
  return out, (q, k, v, layout, out, lse)


def _attention_bwd(scale, res, dout):
  q, k, v, layout, out, lse = res
  dq, dk, dv = _backward(q, k, v, layout, scale, out, lse, dout)
  # The layout carries integer arrays: their cotangents are float0 zeros.
  dlayout = jax.tree.map(lambda x: jnp.zeros(x.shape, jax.dtypes.float0), layout)
  return dq, dk, dv, dlayout


_attention.defvjp(_attention_fwd, _attention_bwd)


# ------------------------------------------------------------------------------------- blocking


def _block(x, n, blk):
  """[B, L, H, D] -> [B, H, n, blk, D], zero-padded to n * blk."""
  b, length, h, d = x.shape
  x = jnp.pad(x, ((0, 0), (0, n * blk - length), (0, 0), (0, 0)))
  return x.reshape(b, n, blk, h, d).transpose(0, 3, 1, 2, 4)


def _unblock(x, length):
  """[B, H, n, blk, D] -> [B, L, H, D]."""
  b, h, n, blk, d = x.shape
  return x.transpose(0, 2, 3, 1, 4).reshape(b, n * blk, h, d)[:, :length]


def _lists(layout: BlockLayout, b: int, hq: int):
  """(count, indices, partial?) of the layout's kv lists, broadcast to [B, Hq, nq(, slots)]."""
  out = []
  for count, idx, partial in ((layout.kv_num_blocks, layout.kv_indices, True),
                              (layout.full_kv_num_blocks, layout.full_kv_indices, False)):
    if isinstance(count, np.ndarray) and not count.any():
      continue  # statically empty (e.g. no full blocks): no scan at all
    # A barrier keeps XLA from constant-folding the whole masked computation when the layout
    # is a compile-time constant (built from a static mask): that folding took seconds.
    count, idx = jax.lax.optimization_barrier((jnp.asarray(count), jnp.asarray(idx)))
    hl = count.shape[1]
    if hl not in (1, hq):  # per kv-head layout: each q-head of a group shares its kv-head's
      count, idx = jnp.repeat(count, hq // hl, 1), jnp.repeat(idx, hq // hl, 1)
    count = jnp.broadcast_to(count, (b, hq) + count.shape[2:])
    idx = jnp.broadcast_to(idx, (b, hq) + idx.shape[2:])
    out.append((count, idx, partial))
  return out


def _elementwise(layout: BlockLayout, q_pos, k_pos, hq: int):
  """Mask of partial blocks: layout.mask & (key < kv_len); q_pos/k_pos broadcast with a head axis 1."""
  ok = k_pos < layout.kv_len
  m = layout.mask
  if m is None:
    return ok
  if m.num_heads is None:
    return ok & m(q_pos, k_pos)
  per = hq // m.num_heads  # mask over Hkv heads: q-head h uses mask head h // per
  heads = []
  for h in range(hq):
    sl = slice(h, h + 1)
    qp = q_pos[:, sl] if q_pos.shape[1] > 1 else q_pos
    kp = k_pos[:, sl] if k_pos.shape[1] > 1 else k_pos
    heads.append(m.head(h // per)(qp, kp))
  shape = jnp.broadcast_shapes(*(x.shape for x in heads))
  return ok & jnp.concatenate([jnp.broadcast_to(x, shape) for x in heads], axis=1)


def _row_keep(layout: BlockLayout, b: int, hq: int):
  """blk [B, Hq, nq] -> bool [B, Hq, nq, bq, 1]: which queries of each q-block keep its kv-block
  ``blk`` (the layout's ``row_keep``), or None when the layout has none."""
  if layout.row_keep is None:
    return None
  rk = layout.row_keep
  rk = rk.reshape(rk.shape[:3] + (layout.num_q_blocks, layout.block_q))  # [Bl, Hl, nk, nq, bq]
  hl = rk.shape[1]
  bi = (jnp.arange(b) if rk.shape[0] > 1 else jnp.zeros(b, jnp.int32))[:, None, None]
  hi = jnp.arange(hq) // (hq // hl) if hl > 1 else jnp.zeros(hq, jnp.int32)
  qi = jnp.arange(layout.num_q_blocks)[None, None, :]
  return lambda blk: (rk[bi, hi[None, :, None], blk, qi] != 0)[..., None]


def _dot(spec, a, b):
  prec = _HI if a.dtype == jnp.float32 else None
  return jnp.einsum(spec, a, b, precision=prec, preferred_element_type=jnp.float32)


def _gather_rows(x, idx, head_map):
  """x [B, Hx, n, blk, D], idx [B, Hq, r] -> [B, Hq, r, blk, D]; q-head h reads x head head_map[h]."""
  bi = jnp.arange(x.shape[0])[:, None, None]
  return x[bi, head_map[None, :, None], idx]


# -------------------------------------------------------------------------------------- forward


def _forward(q, k, v, layout: BlockLayout, scale):
  b, t, hq, _ = q.shape
  hkv = k.shape[2]
  bq, bk = layout.block_q, layout.block_kv
  nq, nk = layout.num_q_blocks, layout.num_kv_blocks
  qb, kb, vb = _block(q, nq, bq), _block(k, nk, bk), _block(v, nk, bk)
  head_map = jnp.arange(hq) // (hq // hkv)
  q_pos = (jnp.arange(nq)[:, None] * bq + jnp.arange(bq))[None, None, :, :, None]
  dv = v.shape[-1]
  m = jnp.full((b, hq, nq, bq), -jnp.inf, jnp.float32)
  l = jnp.zeros((b, hq, nq, bq), jnp.float32)
  acc = jnp.zeros((b, hq, nq, bq, dv), jnp.float32)
  carry = (m, l, acc)
  rows = _row_keep(layout, b, hq)
  for count, idx, partial in _lists(layout, b, hq):

    def step(carry, j, count=count, idx=idx, partial=partial):
      m, l, acc = carry
      blk = idx[..., j]  # [B, Hq, nq]
      kj, vj = _gather_rows(kb, blk, head_map), _gather_rows(vb, blk, head_map)
      s = _dot("bhiqd,bhikd->bhiqk", qb, kj) * scale
      ok = (j < count)[..., None, None]
      if partial:
        k_pos = (blk[..., None] * bk + jnp.arange(bk))[..., None, :]
        ok = ok & _elementwise(layout, q_pos, k_pos, hq)
        if rows is not None:
          ok = ok & rows(blk)
      s = jnp.where(ok, s, -jnp.inf)
      m_new = jnp.maximum(m, s.max(-1))
      m_safe = jnp.where(jnp.isfinite(m_new), m_new, 0.0)  # rows with nothing yet stay at zero
      p = jnp.exp(s - m_safe[..., None])
      alpha = jnp.exp(m - m_safe)
      l = alpha * l + p.sum(-1)
      acc = alpha[..., None] * acc + _dot("bhiqk,bhikd->bhiqd", p.astype(vj.dtype), vj)
      return (m_new, l, acc), None

    carry, _ = jax.lax.scan(step, carry, jnp.arange(idx.shape[-1]))
  m, l, acc = carry
  out = acc / jnp.where(l > 0, l, 1.0)[..., None]
  # +inf for empty rows, so exp(s - lse) is exactly 0 in the backward pass.
  lse = jnp.where(l > 0, m + jnp.log(jnp.where(l > 0, l, 1.0)), jnp.inf)
  out = _unblock(out, t).astype(q.dtype)
  return out, lse  # lse [B, Hq, nq, bq]


# ------------------------------------------------------------------------------------- backward


def _backward(q, k, v, layout: BlockLayout, scale, out, lse, dout):
  b, t, hq, _ = q.shape
  hkv, s_len = k.shape[2], k.shape[1]
  group = hq // hkv
  bq, bk = layout.block_q, layout.block_kv
  nq, nk = layout.num_q_blocks, layout.num_kv_blocks
  qb, kb, vb = _block(q, nq, bq), _block(k, nk, bk), _block(v, nk, bk)
  dob = _block(dout.astype(q.dtype), nq, bq)
  # D_i = sum_d dO_i * O_i: the softmax-backward row term, in f32.
  delta = _block((dout.astype(jnp.float32) * out.astype(jnp.float32)).sum(-1, keepdims=True),
                 nq, bq)[..., 0]  # [B, Hq, nq, bq]
  head_map = jnp.arange(hq) // group

  def probs_and_ds(qx, kx, vx, dox, lsex, deltax, ok):
    s = _dot("bhiqd,bhikd->bhiqk", qx, kx) * scale
    p = jnp.where(ok, jnp.exp(s - lsex[..., None]), 0.0)
    dp = _dot("bhiqd,bhikd->bhiqk", dox, vx)
    return p, p * (dp - deltax[..., None])

  # One pass over the forward's slots: dQ accumulates per q-block, and each slot's dK/dV
  # contributions are scatter-added into their kv-blocks. Scanning the transposed lists instead
  # would run max(q-blocks per kv-block) steps for every kv-block, and one popular block (a
  # sink, a selected summary block) makes that as slow as dense.
  q_pos = (jnp.arange(nq)[:, None] * bq + jnp.arange(bq))[None, None, :, :, None]
  bi = jnp.arange(b)[:, None, None]
  hi = jnp.arange(hq)[None, :, None]
  dq = jnp.zeros(qb.shape, jnp.float32)
  dk = jnp.zeros((b, hq, nk, bk, qb.shape[-1]), jnp.float32)
  dv = jnp.zeros((b, hq, nk, bk, vb.shape[-1]), jnp.float32)
  rows = _row_keep(layout, b, hq)
  for count, idx, partial in _lists(layout, b, hq):

    def step(carry, j, count=count, idx=idx, partial=partial):
      dq, dk, dv = carry
      blk = idx[..., j]  # [B, Hq, nq]
      kj, vj = _gather_rows(kb, blk, head_map), _gather_rows(vb, blk, head_map)
      ok = (j < count)[..., None, None]
      if partial:
        k_pos = (blk[..., None] * bk + jnp.arange(bk))[..., None, :]
        ok = ok & _elementwise(layout, q_pos, k_pos, hq)
        if rows is not None:
          ok = ok & rows(blk)
      p, ds = probs_and_ds(qb, kj, vj, dob, lse, delta, ok)
      dq = dq + _dot("bhiqk,bhikd->bhiqd", ds.astype(kj.dtype), kj) * scale
      # Padded slots repeat a real block index with p = ds = 0, so they add exact zeros.
      dv = dv.at[bi, hi, blk].add(_dot("bhiqk,bhiqd->bhikd", p.astype(dob.dtype), dob))
      dk = dk.at[bi, hi, blk].add(_dot("bhiqk,bhiqd->bhikd", ds.astype(qb.dtype), qb) * scale)
      return (dq, dk, dv), None

    (dq, dk, dv), _ = jax.lax.scan(step, (dq, dk, dv), jnp.arange(idx.shape[-1]))

  def fold(x):  # [B, Hq, nk, bk, D] -> [B, Hkv, nk, bk, D]
    return x.reshape((b, hkv, group) + x.shape[2:]).sum(2)

  dq = _unblock(dq, t).astype(q.dtype)
  dk = _unblock(fold(dk), s_len).astype(k.dtype)
  dv = _unblock(fold(dv), s_len).astype(v.dtype)
  return dq, dk, dv
