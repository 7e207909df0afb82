"""The functional training step: f32 params in, bf16 compute, AdamW update, metrics out.

The train state is a plain pytree {"step", "params", "opt"} with params a flat dict
{"blocks/0/attn/wq_dhe": array, ...}: what orbax saves and shards most simply. The NNX module is
rebuilt inside the jitted function with `nnx.merge(graphdef, params)`, so the step is a pure
function of (state, batch) and jit sees no Python objects but the static graphdef.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx

import models
from train.config import Config, OptimConfig

State = dict[str, Any]


class Params:
  """Converts between the model's nnx.State and the flat {path: array} dict the trainer keeps."""

  def __init__(self, cfg: models.ModelConfig):
    abstract = nnx.eval_shape(lambda: models.Transformer(cfg, rngs=nnx.Rngs(0)))
    self.graphdef, state = nnx.split(abstract)
    paths_leaves, self.treedef = jax.tree_util.tree_flatten_with_path(state)
    self.names = [_name(path) for path, _ in paths_leaves]

  def flatten(self, state: nnx.State) -> dict[str, jax.Array]:
    return dict(zip(self.names, jax.tree.leaves(state)))

  def model(self, params: dict[str, jax.Array]) -> models.Transformer:
    state = jax.tree.unflatten(self.treedef, [params[n] for n in self.names])
    return nnx.merge(self.graphdef, state)

  def init(self, cfg: models.ModelConfig, seed: int | jax.Array) -> dict[str, jax.Array]:
    """Fresh params from an int seed or a `jax.random.key` (the same params for key(seed))."""
    return self.flatten(nnx.state(models.Transformer(cfg, rngs=nnx.Rngs(seed))))


def init_state(codec: Params, tx: optax.GradientTransformation, cfg: models.ModelConfig,
               key: jax.Array | int) -> State:
  """A fresh train state, built eagerly (op by op), not under jit.

  Why: jitted, the init of a 100M-parameter model spent 72 s in XLA's GPU compiler with the key
  as an argument, and over 6 minutes as a no-input (all-constant) program (H100, jax 0.11.2):
  every parameter's threefry sampling is its own large fusion. Eagerly, each distinct shape
  compiles once. The values are the same (threefry gives identical bits jitted or not).
  `place` puts the result on the run's shardings.
  """
  params = codec.init(cfg, key)
  return {"step": jnp.zeros((), jnp.int32), "params": params, "opt": tx.init(params)}


def place(state: State, shardings) -> State:
  """`state` (identical on every process, e.g. from `init_state`) laid out as `shardings`;
  works across processes, where each one fills its own devices' shards."""
  def put(x, sharding):
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])
  return jax.tree.map(put, state, shardings)


def _name(path) -> str:
  parts = []
  for key in path:
    k = getattr(key, "key", getattr(key, "name", getattr(key, "idx", key)))
    if k != "value":  # the Variable's own field
      parts.append(str(k))
  return "/".join(parts)


def schedule(o: OptimConfig, total_steps: int) -> optax.Schedule:
  warmup = min(o.warmup_steps, max(total_steps - 1, 0))
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=o.lr, warmup_steps=warmup,
      decay_steps=max(total_steps, warmup + 1), end_value=o.lr * o.min_lr_ratio)


def optimizer(o: OptimConfig, total_steps: int) -> optax.GradientTransformation:
  # No decay on norm scales (1-D): decaying them toward 0 shrinks every activation.
  decay_mask = lambda params: {k: v.ndim >= 2 for k, v in params.items()}
  chain = [optax.clip_by_global_norm(o.clip_norm)] if o.clip_norm > 0 else []
  chain.append(optax.adamw(schedule(o, total_steps), b1=o.b1, b2=o.b2, eps=o.eps,
                           weight_decay=o.weight_decay, mask=decay_mask))
  return optax.chain(*chain)


def weighted_nll(model: models.Transformer, batch: dict[str, jax.Array]):
  """(sum of weights · NLL, sum of weights) over a [B, T] batch."""
  logits_btv = model(batch["inputs"])
  logp_btv = jax.nn.log_softmax(logits_btv)
  nll_bt = -jnp.take_along_axis(logp_btv, batch["targets"][..., None], axis=-1)[..., 0]
  w_bt = batch["weights"].astype(jnp.float32)
  return (nll_bt * w_bt).sum(), w_bt.sum()


def make_train_step(cfg: Config, codec: Params, tx: optax.GradientTransformation) -> Callable:
  """(state, batch [A, B/A, T]) -> (state, metrics); not yet jitted (the loop adds shardings)."""
  dtype = jnp.dtype(cfg.compute_dtype)
  lr = schedule(cfg.optim, cfg.total_steps)

  def micro_loss(params, micro):
    compute = jax.tree.map(lambda p: p.astype(dtype), params)
    return weighted_nll(codec.model(compute), micro)

  def step(state: State, batch: dict[str, jax.Array]):
    params = state["params"]

    # Gradients of the *summed* loss over the microbatches, divided once by the global weight:
    # the update is the same however the batch is split (microbatches, devices, processes).
    def body(carry, micro):
      grads, nll, weight = carry
      (n, w), g = jax.value_and_grad(micro_loss, has_aux=True)(params, micro)
      return (jax.tree.map(jnp.add, grads, g), nll + n, weight + w), None

    zeros = (jax.tree.map(jnp.zeros_like, params), jnp.float32(0), jnp.float32(0))
    (grads, nll, weight), _ = jax.lax.scan(body, zeros, batch)
    denom = jnp.maximum(weight, 1.0)
    grads = jax.tree.map(lambda g: g / denom, grads)
    updates, opt = tx.update(grads, state["opt"], params)
    params = optax.apply_updates(params, updates)
    metrics = {"loss": nll / denom, "grad_norm": optax.global_norm(grads), "weight": weight,
               "lr": lr(state["step"])}
    return {"step": state["step"] + 1, "params": params, "opt": opt}, metrics

  return step


def make_multi_step(step: Callable) -> Callable:
  """(state, batches [K, A, B/A, T], n) -> (state, metrics [K]): the first n of the K batches'
  optimizer steps in one jitted call (a `lax.fori_loop` over `step`; metrics[n:] are zeros).

  n is traced, not static: a call that ends early at a checkpoint, a phase change or the last
  step runs the same program, so each sequence length compiles once per run (on a GPU each
  compile of a small model's step costs ~20 s; with n static a 7.4e15-FLOP h200 run compiled 9).
  """
  def multi(state, batches, n):
    k = jax.tree.leaves(batches)[0].shape[0]
    at = lambda i: jax.tree.map(lambda x: jax.lax.dynamic_index_in_dim(x, i, keepdims=False),
                                batches)
    shapes = jax.eval_shape(step, state, at(0))[1]
    metrics = jax.tree.map(lambda s: jnp.zeros((k, *s.shape), s.dtype), shapes)

    def body(i, carry):
      state, metrics = carry
      state, m = step(state, at(i))
      return state, jax.tree.map(
          lambda buf, v: jax.lax.dynamic_update_index_in_dim(buf, v, i, 0), metrics, m)

    return jax.lax.fori_loop(0, n, body, (state, metrics))

  return multi


def make_predict(cfg: Config, codec: Params) -> Callable:
  """(params, {"inputs": [B, T]}) -> argmax predictions int32 [B, T] (teacher-forced)."""
  dtype = jnp.dtype(cfg.compute_dtype)

  def predict(params, batch):
    compute = jax.tree.map(lambda p: p.astype(dtype), params)
    return codec.model(compute)(batch["inputs"]).argmax(-1).astype(jnp.int32)

  return predict
