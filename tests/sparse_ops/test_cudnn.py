"""implementation="cudnn" (dense layouts through cuDNN) and the per-call choice of
implementation=None.

On CPU: the refusals (one line each, naming the value and what is valid), the dense check against
``to_dense`` on constructed layouts, and the rule ``implementation=None`` follows, with the device
check made to pass by replacing the registry entry (``monkeypatch``). Under ``-m gpu``: cuDNN
against ``reference``, outputs and gradients.
"""

from __future__ import annotations

import dataclasses
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sparse_ops as so
from sparse_ops import masks as M
from sparse_ops import xla
from sparse_ops.attention import IMPLEMENTATIONS
from sparse_ops.kernels import cudnn

ATTENTION = sys.modules["sparse_ops.attention"]  # the module (so.attention is the function)

ON_GPU = jax.default_backend() == "gpu"


def _qkv(b=1, t=64, s=None, hq=4, hkv=2, d=64, dv=None, dtype=jnp.bfloat16, seed=0):
  s = t if s is None else s
  rng = np.random.default_rng(seed)  # numpy: no compile per shape
  shapes = ((b, t, hq, d), (b, s, hkv, d), (b, s, hkv, dv or d), (b, t, hq, dv or d))
  return tuple(jnp.asarray(rng.standard_normal(x, np.float32), dtype) for x in shapes)


@pytest.fixture
def device_ok(monkeypatch):
  """cuDNN's device check passes (its run is never reached on CPU by these tests), and the
  None rule's length threshold is lifted so short test shapes reach it."""
  monkeypatch.setitem(IMPLEMENTATIONS, "cudnn",
                      IMPLEMENTATIONS["cudnn"]._replace(unavailable=lambda: None))
  monkeypatch.setattr(ATTENTION, "CUDNN_MIN_LEN", 0)


# ------------------------------------------------------------------------------ the dense check


def _allowed(layout) -> np.ndarray:
  """The allowed pairs [Bl, Hl, T, S], in plain numpy from the forward lists (what
  ``to_dense`` computes, without its per-shape compile)."""
  t, s, bq, bk = layout.q_len, layout.kv_len, layout.block_q, layout.block_kv
  out = np.zeros((layout.batch_size, layout.num_heads, t, s), bool)
  for counts, idx, partial in ((layout.kv_num_blocks, layout.kv_indices, True),
                               (layout.full_kv_num_blocks, layout.full_kv_indices, False)):
    counts, idx = np.asarray(counts), np.asarray(idx)
    for b, h, i in np.ndindex(counts.shape):
      for j in idx[b, h, i, :counts[b, h, i]]:
        qs = np.arange(i * bq, min((i + 1) * bq, t))[:, None]
        ks = np.arange(j * bk, min((j + 1) * bk, s))[None, :]
        ok = np.ones((qs.size, ks.size), bool)
        if partial and layout.mask is not None:
          m = layout.mask if layout.mask.num_heads is None else layout.mask.head(h)
          ok = np.broadcast_to(np.asarray(m(qs, ks)), ok.shape)
        out[b, h, qs, ks] |= ok
  return out


def _truth(layout) -> set[str]:
  """The dense kinds the layout's allowed pairs are (both when T == S == 1)."""
  dense = _allowed(layout)
  t, s = layout.q_len, layout.kv_len
  kinds = set()
  if dense.all():
    kinds.add("full")
  if t == s and (dense == np.tril(np.ones((t, s), bool))).all():
    kinds.add("causal")
  return kinds


def _layouts():
  out = []
  for t, s in ((64, 64), (70, 70), (70, 40), (1, 1), (5, 37)):
    for bq, bk in ((16, 16), (8, 32), (1, 1), (128, 128)):
      for mask in (M.Causal(), M.Full(), M.Local(8), M.Sink(4) | M.Local(8),
                   (M.BlockRandom(0.5, 1, 16) | M.Local(1)) & M.Causal(),
                   M.MultiHead([M.Causal(), M.Causal()])):
        out.append(so.BlockLayout.from_mask(mask, t, s, block_q=bq, block_kv=bk))
  t = 48
  nq = nk = t // 16
  causal_blocks = np.tril(np.ones((nq, nk), bool))[None, None]
  every = np.ones((1, 1, nq, nk), bool)
  kw = dict(block_q=16, block_kv=16, q_len=t, kv_len=t)
  out += [
      so.BlockLayout.from_blocks(jnp.asarray(every), mask=M.Causal(), **kw),  # all partial
      so.BlockLayout.from_blocks(jnp.asarray(every), **kw),  # mask None: full
      so.BlockLayout.from_blocks(jnp.asarray(causal_blocks), **kw),  # whole diagonal blocks
      so.BlockLayout.from_blocks(jnp.asarray(causal_blocks), mask=M.Causal(), **kw),
      so.BlockLayout.from_blocks(jnp.asarray(causal_blocks), mask=M.Full(), **kw),
      so.BlockLayout.from_blocks(jnp.asarray(np.tril(np.ones((t, t), bool))[None, None]),
                                 block_q=1, block_kv=1, q_len=t, kv_len=t),  # causal at block 1
      # Two batch rows, the second missing one block: not dense.
      so.BlockLayout.from_blocks(jnp.asarray(np.stack([causal_blocks[0],
                                                       causal_blocks[0] & ~np.eye(nq, k=-1,
                                                                                  dtype=bool)])),
                                 mask=M.Causal(), **kw),
  ]
  return out


def test_allowed_is_to_dense():
  for layout in _layouts()[::25]:
    np.testing.assert_array_equal(
        _allowed(layout), np.broadcast_to(np.asarray(layout.to_dense()), _allowed(layout).shape))


def test_dense_kind_matches_the_allowed_pairs():
  kinds = set()
  for layout in _layouts():
    kind, why = cudnn.dense_kind(layout)
    truth = _truth(layout)
    kinds.add(kind)
    if kind is not None:  # never dense when it is not
      assert kind in truth, layout
    elif layout.mask in (None, M.Causal(), M.Full()):  # and always found for these masks
      assert not truth, (layout, why)
    else:  # other masks are refused by name, even where they happen to be dense
      assert "has mask" in why
  assert {"causal", "full", None} <= kinds


# ------------------------------------------------------------------------------------ refusals


def test_unavailable_off_gpu_names_itself():
  if ON_GPU:
    pytest.skip("checks the error raised off the GPU; runs on every CPU machine (CI)")
  q, k, v, _ = _qkv()
  with pytest.raises(ValueError, match=r"^implementation='cudnn' needs an NVIDIA GPU.*'cpu'"):
    so.attention(q, k, v, mask=M.Causal(), implementation="cudnn")
  assert "cudnn" not in so.available_implementations()  # dense-only: never a general default


def _refused(match, q, k, v, **kw):
  with pytest.raises(ValueError, match=match) as info:
    so.attention(q, k, v, implementation="cudnn", **kw)
  message = str(info.value)
  assert "\n" not in message and message.startswith("implementation='cudnn'")
  return message


@pytest.mark.usefixtures("device_ok")
def test_refusals_name_the_value_and_what_is_valid():
  q, k, v, _ = _qkv(dtype=jnp.float32)
  _refused(r"bfloat16 or float16 only, got q.dtype=float32; use 'pallas_triton' or 'xla'",
           q, k, v, mask=M.Causal())
  for d in (12, 520):
    q, k, v, _ = _qkv(d=d)
    _refused(rf"multiples of 8 up to \d+ here, got D={d}", q, k, v, mask=M.Causal())
  q, k, v, _ = _qkv(d=64, dv=32)
  _refused(r"v's head dim equal to q's, got Dv=32 and D=64", q, k, v, mask=M.Causal())
  q, k, v, _ = _qkv(t=257)  # on the H200 JAX's cuDNN backward raised for this length
  _refused(r"needs even lengths \(JAX's cuDNN backward refuses odd ones\), got T=257, S=257",
           q, k, v, mask=M.Causal())

  q, k, v, _ = _qkv(t=256)
  _refused(r"only dense layouts known at trace time \(Causal\(\) with T == S, or Full\(\)\): "
           r"this layout has mask Local\(window=64\)", q, k, v, mask=M.Local(64))
  sparse = so.BlockLayout.from_mask((M.BlockRandom(0.3, 0, 64) | M.Local(1)) & M.Causal(), 256,
                                    256, block_q=64, block_kv=64)
  # The same kept blocks with a plain causal mask on the partial ones: block-sparse all the same.
  sparse = dataclasses.replace(sparse, mask=M.Causal())
  _refused(r"this layout is block-sparse: it keeps \d+ of 16 blocks", q, k, v, layout=sparse)
  q, k, v, _ = _qkv(t=64, s=96)
  _refused(r"is causal with T=64 != S=96; causal needs T == S", q, k, v, mask=M.Causal())

  q, k, v, _ = _qkv(t=128)
  layout = so.BlockLayout.from_mask(M.Causal(), 128, 128)
  traced = jax.jit(lambda lay: so.attention(q, k, v, layout=lay, implementation="cudnn"))
  with pytest.raises(ValueError, match=r"has traced block lists \(built or passed inside jit"):
    traced(layout)
  selected = jax.jit(lambda q, k: so.attention(
      q, k, v, implementation="cudnn",
      layout=so.select_blocks(q, k, block_q=32, block_kv=32, budget=so.Budget.density(0.5))))
  with pytest.raises(ValueError, match=r"has traced block lists"):
    selected(q, k)


# ------------------------------------------------------------------------------ the None rule


@pytest.mark.usefixtures("device_ok")
def test_none_picks_cudnn_only_for_dense_half_precision_calls():
  general = so.default_implementation()
  assert general != "cudnn"
  pick = lambda q, k, v, mask, t, s: so.best_implementation(
      q, k, v, so.BlockLayout.from_mask(mask, t, s, block_q=64, block_kv=64))
  for dtype in (jnp.bfloat16, jnp.float16):
    q, k, v, _ = _qkv(t=300, hq=4, hkv=1, dtype=dtype)
    assert pick(q, k, v, M.Causal(), 300, 300) == "cudnn"
    # a dense pattern with a sink too (the h200 study's models): its union is Causal() itself
    assert pick(q, k, v, M.Causal() | (M.Sink(64) & M.Causal()), 300, 300) == "cudnn"
  q, k, v, _ = _qkv(t=300, s=200)
  assert pick(q, k, v, M.Full(), 300, 200) == "cudnn"
  assert pick(q, k, v, M.Causal(), 300, 200) == general  # causal with T != S
  q, k, v, _ = _qkv(t=256)
  assert pick(q, k, v, M.Local(64), 256, 256) == general
  q32, k32, v32, _ = _qkv(t=256, dtype=jnp.float32)
  assert pick(q32, k32, v32, M.Causal(), 256, 256) == general
  q96, k96, v96, _ = _qkv(t=256, d=12)
  assert pick(q96, k96, v96, M.Causal(), 256, 256) == general
  q, k, v, _ = _qkv(t=301)
  assert pick(q, k, v, M.Causal(), 301, 301) == general  # odd length
  q, k, v, _ = _qkv(t=256)
  # A layout that is an argument of a jitted function is traced: not known to be dense.
  seen = []
  layout = so.BlockLayout.from_mask(M.Causal(), 256, 256)
  jax.make_jaxpr(lambda lay: seen.append(so.best_implementation(q, k, v, lay)))(layout)
  assert seen == [general]
  # ... while one built at trace time inside jit (what the models do) is concrete.
  jax.make_jaxpr(lambda q: seen.append(so.best_implementation(
      q, k, v, so.BlockLayout.from_mask(M.Causal(), 256, 256))))(q)
  assert seen == [general, "cudnn"]


def test_none_keeps_our_kernel_below_the_length_threshold(monkeypatch):
  """Measured: cuDNN slower than pallas_triton at T = 512, faster at 4096 (CUDNN_MIN_LEN)."""
  monkeypatch.setitem(IMPLEMENTATIONS, "cudnn",
                      IMPLEMENTATIONS["cudnn"]._replace(unavailable=lambda: None))
  n = ATTENTION.CUDNN_MIN_LEN
  for t, want in ((n - 2, so.default_implementation()), (n, "cudnn")):
    q, k, v, _ = _qkv(b=1, t=t, hq=1, hkv=1, d=16)
    assert so.best_implementation(q, k, v, so.BlockLayout.from_mask(M.Causal(), t, t)) == want


def test_none_keeps_the_general_default_without_a_gpu():
  if ON_GPU:
    pytest.skip("checks the default without a GPU: runs on every CPU machine (CI); on a GPU "
                "test_gpu_matches_reference checks the cuDNN pick instead")
  q, k, v, _ = _qkv(t=64)
  layout = so.BlockLayout.from_mask(M.Causal(), 64, 64)
  assert so.best_implementation(q, k, v, layout) == so.default_implementation() == "xla"
  got = so.attention(q, k, v, layout=layout)
  want = so.attention(q, k, v, layout=layout, implementation="xla")
  np.testing.assert_array_equal(np.asarray(got, np.float32), np.asarray(want, np.float32))


def test_attention_routes_per_call_and_explicit_names_never_switch(monkeypatch):
  calls = []

  def prepare(q, k, v, layout):
    why = cudnn.refusal(q, k, v, layout)
    if why is not None:
      raise ValueError(why)
    calls.append(cudnn.dense_kind(layout)[0])
    return xla.attention  # stands in for the cuDNN call, which cannot run on CPU

  monkeypatch.setitem(IMPLEMENTATIONS, "cudnn", IMPLEMENTATIONS["cudnn"]._replace(
      unavailable=lambda: None, prepare=prepare))
  monkeypatch.setattr(ATTENTION, "CUDNN_MIN_LEN", 0)
  q, k, v, _ = _qkv(t=128)
  so.attention(q, k, v, mask=M.Causal())
  so.attention(q, k, v, layout=so.BlockLayout.from_mask(M.Full(), 128, 128))
  assert calls == ["causal", "full"]
  so.attention(q, k, v, mask=M.Local(32))  # sparse: the general default
  so.attention(q, k, v, mask=M.Causal(), implementation="xla")  # explicit: never switches
  q32, k32, v32, _ = _qkv(t=128, dtype=jnp.float32)
  so.attention(q32, k32, v32, mask=M.Causal())  # f32: the general default
  assert calls == ["causal", "full"]
  so.attention(q, k, v, mask=M.Causal(), implementation="cudnn")
  assert calls == ["causal", "full", "causal"]


# --------------------------------------------------------------------------------------- GPU


def _close(got, want, what, tol=2e-2):
  got, want = np.asarray(got, np.float32), np.asarray(want, np.float32)
  assert np.isfinite(got).all(), f"{what}: non-finite values"
  scale = max(1.0, float(np.abs(want).max()))
  err = float(np.abs(got - want).max())
  assert err <= tol * scale, f"{what}: max error {err:.3g} > {tol} × {scale:.3g}"


@pytest.mark.gpu
@pytest.mark.parametrize("mask,b,t,s,hq,hkv,d", [
    (M.Causal(), 2, 300, 300, 8, 2, 64),   # GQA, T not a multiple of the blocks
    (M.Causal(), 4, 512, 512, 4, 4, 64),   # the 6m model's attention at T=512
    (M.Causal(), 4, 512, 512, 4, 4, 48),   # the 3m model's head dim
    (M.Causal(), 1, 256, 256, 4, 1, 128),  # MQA, D=128 (T=257: refused, see test_refusals)
    (M.Full(), 2, 300, 300, 8, 2, 64),
    (M.Full(), 2, 300, 200, 4, 2, 64),     # full, T != S
], ids=["causal_gqa_T300", "causal_T512", "causal_T512_d48", "causal_mqa_d128", "full_gqa_T300",
        "full_T300_S200"])
def test_gpu_matches_reference(mask, b, t, s, hq, hkv, d, monkeypatch):
  monkeypatch.setattr(ATTENTION, "CUDNN_MIN_LEN", 0)
  seed = int.from_bytes(os.urandom(4), "little")
  q, k, v, g = _qkv(b=b, t=t, s=s, hq=hq, hkv=hkv, d=d, dtype=jnp.bfloat16, seed=seed)
  layout = so.BlockLayout.from_mask(mask, t, s)

  def run(impl):
    f = lambda q, k, v: so.attention(q, k, v, layout=layout, implementation=impl)
    out, vjp = jax.vjp(jax.jit(f), q, k, v)
    return (out,) + vjp(g)

  for name, got, want in zip(("out", "dq", "dk", "dv"), run("cudnn"), run("reference")):
    _close(got, want, f"{name} (seed {seed})")
  assert so.best_implementation(q, k, v, layout) == "cudnn"
  assert so.best_implementation(q.astype(jnp.float32), k.astype(jnp.float32),
                                v.astype(jnp.float32), layout) == so.default_implementation()


def test_none_runs_untileable_blocks_on_xla_where_triton_is_the_default(monkeypatch):
  """One-query q-blocks (per-query selection) cannot be Triton tiles: None takes 'xla' there,
  and keeps Triton for blocks it tiles."""
  monkeypatch.setattr(ATTENTION, "default_implementation", lambda: "pallas_triton")
  q, k, v, _ = _qkv(t=64)
  tiled = so.BlockLayout.from_mask(M.Causal(), 64, 64, block_q=16, block_kv=16)
  per_query = so.BlockLayout.from_mask(M.Causal(), 64, 64, block_q=1, block_kv=16)
  assert so.best_implementation(q, k, v, tiled) == "pallas_triton"
  assert so.best_implementation(q, k, v, per_query) == "xla"
