"""One training run's config: frozen dataclasses, the CLI's schema (tyro) and the run's identity.

Data is resolved by name, never imported: `DataConfig.factory` is a dotted path
"module:function" to a task factory, imported lazily when the run starts. `train` therefore
never imports `experiments` (arrows point one way: experiments -> train -> models), while the
default still trains on the study's task suite. The factory protocol is that of
`experiments.tasks.make`:

    task = factory(name, length=seq_len, vocab_size=model.vocab_size, seed=data.seed)
    task.source(split)  # random access: len() and [i] -> {"inputs","targets","weights"}: [T]

and `DataConfig.scorer` ("module:function") scores evaluation predictions like
`experiments.tasks.scoring.score(predictions [B,T], targets [B,T], weights [B,T]) -> {metric: [B]}`.
Any other suite (or a test's toy) plugs in by giving its own paths.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
from typing import Any, Literal

import models
import sparse_ops as so
from models import ModelConfig
from train import data as data_lib


@dataclasses.dataclass(frozen=True)
class DataConfig:
  """tasks: trained on as a mixture with `weights` (None: equal); seq_len: tokens per example.

  shards: the global batch is the concatenation of `shards` independent data shards (each a
  `train.data.mixture` slice); processes split the shards between them. The batches therefore
  depend on `shards`, not on how many processes or devices run: 1 process with shards=2 and 2
  processes see the same global batches. 0 means one shard per process.
  """

  tasks: tuple[str, ...] = ("niah_single",)
  weights: tuple[float, ...] | None = None
  seq_len: int = 128
  # A length curriculum: the first `short_steps` steps train on the same tasks at `short_len`
  # tokens, with batch_size · seq_len / short_len sequences per step (the same tokens per step).
  # Long-context tasks carry one answer per sequence; at a short length each step holds more
  # answers and attention has fewer candidates to search, so the mechanism is learnt sooner and
  # then carried to seq_len. 0: no curriculum.
  short_len: int = 0
  short_steps: int = 0
  # Lengths the long phase (after the short steps; every step without a curriculum) cycles
  # through instead of training only at seq_len, so a model evaluated at several lengths is
  # trained at them: each length for a whole call of `steps_per_call` steps (one shape per
  # compiled scan), in this order, from the first long step on (`Config.phase`, a pure function
  # of the step). Same tokens per step at every length: batch_size · seq_len / L sequences.
  # Each L must divide those tokens, lie in [short_len, seq_len], and the largest must be
  # seq_len. (): train the long phase at seq_len only.
  long_lens: tuple[int, ...] = ()
  seed: int = 0
  shards: int = 0
  factory: str = "experiments.tasks:make"
  scorer: str = "experiments.tasks.scoring:score"
  num_threads: int = 2
  # Where training batches come from. "host": the grain pipeline over `task.source("train")`
  # (any suite). "device": each task's `device_example(key)` inside the jitted step, from a key
  # that is a pure function of (seed, step, task, row): no host work or transfer per step, and
  # resume is exact with no iterator state. Its own random stream (the same tasks and
  # distributions as "host", not the same examples); it draws a fixed number of rows per task
  # each step (`train.data.rows_per_task`).
  source: Literal["host", "device"] = "host"


@dataclasses.dataclass(frozen=True)
class OptimConfig:
  """AdamW with linear warmup then cosine decay to `min_lr_ratio`·lr; global-norm clipping."""

  lr: float = 3e-3
  warmup_steps: int = 100
  min_lr_ratio: float = 0.1
  b1: float = 0.9
  b2: float = 0.95
  eps: float = 1e-8
  weight_decay: float = 0.1
  clip_norm: float = 1.0


@dataclasses.dataclass(frozen=True)
class MeshConfig:
  """Devices as a (data, fsdp) grid; -1 takes the remaining devices. The batch is split over both
  axes, parameters and optimizer state over `fsdp`."""

  data: int = -1
  fsdp: int = 1


@dataclasses.dataclass(frozen=True)
class DistributedConfig:
  """Multi-process launch. `jax.distributed.initialize` runs when num_processes > 1 (explicit
  localhost/cluster launch) or when `auto` and a cluster environment (SLURM, ...) is detected."""

  coordinator: str = ""
  num_processes: int = 1
  process_id: int = 0
  auto: bool = True


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
  every: int = 500  # steps; a final checkpoint is always written
  keep: int = 3
  async_save: bool = True


@dataclasses.dataclass(frozen=True)
class LogConfig:
  every: int = 10  # steps between metrics.jsonl lines (and W&B points)
  progress: bool = True
  wandb: Literal["offline", "online", "disabled"] = "offline"
  project: str = "sparse-frontier"
  group: str = ""  # W&B group: the sweep's name
  peak_tflops: float = 0.0  # per-device peak for MFU; 0 looks the device up in train.log.PEAKS


@dataclasses.dataclass(frozen=True)
class EvalConfig:
  every: int = 0  # steps; 0 evaluates only at the end. Scores per task in metrics.jsonl.
  examples: int = 64  # per task, from the "validation" split
  batch_size: int = 32


@dataclasses.dataclass(frozen=True)
class Config:
  """A training run. Stops after `steps`, or, if 0, after the steps `flop_budget` buys: the
  curriculum's short steps, then the whole number of full-length steps whose FLOPs come nearest
  the rest (`nearest_steps`, the rule the study's grid plans with too; with `data.long_lens`
  each step at its own length's cost).

  batch_size: sequences per optimizer step (global), split into `grad_accum` microbatches.
  steps_per_call: optimizer steps per jitted dispatch (a `lax.scan`); metrics are read once per
  call. Calls end early at checkpoint, eval and curriculum boundaries, on a grid fixed by the
  step count, so a resumed run makes the same calls as an uninterrupted one. With
  `data.long_lens` it also sets how many steps each length of the cycle runs (so it then makes
  the run and may not change on resume).
  """

  run_dir: str = "runs/default"
  model: ModelConfig = ModelConfig()
  data: DataConfig = DataConfig()
  optim: OptimConfig = OptimConfig()
  mesh: MeshConfig = MeshConfig()
  distributed: DistributedConfig = DistributedConfig()
  checkpoint: CheckpointConfig = CheckpointConfig()
  log: LogConfig = LogConfig()
  eval: EvalConfig = EvalConfig()
  batch_size: int = 32
  grad_accum: int = 1
  steps_per_call: int = 1
  steps: int = 0
  flop_budget: float = 0.0
  seed: int = 0
  compute_dtype: Literal["bfloat16", "float32"] = "bfloat16"
  resume: bool = False
  # The curriculum's short phase trains with dense attention, the rest with model.attention (a
  # sparse pattern): a dense warm-up. Content-based selection (top-k, Quest) picks blocks by the
  # model's own q·k, and it gets no gradient for blocks it did not pick, so a model sparse from
  # step 0 has nothing to select with; benchmarks/recipe.py (preset cpu_sparse) measures it.
  short_dense: bool = False

  def model_at(self, length: int) -> ModelConfig:
    """The model config a step at `length` tokens trains with (dense in a dense short phase)."""
    if self.short_dense and length == self.data.short_len:
      dense = models.AttentionConfig(implementation=self.model.attention.implementation)
      return dataclasses.replace(self.model, attention=dense)
    return self.model

  @property
  def tokens_per_step(self) -> int:
    return self.batch_size * self.data.seq_len

  @property
  def flops_per_step(self) -> float:
    """FLOPs of one step at `data.seq_len` (the longest; `step_flops` is any given step's)."""
    return models.flops_per_token(self.model, self.data.seq_len) * self.tokens_per_step

  @property
  def short_flops_per_step(self) -> float:
    """FLOPs of one of the curriculum's short steps (same tokens, shorter attention)."""
    if not self.data.short_len:
      return 0.0
    short = self.data.short_len
    return models.flops_per_token(self.model_at(short), short) * self.tokens_per_step

  @property
  def short_batch_size(self) -> int:
    return self.batch_size * self.data.seq_len // self.data.short_len if self.data.short_len else 0

  @property
  def short_phase_steps(self) -> int:
    """Steps of the curriculum's short phase (0 without one): the long phase starts after."""
    return self.data.short_steps if self.data.short_len else 0

  def rows_at(self, length: int) -> int:
    """Sequences per step at `length` tokens: the same tokens per step at every length."""
    return self.batch_size * self.data.seq_len // length

  @property
  def lengths(self) -> tuple[int, ...]:
    """Every sequence length a step of this run trains at, distinct, the longest first."""
    return tuple(sorted({self.data.seq_len, *self.data.long_lens}
                        | ({self.data.short_len} if self.data.short_len else set()),
                        reverse=True))

  def phase(self, step: int) -> tuple[int, int]:
    """(sequence length, sequences) of the step that follows `step` completed steps: the short
    phase's, then `data.long_lens` in turn, `steps_per_call` steps each, counted from the first
    long step (or `data.seq_len` throughout). A pure function of the step."""
    short = self.short_phase_steps
    if step < short:
      return self.data.short_len, self.short_batch_size
    if self.data.long_lens:
      lens = self.data.long_lens
      length = lens[(step - short) // self.steps_per_call % len(lens)]
      return length, self.rows_at(length)
    return self.data.seq_len, self.batch_size

  def step_flops(self, step: int) -> float:
    """FLOPs of the step that follows `step` completed steps, at its own length."""
    length = self.phase(step)[0]
    return models.flops_per_token(self.model_at(length), length) * self.tokens_per_step

  def _long_flops(self) -> list[float]:
    """FLOPs of one step at each of `data.long_lens`, in cycle order."""
    return [models.flops_per_token(self.model, n) * self.tokens_per_step
            for n in self.data.long_lens]

  def flops_through(self, step: int) -> float:
    """Training FLOPs of the first `step` steps, each at its own length (`phase`): the
    curriculum's short steps are cheaper, a `long_lens` cycle mixes step costs."""
    short = min(step, self.short_phase_steps)
    if not self.data.long_lens:
      return short * self.short_flops_per_step + (step - short) * self.flops_per_step
    costs, per = self._long_flops(), self.steps_per_call
    calls, rest = divmod(step - short, per)
    cycles, calls = divmod(calls, len(costs))
    return (short * self.short_flops_per_step + cycles * per * sum(costs)
            + per * sum(costs[:calls]) + rest * (costs[calls] if rest else 0.0))

  @property
  def total_steps(self) -> int:
    if self.steps > 0:
      return self.steps
    short = self.short_phase_steps
    left = self.flop_budget - short * self.short_flops_per_step
    if not self.data.long_lens:
      return short + nearest_steps(left, self.flops_per_step)
    return short + _nearest_cycle_steps(left, self._long_flops(), self.steps_per_call)

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


def nearest_steps(flops: float, flops_per_step: float) -> int:
  """The one budget -> steps rule: the whole number of steps whose FLOPs come nearest `flops`
  (|steps · flops_per_step - flops| <= flops_per_step / 2; an exact half rounds to even), so
  runs planned at one budget spend it alike, over or under, whatever their step cost."""
  return max(0, round(flops / flops_per_step))


def _nearest_cycle_steps(flops: float, costs: list[float], per: int) -> int:
  """`nearest_steps` for steps whose costs cycle (`per` steps at costs[0], then costs[1], ...):
  the whole number of steps whose summed FLOPs come nearest `flops` (an exact half rounds to
  even). With one cost it is `nearest_steps`."""
  if flops <= 0:
    return 0
  cycle = per * sum(costs)
  cycles = max(0, int(flops // cycle) - 1)  # one cycle short: float division may overshoot
  steps, spent = cycles * per * len(costs), cycles * cycle
  while True:
    cost = costs[steps // per % len(costs)]
    if spent + cost > flops:  # the next step overshoots: it or none, whichever is nearer
      return round(steps + (flops - spent) / cost)
    steps, spent = steps + 1, spent + cost


def from_dict(d: dict[str, Any]) -> Config:
  """Inverse of `Config.to_dict` (used to read a run folder's config.json)."""
  def build(cls, values):
    kwargs = {}
    for f in dataclasses.fields(cls):
      if f.name not in values:
        continue
      v = values[f.name]
      sub = {"model": ModelConfig, "attention": models.AttentionConfig, "data": DataConfig,
             "optim": OptimConfig, "mesh": MeshConfig, "distributed": DistributedConfig,
             "checkpoint": CheckpointConfig, "log": LogConfig, "eval": EvalConfig}.get(f.name)
      if sub is not None and isinstance(v, dict):
        v = build(sub, v)
      elif isinstance(v, list):
        v = tuple(v)
      kwargs[f.name] = v
    return cls(**kwargs)
  return build(Config, d)


def validate(cfg: Config, num_devices: int, num_processes: int, *, here: bool = True) -> None:
  """Every check a run needs, in Python, before anything is compiled. Messages name the field.
  `here=False` leaves out what depends on this machine (the attention implementation's
  availability, the memory fit), so a study can check its runs where it plans them."""
  cfg.model.validate(cfg.data.seq_len)
  d = cfg.data
  if not d.tasks:
    raise ValueError("data.tasks=() must name at least one task")
  if d.weights is not None and (len(d.weights) != len(d.tasks) or min(d.weights) <= 0):
    raise ValueError(f"data.weights={d.weights} must be one positive weight per task {d.tasks}")
  for name in ("factory", "scorer"):
    if ":" not in getattr(d, name):
      raise ValueError(f"data.{name}={getattr(d, name)!r} must be 'module:function'")
  shards = d.shards or num_processes
  if shards % num_processes:
    raise ValueError(f"data.shards={d.shards} must be a multiple of the {num_processes} processes")
  if not isinstance(cfg.steps_per_call, int) or cfg.steps_per_call < 1:
    raise ValueError(f"steps_per_call={cfg.steps_per_call!r} must be an int >= 1")
  if d.source not in ("host", "device"):
    raise ValueError(f"data.source={d.source!r} must be 'host' or 'device'")
  if cfg.batch_size <= 0 or cfg.grad_accum <= 0:
    raise ValueError(f"batch_size={cfg.batch_size} and grad_accum={cfg.grad_accum} must be >= 1")
  if cfg.batch_size % (cfg.grad_accum * shards):
    raise ValueError(f"batch_size={cfg.batch_size} must be a multiple of grad_accum="
                     f"{cfg.grad_accum} × data.shards={shards}")
  micro = cfg.batch_size // cfg.grad_accum
  if micro % num_devices:
    raise ValueError(f"batch_size={cfg.batch_size} / grad_accum={cfg.grad_accum} = {micro} "
                     f"sequences per microbatch must be a multiple of the {num_devices} devices")
  if d.short_len or d.short_steps:
    if not (isinstance(d.short_len, int) and 0 < d.short_len < d.seq_len):
      raise ValueError(f"data.short_len={d.short_len!r} must be an int in [1, data.seq_len="
                       f"{d.seq_len}) when data.short_steps={d.short_steps} is set")
    if not isinstance(d.short_steps, int) or d.short_steps < 1:
      raise ValueError(f"data.short_steps={d.short_steps!r} must be an int >= 1 when "
                       f"data.short_len={d.short_len} is set")
    tokens, short = cfg.batch_size * d.seq_len, cfg.short_batch_size
    if (tokens % d.short_len or short % (cfg.grad_accum * shards)
        or (short // cfg.grad_accum) % num_devices):
      raise ValueError(f"data.short_len={d.short_len}: batch_size × seq_len = {tokens} tokens "
                       f"must make whole sequences of {d.short_len}, a multiple of grad_accum="
                       f"{cfg.grad_accum} × data.shards={shards}, with a multiple of the "
                       f"{num_devices} devices per microbatch")
    cfg.model_at(d.short_len).validate(d.short_len)
  if cfg.short_dense and not d.short_len:
    raise ValueError("short_dense=True needs a curriculum short phase (data.short_len, "
                     "data.short_steps): it is the phase that trains dense")
  if cfg.short_dense and cfg.model.attention.pattern == "dense":
    raise ValueError("short_dense=True with model.attention.pattern='dense': the run is dense "
                     "throughout; give a sparse pattern or drop short_dense")
  if cfg.short_dense and d.short_len in d.long_lens:
    raise ValueError(f"short_dense=True: data.short_len={d.short_len} is also in data.long_lens="
                     f"{d.long_lens}, where it trains sparse; one length trains one way")
  if d.long_lens:
    _check_long_lens(cfg, shards, num_devices)
  if d.source == "device":
    for rows in {cfg.rows_at(n) for n in cfg.lengths}:
      per_task = data_lib.rows_per_task(d.weights or [1.0] * len(d.tasks), rows)
      starved = [t for t, n in zip(d.tasks, per_task) if n == 0]
      if starved:
        raise ValueError(f"batch_size={rows} leaves task(s) {starved} no rows per step with "
                         f"data.source='device' (rows per task: {per_task}); raise batch_size "
                         "or drop tasks")
  mesh_shape(cfg.mesh, num_devices)
  if cfg.steps < 0 or cfg.flop_budget < 0 or (cfg.steps == 0 and cfg.flop_budget == 0):
    raise ValueError(f"give steps > 0 or flop_budget > 0 (steps={cfg.steps}, "
                     f"flop_budget={cfg.flop_budget})")
  if cfg.total_steps < 1:
    raise ValueError(f"flop_budget={cfg.flop_budget:.3g} buys no step of "
                     f"{cfg.flops_per_step:.3g} FLOPs")
  if d.short_len and d.short_steps > cfg.total_steps:
    raise ValueError(f"data.short_steps={d.short_steps} exceeds the run's {cfg.total_steps} steps")
  if d.short_len and cfg.steps == 0 and cfg.flops_through(d.short_steps) > cfg.flop_budget:
    raise ValueError(f"data.short_steps={d.short_steps} cost {cfg.flops_through(d.short_steps):.3g} "
                     f"FLOPs, more than flop_budget={cfg.flop_budget:.3g}")
  o = cfg.optim
  if not (o.lr > 0 and o.warmup_steps >= 0 and 0 <= o.min_lr_ratio <= 1 and o.clip_norm >= 0):
    raise ValueError(f"optim={o} needs lr > 0, warmup_steps >= 0, min_lr_ratio in [0, 1], "
                     "clip_norm >= 0")
  if cfg.checkpoint.every <= 0 or cfg.checkpoint.keep <= 0:
    raise ValueError(f"checkpoint.every={cfg.checkpoint.every} and checkpoint.keep="
                     f"{cfg.checkpoint.keep} must be >= 1")
  if cfg.log.every <= 0:
    raise ValueError(f"log.every={cfg.log.every} must be >= 1")
  if cfg.eval.every < 0 or cfg.eval.examples < 0 or cfg.eval.batch_size <= 0:
    raise ValueError(f"eval={cfg.eval} needs every >= 0, examples >= 0, batch_size >= 1")
  if not here:
    return
  impl = cfg.model.attention.implementation
  if impl is not None and (why := so.IMPLEMENTATIONS[impl].unavailable()) is not None:
    raise ValueError(f"model.attention.implementation={impl!r} cannot run here: {why}")
  check_fits(cfg, num_devices)


def _check_long_lens(cfg: Config, shards: int, num_devices: int) -> None:
  """data.long_lens: ints in [short_len, seq_len], the largest seq_len, each making whole
  batches (batch_size · seq_len / L sequences, split evenly over microbatches, shards and
  devices) and a valid model length; the message names the value and the valid lengths."""
  d = cfg.data
  lens, low, tokens = d.long_lens, max(d.short_len, 1), cfg.batch_size * d.seq_len

  def fits(n: int) -> bool:
    rows = tokens // n
    if tokens % n or rows % (cfg.grad_accum * shards) or (rows // cfg.grad_accum) % num_devices:
      return False
    try:
      cfg.model.validate(n)
    except ValueError:
      return False
    return True

  def valid() -> str:
    return (f"valid lengths here: {[n for n in range(low, d.seq_len + 1) if fits(n)]} "
            f"(batch_size × seq_len = {tokens} tokens in whole sequences, a multiple of "
            f"grad_accum={cfg.grad_accum} × data.shards={shards} of them with a multiple of the "
            f"{num_devices} devices per microbatch, in [data.short_len={d.short_len}, "
            f"data.seq_len={d.seq_len}], a length the model takes)")

  if not isinstance(lens, tuple) or not lens:
    raise ValueError(f"data.long_lens={lens!r} must be a tuple of lengths; {valid()}")
  for n in lens:
    if isinstance(n, bool) or not isinstance(n, int) or not low <= n <= d.seq_len or not fits(n):
      raise ValueError(f"data.long_lens={lens}: {n!r} is not a valid length; {valid()}")
  if max(lens) != d.seq_len:
    raise ValueError(f"data.long_lens={lens}: the largest must be data.seq_len={d.seq_len} "
                     "(the length the model is built and evaluated at)")


# ------------------------------------------------------------------------------ memory
def memory_floor(cfg: Config, num_devices: int) -> tuple[int, str]:
  """A lower bound on one device's bytes for a training step -> (bytes, what it counts).

  Only buffers that must exist at once whatever XLA fuses: the f32 logits [b, T, V] of a
  microbatch, each block's input [b, T, width] (kept for the backward pass, remat or not), and
  one layer's attention scores ("reference": [b, H, T, T] f32; "xla": one kv-block slot
  [b, H, T, block_kv]; the Pallas kernels tile them away). Parameters, optimizer state and the
  MLP are left out, so a config refused here cannot fit, and none that fits is refused."""
  m = cfg.model
  impl = m.attention.implementation or so.default_implementation()
  itemsize = 4 if cfg.compute_dtype == "float32" else 2
  worst, what = 0, ""
  for length, rows in {(n, cfg.rows_at(n)) for n in cfg.lengths}:
    tokens = -(-rows // (cfg.grad_accum * num_devices)) * length  # per device, one microbatch
    scores = {"reference": length, "xla": m.attention.blocks(length)[1]}.get(impl, 0)
    parts = {"f32 logits": tokens * m.vocab_size * 4,
             "block inputs": tokens * m.width * m.depth * itemsize,
             f"{impl} attention scores": tokens * m.num_heads * scores * 4}
    if sum(parts.values()) > worst:
      worst = sum(parts.values())
      what = (f"data.seq_len={length} x {rows} sequences / (grad_accum={cfg.grad_accum} x "
              f"{num_devices} devices): " + " + ".join(f"{v / 2**30:.3g} GiB {k}"
                                                        for k, v in parts.items() if v))
  return worst, what


def device_memory() -> tuple[int | None, str]:
  """(bytes one device may use, where that number comes from); (None, why) when unknown."""
  import jax
  device = jax.local_devices()[0]
  stats = getattr(device, "memory_stats", lambda: None)() or {}
  if stats.get("bytes_limit"):
    return int(stats["bytes_limit"]), f"{device.device_kind} memory"
  if device.platform == "cpu":  # host devices share the RAM
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return ram // jax.local_device_count(), "host RAM per CPU device"
  return None, "unknown"


def check_fits(cfg: Config, num_devices: int) -> None:
  """Refuses a step that clearly cannot fit on a device (before compiling asks for it)."""
  need, what = memory_floor(cfg, num_devices)
  have, where = device_memory()
  if have is not None and need > have:
    raise ValueError(f"data.seq_len={cfg.data.seq_len}: a step needs at least {need / 2**30:.3g} "
                     f"GiB per device, more than the {have / 2**30:.3g} GiB of {where} ({what}); "
                     "lower data.seq_len or batch_size, or raise grad_accum")


# ------------------------------------------------------------------------------ identity
# Fields that may change when a run is resumed: how it is watched, where it runs, how often it
# saves, none of which changes a trained number (the loop's call grid is fixed by the step count
# and several steps per call are bitwise single steps, so cadences are free):
MAY_CHANGE_ON_RESUME = (
    "run_dir",  # the folder is the run: it may be moved or reached by another path
    "resume",  # the flag that asks for this very check
    "log.",  # metrics cadence, progress bar, W&B mode/project/group, peak for MFU
    "distributed.",  # the coordinator address and launch differ per attempt
    "checkpoint.",  # save cadence, how many to keep, async or not
    "steps_per_call",  # dispatch granularity only (bitwise the same losses); not with long_lens
    "data.num_threads",  # host reader threads; grain's order does not depend on them
)


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(_flat(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = list(v) if isinstance(v, tuple) else v
  return out


def identity_changes(cfg: Config, stored: dict[str, Any]) -> list[str]:
  """Fields (dotted) where `cfg` differs from a stored config.json in what makes the run, e.g.
  ["model.width: 32 -> 64"]. The stored dict goes through `from_dict` first, so fields added
  to the config since it was written compare as their defaults."""
  before = from_dict(stored)
  old, new = _flat(before.to_dict()), _flat(cfg.to_dict())
  free = MAY_CHANGE_ON_RESUME
  if before.data.long_lens or cfg.data.long_lens:  # then it sets which length each step has
    free = tuple(f for f in free if f != "steps_per_call")
  return [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new))
          if old.get(k) != new.get(k) and not k.startswith(free)]


# ------------------------------------------------------------------------------ tasks
def make_tasks(cfg: Config) -> dict[int, dict[str, Any]]:
  """{sequence length: {task name: task}} for each length a step trains at (seq_len first), built
  before anything is written so task / vocab errors name the task and touch no run dir."""
  factory = resolve(cfg.data.factory)
  resolve(cfg.data.scorer)  # used only at the end: a bad path fails now, not after training
  out = {}
  for length in cfg.lengths:
    out[length] = {}
    for name in cfg.data.tasks:
      try:
        out[length][name] = factory(name, length=length, vocab_size=cfg.model.vocab_size,
                                    seed=cfg.data.seed)
      except (ValueError, TypeError, KeyError) as e:
        raise ValueError(f"data.tasks: {name!r} at length {length} (model.vocab_size="
                         f"{cfg.model.vocab_size}): {e}") from e
  return out


def mesh_shape(mesh: MeshConfig, num_devices: int) -> tuple[int, int]:
  """(data, fsdp) sizes with -1 resolved; raises naming the field if they don't fit."""
  data, fsdp = mesh.data, mesh.fsdp
  if fsdp == -1 and data == -1:
    raise ValueError("mesh.data and mesh.fsdp cannot both be -1")
  for name, v in (("mesh.data", data), ("mesh.fsdp", fsdp)):
    if v == 0 or v < -1:
      raise ValueError(f"{name}={v} must be a positive int or -1")
  if data == -1:
    data = num_devices // fsdp if num_devices % fsdp == 0 else 0
  if fsdp == -1:
    fsdp = num_devices // data if num_devices % data == 0 else 0
  if data * fsdp != num_devices:
    raise ValueError(f"mesh.data={mesh.data} × mesh.fsdp={mesh.fsdp} must use all "
                     f"{num_devices} devices")
  return data, fsdp


def resolve(path: str) -> Any:
  """'package.module:attribute' -> the attribute, imported now (lazily, by name)."""
  module, _, attr = path.partition(":")
  try:
    return getattr(importlib.import_module(module), attr)
  except (ImportError, AttributeError) as e:
    raise ValueError(f"cannot resolve {path!r}: {e}") from e
