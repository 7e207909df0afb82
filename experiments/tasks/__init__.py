"""Procedural long-context tasks over an integer vocabulary (see DESIGN.md, "experiments").

    task = tasks.make("niah_single", length=4096, vocab_size=512, seed=0, **knobs)
    ex = task.example("test", i)      # inputs/targets/weights [T], answer, evidence, task, category
    task.source("train")              # random-access source for train.data
"""

from experiments.tasks.base import SPLITS, Source, Task
from experiments.tasks.registry import CATEGORIES, TASKS, make, spec
from experiments.tasks.vocab import Vocab

__all__ = ["CATEGORIES", "SPLITS", "Source", "TASKS", "Task", "Vocab", "make", "spec"]
