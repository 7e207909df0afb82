"""The decode phase of content attention (`models.transformer.decode_attention`): one dense causal
attention plus a masked-softmax slab for the rows from `dense_before` on equals the reference on
exactly the layout `select_blocks(..., dense_before=)` builds, whose pairs `selected_pairs`
counts."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import models
import sparse_ops as so
from models import transformer

T, BLOCK_KV = 64, 8


def _qkv(seed, b=2, hq=4, hkv=2, d=8):
  kq, kk, kv = jax.random.split(jax.random.PRNGKey(seed), 3)
  return (jax.random.normal(kq, (b, T, hq, d)), jax.random.normal(kk, (b, T, hkv, d)),
          jax.random.normal(kv, (b, T, hkv, d)))


def _attention(pattern, budget, implementation="reference"):
  extra = (dict(budget="density", budget_value=0.25) if budget == "fixed" else
           dict(budget="adaptive", budget_value=0.8, budget_alpha=0.5))
  return models.AttentionConfig(pattern, block_q=1, block_kv=BLOCK_KV, sink=BLOCK_KV,
                                implementation=implementation, **extra)


@pytest.mark.parametrize("budget", ["fixed", "adaptive"])
@pytest.mark.parametrize("pattern", ["topk_blocks", "quest", "vertical_slash"])
def test_decode_equals_the_reference_on_the_selected_layout(pattern, budget):
  att = _attention(pattern, budget)
  q, k, v = _qkv(np.random.randint(1 << 30))
  bound = jnp.asarray([37, 50])  # per-example bounds; the slab covers the earlier one
  layout = att.select(q, k, bound)
  want = so.attention(q, k, v, layout=layout, implementation="reference")
  pairs, _ = att.selection_counts(T, 37)
  assert (np.asarray(layout.to_dense())[0].sum((1, 2)) == pairs).all()  # what FLOPs count
  for rows, how in ((None, "concrete"), (T - 37, "traced"), (32, "traced"), (None, "traced")):
    fn = lambda q, k, v, b: transformer.decode_attention(att, q, k, v, b, rows, "reference")
    got = fn(q, k, v, bound) if how == "concrete" else jax.jit(fn)(q, k, v, bound)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)
  # the dense part runs with any implementation (here xla); the tail never needs one-query tiles
  got = jax.jit(lambda *a: transformer.decode_attention(att, *a, T - 37, "xla"))(q, k, v, bound)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)


def test_model_decode_matches_the_selected_layouts_and_leaves_prefill_alone():
  cfg = models.ModelConfig(vocab_size=64, width=32, depth=2, num_heads=4, num_kv_heads=2,
                           attention=models.AttentionConfig(implementation="xla"))
  model = models.Transformer(cfg, rngs=nnx.Rngs(0))
  x = jax.random.randint(jax.random.PRNGKey(1), (2, T), 0, 64)
  att = _attention("quest", "fixed", implementation="xla")
  got = jax.jit(lambda x, b: model(x, attention=att, dense_before=b, decode_rows=16))(x, 50)
  # the same model with the old route: each layer's select_blocks layout run by the reference
  ref = models.AttentionConfig.select
  try:
    models.AttentionConfig.select = lambda self, q, k, dense_before=None, budget_value=None: \
        ref(self, q, k, 50)
    want = jax.jit(lambda x: model(x, attention=att))(x)  # prefill route, decode layout
  finally:
    models.AttentionConfig.select = ref
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-4, atol=1e-4)
  full = jax.jit(lambda x, b: model(x, attention=att, dense_before=b))(x, 50)  # R = T
  np.testing.assert_allclose(np.asarray(full), np.asarray(got), rtol=1e-5, atol=1e-5)


def test_a_bound_before_the_slab_poisons_and_bad_rows_are_named():
  att = _attention("topk_blocks", "fixed")
  q, k, v = _qkv(0)
  out = jax.jit(lambda *a: transformer.decode_attention(att, *a, 8, "reference"))(q, k, v, 50)
  assert np.isnan(np.asarray(out)).all()  # rows 50..55 would silently be dense otherwise
  out = jax.jit(lambda *a: transformer.decode_attention(att, *a, 0, "reference"))(q, k, v, 50)
  assert np.isnan(np.asarray(out)).all()
  with pytest.raises(ValueError, match=r"dense_before=50 is before T - decode_rows = 64 - 8"):
    transformer.decode_attention(att, q, k, v, 50, 8, "reference")
  cfg = models.ModelConfig(vocab_size=64, width=32, depth=1, num_heads=2,
                           attention=models.AttentionConfig(implementation="reference"))
  model = models.Transformer(cfg, rngs=nnx.Rngs(0))
  x = jnp.zeros((1, T), jnp.int32)
  with pytest.raises(ValueError, match=r"decode_rows=65 must be an int in \[0, T=64\]"):
    model(x, attention=att, dense_before=10, decode_rows=65)
  with pytest.raises(ValueError, match=r"decode_rows=8 .*dense_before=None"):
    model(x, attention=att, decode_rows=8)
