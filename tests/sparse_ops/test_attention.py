"""The xla implementation against the reference: values and gradients on fresh random inputs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import sparse_ops as so
from sparse_ops import masks as M
from test_masks import any_mask

TOL = {jnp.float32: 2e-5, jnp.bfloat16: 2e-2}  # relative to the largest reference magnitude


def _inputs(seed, b, t, s, hq, hkv, d, dv, dtype):
  ks = jax.random.split(jax.random.PRNGKey(seed), 4)
  q = jax.random.normal(ks[0], (b, t, hq, d), dtype)
  k = jax.random.normal(ks[1], (b, s, hkv, d), dtype)
  v = jax.random.normal(ks[2], (b, s, hkv, dv), dtype)
  g = jax.random.normal(ks[3], (b, t, hq, dv), dtype)
  return q, k, v, g


def _close(got, want, dtype, what):
  got, want = np.asarray(got, np.float32), np.asarray(want, np.float32)
  assert np.isfinite(got).all(), f"{what}: non-finite values"
  scale = max(1.0, float(np.abs(want).max()))
  err = float(np.abs(got - want).max())
  assert err <= TOL[dtype] * scale, f"{what}: max error {err:.3g} > {TOL[dtype]} × {scale:.3g}"


def check_against_reference(q, k, v, g, layout, dtype):
  def run(impl):
    f = lambda q, k, v: so.attention(q, k, v, layout=layout, implementation=impl)
    out, vjp = jax.vjp(jax.jit(f), q, k, v)
    return (out,) + vjp(g)

  for name, got, want in zip(("out", "dq", "dk", "dv"), run("xla"), run("reference")):
    _close(got, want, dtype, name)


@st.composite
def problems(draw):
  hkv = draw(st.sampled_from([1, 2]))
  hq = hkv * draw(st.sampled_from([1, 2, 4]))
  per_head = draw(st.booleans())
  if per_head:
    mask = M.MultiHead([draw(any_mask(depth=1)) for _ in range(hq)])
  else:
    mask = draw(any_mask())
  return dict(b=draw(st.integers(1, 2)), t=draw(st.integers(1, 70)), s=draw(st.integers(1, 70)),
              hq=hq, hkv=hkv, d=draw(st.sampled_from([8, 16])), dv=draw(st.sampled_from([8, 16])),
              dtype=draw(st.sampled_from([jnp.float32, jnp.bfloat16])), mask=mask,
              bq=draw(st.sampled_from([8, 16, 32])), bk=draw(st.sampled_from([8, 16, 32])),
              seed=draw(st.integers(0, 2**31)))


# 8 fresh problems a run (each compiles its own program, ~9 s on a CI core): CI time is capped.
@settings(max_examples=8)
@given(problems())
def test_xla_matches_reference_on_masks(p):
  q, k, v, g = _inputs(p["seed"], p["b"], p["t"], p["s"], p["hq"], p["hkv"], p["d"], p["dv"],
                       p["dtype"])
  layout = so.BlockLayout.from_mask(p["mask"], p["t"], p["s"], block_q=p["bq"], block_kv=p["bk"])
  check_against_reference(q, k, v, g, layout, p["dtype"])


@settings(max_examples=6)
@given(st.integers(0, 2**31), st.sampled_from([jnp.float32, jnp.bfloat16]),
       st.sampled_from([(2, 1), (2, 2), (4, 1)]), st.sampled_from([1, 2, 4]))
def test_xla_matches_reference_on_random_per_batch_layouts(seed, dtype, heads, layout_heads):
  """Per-batch, per-head block layouts with some empty q-block rows, ragged lengths, T != S."""
  hq, hkv = heads[0] * heads[1], heads[1]
  layout_heads = layout_heads if layout_heads in (1, hkv, hq) else 1
  b, t, s, blk = 2, 45, 37, 8
  rng = np.random.default_rng(seed)
  keep = rng.random((b, layout_heads, -(-t // blk), -(-s // blk))) < 0.4
  keep[:, :, 1] = False  # q-block 1 attends nowhere: its rows must be zeros
  full = keep & (rng.random(keep.shape) < 0.5)
  layout = so.BlockLayout.from_blocks(keep, full, block_q=blk, block_kv=blk, q_len=t, kv_len=s,
                                      mask=M.Local(11))
  q, k, v, g = _inputs(seed, b, t, s, hq, hkv, 16, 16, dtype)
  check_against_reference(q, k, v, g, layout, dtype)
  out = so.attention(q, k, v, layout=layout, implementation="xla")
  assert (np.asarray(out[:, blk:2 * blk], np.float32) == 0).all()


def test_rows_without_keys_are_zero_with_finite_gradients():
  mask = M.Sink(3) & M.Strided(5)  # query rows with q % 5 not in {0,1,2} see no key
  q, k, v, g = _inputs(0, 1, 20, 20, 2, 1, 8, 8, jnp.float32)
  layout = so.BlockLayout.from_mask(mask, 20, 20, block_q=8, block_kv=8)
  empty = ~M.dense(mask, 20, 20).any(-1)
  assert empty.any()
  for impl in ("xla", "reference"):
    out = so.attention(q, k, v, mask=mask, implementation=impl)
    assert (np.asarray(out)[0, empty] == 0).all() and np.isfinite(np.asarray(out)).all()
    grads = jax.grad(lambda q, k, v: (so.attention(q, k, v, mask=mask, implementation=impl)
                                      * g).sum(), argnums=(0, 1, 2))(q, k, v)
    assert all(np.isfinite(np.asarray(x)).all() for x in grads)
  check_against_reference(q, k, v, g, layout, jnp.float32)


def test_jit_vmap_grad_and_layout_built_inside_jit():
  q, k, v, g = _inputs(1, 3, 40, 40, 2, 2, 8, 8, jnp.float32)

  @jax.jit
  def content_sparse(q, k, v):
    # a layout chosen from the content inside jit: keep kv-blocks whose pooled key scores well
    blk = 8
    qp = q.reshape(q.shape[0], 5, blk, 2, 8).mean(2)
    kp = k.reshape(k.shape[0], 5, blk, 2, 8).mean(2)
    score = jnp.einsum("bihd,bjhd->bhij", qp, kp)
    keep = (score > 0) | jnp.eye(5, dtype=bool)
    layout = so.BlockLayout.from_blocks(keep, block_q=blk, block_kv=blk, q_len=40, kv_len=40,
                                        mask=M.Causal())
    return so.attention(q, k, v, layout=layout, implementation="xla"), layout.to_dense()

  out, dense = content_sparse(q, k, v)
  ref = so.attention(q, k, v, layout=so.BlockLayout.from_blocks(
      jnp.asarray(dense), block_q=1, block_kv=1, q_len=40, kv_len=40), implementation="reference")
  _close(out, ref, jnp.float32, "content-built layout")

  # vmap over an extra leading axis equals a Python loop
  f = lambda q, k, v: so.attention(q, k, v, mask=M.Local(9), implementation="xla")
  stacked = jax.vmap(f)(q[:, None], k[:, None], v[:, None])[:, 0]
  loop = jnp.concatenate([f(q[i:i + 1], k[i:i + 1], v[i:i + 1]) for i in range(3)])
  _close(stacked, loop, jnp.float32, "vmap")
  # grad of grad is not needed, but jit(grad) must compile and agree with reference grads
  gx = jax.jit(jax.grad(lambda q: (f(q, k, v) * g).sum()))(q)
  gr = jax.grad(lambda q: (so.attention(q, k, v, mask=M.Local(9), implementation="reference")
                           * g).sum())(q)
  _close(gx, gr, jnp.float32, "jit(grad)")


def test_xla_scratch_memory_grows_with_kept_blocks_not_t_squared():
  """Compiled fwd+bwd temp memory for Local(256): doubling T about doubles it (T×S would 4×)."""
  def temp_bytes(t):
    q = jax.ShapeDtypeStruct((1, t, 1, 16), jnp.float32)
    layout = so.BlockLayout.from_mask(M.Local(256), t, t, block_q=128, block_kv=128)
    f = lambda q, k, v: jax.vjp(lambda *a: so.attention(*a, layout=layout, implementation="xla"),
                                q, k, v)[1](q)
    return jax.jit(f).lower(q, q, q).compile().memory_analysis().temp_size_in_bytes

  small, large = temp_bytes(8192), temp_bytes(16384)
  assert large < 2.6 * small, (small, large)
  assert large < 16384 * 16384 * 4 / 16  # far below one f32 T×S score matrix


@pytest.mark.parametrize("kwargs, message", [
    (dict(q=(2, 8, 4, 8), k=(2, 8, 3, 8)), "Hq=4 must be a multiple of Hkv=3"),
    (dict(q=(2, 8, 4, 8), k=(1, 8, 4, 8)), "batch sizes q=2, k=1"),
    (dict(q=(2, 8, 4, 8), k=(2, 8, 4, 16)), "head dims q=8 and k=16"),
    (dict(q=(8, 4, 8), k=(2, 8, 4, 8)), r"q.shape=\(8, 4, 8\) must be 4-D"),
    (dict(v=(2, 9, 4, 8)), r"must agree on \[B, S, Hkv\]"),
    (dict(mask=None), "exactly one of mask= or layout= \\(got neither\\)"),
    (dict(layout=True), "exactly one of mask= or layout= \\(got both\\)"),
    (dict(implementation="cuda"), "implementation='cuda' is unknown"),
    (dict(layout_len=16, mask=None, layout=True), r"layout is for \(q_len, kv_len\)=\(16, 16\)"),
    (dict(mask=M.MultiHead([M.Causal()] * 3)), "mask has 3 heads; valid: 1, Hkv=4 or Hq=4"),
])
def test_bad_input_raises_before_compiling(kwargs, message):
  shapes = dict(q=(2, 8, 4, 8), k=(2, 8, 4, 8), v=None)
  shapes.update({n: kwargs[n] for n in ("q", "k", "v") if n in kwargs})
  q = jnp.zeros(shapes["q"])
  k = jnp.zeros(shapes["k"])
  v = jnp.zeros(shapes["v"] or shapes["k"])
  mask = kwargs.get("mask", M.Causal())
  layout = None
  if kwargs.get("layout"):
    n = kwargs.get("layout_len", 8)
    layout = so.BlockLayout.from_mask(M.Causal(), n, n, block_q=8, block_kv=8)
  with pytest.raises(ValueError, match=message):
    so.attention(q, k, v, mask=mask, layout=layout,
                 implementation=kwargs.get("implementation", "xla"))


def test_unbuilt_implementation_says_so_instead_of_falling_back():
  q = jnp.zeros((1, 8, 1, 8))
  unavailable = [n for n, impl in so.IMPLEMENTATIONS.items() if impl.unavailable() is not None]
  assert "pallas_mosaic_gpu" in unavailable or jax.default_backend() == "gpu"
  for name in unavailable:
    with pytest.raises(ValueError, match=f"implementation='{name}'"):
      so.attention(q, q, q, mask=M.Causal(), implementation=name)
  assert so.default_implementation() in so.available_implementations()
