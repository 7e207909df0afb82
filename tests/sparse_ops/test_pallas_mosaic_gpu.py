"""The Mosaic GPU kernels against ``reference``: outputs and the log2 log-sum-exp on fresh random
inputs, and gradients through the kernels' VJP, in Mosaic GPU interpret mode on CPU and with the
real lowering under ``-m gpu`` on a Hopper GPU (``benchmarks/mosaic_gpu_cases.py`` runs each
check in its own process: all passed on one H100 in session 18,
``benchmarks/results/mosaic_gpu_cases_h100.md``; the first lowering, before list rows were
padded to 128 bytes, died with CUDA_ERROR_MISALIGNED_ADDRESS)."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sparse_ops as so
from sparse_ops import masks, reference
from sparse_ops.kernels import mosaic_gpu as mg

# (mask, T, Hq, Hkv, D, block_q, block_kv): partial blocks, GQA, a ragged length with two 64-row
# programs per 128-row layout block, D=128, and rows with no allowed key.
CASES = {
    "causal_gqa2": (masks.Causal(), 256, 2, 1, 64, 64, 64),
    "local_partial_blocks": (masks.Local(70), 256, 2, 2, 64, 64, 128),
    "ragged_block_q128_d128": (masks.Causal(), 200, 1, 1, 128, 128, 128),
    "blockrandom_empty_rows": (masks.BlockRandom(0.3, seed=3, block=64) & masks.Causal(), 256,
                               2, 1, 64, 64, 64),
}


# Larger shapes for the real lowering: the study's D=64, and D=128 at 128-blocks.
GPU_CASES = {**CASES,
             "gpu_causal_d64_t2048": (masks.Causal(), 2048, 8, 2, 64, 128, 128),
             "gpu_local_d128_t1536": (masks.Local(300), 1536, 4, 4, 128, 128, 64)}


@pytest.mark.parametrize("name", list(CASES))
def test_forward_interpret_matches_reference(name):
  _check(CASES[name], interpret=True, name=name)


@pytest.mark.gpu
@pytest.mark.parametrize("name", list(GPU_CASES))
def test_forward_gpu_matches_reference(name):
  _check(GPU_CASES[name], interpret=False, name=name)


# The two-compute-warpgroup forward (128 q rows a program) takes 128-multiple q blocks.
WG2_CASES = {"ragged_block_q128_d128": CASES["ragged_block_q128_d128"],
             "local_gqa2_block_q128": (masks.Local(70), 256, 4, 2, 64, 128, 64)}
GPU_WG2_CASES = {**WG2_CASES, **{n: GPU_CASES[n] for n in ("gpu_causal_d64_t2048",
                                                            "gpu_local_d128_t1536")}}


@pytest.mark.parametrize("name", list(WG2_CASES))
def test_forward_two_compute_warpgroups_interpret_matches_reference(name):
  _check(WG2_CASES[name], interpret=True, name=name, compute_wgs=2)


@pytest.mark.gpu
@pytest.mark.parametrize("name", list(GPU_WG2_CASES))
def test_forward_two_compute_warpgroups_gpu_matches_reference(name):
  _check(GPU_WG2_CASES[name], interpret=False, name=name, compute_wgs=2)


def test_two_compute_warpgroups_refuse_64_row_blocks_before_compiling():
  layout = so.BlockLayout.from_mask(masks.Causal(), 128, 128, block_q=64, block_kv=64)
  x = jnp.zeros((1, 128, 1, 64), jnp.bfloat16)
  msg = "compute_wgs=2 must be 1, or 2 with block_q a multiple of 128; block_q=64"
  for call in (lambda: mg.forward(x, x, x, layout, 0.125, compute_wgs=2, interpret=True),
               lambda: mg.dq(x, x, x, x, jnp.zeros((1, 1, 128)), jnp.zeros((1, 1, 128)), layout,
                             0.125, compute_wgs=2, interpret=True),
               lambda: mg.attention(x, x, x, layout, compute_wgs=2, interpret=True)):
    with pytest.raises(ValueError, match=msg):
      call()


@pytest.mark.gpu
def test_control_jax_own_mosaic_gpu_attention_runs_here():
  """A control for the misaligned-address crash: JAX's own Mosaic GPU flash attention
  (jax.experimental.pallas.ops.gpu.attention_mgpu, the kernel ours departs from) on the same
  machine and jax. If this crashes too, the fault is the toolchain or the device, not our kernel."""
  from jax.experimental.pallas.ops.gpu import attention_mgpu as ref_mgpu
  key = jax.random.key(int.from_bytes(os.urandom(4), "little"))
  q, k, v = (jax.random.normal(kx, (1, 512, 2, 64), jnp.float16)
             for kx in jax.random.split(key, 3))
  config = ref_mgpu.TuningConfig(block_q=64, block_kv=64, max_concurrent_steps=2, causal=True)
  out = ref_mgpu.attention(q, k, v, config)
  want = ref_mgpu.attention_reference(q, k, v, causal=True)
  np.testing.assert_allclose(np.asarray(out, np.float32), np.asarray(want), atol=2e-3, rtol=1e-3)


def _check(case, interpret: bool, name: str, compute_wgs: int = 1):
  mask, t, hq, hkv, d, bq, bk = case
  key = jax.random.key(int.from_bytes(os.urandom(4), "little"))
  kq, kk, kv = jax.random.split(key, 3)
  q, k, v = (jax.random.normal(kx, (1, t, h, d), jnp.float32).astype(jnp.bfloat16)
             for kx, h in ((kq, hq), (kk, hkv), (kv, hkv)))
  layout = so.BlockLayout.from_mask(mask, t, t, block_q=bq, block_kv=bk)
  scale = d ** -0.5
  out, lse = mg.forward(q, k, v, layout, scale, compute_wgs=compute_wgs, interpret=interpret)
  f32 = lambda x: x.astype(jnp.float32)
  want = reference.attention(f32(q), f32(k), f32(v), layout, scale)
  np.testing.assert_allclose(f32(out), want, atol=2e-2, rtol=2e-2)
  scores = jnp.einsum("bthd,bshd->bhts", f32(q), jnp.repeat(f32(k), hq // hkv, 2)) * scale
  allowed = np.asarray(mask(np.arange(t)[:, None], np.arange(t)[None, :]))
  want_lse = jax.nn.logsumexp(jnp.where(allowed, scores, -jnp.inf), -1) / np.log(2)
  got_lse = lse[:, :, :t]
  empty = ~allowed.any(-1)
  assert np.all(np.isinf(np.asarray(got_lse)[..., empty]))  # rows with no key: +inf, zeros
  np.testing.assert_allclose(got_lse[..., ~empty], want_lse[..., ~empty], atol=1e-3, rtol=1e-4)
  if name == "blockrandom_empty_rows":
    assert empty.any()  # the case does test empty rows


def test_bad_blocks_are_refused_before_compiling():
  layout = so.BlockLayout.from_mask(masks.Causal(), 64, 64, block_q=32, block_kv=32)
  x = jnp.zeros((1, 64, 1, 64), jnp.bfloat16)
  with pytest.raises(ValueError, match="block_q a multiple of 64.*got block_q=32"):
    mg.forward(x, x, x, layout, 0.125, interpret=True)


@pytest.mark.parametrize("name", ["causal_gqa2", "ragged_block_q128_d128",
                                  "blockrandom_empty_rows"])
def test_gradients_interpret_match_reference(name):
  """dq, dk, dv through the kernels' custom VJP (the dQ pass over the forward lists, the dK/dV
  pass over the transposed ones summing the GQA group) against jax.vjp of `reference`."""
  _check_grads(CASES[name], interpret=True)


@pytest.mark.gpu
@pytest.mark.parametrize("name", list(GPU_CASES))
def test_gradients_gpu_match_reference(name):
  _check_grads(GPU_CASES[name], interpret=False)


@pytest.mark.parametrize("name", list(WG2_CASES))
def test_gradients_two_compute_warpgroups_interpret_match_reference(name):
  """The same with the forward and dQ passes on two compute warpgroups."""
  _check_grads(WG2_CASES[name], interpret=True, compute_wgs=2)


@pytest.mark.gpu
@pytest.mark.parametrize("name", list(GPU_WG2_CASES))
def test_gradients_two_compute_warpgroups_gpu_match_reference(name):
  _check_grads(GPU_WG2_CASES[name], interpret=False, compute_wgs=2)


def _check_grads(case, interpret: bool, compute_wgs: int = 1):
  mask, t, hq, hkv, d, bq, bk = case
  key = jax.random.key(int.from_bytes(os.urandom(4), "little"))
  kq, kk, kv, kg = jax.random.split(key, 4)
  q, k, v, do = (jax.random.normal(kx, (1, t, h, d), jnp.float32).astype(jnp.bfloat16)
                 for kx, h in ((kq, hq), (kk, hkv), (kv, hkv), (kg, hq)))
  layout = so.BlockLayout.from_mask(mask, t, t, block_q=bq, block_kv=bk)
  f32 = lambda x: x.astype(jnp.float32)
  out, vjp = jax.vjp(lambda *x: mg.attention(*x, layout, interpret=interpret,
                                             compute_wgs=compute_wgs), q, k, v)
  want_out, want_vjp = jax.vjp(lambda *x: reference.attention(*x, layout, d ** -0.5),
                               f32(q), f32(k), f32(v))
  np.testing.assert_allclose(f32(out), want_out, atol=2e-2, rtol=2e-2)
  for name_, got, want in zip("qkv", vjp(do), want_vjp(f32(do))):
    np.testing.assert_allclose(f32(got), want, atol=3e-2, rtol=3e-2, err_msg=f"d{name_}")


def test_direct_calls_are_checked_before_compiling():
  layout = so.BlockLayout.from_mask(masks.Causal(), 128, 128, block_q=64, block_kv=64)
  x = jnp.zeros((1, 128, 1, 64), jnp.float32)
  with pytest.raises(ValueError, match="bf16 or f16"):
    mg.attention(x, x, x, layout, interpret=True)
  with pytest.raises(ValueError, match="needs a Hopper GPU"):
    mg.attention(x.astype(jnp.bfloat16), x.astype(jnp.bfloat16), x.astype(jnp.bfloat16), layout)


def test_registered_by_name_only_with_the_blocks_it_tiles():
  """`implementation="pallas_mosaic_gpu"` runs these kernels; `None` never picks them (their
  speed is unmeasured), and the layouts they take are 64-multiple blocks without per-query
  rows."""
  impl = so.IMPLEMENTATIONS["pallas_mosaic_gpu"]
  assert impl.run is mg.attention and "pallas_mosaic_gpu" not in so.available_implementations()
  assert impl.default_blocks(4096, 4096, 64) == (128, 128) and impl.default_blocks(64, 64, 64) == (
      64, 64)
  causal = lambda bq, bk: so.BlockLayout.from_mask(masks.Causal(), 256, 256, block_q=bq,
                                                   block_kv=bk)
  assert impl.takes(causal(128, 64)) and not impl.takes(causal(32, 64))
  q = jax.random.normal(jax.random.key(0), (1, 256, 2, 16))
  per_query = so.select_blocks(q, q[:, :, :1], block_q=64, block_kv=64,
                               budget=so.Budget.density(0.5), per_query=True)
  assert not impl.takes(per_query)


@pytest.mark.gpu
def test_sparse_ops_attention_by_name_runs_these_kernels_on_the_gpu():
  """The registered path: `so.attention(..., implementation="pallas_mosaic_gpu")` with a mask
  (its default 128-blocks), batch 2, GQA, inside jit, forward and gradients against
  `reference` on fresh random inputs."""
  key = jax.random.key(int.from_bytes(os.urandom(4), "little"))
  kq, kk, kv, kg = jax.random.split(key, 4)
  q, do = (jax.random.normal(kx, (2, 640, 4, 64), jnp.float32).astype(jnp.bfloat16)
           for kx in (kq, kg))
  k, v = (jax.random.normal(kx, (2, 640, 2, 64), jnp.float32).astype(jnp.bfloat16)
          for kx in (kk, kv))
  mask = masks.Local(200) & masks.Causal()
  run = lambda impl: jax.jit(lambda q, k, v: jax.vjp(
      lambda *x: so.attention(*x, mask=mask, implementation=impl),
      q, k, v)[1](do))(q, k, v)
  out = jax.jit(lambda *x: so.attention(*x, mask=mask, implementation="pallas_mosaic_gpu"))(
      q, k, v)
  f32 = lambda x: np.asarray(x, np.float32)
  want = so.attention(*(x.astype(jnp.float32) for x in (q, k, v)), mask=mask,
                      implementation="reference")
  np.testing.assert_allclose(f32(out), f32(want), atol=2e-2, rtol=2e-2)
  for name, got, ref in zip("qkv", run("pallas_mosaic_gpu"), run("reference")):
    np.testing.assert_allclose(f32(got), f32(ref), atol=3e-2, rtol=3e-2, err_msg=f"d{name}")
