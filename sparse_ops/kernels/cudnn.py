"""Dense attention through cuDNN's fused flash attention (``jax.nn.dot_product_attention``).

``sparse_ops.attention(..., implementation="cudnn")`` runs only layouts that are exactly dense
and known at trace time: dense causal (``Causal()``, T == S) or ``Full()``, e.g.
``BlockLayout.from_mask(Causal(), T, T)`` or ``mask=Causal()``. A layout's block lists must be
concrete arrays (numpy, or jax arrays that are not traced); one built or passed inside ``jit``
(``select_blocks``, a layout given to a jitted function as an argument) cannot be known to be
dense, and is refused, as are block-sparse layouts, float32, head dims cuDNN does not take, and
odd lengths (JAX 0.11.2's cuDNN backward refuses them: "Unsupported sequence length Q 257").
Every refusal is a one-line ValueError naming the value and what is valid; nothing falls back.

Why it exists: dense attention is most of what the study's small models run, and a dense-only
library tuned by NVIDIA is the bar our block-sparse Triton kernel has to beat there. Measured on
one H200 (bf16, dense causal, 4 heads, D = 64, forward + backward; jax 0.11.2, cuDNN 9.19;
``benchmarks/results/attention_h200_6m_T*.md``): at T = 4096, B = 8 cuDNN takes 1.05 ms against
Triton's 1.32 ms (1.26x faster); at T = 512, B = 64 it takes 0.52 ms against 0.42 ms (Triton
1.23x faster in isolation, both below 75 TFLOP/s). ``implementation=None`` picks it for every dense
bf16/f16 call on an NVIDIA GPU (``sparse_ops.attention.best_implementation``); sparse layouts keep
the Triton kernel. Whether it should also give way to Triton at short T is open: in the 6m
training step at T = 512 (``benchmarks/results/train_loop_h200.md``) the cuDNN run was not slower
than the earlier Triton run, but the two were measured in different sessions.

Semantics are those of ``sparse_ops.attention`` (GQA through fewer kv heads, ``scale``); the
gradient is JAX's own custom VJP around the cuDNN forward and backward calls. Like the Pallas
kernels it runs per shard on a mesh (``Implementation.partitionable=False``), so choosing it per
call changes no sharding.
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from sparse_ops import masks as masks_lib
from sparse_ops.layout import BlockLayout

DTYPES = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
_NAME = "implementation='cudnn'"


def _compute_capability() -> float | None:
  try:
    cc = getattr(jax.devices()[0], "compute_capability", None)
    return float(cc) if cc is not None else None
  except (RuntimeError, ValueError, TypeError):  # no backend, or a non-CUDA capability string
    return None


def unavailable() -> str | None:
  """None if cuDNN attention can run on the default backend, else why not."""
  hint = "; use 'xla' (any backend) or, on an NVIDIA GPU, 'pallas_triton'"
  try:
    dev = jax.devices()[0]
  except RuntimeError as e:  # no backend at all
    return f"{_NAME} needs an NVIDIA GPU: {e}{hint}"
  if dev.platform != "gpu":
    return (f"{_NAME} needs an NVIDIA GPU (Ampere or newer) with cuDNN; the default backend "
            f"here is {jax.default_backend()!r}{hint}")
  cc = _compute_capability()
  if cc is None:
    return (f"{_NAME} needs an NVIDIA GPU; {dev.device_kind!r} reports no CUDA compute "
            f"capability{hint}")
  if cc < 8.0:
    return f"{_NAME} needs compute capability >= 8.0 (Ampere); {dev.device_kind!r} has {cc}{hint}"
  return None


def max_head_dim() -> int:
  """The largest head dim cuDNN's bf16/f16 flash attention takes here (256 on Hopper+, else 128)."""
  cc = _compute_capability()
  return 256 if cc is not None and cc >= 9.0 else 128


# --------------------------------------------------------------------------- the dense check


def _expand(count, idx, nk: int) -> np.ndarray:
  """Block booleans [Bl, Hl, nq, nk] from one list pair, in numpy (no staged jnp ops)."""
  count, idx = np.asarray(count), np.asarray(idx)
  valid = np.arange(idx.shape[-1]) < count[..., None]
  out = np.zeros(idx.shape[:-1] + (nk + 1,), bool)
  np.put_along_axis(out, np.where(valid, idx, nk).astype(np.int64), True, axis=-1)
  return out[..., :nk]


def dense_kind(layout: BlockLayout) -> tuple[str | None, str]:
  """("causal" | "full", "") if ``layout`` allows exactly the dense causal (T == S) or full
  pairs, for every batch row and head; else (None, why not). Decided at trace time from the
  concrete block lists, in numpy work proportional to the number of blocks, never T × S."""
  lists = (layout.kv_num_blocks, layout.kv_indices, layout.full_kv_num_blocks,
           layout.full_kv_indices)
  if any(isinstance(x, jax.core.Tracer) for x in lists):
    return None, ("has traced block lists (built or passed inside jit, e.g. by "
                  "select_blocks), so which pairs it keeps is unknown at trace time")
  if layout.row_keep is not None:
    return None, "keeps kv-blocks per query (row_keep)"
  elem = layout.mask
  causal, full_mask = masks_lib.Causal(), masks_lib.Full()
  if elem is not None and elem != causal and elem != full_mask:
    return None, f"has mask {elem!r}, not Causal() or Full()"
  t, s, bq, bk = layout.q_len, layout.kv_len, layout.block_q, layout.block_kv
  nq, nk = layout.num_q_blocks, layout.num_kv_blocks
  partial = _expand(layout.kv_num_blocks, layout.kv_indices, nk)
  full = _expand(layout.full_kv_num_blocks, layout.full_kv_indices, nk)
  visited = partial | full
  q0 = np.arange(nq, dtype=np.int64)[:, None] * bq
  k0 = np.arange(nk, dtype=np.int64)[None, :] * bk
  q1, k1 = np.minimum(q0 + bq, t), np.minimum(k0 + bk, s)
  shape = (nq, nk)
  bounds = lambda m: tuple(np.broadcast_to(x, shape) for x in m.block_bounds(q0, q1, k0, k1))
  # Inside a partial block the allowed pairs are elem's (all of them when elem is None or Full).
  elem_all = np.ones(shape, bool) if elem in (None, full_mask) else bounds(causal)[1]
  for kind, target in (("causal", causal), ("full", full_mask)):
    if kind == "causal" and t != s:
      continue
    any_, all_ = bounds(target)
    covered = bool((visited | ~any_).all())       # every block with a target pair is visited
    exact_full = bool((~full | all_).all())       # a full block holds only target pairs
    # A partial block applies elem: right if elem is the target, or if both are whole there.
    exact_partial = elem == target or bool((~partial | (all_ & elem_all)).all())
    if covered and exact_full and exact_partial:
      return kind, ""
  if t != s and elem == causal and bool((visited | ~bounds(causal)[0]).all()):
    return None, f"is causal with T={t} != S={s}; causal needs T == S"
  return None, (f"is block-sparse: it keeps {int(visited.sum())} of {visited.size} blocks, not "
                f"exactly dense Causal() or Full()")


def refusal(q, k, v, layout: BlockLayout) -> str | None:
  """Why cuDNN cannot run this call (one line naming the value and what is valid), or None.
  Device checks are ``unavailable()``'s; this is only the call's own arguments."""
  if q.dtype not in DTYPES:
    return (f"{_NAME} runs bfloat16 or float16 only, got q.dtype={q.dtype}; use "
            f"'pallas_triton' or 'xla' for {q.dtype}")
  d, dv = q.shape[-1], v.shape[-1]
  top = max_head_dim()
  if d % 8 or d > top:
    return f"{_NAME} takes head dims that are multiples of 8 up to {top} here, got D={d}"
  if dv != d:
    return f"{_NAME} needs v's head dim equal to q's, got Dv={dv} and D={d}"
  t, s = q.shape[1], k.shape[1]
  if t % 2 or s % 2:  # jax 0.11.2 passes cuDNN a placeholder bias, whose backward needs even T, S
    return f"{_NAME} needs even lengths (JAX's cuDNN backward refuses odd ones), got T={t}, S={s}"
  kind, why = dense_kind(layout)
  if kind is None:
    return (f"{_NAME} runs only dense layouts known at trace time (Causal() with T == S, or "
            f"Full()): this layout {why}; use 'pallas_triton' or 'xla' for it")
  return None


def prepare(q, k, v, layout: BlockLayout) -> Callable:
  """Checks the call at trace time (ValueError if cuDNN cannot run it) and returns
  run(q, k, v, layout, scale), which ignores the layout (already known to be dense)."""
  why = refusal(q, k, v, layout)
  if why is not None:
    raise ValueError(why)
  return functools.partial(_run, causal=dense_kind(layout)[0] == "causal")


def run(q, k, v, layout: BlockLayout, scale: float) -> jax.Array:
  """``Implementation.run``: checks, then runs (``sparse_ops.attention`` calls ``prepare``
  itself, before any shard_map, and runs what it returns)."""
  return prepare(q, k, v, layout)(q, k, v, layout, scale)


def _run(q, k, v, layout, scale, *, causal: bool):
  del layout  # exactly dense: the kind was decided from it before any sharding or tracing
  return jax.nn.dot_product_attention(q, k, v, scale=float(scale), is_causal=causal,
                                      implementation="cudnn")


def attention(q, k, v, layout: BlockLayout, scale: float | None = None) -> jax.Array:
  """A direct call (the checks of ``sparse_ops.attention`` are not repeated here)."""
  why = unavailable()
  if why is not None:
    raise ValueError(why)
  return run(q, k, v, layout, q.shape[-1] ** -0.5 if scale is None else scale)
