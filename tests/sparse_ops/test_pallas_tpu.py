"""The Pallas TPU kernels (``sparse_ops.kernels.tpu``) against ``reference``: outputs and
dq/dk/dv on fresh random inputs, in Pallas's TPU interpret mode on CPU (the shared cases of
``kernel_cases``: static masks, per-head masks, a per-batch layout built inside jit, GQA, ragged
lengths, empty rows), content-selected layouts, the lowering to TPU custom calls through
``jax.export`` (no TPU needed), the metadata size at long lengths, and a trainer run.

What these cannot check without a TPU: Mosaic's compile-time VMEM/SMEM limits on a real chip,
and speed.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sparse_ops as so
from sparse_ops import masks, reference
from sparse_ops.kernels import tpu as kt

import kernel_cases  # tests/sparse_ops/kernel_cases.py (pytest puts this folder on sys.path)


def _kernel(q, k, v, layout, scale, case):
  return kt.attention(q, k, v, layout, scale, interpret=True)


@pytest.mark.parametrize("case", kernel_cases.CASES, ids=lambda c: c.name)
def test_interpret_matches_reference(case):
  kernel_cases.check(case, _kernel, seed=int.from_bytes(os.urandom(4), "little"))


def _qkv(b, t, hq, hkv, d, seed, dtype=jnp.float32):
  ks = jax.random.split(jax.random.key(seed), 3)
  return tuple(jax.random.normal(key, (b, t, h, d), jnp.float32).astype(dtype)
               for key, h in zip(ks, (hq, hkv, hkv)))


def test_content_selected_layout_under_jit():
  """`select_blocks` inside jit (per batch and kv-head), then the kernel, forward and grads."""
  b, t, hq, hkv, d, blk = 2, 48, 4, 2, 16, 16
  q, k, v = _qkv(b, t, hq, hkv, d, int.from_bytes(os.urandom(4), "little"))

  def loss(q, k, v, impl):
    layout = so.select_blocks(q, k, block_q=blk, block_kv=blk, budget=so.Budget.blocks(2),
                              scoring="quest")
    if impl == "reference":
      out = reference.attention(q, k, v, layout, d ** -0.5)
    else:
      out = kt.attention(q, k, v, layout, interpret=True)
    return (out * jnp.cos(jnp.arange(d))).sum(), out

  got = jax.jit(jax.value_and_grad(loss, (0, 1, 2), has_aux=True), static_argnums=3)(
      q, k, v, "tpu")
  want = jax.jit(jax.value_and_grad(loss, (0, 1, 2), has_aux=True), static_argnums=3)(
      q, k, v, "reference")
  (_, out), grads = got
  (_, out_ref), grads_ref = want
  np.testing.assert_allclose(out, out_ref, atol=2e-5)
  for a, r in zip(grads, grads_ref):
    np.testing.assert_allclose(a, r, atol=1e-4)


def test_the_implementation_is_reachable_and_never_falls_back():
  x = jnp.ones((1, 32, 1, 16))
  if jax.default_backend() != "tpu":
    with pytest.raises(ValueError, match="needs a TPU.*interpret=True"):
      so.attention(x, x, x, mask=masks.Causal(), implementation="pallas_tpu")
    assert "pallas_tpu" not in so.available_implementations()
  with kt.interpreted():  # what the trainer test below relies on
    out = so.attention(x, x, x, mask=masks.Causal(), implementation="pallas_tpu")
  np.testing.assert_allclose(out, x, atol=1e-6)
  layout = so.BlockLayout.from_mask(masks.Causal(), 32, 32, block_q=12, block_kv=12)
  with pytest.raises(ValueError, match=r"block_q=12 must be a multiple of 8"):
    kt.attention(x, x, x, layout, interpret=True)


def test_exports_to_tpu_custom_calls_forward_and_backward():
  """jax.export lowers the kernels for the TPU platform on a machine without one: forward, and
  the three backward kernels, for a layout selected from the content inside the function."""
  b, t, hq, hkv, d, blk = 1, 1024, 4, 2, 128, 128
  spec = jax.ShapeDtypeStruct((b, t, hq, d), jnp.bfloat16)
  kv = jax.ShapeDtypeStruct((b, t, hkv, d), jnp.bfloat16)

  def loss(q, k, v):
    layout = so.select_blocks(q, k, block_q=blk, block_kv=blk, budget=so.Budget.blocks(3))
    return kt.attention(q, k, v, layout, interpret=False).astype(jnp.float32).sum()

  kt._INTERPRETED[0] = False
  unavailable, kt.unavailable = kt.unavailable, lambda: None  # lowering only: no TPU here
  try:
    exported = jax.export.export(jax.jit(jax.grad(loss, (0, 1, 2))), platforms=["tpu"])(
        spec, kv, kv)
  finally:
    kt.unavailable = unavailable
  text = exported.mlir_module()
  assert exported.platforms == ("tpu",)
  assert text.count("tpu_custom_call") >= 3, "forward + dQ + dK/dV kernels"
  for name in ("sparse_attention_fwd_tpu", "sparse_attention_dq_tpu", "sparse_attention_dkv_tpu"):
    assert name in text, name


def _long_layout(t: int, blk: int = 128, kept: int = 16):
  """A causal layout keeping `kept` blocks a row (the first ones: a sink-heavy worst case for
  the transposed lists, whose first column every row visits)."""
  nq = t // blk
  keep = jnp.zeros((1, 1, nq, nq), bool).at[:, :, :, :kept].set(True)
  keep = keep | jnp.eye(nq, dtype=bool)
  keep = keep & jnp.tril(jnp.ones((nq, nq), bool))
  return so.BlockLayout.from_blocks(keep, block_q=blk, block_kv=blk, q_len=t, kv_len=t,
                                    mask=masks.Causal(), max_blocks=kept + 1)


def test_metadata_is_linear_in_length_and_fits_scalar_memory_at_128k():
  """The module docstring's numbers: forward lists 4 · nq · (2 + slots) bytes, dK/dV pairs
  12 · (nq · slots + nk) bytes, one head; at T=128k with 128-blocks and 17 + 17 slots a row that
  is 147,456 and 430,080 bytes: linear in T (half of it at 64k), inside the 512 KiB budget.
  Over 8 heads with their own lists it is refused, naming the size and what fits."""
  layout = _long_layout(131072)
  nq, slots = 1024, layout.kv_indices.shape[-1] + layout.full_kv_indices.shape[-1]
  assert slots == 34
  fwd, pairs = 4 * nq * (2 + slots), 12 * (nq * slots + nq)
  assert (fwd, pairs) == (147456, 430080)
  assert kt.metadata_bytes(layout) == max(fwd, pairs) <= kt.SMEM_BUDGET_BYTES
  assert kt.metadata_bytes(_long_layout(65536)) * 2 == kt.metadata_bytes(layout)
  eight = jax.tree.map(lambda x: jnp.repeat(x, 8, axis=1), layout)
  x = jax.ShapeDtypeStruct((1, 131072, 8, 64), jnp.bfloat16)
  with pytest.raises(ValueError, match=r"take 3,440,640 bytes of TPU scalar memory; at most "
                     r"524,288 fit"):
    jax.eval_shape(lambda q: kt.attention(q, q, q, eight, interpret=True), x)


@pytest.mark.slow
def test_a_trainer_run_with_the_kernel_matches_xla(tmp_path, monkeypatch):
  """A tiny model trained 3 steps with implementation="pallas_tpu" (interpret mode, local
  attention over 16-blocks) logs the losses an `xla` run of the same config logs (f32)."""
  import models
  import train
  from train import log as log_lib

  def run(impl):
    model = models.ModelConfig(vocab_size=128, width=32, depth=1, num_heads=2,
                               attention=models.AttentionConfig(
                                   "local", sparsity=0.5, implementation=impl, block_q=16,
                                   block_kv=16))
    cfg = train.Config(
        run_dir=str(tmp_path / impl), model=model, batch_size=2, steps=3,
        compute_dtype="float32", data=train.DataConfig(tasks=("niah_single",), seq_len=64),
        eval=train.EvalConfig(examples=0),
        log=train.LogConfig(every=1, progress=False, wandb="disabled"),
        checkpoint=train.CheckpointConfig(every=10 ** 6, async_save=False))
    result = train.run(cfg)
    assert result.status == "finished", result.message
    return [r["loss"] for r in log_lib.read_metrics(cfg.run_dir) if "loss" in r]

  traced = []  # the kernel's forward, each time a program using it is traced
  forward = kt._forward
  monkeypatch.setattr(kt, "_forward", lambda *a: traced.append(1) or forward(*a))
  with kt.interpreted():
    kernel = run("pallas_tpu")
  assert traced, "the trainer never reached the TPU kernel"
  want = run("xla")
  assert len(kernel) == len(want) == 3
  np.testing.assert_allclose(kernel, want, rtol=1e-5)
