"""A tiny task factory with the `experiments.tasks.make` protocol, for trainer mechanics tests.

Example i is an arithmetic sequence mod V (start and step drawn from i), so there is something to
learn. `TOY_DELAY` (seconds per example) slows the data down so a test can interrupt a run
mid-way. Task "toy_nan" gives example i infinite weights when i % 71 == 11: the loss goes
non-finite at a step the data decides.

`device_example(key)` is the same task drawn on the device (`data.source="device"`): start and
step from the key; "toy_nan" rows get infinite weights with probability 1/71, and TOY_DELAY
sleeps on the host once per row (a callback), so a test can interrupt that path too.
"""

import os
import time

import jax
import jax.numpy as jnp
import numpy as np


class Toy:
  def __init__(self, name, length, vocab_size, seed):
    self.name, self.length, self.vocab_size, self.seed = name, length, vocab_size, seed

  def source(self, split):
    return Source(self, {"train": 0, "validation": 1, "test": 2}[split])

  def device_example(self, key):
    delay = float(os.environ.get("TOY_DELAY", "0"))
    if delay:
      jax.debug.callback(lambda: time.sleep(delay))
    k1, k2, k3 = jax.random.split(key, 3)
    start = jax.random.randint(k1, (), 0, self.vocab_size)
    step = jax.random.randint(k2, (), 1, 4)
    inputs = ((start + step * jnp.arange(self.length)) % self.vocab_size).astype(jnp.int32)
    weights = jnp.ones(self.length, jnp.float32).at[-1].set(0)
    if self.name == "toy_nan":
      weights = jnp.where(jax.random.randint(k3, (), 0, 71) == 11, jnp.inf, weights)
    return {"inputs": inputs, "targets": jnp.roll(inputs, -1), "weights": weights}


class Source:
  def __init__(self, task, split):
    self.task, self.split = task, split

  def __len__(self):
    return 2**31 - 1

  def __getitem__(self, i):
    delay = float(os.environ.get("TOY_DELAY", "0"))
    if delay:
      time.sleep(delay)
    t = self.task
    rng = np.random.default_rng([t.seed, self.split, int(i)])
    start, step = rng.integers(0, t.vocab_size), rng.integers(1, 4)
    inputs = ((start + step * np.arange(t.length)) % t.vocab_size).astype(np.int32)
    targets = np.roll(inputs, -1)
    weights = np.ones(t.length, np.float32)
    weights[-1] = 0
    if t.name == "toy_nan" and i % 71 == 11:
      weights[:] = np.inf
    return {"inputs": inputs, "targets": targets, "weights": weights}


def make(name, *, length, vocab_size, seed):
  return Toy(name, length, vocab_size, seed)


def score(predictions, targets, weights):
  right = (np.asarray(predictions) == np.asarray(targets)) & (np.asarray(weights) > 0)
  return {"token_accuracy": right.sum(1) / np.maximum((np.asarray(weights) > 0).sum(1), 1)}
