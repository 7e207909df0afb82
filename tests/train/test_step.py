"""The step in isolation: f32 master params under bf16 compute, gradient accumulation, schedule,
and the fsdp sharding rule."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

import models
from train import mesh as mesh_lib
from train import step as step_lib
from train.config import Config, DataConfig, OptimConfig

MODEL = models.ModelConfig(vocab_size=128, width=32, depth=2, num_heads=2,
                           attention=models.AttentionConfig(implementation="reference"))


def _setup(**overrides):
  cfg = Config(model=MODEL, data=DataConfig(seq_len=16), batch_size=8, steps=10,
               compute_dtype="float32", **overrides)
  codec = step_lib.Params(cfg.model)
  tx = step_lib.optimizer(cfg.optim, cfg.total_steps)
  params = codec.init(cfg.model, 0)
  state = {"step": jnp.zeros((), jnp.int32), "params": params, "opt": tx.init(params)}
  return cfg, jax.jit(step_lib.make_train_step(cfg, codec, tx)), state


def _batch(accum, rng=np.random.default_rng()):
  tokens = rng.integers(0, 128, (8, 17))
  weights = (rng.random((8, 16)) < 0.5).astype(np.float32)
  batch = {"inputs": tokens[:, :-1], "targets": tokens[:, 1:], "weights": weights}
  return {k: jnp.asarray(v.reshape(accum, 8 // accum, 16)) for k, v in batch.items()}


def test_gradient_accumulation_matches_one_big_batch():
  _, step1, state = _setup()
  _, step4, _ = _setup(grad_accum=4)
  batch = _batch(1)
  out1, m1 = step1(state, batch)
  out4, m4 = step4(state, {k: v.reshape(4, 2, 16) for k, v in batch.items()})
  np.testing.assert_allclose(m1["loss"], m4["loss"], rtol=1e-6)
  for name in out1["params"]:
    np.testing.assert_allclose(out1["params"][name], out4["params"][name], rtol=1e-5,
                               atol=1e-7, err_msg=name)


def test_bf16_compute_keeps_f32_params_and_close_loss():
  cfg, step32, state = _setup()
  step16 = jax.jit(step_lib.make_train_step(
      dataclasses.replace(cfg, compute_dtype="bfloat16"), step_lib.Params(cfg.model),
      step_lib.optimizer(cfg.optim, cfg.total_steps)))
  batch = _batch(1)
  out32, m32 = step32(state, batch)
  out16, m16 = step16(state, batch)
  assert all(v.dtype == jnp.float32 for v in out16["params"].values())
  assert float(m16["loss"]) == pytest.approx(float(m32["loss"]), rel=2e-2)
  assert float(m16["loss"]) != float(m32["loss"])  # it really computed in bf16


def test_schedule_warms_up_then_decays_to_the_floor():
  o = OptimConfig(lr=1e-2, warmup_steps=10, min_lr_ratio=0.1)
  lr = step_lib.schedule(o, 100)
  assert float(lr(0)) == 0 and float(lr(10)) == pytest.approx(1e-2)
  assert float(lr(55)) < 1e-2 and float(lr(100)) == pytest.approx(1e-3)


@pytest.mark.parametrize("shape, fsdp, spec", [
    ((128, 64), 4, P("fsdp", None)),
    ((64, 4, 16), 4, P("fsdp", None, None)),
    ((6, 16), 4, P(None, "fsdp")),
    ((6,), 4, P()),
    ((), 4, P()),
    ((128, 64), 1, P()),
])
def test_fsdp_rule_splits_the_largest_divisible_axis(shape, fsdp, spec):
  assert mesh_lib.param_spec(shape, fsdp) == spec
