"""A tiny task factory with the `experiments.tasks.make` protocol, for trainer mechanics tests.

Example i is an arithmetic sequence mod V (start and step drawn from i), so there is something to
learn. `TOY_DELAY` (seconds per example) slows the data down so a test can interrupt a run
mid-way. Task "toy_nan" gives example i infinite weights when i % 71 == 11: the loss goes
non-finite at a step the data decides.
"""

import os
import time

import numpy as np


class Toy:
  def __init__(self, name, length, vocab_size, seed):
    self.name, self.length, self.vocab_size, self.seed = name, length, vocab_size, seed

  def source(self, split):
    return Source(self, {"train": 0, "validation": 1, "test": 2}[split])


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
