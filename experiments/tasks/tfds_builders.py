"""Every task as a TFDS dataset (array_record files; TensorFlow is not needed).

One `GeneratorBasedBuilder` per task, registered under the task's name, with one builder
config per length (`len128` ... `len131072`, vocab_size 512, seed 0); `config(...)` makes
others. Record i of a split is exactly `task.example(split, i)` plus `index`, stored in
order (shuffling off), so a built eval set is a frozen, shareable copy of the generator.

    b = builder("niah_single", data_dir="/data", length=4096, splits={"test": 256})
    b.download_and_prepare()            # or: python -m experiments.tasks build ...
    ds = b.as_data_source("test")       # ds[i]["inputs"] == task.example("test", i)["inputs"]

Bump VERSION whenever generation changes, so files on disk never silently disagree with code.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from etils import epath
from tensorflow_datasets.core import utils as tfds_utils

from experiments.tasks import registry

VERSION = "1.0.0"
LENGTHS = tuple(2**k for k in range(7, 18))  # 128 ... 131072
DEFAULT_SPLITS = (("validation", 128), ("test", 128))


@dataclasses.dataclass(eq=False)
class TaskConfig(tfds.core.BuilderConfig):
  """One task instance: the task's constructor arguments plus split sizes."""

  length: int = 4096
  vocab_size: int = 512
  seed: int = 0
  knobs: tuple[tuple[str, Any], ...] = ()
  splits: tuple[tuple[str, int], ...] = DEFAULT_SPLITS


def config(length: int, *, vocab_size: int = 512, seed: int = 0,
           splits: dict[str, int] | None = None, **knobs: Any) -> TaskConfig:
  """A builder config; its name is `len{length}`, plus a digest when anything else differs."""
  splits_t = tuple(sorted((splits or dict(DEFAULT_SPLITS)).items()))
  knobs_t = tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in knobs.items()))
  name = f"len{length}"
  extra = (vocab_size, seed, knobs_t, splits_t)
  if extra != (512, 0, (), tuple(sorted(DEFAULT_SPLITS))):
    name += "_" + hashlib.sha256(json.dumps(extra).encode()).hexdigest()[:10]
  return TaskConfig(name=name, version=VERSION, length=length, vocab_size=vocab_size, seed=seed,
                    knobs=knobs_t, splits=splits_t,
                    description=f"length={length} vocab_size={vocab_size} seed={seed} "
                                f"knobs={dict(knobs_t)} splits={dict(splits_t)}")


class _TaskBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  VERSION = tfds.core.Version(VERSION)
  TASK: str

  @tfds_utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    # tfds 4.9.10's default imports the `importlib_resources` backport, which its own
    # metadata only installs on Python < 3.9; the builders live in this plain file.
    return epath.Path(__file__)

  @property
  def task(self):
    c = self.builder_config
    return registry.make(self.TASK, length=c.length, vocab_size=c.vocab_size, seed=c.seed,
                         **dict(c.knobs))

  def _info(self) -> tfds.core.DatasetInfo:
    t = self.builder_config.length
    vector = lambda dtype, n=t: tfds.features.Tensor(shape=(n,), dtype=dtype)
    return tfds.core.DatasetInfo(
        builder=self,
        description=f"{self.TASK}: procedural long-context task (experiments.tasks).",
        features=tfds.features.FeaturesDict({
            "inputs": vector(np.int32),
            "targets": vector(np.int32),
            "weights": vector(np.float32),
            "answer": vector(np.int32, None),
            "evidence": vector(np.int32, None),
            "task": tfds.features.Text(),
            "category": tfds.features.Text(),
            "index": tfds.features.Scalar(dtype=np.int64),
        }),
        disable_shuffling=True,  # record i must be example i
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download: examples are generated
    task = self.task  # validates the config before any file is written
    return {split: self._generate_examples(task, split, n)
            for split, n in self.builder_config.splits}

  def _generate_examples(self, task, split: str, n: int):
    for i in range(n):
      yield i, {**task.example(split, i), "index": i}


BUILDERS: dict[str, type[_TaskBuilder]] = {
    name: type(
        "".join(part.title() for part in name.split("_")),
        (_TaskBuilder,),
        {"name": name, "TASK": name, "__module__": __name__,
         "BUILDER_CONFIGS": [config(n) for n in LENGTHS]},
    )
    for name in registry.TASKS
}


def builder(task: str, *, data_dir: str, length: int, vocab_size: int = 512, seed: int = 0,
            splits: dict[str, int] | None = None, **knobs: Any) -> tfds.core.DatasetBuilder:
  """The TFDS builder of `task` for one config, writing array_record files under `data_dir`."""
  if task not in BUILDERS:
    raise ValueError(f"task={task!r} must be one of {sorted(BUILDERS)}")
  registry.make(task, length=length, vocab_size=vocab_size, seed=seed, **knobs)  # validate early
  cfg = config(length, vocab_size=vocab_size, seed=seed, splits=splits, **knobs)
  if cfg.name in BUILDERS[task].builder_configs:
    cfg = cfg.name  # tfds refuses a second config object under a registered name
  return BUILDERS[task](data_dir=data_dir, config=cfg, file_format="array_record")
