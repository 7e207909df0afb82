"""The Pallas Triton kernels against ``reference``: outputs and dq/dk/dv on fresh random inputs.

On CPU every case runs in Pallas interpret mode (tiny shapes: interpret mode executes the grid
one program at a time). The same cases, plus head dims 64/128 at larger shapes, run with the real
Triton lowering under ``-m gpu`` on an NVIDIA GPU.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import pytest

import sparse_ops as so
from sparse_ops import masks
from sparse_ops.kernels import triton as kt

import kernel_cases  # tests/sparse_ops/kernel_cases.py (pytest puts this folder on sys.path)
from kernel_cases import Case

ON_GPU = jax.default_backend() == "gpu"
# Tests marked `gpu` are skipped off the GPU, with the reason, by tests/conftest.py.


# Kernel tiles smaller than the layout's blocks: several loop steps per listed block.
_SUB = kt.Tiles(fwd=kt.PassTiles(16, 16, prefetch=True), dq=kt.PassTiles(16, 32, prefetch=True),
               dkv=kt.PassTiles(32, 16, prefetch=True))


CASES = kernel_cases.CASES + [
    Case("sub_tiles_gqa2_ragged", masks.Sink(5) | masks.Local(21), 70, 70, 4, 2, block=32,
         tiles=_SUB),
]

GPU_CASES = CASES + [
    Case("gpu_causal_d64_bf16", masks.Causal(), 500, 500, 8, 2, d=64, dtype="bfloat16", b=2,
         block=128),
    Case("gpu_causal_d128_bf16", masks.Causal(), 384, 384, 4, 4, d=128, dtype="bfloat16",
         block=128),
    Case("gpu_causal_d128_f32", masks.Causal(), 300, 300, 4, 2, d=128, block=64),
    Case("gpu_blockrandom_d128", masks.BlockRandom(0.3, 1, 128) | masks.Local(200), 1024, 1024,
         4, 4, d=128, dtype="bfloat16", block=128),
    Case("gpu_per_batch_d64_f32", None, 256, 256, 4, 4, d=64, b=2, block=64),
]


def _check(case: Case, interpret: bool, seed: int):
  def kernel(q, k, v, layout, scale, case):
    if interpret or case.tiles is not None:
      return kt.attention(q, k, v, layout, scale, tiles=case.tiles, interpret=interpret)
    return so.attention(q, k, v, layout=layout, scale=scale, implementation="pallas_triton")
  kernel_cases.check(case, kernel, seed)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_interpret_matches_reference(case):
  _check(case, interpret=True, seed=int.from_bytes(os.urandom(4), "little"))


@pytest.mark.parametrize("case", GPU_CASES, ids=lambda c: c.name)
@pytest.mark.gpu
def test_gpu_matches_reference(case):
  _check(case, interpret=False, seed=int.from_bytes(os.urandom(4), "little"))


def test_no_silent_fallback_off_gpu():
  if ON_GPU:
    pytest.skip("checks the error raised off the GPU; runs on every CPU machine (CI)")
  x = jnp.ones((1, 32, 1, 16))
  with pytest.raises(ValueError, match="needs an NVIDIA GPU.*interpret=True"):
    so.attention(x, x, x, mask=masks.Causal(), implementation="pallas_triton")
  layout = so.BlockLayout.from_mask(masks.Causal(), 32, 32, block_q=16, block_kv=16)
  with pytest.raises(ValueError, match="needs an NVIDIA GPU"):
    kt.attention(x, x, x, layout)
  assert "pallas_triton" not in so.available_implementations()


def test_rejects_blocks_triton_cannot_tile():
  x = jnp.ones((1, 48, 1, 16))
  layout = so.BlockLayout.from_mask(masks.Causal(), 48, 48, block_q=24, block_kv=24)
  with pytest.raises(ValueError, match=r"block_q=24 must be a power of two >= 16"):
    kt.attention(x, x, x, layout, interpret=True)


def test_default_blocks_are_triton_tileable():
  assert kt.default_blocks(8192, 8192, 128) == (128, 128)
  assert kt.default_blocks(5, 40, 64) == (16, 64)


@pytest.mark.parametrize("case", kernel_cases.ROW_CASES, ids=lambda c: c.name)
def test_interpret_per_query_layouts_match_reference(case):
  _check(case, interpret=True, seed=int.from_bytes(os.urandom(4), "little"))


@pytest.mark.parametrize("case", kernel_cases.ROW_CASES, ids=lambda c: c.name)
@pytest.mark.gpu
def test_gpu_per_query_layouts_match_reference(case):
  _check(case, interpret=False, seed=int.from_bytes(os.urandom(4), "little"))
