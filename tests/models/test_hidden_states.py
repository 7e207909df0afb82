"""`Transformer(..., return_hidden=True)`: the same logits as the plain call, and hidden states
that are what the blocks compute (the last entry is what the head reads)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import models


@pytest.mark.parametrize("attention", [None, models.AttentionConfig("local", window=5)])
def test_return_hidden_keeps_logits_and_exposes_each_layer(attention):
  cfg = models.ModelConfig(vocab_size=64, width=32, depth=3, num_heads=2, num_kv_heads=1)
  model = models.Transformer(cfg, rngs=nnx.Rngs(0))
  tokens = jax.random.randint(jax.random.key(1), (2, 16), 0, 64)
  plain = model(tokens, attention=attention)
  logits, hidden = model(tokens, attention=attention, return_hidden=True)
  np.testing.assert_array_equal(np.asarray(plain), np.asarray(logits))
  assert hidden.shape == (cfg.depth + 1, 2, 16, cfg.width)
  # the last entry is the final-normed stream: the head applied to it gives the logits
  head = model.embed_vd[...].T if model.head_dv is None else model.head_dv[...]
  np.testing.assert_allclose(np.asarray(hidden[-1] @ head), np.asarray(logits), atol=1e-4)
  # entry depth - 1 is the last block's output: normed, it is the last entry
  np.testing.assert_allclose(np.asarray(model.final_norm(hidden[-2])), np.asarray(hidden[-1]),
                             atol=1e-6)
  # layers differ (each block adds its residual branch)
  assert not np.allclose(np.asarray(hidden[0]), np.asarray(hidden[1]))
