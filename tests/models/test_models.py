"""Counts against the built model, FLOPs against an independent derivation and XLA, causality of
every pattern, and config errors that name the field."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import models
import sparse_ops as so

PATTERN_CONFIGS = {
    "dense": models.AttentionConfig(),
    "local": models.AttentionConfig("local", window=5),
    "local_sink": models.AttentionConfig("local", window=3, sink=2),
    "local_target": models.AttentionConfig("local", sparsity=0.8),
    "strided": models.AttentionConfig("strided", stride=4),
    "block_random": models.AttentionConfig("block_random", density=0.5, seed=3, block_q=8,
                                           block_kv=8),
    "block_random_target": models.AttentionConfig("block_random", sparsity=0.5, block_q=8,
                                                  block_kv=8),
    # content-based: every layer selects its blocks from its own q and k
    "topk_blocks": models.AttentionConfig("topk_blocks", sparsity=0.5, block_q=8, block_kv=8),
    "quest_sink": models.AttentionConfig("quest", budget="blocks", budget_value=2, sink=3,
                                         block_q=8, block_kv=8),
    "vertical_slash": models.AttentionConfig("vertical_slash", budget="adaptive",
                                             budget_value=1.0, block_q=8, block_kv=4),
    # each query chooses its own blocks, laid out in 8-query blocks (BlockLayout.row_keep)
    "quest_per_query": models.AttentionConfig("quest", sparsity=0.5, sink=3, block_q=8,
                                              block_kv=4, per_query=True),
}


def _params(model):
  return jax.tree.leaves(nnx.state(model, nnx.Param))


@pytest.mark.parametrize("cfg", [
    models.family("100k"),
    models.family("300k", tie_embeddings=True),
    models.ModelConfig(vocab_size=300, width=48, depth=3, num_heads=6, num_kv_heads=2),
    models.ModelConfig(vocab_size=128, width=32, depth=1, num_heads=2, num_kv_heads=1,
                       head_dim=24, mlp_dim=40),
    models.family("100k", conv_kernel=4),
])
def test_param_counts_match_built_model(cfg):
  model = nnx.eval_shape(lambda: models.Transformer(cfg, rngs=nnx.Rngs(0)))  # shapes suffice
  counts = models.param_counts(cfg)
  assert counts.total == sum(p.size for p in _params(model))
  embedding = model.embed_vd.size + (0 if model.head_dv is None else model.head_dv.size)
  assert counts.nonembed == counts.total - embedding


def test_family_ladder_follows_one_rule_and_names_its_size():
  sizes = [models.param_counts(models.family(s)).nonembed for s in models.SIZES]
  assert sizes == sorted(sizes)
  assert 8e4 < sizes[0] < 2e5 and 0.8e9 < sizes[-1] < 1.3e9
  nominal = {"k": 1e3, "m": 1e6, "b": 1e9}
  for name, n in zip(models.SIZES, sizes):
    assert 0.6 < n / (float(name[:-1]) * nominal[name[-1]]) < 1.5, (name, n)
    cfg = models.family(name)
    assert cfg.width == 32 * cfg.depth
    if cfg.width >= 256:
      assert cfg.head_size == 64


@pytest.mark.parametrize("name", ["dense", "local_sink", "strided", "block_random"])
def test_flops_per_token_match_an_independent_derivation(name):
  cfg = models.ModelConfig(vocab_size=200, width=48, depth=2, num_heads=4, num_kv_heads=2,
                           attention=PATTERN_CONFIGS[name])
  model = nnx.eval_shape(lambda: models.Transformer(cfg, rngs=nnx.Rngs(0)))
  t = 64
  # Independently: 2 FLOPs per weight of every matmul (each ≥2-D array; the embedding lookup is
  # no matmul but the head, tied or not, is one d×V matmul), plus the allowed pairs counted on the
  # dense boolean mask, per head and layer: 2·Dqk (QKᵀ) + 2·Dv (PV).
  matmul = sum(p.size for p in _params(model) if p.ndim >= 2) - model.embed_vd.size
  matmul += 0 if model.head_dv is not None else cfg.width * cfg.vocab_size
  pairs = so.masks.dense(cfg.attention.mask(t), t, t).sum()
  fwd = 2 * matmul + cfg.depth * cfg.num_heads * 4 * cfg.head_size * pairs / t
  norms = sum(p.size for p in _params(model) if p.ndim == 1)
  # DESIGN's convention counts norm scales in N_nonembed (6 FLOPs each per trained token).
  assert models.flops_per_token(cfg, t, training=False) == pytest.approx(fwd + 2 * norms, 1e-12)
  assert models.flops_per_token(cfg, t) == pytest.approx(3 * (fwd + 2 * norms), 1e-12)


@pytest.mark.parametrize("name", ["topk_blocks", "quest_sink", "vertical_slash",
                                  "quest_per_query"])
def test_content_pattern_flops_count_the_pairs_each_layer_selects(name):
  """The counter's pairs equal those of the layout a layer really selects, on random inputs."""
  cfg = models.ModelConfig(vocab_size=200, width=48, depth=2, num_heads=4, num_kv_heads=2,
                           attention=PATTERN_CONFIGS[name])
  t = 64
  ks = jax.random.split(jax.random.PRNGKey(np.random.default_rng().integers(2**31)), 2)
  q = jax.random.normal(ks[0], (3, t, 4, 12))
  k = jax.random.normal(ks[1], (3, t, 2, 12))
  layout = cfg.attention.select(q, k)
  pairs = np.asarray(layout.to_dense()).sum((2, 3))  # [B, Hkv]
  assert (pairs == cfg.attention.pairs(t)).all()
  dense = models.ModelConfig(**{**cfg.__dict__, "attention": models.AttentionConfig()})
  per_pair = cfg.depth * cfg.num_heads * 4 * cfg.head_size / t
  assert models.flops_per_token(cfg, t, training=False) == pytest.approx(
      models.flops_per_token(dense, t, training=False)
      - per_pair * (t * (t + 1) // 2 - cfg.attention.pairs(t)), 1e-12)


def test_dense_flops_match_xla_cost_analysis():
  cfg = models.ModelConfig(vocab_size=512, width=128, depth=2, num_heads=4,
                           attention=models.AttentionConfig(implementation="reference"))
  graphdef, state = nnx.split(models.Transformer(cfg, rngs=nnx.Rngs(0)))
  b, t = 2, 32
  tokens = jnp.zeros((b, t), jnp.int32)
  forward = lambda state, x: nnx.merge(graphdef, state)(x)
  train = jax.grad(lambda state, x: forward(state, x).sum())

  def xla_flops(fn):
    cost = jax.jit(fn).lower(state, tokens).compile().cost_analysis()
    return (cost[0] if isinstance(cost, list) else cost)["flops"]

  infer = models.flops_per_token(cfg, t, training=False) * b * t
  # Executed beyond the model FLOPs: the embedding's one-hot matmul (transformer.embed_lookup),
  # 2·V·d a token forward, and as much again for its weight gradient.
  one_hot = 2 * cfg.vocab_size * cfg.width * b * t
  assert xla_flops(forward) == pytest.approx(infer + one_hot, rel=0.05)
  assert xla_flops(train) == pytest.approx(3 * infer + 2 * one_hot, rel=0.05)


@pytest.mark.parametrize("name, conv", [(n, 0) for n in sorted(PATTERN_CONFIGS)] +
                         [("dense", 4), ("local", 3)])
def test_no_gradient_or_influence_from_future_tokens(name, conv):
  t, vocab = 32, 128
  cfg = models.ModelConfig(vocab_size=vocab, width=32, depth=2, num_heads=4, num_kv_heads=2,
                           conv_kernel=conv, attention=PATTERN_CONFIGS[name])
  graphdef, state = nnx.split(models.Transformer(cfg, rngs=nnx.Rngs(1)))
  forward = jax.jit(lambda tokens: nnx.merge(graphdef, state)(tokens))

  @jax.jit
  def embed_grad(tokens, i):
    def logits_at_i(state):
      logits = nnx.merge(graphdef, state)(tokens)
      return (logits[0, i] * jnp.arange(vocab)).sum()
    return nnx.to_pure_dict(jax.grad(logits_at_i)(state))["embed_vd"]

  rng = np.random.default_rng()
  # Past tokens from [0, 64), future ones from [64, 128): an embedding row gets gradient only
  # through the positions that hold its token.
  for i in (0, 7, 19, t - 2):
    tokens = np.concatenate([rng.integers(0, 64, i + 1), rng.integers(64, vocab, t - i - 1)])
    tokens = jnp.asarray(tokens[None], jnp.int32)
    grad = np.asarray(embed_grad(tokens, i))
    assert np.all(grad[64:] == 0), f"{name}: position {i} sees the future"
    assert np.any(grad[:64] != 0)
    # Rewriting the future leaves every earlier output bit-identical.
    other = tokens.at[0, i + 1:].set(jnp.asarray(rng.integers(64, vocab, t - i - 1), jnp.int32))
    np.testing.assert_array_equal(forward(tokens)[0, :i + 1], forward(other)[0, :i + 1])


def test_per_query_layout_trains_exactly_as_one_query_blocks():
  """per_query=True (8-query blocks with row_keep) allows the pairs of block_q=1: under
  `reference` the loss and every gradient are bitwise those of the one-query-block model."""
  t = 32
  tokens = jnp.asarray(np.random.default_rng().integers(0, 128, (2, t)), jnp.int32)

  def loss_and_grads(attention):
    cfg = models.ModelConfig(vocab_size=128, width=32, depth=2, num_heads=4, num_kv_heads=2,
                             attention=attention)
    graphdef, state = nnx.split(models.Transformer(cfg, rngs=nnx.Rngs(0)))
    loss = lambda state: nnx.merge(graphdef, state)(tokens).astype(jnp.float32).var()
    return jax.jit(jax.value_and_grad(loss))(state)

  laid = dataclasses.replace(PATTERN_CONFIGS["quest_per_query"], implementation="reference")
  one = dataclasses.replace(laid, block_q=1, per_query=False)
  (la, ga), (lb, gb) = loss_and_grads(laid), loss_and_grads(one)
  assert float(la) == float(lb)
  for a, b in zip(jax.tree.leaves(ga), jax.tree.leaves(gb)):
    np.testing.assert_array_equal(a, b)


def test_short_conv_adds_the_previous_taps_exactly():
  from models.transformer import ShortConv
  conv = ShortConv(6, 3, rngs=nnx.Rngs(2))
  x = np.random.default_rng().normal(size=(2, 9, 6)).astype(np.float32)
  w = np.asarray(conv.w_kd[...])
  want = x.copy()
  for t in range(9):
    for j in range(3):
      if t - j >= 0:
        want[:, t] += w[j] * x[:, t - j]
  np.testing.assert_allclose(np.asarray(conv(jnp.asarray(x))), want, rtol=1e-6, atol=1e-6)


def test_every_pattern_matches_reference_attention_in_the_model():
  t = 32
  tokens = jnp.asarray(np.random.default_rng().integers(0, 128, (2, t)), jnp.int32)
  for name, attention in PATTERN_CONFIGS.items():
    ref = models.AttentionConfig(**{**attention.__dict__, "implementation": "reference"})
    cfg = models.ModelConfig(vocab_size=128, width=32, depth=1, num_heads=2, attention=attention)
    graphdef, state = nnx.split(models.Transformer(cfg, rngs=nnx.Rngs(0)))
    run = jax.jit(lambda tokens, attention: nnx.merge(graphdef, state)(tokens, attention),
                  static_argnums=1)
    np.testing.assert_allclose(run(tokens, None), run(tokens, ref), rtol=1e-5, atol=1e-5,
                               err_msg=name)


@pytest.mark.parametrize("make, field", [
    (lambda: models.ModelConfig(width=64, num_heads=5), "num_heads"),
    (lambda: models.ModelConfig(width=64, num_heads=4, num_kv_heads=3), "num_kv_heads"),
    (lambda: models.family("huge"), "size"),
    (lambda: models.ModelConfig(attention=models.AttentionConfig(block_q=48)).validate(128),
     "block_q"),
    (lambda: models.ModelConfig(attention=models.AttentionConfig(block_kv=256)).validate(128),
     "block_kv"),
    (lambda: models.AttentionConfig("local"), "window"),
    (lambda: models.AttentionConfig("sliding"), "pattern"),
    (lambda: models.AttentionConfig(implementation="cuda"), "implementation"),
    (lambda: models.AttentionConfig("local", window=4, per_query=True), "per_query"),
])
def test_bad_configs_fail_naming_the_field(make, field):
  with pytest.raises(ValueError, match=field):
    make()


@pytest.mark.parametrize("t, stride, window, sink", [
    (64, 4, 4, 0), (64, 3, 10, 2), (100, 7, 1, 5), (128, 200, 3, 1), (37, 1, 1, 0)])
def test_closed_form_strided_count_is_exact(t, stride, window, sink):
  from models.config import _strided_sparsity
  mask = so.masks.Causal() & (so.masks.Local(window) | so.masks.Strided(stride))
  if sink:
    mask = mask | (so.masks.Sink(sink) & so.masks.Causal())
  brute = 1 - so.masks.dense(mask, t, t).sum() / (t * (t + 1) / 2)
  assert _strided_sparsity(t, stride, window, sink) == pytest.approx(brute, abs=1e-12)
  # The closed form is a fast path of the one counter: equal to so.flops on the config's mask.
  cfg = models.AttentionConfig("strided", stride=stride, window=window, sink=sink)
  assert _strided_sparsity(t, stride, window, sink) == pytest.approx(
      so.flops.sparsity(cfg.mask(t), t), abs=1e-15)


def test_a_dense_pattern_with_a_sink_is_the_causal_mask_cudnn_takes():
  """The sink adds no pair to dense causal attention, so the mask is Causal() itself: the GPU
  default then runs it on cuDNN at long T (until session 20 the union stayed an Or, which cuDNN
  refuses, so the h200 study's dense models, sink 64, trained on the Triton kernel)."""
  from sparse_ops.kernels import cudnn
  cfg = models.AttentionConfig("dense", sink=64, block_q=64, block_kv=64)
  assert cfg.mask(4096) == so.masks.Causal()
  assert cudnn.dense_kind(cfg.layout(4096)) == ("causal", "")


def test_target_sparsity_is_met_at_every_length():
  for pattern, sink in [("local", 0), ("strided", 0), ("strided", 4), ("block_random", 2)]:
    cfg = models.AttentionConfig(pattern, sparsity=0.6, sink=sink, block_q=16, block_kv=16)
    for t in (128, 512):
      assert so.flops.sparsity(cfg.mask(t), t) == pytest.approx(0.6, abs=0.05), (pattern, t)


def test_remat_changes_memory_not_math():
  cfg = models.ModelConfig(vocab_size=128, width=32, depth=2, num_heads=2)
  graphdef, state = nnx.split(models.Transformer(cfg, rngs=nnx.Rngs(0)))
  remat_graphdef, _ = nnx.split(models.Transformer(
      dataclasses.replace(cfg, remat=True), rngs=nnx.Rngs(0)))
  tokens = jnp.asarray(np.random.default_rng().integers(0, 128, (2, 32)), jnp.int32)
  grad = lambda g: jax.jit(jax.grad(lambda s: nnx.merge(g, s)(tokens).sum()))(state)
  for a, b in zip(jax.tree.leaves(grad(graphdef)), jax.tree.leaves(grad(remat_graphdef))):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["local_sink", "strided", "topk_blocks"])
def test_flops_per_token_of_a_config_equal_those_of_what_it_counts(name):
  """`AttentionConfig.counted` is what `so.flops` counts (a mask, or a so.flops.Selected), and
  `flops_per_token` gives the same number for the config or for that object."""
  att = PATTERN_CONFIGS[name]
  cfg = models.ModelConfig(vocab_size=200, width=48, depth=2, num_heads=4, num_kv_heads=2,
                           attention=att)
  t = 64
  counted = att.counted(t)
  assert isinstance(counted, so.flops.Selected if att.is_content else so.masks.Mask)
  assert att.pairs(t) == so.flops.pairs(counted, t)
  assert models.flops_per_token(cfg, t, training=False, attention=counted) == \
      models.flops_per_token(cfg, t, training=False)
  if att.is_content:
    pairs, visited = att.selection_counts(t, 20)
    assert (pairs, visited) == so.selected_pairs(t, t, dense_before=20,
                                                 **att._selection_args(t))
  else:
    with pytest.raises(ValueError, match="dense_before=20 applies to content patterns"):
      att.counted(t, 20)
