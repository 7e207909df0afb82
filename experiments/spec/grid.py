"""The FLOP-matched training grid: compute budgets × size ladder × training sparsity × pattern
(× context length), each point a complete run spec whose step count makes its training FLOPs
equal the budget to within one step.

    grid = Grid(budgets=(3e12,), sizes=("100k", "300k"), sparsities=(0.0, 0.75),
                patterns=("local",), seq_lens=(128,), batch_size=16, tasks=("niah_single",))
    specs, skipped = grid.points()
    specs[0].run_id, specs[0].steps, specs[0].flops_residual

FLOPs come from the one counter, `models.flops_per_token` (training: fwd+bwd, attention over the
pattern's exact nnz at the run's length). steps = round(budget / FLOPs per step), so the residual
`steps · step_flops - budget` is at most half a step's FLOPs in magnitude.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

import sparse_ops as so
from experiments import tasks as tasks_lib
from models import AttentionConfig, ModelConfig, SIZES, family, flops_per_token, param_counts


# Static patterns, and content-based ones (trained with a fixed density budget, 1 - sparsity of
# each row's causal blocks: their FLOPs are exact ahead of time, so the grid can match budgets).
TRAIN_PATTERNS = ("local", "strided", "block_random", "topk_blocks", "quest", "vertical_slash")


@dataclasses.dataclass(frozen=True)
class Optim:
  """Optimiser knobs of a run (AdamW with warmup-cosine, as the trainer implements them)."""

  lr: float = 3e-3
  warmup_frac: float = 0.05  # of the run's steps, so every budget warms up alike
  min_lr_ratio: float = 0.1
  weight_decay: float = 0.0
  clip_norm: float = 1.0
  # > 0: `lr` is the rate of a model this wide, and a model of width w trains at
  # lr · lr_ref_width / w (the grid plans each run with its own rate). One rate for every size
  # left the deeper, wider ladder models at chance; 1/width from 3m's 1e-3 (192 wide) trained
  # 800k, 3m and 6m on all eight tasks (README, "Training recipe"). 0: `lr` for every size.
  lr_ref_width: int = 0

  def warmup_steps(self, steps: int) -> int:
    return max(1, round(self.warmup_frac * steps))

  def for_width(self, width: int) -> "Optim":
    """This optimiser as one run of `width` uses it (its own rate, no rule left to apply)."""
    if not self.lr_ref_width:
      return self
    return dataclasses.replace(self, lr=self.lr * self.lr_ref_width / width, lr_ref_width=0)


@dataclasses.dataclass(frozen=True)
class RunSpec:
  """One training run: everything that determines its result, plus the derived FLOP numbers.

  The run id hashes the fields that determine the result (`identity()`), so renaming a study,
  re-planning it or changing eval settings never retrains a finished run.
  """

  size: str
  model: ModelConfig
  seq_len: int
  batch_size: int
  steps: int
  budget: float
  tasks: tuple[str, ...]
  task_weights: tuple[float, ...]
  seed: int = 0
  optim: Optim = Optim()
  compute_dtype: str = "float32"
  train_sparsity: float = 0.0  # the target the grid asked for (0: dense)
  # Length curriculum (the trainer's data.short_len/short_steps): the first `short_steps` of the
  # `steps` train at `short_len` tokens, same tokens per step. 0: none.
  short_len: int = 0
  short_steps: int = 0
  # Where training batches are made (the trainer's data.source): "host" (numpy + grain) or
  # "device" (each task's jitted generator; another random stream of the same tasks).
  data_source: str = "host"
  # Derived (kept in the spec so configs on disk are self-describing):
  flops_per_token: float = 0.0
  step_flops: float = 0.0  # one step at seq_len
  short_step_flops: float = 0.0  # one step at short_len
  params: int = 0
  nonembed_params: int = 0

  @property
  def pattern(self) -> str:
    return self.model.attention.pattern

  @property
  def train_flops(self) -> float:
    return self.short_steps * self.short_step_flops + (self.steps - self.short_steps) * self.step_flops

  @property
  def flops_residual(self) -> float:
    """Training FLOPs minus the budget; |residual| <= step_flops / 2 by construction."""
    return self.train_flops - self.budget

  @property
  def tokens(self) -> int:
    return self.steps * self.batch_size * self.seq_len

  def identity(self) -> dict[str, Any]:
    """The fields that determine the trained model (what the run id hashes).

    Fields at their dataclass default are left out, so a field added later to a config (with a
    default that keeps the old behaviour) does not change the ids of finished runs.
    """
    d = _non_default(self)
    for derived in ("flops_per_token", "step_flops", "short_step_flops", "params",
                    "nonembed_params"):
      d.pop(derived, None)
    return d

  @property
  def run_id(self) -> str:
    return config_hash(self.identity())

  @property
  def label(self) -> str:
    """Readable name for tables and plots: size, pattern@sparsity, budget."""
    sp = "dense" if self.pattern == "dense" else f"{self.pattern}@{self.train_sparsity:g}"
    curriculum = f"c{self.short_len}" if self.short_len else ""
    return f"{self.size}/{sp}/{self.budget:.2g}/T{self.seq_len}{curriculum}"

  def train_attention_stats(self) -> dict[str, float]:
    """Element and block sparsity of the training mask at the training length (sparse_ops)."""
    att, t = self.model.attention, self.seq_len
    if att.is_content:  # every selection at this length has the same counts
      return att.selection_sparsity(t)
    return {"element": so.flops.sparsity(att.mask(t), t),
            "block": so.flops.block_sparsity(att.layout(t))}


def to_dict(obj: Any) -> Any:
  """Dataclasses → plain JSON-able dicts (tuples become lists), recursively."""
  if dataclasses.is_dataclass(obj):
    return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
  if isinstance(obj, (list, tuple)):
    return [to_dict(x) for x in obj]
  return obj


def _non_default(obj: Any) -> Any:
  if not dataclasses.is_dataclass(obj):
    return to_dict(obj)
  out = {}
  for f in dataclasses.fields(obj):
    value = getattr(obj, f.name)
    if f.default is not dataclasses.MISSING and value == f.default:
      continue
    out[f.name] = _non_default(value)
  return out


def config_hash(d: dict[str, Any], n: int = 12) -> str:
  """A stable short hash of a JSON-able dict (sorted keys, so field order never matters)."""
  blob = json.dumps(d, sort_keys=True, separators=(",", ":"), default=str)
  return hashlib.sha256(blob.encode()).hexdigest()[:n]


def spec_from_dict(d: dict[str, Any]) -> RunSpec:
  """Inverse of `to_dict` for a RunSpec (config.json → RunSpec)."""
  d = dict(d)
  model = dict(d.pop("model"))
  model["attention"] = AttentionConfig(**model.pop("attention"))
  return RunSpec(model=ModelConfig(**model), optim=Optim(**d.pop("optim")),
                 tasks=tuple(d.pop("tasks")), task_weights=tuple(d.pop("task_weights")), **d)


@dataclasses.dataclass(frozen=True)
class Grid:
  """Compute budgets × sizes × training sparsities × patterns × context lengths.

  sparsities: element-sparsity targets against dense causal; 0.0 means the dense model (trained
    once per size and budget, not once per pattern). A sparse target is reached by the pattern's
    knob at each length (`AttentionConfig(sparsity=...)`).
  min_steps: points needing fewer steps than this cannot be trained meaningfully at that budget;
    they are returned as skipped with the reason rather than silently dropped.
  sparse_sizes: the sizes that get sparse variants (None: all). The study's question pits larger
    sparse models against smaller dense ones, so a small grid can skip the smallest sparse runs.
  """

  budgets: tuple[float, ...]
  sizes: tuple[str, ...]
  sparsities: tuple[float, ...] = (0.0,)
  patterns: tuple[str, ...] = ("local",)
  seq_lens: tuple[int, ...] = (256,)
  batch_size: int = 16
  vocab_size: int = 512
  tasks: tuple[str, ...] = ("niah_single",)
  task_weights: tuple[float, ...] | None = None
  seed: int = 0
  optim: Optim = Optim()
  compute_dtype: str = "float32"  # bf16 on accelerators; f32 on CPU (bf16 matmuls are emulated)
  sink: int = 0
  implementation: str | None = None
  block: int | None = None  # attention block size (None: the implementation's default)
  model_overrides: tuple[tuple[str, Any], ...] = ()
  min_steps: int = 1
  sparse_sizes: tuple[str, ...] | None = None
  # Length curriculum: `short_frac` of each budget is spent first at `short_len` tokens per
  # sequence (same tokens per step), the rest at the grid's seq_len. 0: none.
  short_len: int = 0
  short_frac: float = 0.0
  data_source: str = "host"  # see RunSpec.data_source

  def __post_init__(self):
    if not self.budgets or any(not b > 0 for b in self.budgets):
      raise ValueError(f"grid.budgets={self.budgets!r} must be non-empty and all > 0")
    for s in self.sizes:
      if s not in SIZES:
        raise ValueError(f"grid.sizes has {s!r}; valid: {list(SIZES)}")
    if not self.sizes:
      raise ValueError("grid.sizes=() must name at least one ladder size")
    for s in self.sparsities:
      if not 0.0 <= s < 1.0:
        raise ValueError(f"grid.sparsities has {s!r}; each must be in [0, 1)")
    for p in self.patterns:
      if p not in TRAIN_PATTERNS:
        raise ValueError(f"grid.patterns has {p!r}; valid sparse patterns: {TRAIN_PATTERNS} "
                         "(dense is sparsity 0.0)")
    for t in self.tasks:  # a name, or a name with knobs: "niah_multikey(questions=8)"
      name = tasks_lib.spec(t)[0]
      if name not in tasks_lib.TASKS:
        raise ValueError(f"grid.tasks has {t!r}; valid: {sorted(tasks_lib.TASKS)}, optionally "
                         "with knobs, e.g. 'niah_multikey(questions=8)'")
      for n in self.seq_lens + ((self.short_len,) if self.short_len else ()):
        tasks_lib.make(t, length=n, vocab_size=self.vocab_size)  # bad knobs fail here
    if not isinstance(self.optim.lr_ref_width, int) or self.optim.lr_ref_width < 0:
      raise ValueError(f"grid.optim.lr_ref_width={self.optim.lr_ref_width!r} must be an int >= 0 "
                       "(0: one learning rate for every size)")
    if self.data_source not in ("host", "device"):
      raise ValueError(f"grid.data_source={self.data_source!r} must be 'host' or 'device'")
    if self.task_weights is not None and len(self.task_weights) != len(self.tasks):
      raise ValueError(f"grid.task_weights={self.task_weights!r} needs one weight per task "
                       f"({len(self.tasks)})")
    if not isinstance(self.batch_size, int) or self.batch_size < 1:
      raise ValueError(f"grid.batch_size={self.batch_size!r} must be an int >= 1")
    for s in self.sparse_sizes or ():
      if s not in self.sizes:
        raise ValueError(f"grid.sparse_sizes has {s!r}, which is not in grid.sizes={self.sizes}")
    if not isinstance(self.min_steps, int) or self.min_steps < 1:
      raise ValueError(f"grid.min_steps={self.min_steps!r} must be an int >= 1")
    if self.short_len or self.short_frac:
      if not (isinstance(self.short_len, int) and 0 < self.short_len < min(self.seq_lens)):
        raise ValueError(f"grid.short_len={self.short_len!r} must be an int in [1, "
                         f"{min(self.seq_lens)}) (below every grid.seq_lens) when "
                         f"grid.short_frac={self.short_frac} is set")
      if not 0.0 < self.short_frac < 1.0:
        raise ValueError(f"grid.short_frac={self.short_frac!r} must be in (0, 1) when "
                         f"grid.short_len={self.short_len} is set")
      for t in self.seq_lens:
        if (self.batch_size * t) % self.short_len:
          raise ValueError(f"grid.short_len={self.short_len} must divide batch_size × seq_len "
                           f"= {self.batch_size * t} (the same tokens per step in both phases)")

  def attention(self, pattern: str, sparsity: float) -> AttentionConfig:
    block = dict(block_q=self.block, block_kv=self.block) if self.block else {}
    if sparsity == 0.0:
      return AttentionConfig("dense", sink=self.sink, implementation=self.implementation, **block)
    return AttentionConfig(pattern, sparsity=sparsity, sink=self.sink,
                           implementation=self.implementation, **block)

  def points(self) -> tuple[list[RunSpec], list[dict[str, Any]]]:
    """(run specs, skipped points with the reason), in a fixed order."""
    specs, skipped = [], []
    weights = self.task_weights or tuple(1.0 for _ in self.tasks)
    for budget in self.budgets:
      for seq_len in self.seq_lens:
        for size in self.sizes:
          combos = [("dense", 0.0)] if 0.0 in self.sparsities else []
          if self.sparse_sizes is None or size in self.sparse_sizes:
            combos += [(p, s) for s in self.sparsities if s > 0 for p in self.patterns]
          for pattern, sparsity in combos:
            cfg = family(size, vocab_size=self.vocab_size,
                         attention=self.attention(pattern, sparsity),
                         **dict(self.model_overrides))
            cfg.validate(seq_len)
            fpt = flops_per_token(cfg, seq_len, training=True)
            step_flops = fpt * self.batch_size * seq_len
            short_steps, short_step_flops, rest = 0, 0.0, budget
            if self.short_len:
              cfg.validate(self.short_len)
              short_step_flops = (flops_per_token(cfg, self.short_len, training=True)
                                  * self.batch_size * seq_len)
              short_steps = round(self.short_frac * budget / short_step_flops)
              rest = budget - short_steps * short_step_flops
            steps = short_steps + round(rest / step_flops)
            point = dict(budget=budget, size=size, pattern=pattern, sparsity=sparsity,
                         seq_len=seq_len, steps=steps)
            if steps < self.min_steps:
              skipped.append({**point, "reason": f"needs steps >= {self.min_steps}, budget "
                              f"{budget:.3g} buys {budget / step_flops:.2f} steps"})
              continue
            counts = param_counts(cfg)
            specs.append(RunSpec(
                size=size, model=cfg, seq_len=seq_len, batch_size=self.batch_size, steps=steps,
                budget=float(budget), tasks=tuple(self.tasks), task_weights=tuple(weights),
                seed=self.seed, optim=self.optim.for_width(cfg.width),
                compute_dtype=self.compute_dtype,
                train_sparsity=float(sparsity), short_len=self.short_len,
                short_steps=short_steps, data_source=self.data_source, flops_per_token=fpt,
                step_flops=step_flops, short_step_flops=short_step_flops,
                params=counts.total, nonembed_params=counts.nonembed))
    ids = [s.run_id for s in specs]
    if len(set(ids)) != len(ids):
      raise ValueError("grid has duplicate points (same config twice): check budgets/sizes/"
                       "sparsities for repeats")
    return specs, skipped
