"""JAX counterparts of the numpy sampling helpers in `base`, for on-device generation.

`Task.device_example(key)` draws an example inside a jitted step (vmappable over `key`, every
shape static from the config). It is a different random stream from `Task.example` but the
same task: same format and knobs, the same law for every draw, and every answer right for
its inputs. The helpers here mirror `base.distinct`, `base.place` and `base.fill`; each task
module has a `_device_sample` beside its numpy `_sample`.

Imports only jax, numpy and `vocab` (base imports this module, not the other way round).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from experiments.tasks import vocab as vocab_lib

# `distinct` shuffles the whole tuple space when it has at most this many tuples (or at most
# twice the count); beyond that it draws with replacement and redraws repeats.
PERMUTE_MAX = 1024


def distinct(key: jax.Array, r: range, count: int, width: int = 1) -> jax.Array:
  """-> int32 [count, width]: `count` distinct tuples of `width` tokens from range `r`,
  uniform over ordered samples without replacement (as `base.distinct`).

  A small tuple space is shuffled. A large one (`len(r)**width` reaches ~2.5e8 at width 4)
  is never materialised: tuples are drawn with replacement and every tuple equal to one at a
  lower index is redrawn until none is. Which draws are redone depends only on which are
  equal, so the result's law is invariant under relabelling the tuples, and that group acts
  transitively on distinct samples: the result is exactly uniform.
  """
  n = len(r)
  total = n**width  # a Python int: no overflow
  if count > total:
    raise ValueError(f"distinct: {count} distinct tuples of width {width} from {n} tokens")
  if total <= max(PERMUTE_MAX, 2 * count):
    codes = jax.random.permutation(key, total)[:count].astype(jnp.int32)
    digits = codes[:, None] // jnp.asarray(n ** np.arange(width - 1, -1, -1), jnp.int32) % n
  else:
    draw_key, key = jax.random.split(key)
    digits = jax.random.randint(draw_key, (count, width), 0, n, jnp.int32)

    def body(state):
      key, digits = state
      key, draw_key = jax.random.split(key)
      fresh = jax.random.randint(draw_key, (count, width), 0, n, jnp.int32)
      return key, jnp.where(repeats(digits)[:, None], fresh, digits)

    _, digits = lax.while_loop(lambda state: repeats(state[1]).any(), body, (key, digits))
  return digits + jnp.int32(r.start)


def repeats(rows: jax.Array) -> jax.Array:
  """[k, w] -> bool [k]: whether an equal row sits at a lower index (O(k log k), one sort)."""
  k, w = rows.shape
  index = jnp.arange(k, dtype=jnp.int32)
  *cols, order = lax.sort((*(rows[:, j] for j in range(w)), index), num_keys=w + 1)
  same = jnp.ones(k - 1, bool)
  for c in cols:
    same &= c[1:] == c[:-1]
  # Equal rows sort by index, so every one but the first of a run is a repeat.
  return jnp.zeros(k, bool).at[order].set(jnp.concatenate([jnp.zeros(1, bool), same]))


def sample(key: jax.Array, n: int, count: int) -> jax.Array:
  """-> int32 [count]: distinct draws from range(n) in random order
  (`rng.choice(n, count, replace=False)`)."""
  return distinct(key, range(n), count)[:, 0]


def place(key: jax.Array, context_len: int, count: int, item_len: int,
          depth: tuple[float, float] = (0.0, 1.0)) -> jax.Array:
  """-> int32 [count]: sorted starts of `count` non-overlapping items of `item_len` tokens
  (as `base.place`: the free tokens before each item are sorted uniform draws, restricted to
  the fraction `depth` of the free space)."""
  free = context_len - count * item_len
  lo, hi = int(np.floor(depth[0] * free)), int(np.floor(depth[1] * free))
  gaps = jnp.sort(jax.random.randint(key, (count,), lo, hi + 1, jnp.int32))
  return gaps + item_len * jnp.arange(count, dtype=jnp.int32)


def fill(key: jax.Array, v: vocab_lib.Vocab, context_len: int, starts: jax.Array,
         items: jax.Array) -> jax.Array:
  """int32 [C]: uniform filler with `items` [n, L] written at `starts` [n] (as `base.fill`)."""
  context = jax.random.randint(key, (context_len,), v.filler.start, v.filler.stop, jnp.int32)
  positions = starts[:, None] + jnp.arange(items.shape[1], dtype=jnp.int32)
  return context.at[positions.ravel()].set(items.ravel().astype(jnp.int32),
                                           indices_are_sorted=True, unique_indices=True)
