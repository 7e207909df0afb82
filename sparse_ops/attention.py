"""``sparse_ops.attention``: one entry point, validated before anything compiles.

    out[b, i, h] = softmax_j(scale * q[b, i, h] · k[b, j, h // G]) v[b, j, h // G]

over the keys j the mask (or layout) allows for head h and query i; G = Hq / Hkv (GQA/MQA).
A row with no allowed key is zeros.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec

from sparse_ops import masks as masks_lib
from sparse_ops import partition as partition_lib
from sparse_ops import reference, xla
from sparse_ops.kernels import cudnn as cudnn_kernels
from sparse_ops.kernels import mosaic_gpu as mosaic_gpu_kernels
from sparse_ops.kernels import tpu as tpu_kernels
from sparse_ops.kernels import triton as triton_kernels
from sparse_ops.layout import BlockLayout


class Implementation(NamedTuple):
  run: Callable  # (q, k, v, layout, scale) -> out
  unavailable: Callable[[], str | None]  # None if it can run here, else why not
  default_blocks: Callable[[int, int, int], tuple[int, int]]  # (T, S, D) -> (block_q, block_kv)
  # False for kernels XLA sees as opaque custom calls: on a mesh they run per shard
  # (sparse_ops.partition), where XLA would all-gather their inputs onto every device.
  partitionable: bool = True
  # (q, k, v, layout) -> run: checks the call at trace time (ValueError if it cannot run it) and
  # returns the function to run instead of `run`. None: `run` as it is, for any layout.
  prepare: Callable | None = None
  # layout -> whether its blocks suit the implementation (the Triton kernel tiles powers of two
  # >= 16, so not the one-query blocks of a per-query selection); implementation=None passes
  # over an implementation that cannot take the call's layout.
  takes: Callable[[BlockLayout], bool] = lambda layout: True


def _pow2_blocks(t: int, s: int, d: int, cap: int = 128) -> tuple[int, int]:
  """Blocks of up to ``cap``, shrunk for short sequences so padding stays small."""
  fit = lambda n: min(cap, max(8, 1 << (max(n, 1) - 1).bit_length()))
  del d
  return fit(t), fit(s)


def _always() -> str | None:
  return None


IMPLEMENTATIONS: dict[str, Implementation] = {
    "reference": Implementation(reference.attention, _always, _pow2_blocks),
    "xla": Implementation(xla.attention, _always, _pow2_blocks),
    # Any NVIDIA GPU of compute capability >= 8.0. It is the default on every NVIDIA GPU for now,
    # Hopper included: "pallas_mosaic_gpu" passes its checks on the GPU but its speed is not
    # measured, so it is not in available_implementations() and runs only when named.
    "pallas_triton": Implementation(triton_kernels.attention, triton_kernels.unavailable,
                                    triton_kernels.default_blocks, partitionable=False,
                                    takes=triton_kernels.takes_blocks),
    "pallas_mosaic_gpu": Implementation(mosaic_gpu_kernels.attention,
                                        mosaic_gpu_kernels.unavailable,
                                        mosaic_gpu_kernels.default_blocks, partitionable=False,
                                        takes=mosaic_gpu_kernels.takes_blocks),
    "pallas_tpu": Implementation(tpu_kernels.attention, tpu_kernels.unavailable,
                                 tpu_kernels.default_blocks, partitionable=False,
                                 takes=lambda layout: layout.row_keep is None),
    # Dense layouts only (Causal() with T == S, or Full(), known at trace time), bf16/f16, NVIDIA
    # GPUs: cuDNN's flash attention through jax.nn.dot_product_attention. Not in
    # available_implementations() (it cannot run a sparse layout); implementation=None picks it
    # per call where it can run (best_implementation).
    "cudnn": Implementation(cudnn_kernels.run, cudnn_kernels.unavailable, _pow2_blocks,
                            partitionable=False, prepare=cudnn_kernels.prepare),
}


def available_implementations() -> list[str]:
  """Names of the general implementations (any layout) that can run on the default backend,
  best first. 'cudnn' runs only dense layouts and is not listed; see ``best_implementation``.
  Neither is 'pallas_mosaic_gpu' (Hopper), which runs when named until it is measured faster."""
  order = ["pallas_triton", "pallas_tpu", "xla", "reference"]
  return [n for n in order if IMPLEMENTATIONS[n].unavailable() is None]


def default_implementation() -> str:
  """The best general implementation available here (never 'reference', which is for checking):
  what ``implementation=None`` runs for any layout 'cudnn' cannot take."""
  return next(n for n in available_implementations() if n != "reference")


# Below this query length ``implementation=None`` keeps our kernel for dense layouts too: on one
# H200 (bf16, causal, 4 heads, D = 64, fwd+bwd) cuDNN was 1.23x slower than pallas_triton at
# T = 512 and 1.26x faster at T = 4096 (benchmarks/results/attention_h200_6m_T*.md); the
# threshold sits between the two measured lengths.
CUDNN_MIN_LEN = 2048


def best_implementation(q, k, v, layout: BlockLayout) -> str:
  """What ``implementation=None`` runs for this call: 'cudnn' when the layout is exactly dense
  causal (T == S) or full and known at trace time, T >= CUDNN_MIN_LEN, q is bf16/f16 with a head
  dim and (even) lengths cuDNN takes, and the default backend is an NVIDIA GPU; otherwise
  ``default_implementation()`` (``sparse_ops.kernels.cudnn.refusal`` says why not).

  Why: dense attention is most of what the study's models run, and cuDNN's dense flash
  attention beats our block-sparse Triton kernel there at long T (one H200, bf16, causal, 4 heads,
  D = 64, fwd+bwd: 1.26x faster at T = 4096); sparse layouts need our kernels. At T = 512 it was
  1.23x slower than Triton in isolation, while the 6m training step with it was not slower than
  an earlier session's Triton run (an open question, not settled: see
  ``sparse_ops.kernels.cudnn`` and ``benchmarks/results/train_loop_h200.md``). The choice is per
  call, so one model may run cuDNN in its dense layers and Triton in its sparse ones. A layout
  the default cannot take (``Implementation.takes``: one-query blocks are no Triton tiles) runs
  on the next available one that can. An explicit ``implementation=`` never switches.
  """
  if (q.shape[1] >= CUDNN_MIN_LEN and IMPLEMENTATIONS["cudnn"].unavailable() is None
      and cudnn_kernels.refusal(q, k, v, layout) is None):
    return "cudnn"
  general = default_implementation()
  if IMPLEMENTATIONS[general].takes(layout):
    return general
  return next(n for n in available_implementations()
              if n not in ("reference", general) and IMPLEMENTATIONS[n].takes(layout))


def attention(q: jax.Array, k: jax.Array, v: jax.Array, *, mask: masks_lib.Mask | None = None,
              layout: BlockLayout | None = None, scale: float | None = None,
              implementation: str | None = None,
              partition: PartitionSpec | None = None) -> jax.Array:
  """Masked / block-sparse attention.

  Args:
    q: [B, T, Hq, D]; k: [B, S, Hkv, D]; v: [B, S, Hkv, Dv]; Hq % Hkv == 0.
    mask: a static ``sparse_ops.masks.Mask`` (its layout is built and cached at trace time), or
    layout: a ``BlockLayout`` (may be built inside jit, e.g. by ``select_blocks``). Exactly one.
    scale: logits scale, default D ** -0.5.
    implementation: "reference", "xla", "pallas_triton", "pallas_mosaic_gpu", "pallas_tpu",
      "cudnn" (dense causal or full layouts only, bf16/f16, NVIDIA GPUs), or None for the best
      available here, chosen per call (``best_implementation``: "cudnn" for such dense calls on
      an NVIDIA GPU, otherwise ``default_implementation()``). Asking for one that cannot run
      the call raises, never falls back.
    partition: how q is split over the mesh set by ``jax.set_mesh``, as a PartitionSpec over
      [B, T, Hq, D] (batch and head dimensions only). Pallas kernels run per shard of it
      (``sparse_ops.partition``); default: the batch split over every mesh axis (inside a
      ``shard_map``, every axis it has not made manual). With no mesh set they run on whole
      arrays, and sharded inputs are gathered onto every device: set the mesh when the inputs
      are sharded. "xla" and "reference" are partitioned by XLA from the inputs' own
      shardings; ``partition`` is checked for them too, so a bad one fails on every backend.

  Returns:
    [B, T, Hq, Dv] in q's dtype.
  """
  _check_arrays(q, k, v)
  b, t, hq, d = q.shape
  s, hkv = k.shape[1], k.shape[2]
  if (mask is None) == (layout is None):
    raise ValueError("give exactly one of mask= or layout= (got "
                     f"{'both' if mask is not None else 'neither'})")
  auto = implementation is None
  if auto:  # the general default builds a mask's layout; the call may then take 'cudnn'
    implementation = default_implementation()
  if implementation not in IMPLEMENTATIONS:
    raise ValueError(f"implementation={implementation!r} is unknown; valid: "
                     f"{sorted(IMPLEMENTATIONS)} or None")
  impl = IMPLEMENTATIONS[implementation]
  why = impl.unavailable()
  if why is not None:
    raise ValueError(why)
  if mask is not None:
    if not isinstance(mask, masks_lib.Mask):
      raise ValueError(f"mask={mask!r} must be a sparse_ops.masks.Mask")
    _check_heads("mask", mask.num_heads, hq, hkv)
    block_q, block_kv = impl.default_blocks(t, s, d)
    layout = BlockLayout.from_mask(mask, t, s, block_q=block_q, block_kv=block_kv)
  else:
    _check_layout(layout, b, t, s, hq, hkv)
  if auto:
    impl = IMPLEMENTATIONS[best_implementation(q, k, v, layout)]
  if scale is None:
    scale = d ** -0.5
  # The layout is checked here, before per_shard: inside its shard_map the lists are traced.
  run = impl.run if impl.prepare is None else impl.prepare(q, k, v, layout)
  return partition_lib.per_shard(run, q, k, v, layout, scale, partition,
                                 partitionable=impl.partitionable)


# ----------------------------------------------------------------------------------- validation


def _check_arrays(q, k, v) -> None:
  for name, x in (("q", q), ("k", k), ("v", v)):
    if not hasattr(x, "shape") or len(x.shape) != 4:
      raise ValueError(f"{name}.shape={getattr(x, 'shape', None)} must be 4-D: "
                       f"q [B, T, Hq, D], k [B, S, Hkv, D], v [B, S, Hkv, Dv]")
    if not jnp.issubdtype(x.dtype, jnp.floating):
      raise ValueError(f"{name}.dtype={x.dtype} must be floating point")
  if not (q.dtype == k.dtype == v.dtype):
    raise ValueError(f"q, k, v dtypes {q.dtype}, {k.dtype}, {v.dtype} must be equal")
  if not (q.shape[0] == k.shape[0] == v.shape[0]):
    raise ValueError(f"batch sizes q={q.shape[0]}, k={k.shape[0]}, v={v.shape[0]} must be equal")
  if k.shape[:3] != v.shape[:3]:
    raise ValueError(f"k.shape={k.shape} and v.shape={v.shape} must agree on [B, S, Hkv]")
  if q.shape[3] != k.shape[3]:
    raise ValueError(f"head dims q={q.shape[3]} and k={k.shape[3]} must be equal")
  if min(q.shape) == 0 or min(k.shape) == 0 or v.shape[3] == 0:
    raise ValueError(f"empty dimension in q.shape={q.shape}, k.shape={k.shape}, v.shape={v.shape}")
  hq, hkv = q.shape[2], k.shape[2]
  if hq % hkv:
    raise ValueError(f"Hq={hq} must be a multiple of Hkv={hkv} (grouped-query attention)")


def _check_heads(what: str, heads: int | None, hq: int, hkv: int) -> None:
  if heads not in (None, 1, hq, hkv):
    raise ValueError(f"{what} has {heads} heads; valid: 1, Hkv={hkv} or Hq={hq}")


def _check_layout(layout, b, t, s, hq, hkv) -> None:
  if not isinstance(layout, BlockLayout):
    raise ValueError(f"layout={type(layout).__name__} must be a sparse_ops.BlockLayout")
  if (layout.q_len, layout.kv_len) != (t, s):
    raise ValueError(f"layout is for (q_len, kv_len)=({layout.q_len}, {layout.kv_len}) but "
                     f"q and k have T={t}, S={s}")
  if layout.batch_size not in (1, b):
    raise ValueError(f"layout batch={layout.batch_size}; valid: 1 or B={b}")
  _check_heads("layout", layout.num_heads, hq, hkv)
  if layout.mask is not None:
    _check_heads("layout.mask", layout.mask.num_heads, hq, hkv)
  nq, nk = layout.num_q_blocks, layout.num_kv_blocks
  if layout.kv_num_blocks.shape[-1] != nq or layout.q_num_blocks.shape[-1] != nk:
    raise ValueError(f"layout arrays have {layout.kv_num_blocks.shape[-1]} q-blocks and "
                     f"{layout.q_num_blocks.shape[-1]} kv-blocks; expected {nq} and {nk}")
  if layout.row_keep is not None:
    want = layout.kv_num_blocks.shape[:2] + (nk, nq * layout.block_q)
    if tuple(layout.row_keep.shape) != want:
      raise ValueError(f"layout.row_keep.shape={tuple(layout.row_keep.shape)}; expected {want} "
                       "([Bl, Hl, kv-blocks, padded queries])")

