"""What the Pallas attention kernels (Triton, TPU) share: the custom VJP they wrap themselves in
(the forward kernel returns the output and its log-sum-exp, the backward kernels take both
back; nothing else is saved), the checks of a direct call, and the elementwise predicate of a
layout's partial blocks."""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
from jax import lax


def with_kernel_vjp(forward: Callable, backward: Callable) -> Callable:
  """-> attention(q, k, v, layout, scale, static) with
  forward(q, k, v, layout, scale, static) -> (out, lse) and
  backward(q, k, v, layout, scale, static, out, lse, dout) -> (dq, dk, dv).
  `scale` and `static` are static (hashable); the layout gets no gradient."""

  @functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
  def attention(q, k, v, layout, scale, static):
    return forward(q, k, v, layout, scale, static)[0]

  def fwd(q, k, v, layout, scale, static):
    out, lse = forward(q, k, v, layout, scale, static)
    return out, (q, k, v, layout, out, lse)

  def bwd(scale, static, res, dout):
    q, k, v, layout, out, lse = res
    dq, dk, dv = backward(q, k, v, layout, scale, static, out, lse, dout)
    dlayout = jax.tree.map(lambda x: jnp.zeros(jnp.shape(x), jax.dtypes.float0), layout)
    return dq, dk, dv, dlayout

  attention.defvjp(fwd, bwd)
  return attention


def partial_block_mask(layout, num_q_heads: int) -> Callable:
  """(q_pos, k_pos, q-head h) -> bool [tq, tk] for a partial block: the layout's mask (per head
  for a MultiHead mask over Hq or Hkv heads) and the key-length bound. Positions broadcast:
  [tq, 1] and [1, tk], or both [tq, tk]."""
  mask = layout.mask

  def fn(qp, kp, h):
    ok = kp < layout.kv_len
    if mask is not None:
      if mask.num_heads is None:
        ok = ok & mask(qp, kp)
      else:  # h is dynamic (a program id), so each head's mask is selected by comparison
        mh = lax.div(h, num_q_heads // mask.num_heads)
        sel = None
        for j in range(mask.num_heads):
          mj = (mh == j) & mask.head(j)(qp, kp)
          sel = mj if sel is None else sel | mj
        ok = ok & sel
    return jnp.broadcast_to(ok, (qp.shape[0], kp.shape[1]))

  return fn


def check_call(q, k, layout, *, unavailable: Callable[[], str | None], interpret: bool,
               block_ok: Callable[[int], bool], block_rule: str, name: str,
               takes_rows: bool = False) -> None:
  """The checks every kernel's own `attention` makes (it is callable directly, as tests do):
  the backend (unless interpreting), the layout's lengths, heads and batch against q and k, the
  kernel's rule for block sizes (`block_ok`, described by `block_rule`), and whether it runs
  per-query layouts (`takes_rows`; `name` is the implementation's, for the message)."""
  if layout.row_keep is not None and not takes_rows:
    raise ValueError(f"implementation={name!r} cannot run a layout with per-query row_keep "
                     "(select_blocks(per_query=True)); use 'pallas_triton' or 'xla'")
  if not interpret:
    why = unavailable()
    if why is not None:
      raise ValueError(why)
  b, t, hq, _ = q.shape
  s, hkv = k.shape[1], k.shape[2]
  if (layout.q_len, layout.kv_len) != (t, s):
    raise ValueError(f"layout is for (q_len, kv_len)=({layout.q_len}, {layout.kv_len}) but q and "
                     f"k have T={t}, S={s}")
  if hq % hkv:
    raise ValueError(f"Hq={hq} must be a multiple of Hkv={hkv}")
  for name, blk in (("block_q", layout.block_q), ("block_kv", layout.block_kv)):
    if not block_ok(blk):
      raise ValueError(f"layout.{name}={blk} must be {block_rule}")
  if layout.batch_size not in (1, b):
    raise ValueError(f"layout batch={layout.batch_size}; valid: 1 or B={b}")
  if layout.num_heads not in (1, hkv, hq):
    raise ValueError(f"layout has {layout.num_heads} heads; valid: 1, Hkv={hkv} or Hq={hq}")
