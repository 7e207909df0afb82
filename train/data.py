"""The training/eval input pipeline: a sharded, shuffled, weighted mixture of sources.

A *source* is anything with `__len__` and `__getitem__(i) -> {"inputs", "targets",
"weights"}` of numpy arrays shaped [T] (int32, int32, float32); `T` may differ between
sources. The pipeline never looks inside the examples, so it serves any task suite.

    ds = mixture(sources, weights, batch_size=8, seed=0)
    it = iter(ds)
    batch = next(it)          # {"inputs": [B, T], "targets": [B, T], "weights": [B, T]}
    state = it.get_state()    # JSON-able dict
    it = iter(ds); it.set_state(state)   # continues with exactly the same batches

Built only from grain `MapDataset` transformations, so batch k is a pure function of
(sources, weights, batch_size, seed, shard) and the iterator state is just a counter.

`device_batches` is the other path: batches made inside the jitted step from tasks that can
draw examples on the device (`task.device_example(key)`), for when the host cannot keep up.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import grain
import jax
import jax.numpy as jnp
import numpy as np

KEYS = ("inputs", "targets", "weights")


class Source(Protocol):
  def __len__(self) -> int: ...
  def __getitem__(self, index: int) -> dict[str, np.ndarray]: ...


def _seed(seed: int, *path: int) -> int:
  """An independent 32-bit seed for one part of the pipeline (grain's shuffle takes 32 bits)."""
  return int(np.random.SeedSequence([seed, *path]).generate_state(1)[0])


def _length(source: Source, k: int) -> int:
  example = source[0]
  if set(example) != set(KEYS):
    raise ValueError(f"sources[{k}][0] has keys {sorted(example)}; expected exactly {list(KEYS)}")
  shapes = {key: np.shape(example[key]) for key in KEYS}
  if len(set(shapes.values())) != 1 or len(shapes["inputs"]) != 1:
    raise ValueError(f"sources[{k}][0] must hold three [T] arrays, got shapes {shapes}")
  return shapes["inputs"][0]


def mixture(
    sources: Sequence[Source],
    weights: Sequence[float],
    *,
    batch_size: int,
    seed: int,
    shard_index: int | None = None,
    shard_count: int | None = None,
    num_threads: int = 2,
    prefetch: int = 4,
) -> grain.IterDataset:
  """An infinite dataset of batches {"inputs", "targets", "weights"}: [batch_size, T].

  Args:
    sources: random-access sources (see module doc).
    weights: one positive weight per source: the expected fraction of *examples* drawn
      from it (a source of twice the length contributes twice the tokens per example).
    batch_size: examples per batch on this process.
    seed: fixes the shuffle of every source.
    shard_index, shard_count: this process's slice of every source; defaults to
      `jax.process_index()` / `jax.process_count()`.
    num_threads, prefetch: batches computed in parallel / buffered ahead.

  Every batch has one length: sources are grouped by T, examples are mixed within a
  group, then batches are interleaved across groups. Mixing follows grain's
  deterministic proportional pattern, so at step k every process draws the same group
  (the same T) from its own disjoint shard, which global batches need.
  """
  if len(sources) == 0 or len(sources) != len(weights):
    raise ValueError(f"need one weight per source and at least one source; got "
                     f"{len(sources)} sources and {len(weights)} weights")
  if not all(np.isfinite(w) and w > 0 for w in weights):
    raise ValueError(f"weights={list(weights)} must all be positive and finite")
  if not (isinstance(batch_size, int) and batch_size >= 1):
    raise ValueError(f"batch_size={batch_size!r} must be an int >= 1")
  if shard_index is None or shard_count is None:
    shard_index = jax.process_index() if shard_index is None else shard_index
    shard_count = jax.process_count() if shard_count is None else shard_count
  if not (isinstance(shard_count, int) and shard_count >= 1):
    raise ValueError(f"shard_count={shard_count!r} must be an int >= 1")
  if not (isinstance(shard_index, int) and 0 <= shard_index < shard_count):
    raise ValueError(f"shard_index={shard_index!r} must be an int in [0, {shard_count - 1}]")
  for k, source in enumerate(sources):
    if len(source) < shard_count:
      raise ValueError(f"sources[{k}] has {len(source)} examples; needs >= shard_count={shard_count}")

  groups: dict[int, list[int]] = {}
  for k, source in enumerate(sources):
    groups.setdefault(_length(source, k), []).append(k)

  batched, group_weights = [], []
  for length in sorted(groups):
    members = groups[length]
    streams = [
        grain.MapDataset.source(sources[k])[shard_index::shard_count]
        .shuffle(seed=_seed(seed, k)).repeat()
        for k in members
    ]
    examples = grain.MapDataset.mix(streams, [weights[k] for k in members])
    batched.append(examples.batch(batch_size, drop_remainder=True))
    group_weights.append(sum(weights[k] for k in members))
  batches = grain.MapDataset.mix(batched, group_weights)
  return batches.to_iter_dataset(
      grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch))


def take(iterator: Any, n: int) -> list[dict[str, np.ndarray]]:
  """The next `n` batches of `iterator`."""
  return [next(iterator) for _ in range(n)]


# ------------------------------------------------------------------------- on-device batches

def rows_per_task(weights: Sequence[float], batch_size: int) -> list[int]:
  """Rows each task gets in every on-device batch: `batch_size · w / Σw` rounded by largest
  remainder (ties to the earlier task), so a batch's mix is the same at every step."""
  w = np.asarray(weights, np.float64)
  share = batch_size * w / w.sum()
  rows = np.floor(share).astype(int)
  extra = np.argsort(-(share - rows), kind="stable")[:batch_size - rows.sum()]
  rows[extra] += 1
  return rows.tolist()


def device_batches(tasks: Sequence[Any], weights: Sequence[float], *, batch_size: int,
                   accum: int, seed: int, steps: int | None = None) -> Any:
  """-> batch(step) for use inside jit: {"inputs", "targets", "weights"} [accum, B/accum, T];
  with `steps`, batches(first) -> [steps, accum, B/accum, T]: those of steps first, first + 1, ...
  (the trainer's device path: one program per length that depends on the tasks alone, not the
  model, so the study's compilation cache shares it between runs).

  Row r of task k at step s is `tasks[k].device_example(key)` with key a pure function of
  (seed, s, k, r): any step's batch can be made anywhere, in any order, so resuming needs only
  the step. `tasks` share one length; rows are grouped by task (`rows_per_task`).
  """
  rows = rows_per_task(weights, batch_size)
  if 0 in rows:  # train.config.validate says which task, before anything runs
    raise ValueError(f"batch_size={batch_size} leaves a task no rows per step: {rows}")
  base = jax.random.fold_in(jax.random.key(seed), 0x5EED)  # apart from init keys of seed

  def batch(step):
    at = jax.random.fold_in(base, step)
    parts = []
    for k, (task, n) in enumerate(zip(tasks, rows)):
      task_key = jax.random.fold_in(at, k)
      keys = jax.vmap(lambda r: jax.random.fold_in(task_key, r))(jnp.arange(n))
      parts.append(jax.vmap(task.device_example)(keys))
    out = {key: jnp.concatenate([p[key] for p in parts]) for key in KEYS}
    return {key: x.reshape(accum, batch_size // accum, *x.shape[1:]) for key, x in out.items()}

  if steps is None:
    return batch
  return lambda first: jax.vmap(batch)(first + jnp.arange(steps))
