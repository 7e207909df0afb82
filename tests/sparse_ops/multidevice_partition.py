"""Run by test_partition.py in a process with 4 host devices (XLA_FLAGS is read when jax starts,
so these cannot share the main test process). Not collected on its own: the name is not test_*.

The Pallas Triton kernel runs in interpret mode behind a spy that records the shapes it is
traced with: per-shard shapes prove the kernel ran on each device's shard, and the values are
checked against `reference` on the whole arrays, forward and gradients.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

import sparse_ops as so
from sparse_ops import masks, partition, reference
from sparse_ops.attention import IMPLEMENTATIONS, Implementation
from sparse_ops.kernels import triton as kt

assert jax.device_count() == 4, "run with XLA_FLAGS=--xla_force_host_platform_device_count=4"
MESH = Mesh(np.asarray(jax.devices()).reshape(2, 2), ("data", "fsdp"))
B, T, HQ, HKV, D = 4, 64, 4, 2, 16


class Spy:
  """The interpret-mode kernel, recording the q shape of every trace."""

  def __init__(self):
    self.shapes = []

  def __call__(self, q, k, v, layout, scale):
    self.shapes.append(tuple(q.shape))
    return kt.attention(q, k, v, layout, scale, interpret=True)


def inputs(seed=0, b=B):
  kq, kk, kv, kg = jax.random.split(jax.random.key(seed), 4)
  q = jax.random.normal(kq, (b, T, HQ, D), jnp.float32)
  k = jax.random.normal(kk, (b, T, HKV, D), jnp.float32)
  v = jax.random.normal(kv, (b, T, HKV, D), jnp.float32)
  g = jax.random.normal(kg, (b, T, HQ, D), jnp.float32)
  return q, k, v, g


def layouts(q, k):
  causal = so.BlockLayout.from_mask(masks.Causal(), T, T, block_q=16, block_kv=16)  # [1, 1]
  # Per batch row and kv-head ([B, Hkv]): content-selected blocks.
  selected = so.select_blocks(q, k, block_q=16, block_kv=16, budget=so.Budget.density(0.5))
  # ...chosen per query: row_keep [B, Hkv, nk, T] is split with the lists
  per_query = so.select_blocks(q, k, block_q=16, block_kv=16, budget=so.Budget.density(0.5),
                               per_query=True)
  return {"broadcast": causal, "per_row_and_head": selected, "per_query": per_query}


def loss_and_grads(fn, q, k, v, g):
  loss = lambda q, k, v: jnp.sum(fn(q, k, v) * g)
  return jax.value_and_grad(loss, argnums=(0, 1, 2))(q, k, v)


@pytest.mark.parametrize("which", ["broadcast", "per_row_and_head", "per_query"])
@pytest.mark.parametrize("spec, local", [
    (None, (1, T, HQ, D)),                              # default: batch over both axes
    (P("data", None, "fsdp"), (2, T, HQ // 2, D)),      # batch and heads
    (P("data"), (2, T, HQ, D)),                         # batch over one axis, the other replicated
])
def test_kernel_runs_per_shard_with_the_values_of_the_whole(which, spec, local):
  q, k, v, g = inputs()
  layout = layouts(q, k)[which]
  want = loss_and_grads(lambda q, k, v: reference.attention(q, k, v, layout, D ** -0.5), q, k, v, g)
  spy = Spy()
  sharded = NamedSharding(MESH, P(("data", "fsdp")))
  args = [jax.device_put(x, sharded) for x in (q, k, v, g)]
  with jax.set_mesh(MESH):
    got = jax.jit(lambda q, k, v, g: loss_and_grads(
        lambda q, k, v: partition.per_shard(spy, q, k, v, layout, D ** -0.5, spec),
        q, k, v, g))(*args)
  assert spy.shapes and set(spy.shapes) == {local}, spy.shapes
  np.testing.assert_allclose(got[0], want[0], rtol=1e-4)
  for name, a, b in zip("qkv", got[1], want[1]):
    np.testing.assert_allclose(a, b, atol=2e-4, rtol=2e-4, err_msg=f"d{name}")


@pytest.fixture
def spy_kernel(monkeypatch):
  """`pallas_triton` as an interpret-mode spy, so `so.attention` and the trainer take the path
  they take on a GPU (the real one is unavailable on a CPU)."""
  spy = Spy()
  monkeypatch.setitem(IMPLEMENTATIONS, "pallas_triton", Implementation(
      spy, lambda: None, kt.default_blocks, partitionable=False))
  return spy


def test_attention_runs_pallas_kernels_per_shard_of_the_context_mesh(spy_kernel):
  q, k, v, _ = inputs(1)
  run = lambda q, k, v: so.attention(q, k, v, mask=masks.Causal(), implementation="pallas_triton")
  sharded = [jax.device_put(x, NamedSharding(MESH, P(("data", "fsdp")))) for x in (q, k, v)]
  with jax.set_mesh(MESH):
    out = jax.jit(run)(*sharded)
  assert spy_kernel.shapes == [(1, T, HQ, D)]
  want = so.attention(q, k, v, mask=masks.Causal(), implementation="reference")
  np.testing.assert_allclose(out, want, atol=1e-5)
  run(q, k, v)  # no mesh set: the whole arrays
  assert spy_kernel.shapes[-1] == (B, T, HQ, D)


def test_the_trainer_sets_its_mesh_so_the_kernel_runs_per_shard(spy_kernel, tmp_path):
  import models
  import train

  def config(impl, run_dir):
    model = models.ModelConfig(vocab_size=128, width=32, depth=2, num_heads=2,
                               attention=models.AttentionConfig(
                                   "dense", implementation=impl, block_q=16, block_kv=16))
    return train.Config(
        run_dir=str(run_dir), model=model, batch_size=8, steps=3, compute_dtype="float32",
        data=train.DataConfig(tasks=("toy",), seq_len=32, factory="toy_tasks:make",
                              shards=2),
        mesh=train.MeshConfig(data=2, fsdp=2), eval=train.EvalConfig(examples=0),
        log=train.LogConfig(every=1, progress=False, wandb="disabled"),
        checkpoint=train.CheckpointConfig(every=10 ** 6, async_save=False))

  kernel = train.run(config("pallas_triton", tmp_path / "kernel"))
  assert kernel.status == "finished"
  assert spy_kernel.shapes and {s[0] for s in spy_kernel.shapes} == {8 // 4}, spy_kernel.shapes
  whole = train.run(config("reference", tmp_path / "reference"))
  assert kernel.loss == pytest.approx(whole.loss, rel=1e-5)


@pytest.mark.parametrize("spec, b, match", [
    (None, 2, "batch B=2 cannot be split over axes .'data', 'fsdp'. of 4 devices"),
    (P(None, "data"), B, "splits q's sequence .T. dimension"),
    (P(None, None, None, "data"), B, "splits q's head-dim .D. dimension"),
    (P("model"), B, r"names axes \['model'\]; each must be a distinct axis of the mesh"),
    (P(("data", "data")), B, "each must be a distinct axis"),
    (P(None, None, ("data", "fsdp")), B, "Hq=4 and Hkv=2 heads cannot both be split"),
    ("data", B, "must be a jax.sharding.PartitionSpec"),
    (P("data", None, None, None, None), B, "has 5 entries"),
])
def test_bad_partitions_fail_naming_the_value(spec, b, match):
  q, k, v, _ = inputs(b=b)
  layout = layouts(q, k)["broadcast"]
  with jax.set_mesh(MESH), pytest.raises(ValueError, match=match):
    partition.per_shard(Spy(), q, k, v, layout, 1.0, spec)


def test_a_partition_without_a_mesh_is_an_error_and_p_empty_runs_whole():
  q, k, v, _ = inputs()
  layout = layouts(q, k)["broadcast"]
  with pytest.raises(ValueError, match="names mesh axes but no mesh is set"):
    partition.per_shard(Spy(), q, k, v, layout, 1.0, P("data"))
  spy = Spy()
  with jax.set_mesh(MESH):
    partition.per_shard(spy, q, k, v, layout, 1.0, P())
  assert spy.shapes == [(B, T, HQ, D)]


def test_a_one_device_mesh_accepts_the_partition_of_a_larger_one():
  """Code written for N devices runs on one: the spec is checked, the call is whole."""
  q, k, v, _ = inputs()
  layout = layouts(q, k)["broadcast"]
  spy = Spy()
  with jax.set_mesh(Mesh(np.asarray(jax.devices()[:1]).reshape(1, 1), ("data", "fsdp"))):
    out = partition.per_shard(spy, q, k, v, layout, D ** -0.5, P("data", None, "fsdp"))
    with pytest.raises(ValueError, match="each must be a distinct axis of the mesh"):
      partition.per_shard(spy, q, k, v, layout, D ** -0.5, P("model"))
  assert spy.shapes == [(B, T, HQ, D)]
  np.testing.assert_allclose(out, reference.attention(q, k, v, layout, D ** -0.5), atol=1e-5)


def test_per_head_masks_split_by_batch_only():
  """A per-head mask is indexed by the kernel's local head: splitting heads would apply the
  first heads' masks in every shard, so it is refused; splitting the batch is exact."""
  q, k, v, g = inputs(2)
  mask = masks.MultiHead([masks.Local(5), masks.Causal()])  # one per kv-head
  layout = so.BlockLayout.from_mask(mask, T, T, block_q=16, block_kv=16)
  with jax.set_mesh(MESH), pytest.raises(ValueError, match="2 per-head masks; split only"):
    partition.per_shard(Spy(), q, k, v, layout, 1.0, P("data", None, "fsdp"))
  want = loss_and_grads(lambda q, k, v: reference.attention(q, k, v, layout, D ** -0.5), q, k, v, g)
  spy = Spy()
  with jax.set_mesh(MESH):
    got = jax.jit(lambda q, k, v, g: loss_and_grads(
        lambda q, k, v: partition.per_shard(spy, q, k, v, layout, D ** -0.5, None),
        q, k, v, g))(q, k, v, g)
  assert set(spy.shapes) == {(1, T, HQ, D)}
  np.testing.assert_allclose(got[0], want[0], rtol=1e-4)
  for a, b in zip(got[1], want[1]):
    np.testing.assert_allclose(a, b, atol=2e-4, rtol=2e-4)


@pytest.mark.parametrize("manual, local", [
    ({"data", "fsdp"}, (1, T, HQ, D)),   # the caller split everything: the kernel runs as is
    ({"data"}, (1, T, HQ, D)),           # the caller split the batch over data: fsdp is left
])
def test_inside_the_callers_shard_map(spy_kernel, manual, local):
  q, k, v, _ = inputs(3)
  want = so.attention(q, k, v, mask=masks.Causal(), implementation="reference")
  spec = P(tuple(a for a in ("data", "fsdp") if a in manual))
  body = lambda q, k, v: so.attention(q, k, v, mask=masks.Causal(), implementation="pallas_triton")
  fn = jax.shard_map(body, mesh=MESH, in_specs=(spec,) * 3, out_specs=spec, axis_names=manual,
                     check_vma=False)
  out = jax.jit(fn)(q, k, v)
  assert set(spy_kernel.shapes) == {local}, spy_kernel.shapes
  np.testing.assert_allclose(out, want, atol=1e-5)
  with pytest.raises(ValueError, match="already split .manual."):
    jax.jit(jax.shard_map(
        lambda q, k, v: so.attention(q, k, v, mask=masks.Causal(), implementation="pallas_triton",
                                     partition=P("data")),
        mesh=MESH, in_specs=(spec,) * 3, out_specs=spec, axis_names=manual,
        check_vma=False))(q, k, v)


def test_partitionable_implementations_check_the_partition_too():
  q, k, v, _ = inputs()
  with jax.set_mesh(MESH), pytest.raises(ValueError, match="splits q's sequence"):
    so.attention(q, k, v, mask=masks.Causal(), implementation="xla", partition=P(None, "data"))
