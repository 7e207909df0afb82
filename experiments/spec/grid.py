"""The FLOP-matched training grid: compute budgets × size ladder × training sparsity × pattern
(× context length), each point a `RunSpec` holding the trainer's `train.Config`, whose step
count makes its training FLOPs equal the budget to within half a step.

    grid = Grid(budgets=(3e12,), sizes=("100k", "300k"), sparsities=(0.0, 0.75),
                patterns=("local",), seq_lens=(128,), batch_size=16, tasks=("niah_single",))
    specs, skipped = grid.points()
    specs[0].run_id, specs[0].steps, specs[0].flops_residual, specs[0].config

FLOPs come from the one counter, `models.flops_per_token` (training: fwd+bwd, attention over the
pattern's exact nnz at the run's length), through the trainer's own `Config.flops_through`; the
step count from the trainer's one rule, `train.config.nearest_steps` (`Config.total_steps` of the
run's `flop_budget`), so the residual `train_flops - budget` is at most half a step's FLOPs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

import sparse_ops as so
from experiments import tasks as tasks_lib
from models import AttentionConfig, SIZES, family, flops_per_token, param_counts
from models.config import CONTENT_PATTERNS
from train.config import (Config, DataConfig, OptimConfig, from_dict, identity_changes,
                          nearest_steps, validate as train_validate)


# Static patterns, and content-based ones (trained with a fixed density budget, 1 - sparsity of
# each row's causal blocks: their FLOPs are exact ahead of time, so the grid can match budgets).
TRAIN_PATTERNS = ("local", "strided", "block_random", "topk_blocks", "quest", "vertical_slash")


def warmup_steps(frac: float, steps: int) -> int:
  """Warmup as a fraction of a run's steps, so runs of every budget warm up alike."""
  return max(1, round(frac * steps))


# spec.json's layout, which is also what the run id hashes: the first studies' (flat, one seed,
# the grid's own optimiser), kept so that their run ids and run folders stay valid. A field at
# this layout's default is left out of the hash, so a knob added later with a default that keeps
# the old behaviour changes no id.
_DEFAULTS = dict(seed=0, compute_dtype="float32", train_sparsity=0.0, short_len=0,
                 short_steps=0, data_source="host", long_lens=[], long_every=1, short_dense=False)
# The first grid's optimiser (grid.Optim) at its defaults: no weight decay, warmup for 5% of the
# steps, one rate for every width; b1, b2 and eps it left at the trainer's.
_FIRST_OPTIM = dict(lr=3e-3, warmup_frac=0.05, min_lr_ratio=0.1, weight_decay=0.0,
                    clip_norm=1.0, lr_ref_width=0)


def first_optim(optim: dict[str, Any]) -> tuple[dict[str, Any], float, int]:
  """(the trainer's optimiser fields, warmup_frac, lr_ref_width) of an optimiser written in
  the first layout (spec.json and study.json before the grid used `train.OptimConfig`)."""
  o = {**_FIRST_OPTIM, **optim}
  return o, o.pop("warmup_frac"), o.pop("lr_ref_width")


# Numbers spec.json adds so that it reads alone; recomputed from the config, never read back.
_DERIVED = ("flops_per_token", "step_flops", "short_step_flops", "params", "nonembed_params")


@dataclasses.dataclass(frozen=True)
class RunSpec:
  """One training run: the trainer's Config, as far as it decides the result, and where the grid
  put it (ladder size, budget, sparsity target).

  `config` is what `train.run` gets less the run folder and how the run is executed and watched
  (`experiments.runs.job.train_config` adds those). The run id hashes the result-deciding
  fields (`identity()`), so renaming a study, re-planning it or changing eval settings never
  retrains a finished run.
  """

  size: str
  budget: float
  config: Config
  train_sparsity: float = 0.0  # the target the grid asked for (0: dense)

  def __post_init__(self):
    # spec.json holds one layout (`to_dict`): anything else set in the config would be lost on
    # reading it back, and two different runs could share one id.
    lost = identity_changes(self.config, _config_of(self._layout()).to_dict())
    if lost:
      raise ValueError(f"RunSpec.config sets {lost}, which spec.json does not hold; valid: the "
                       "model, data tasks/weights/seq_len/short_len/short_steps/source, optim, "
                       "batch_size, steps, one seed (config.seed == data.seed), compute_dtype")

  # The run's numbers, read from its config (one source for each):
  model = property(lambda self: self.config.model)
  seq_len = property(lambda self: self.config.data.seq_len)
  batch_size = property(lambda self: self.config.batch_size)
  steps = property(lambda self: self.config.steps)
  short_len = property(lambda self: self.config.data.short_len)
  short_steps = property(lambda self: self.config.data.short_steps)
  seed = property(lambda self: self.config.seed)
  tasks = property(lambda self: self.config.data.tasks)
  optim = property(lambda self: self.config.optim)
  pattern = property(lambda self: self.config.model.attention.pattern)

  @property
  def flops_per_token(self) -> float:
    return flops_per_token(self.model, self.seq_len, training=True)

  @property
  def step_flops(self) -> float:
    """One step at seq_len."""
    return self.config.flops_per_step

  @property
  def short_step_flops(self) -> float:
    """One of the curriculum's steps at short_len (0 without a curriculum)."""
    return self.config.short_flops_per_step

  @property
  def params(self) -> int:
    return param_counts(self.model).total

  @property
  def nonembed_params(self) -> int:
    return param_counts(self.model).nonembed

  @property
  def train_flops(self) -> float:
    return self.config.flops_through(self.steps)

  @property
  def flops_residual(self) -> float:
    """Training FLOPs minus the budget; |residual| <= step_flops / 2 by construction."""
    return self.train_flops - self.budget

  @property
  def tokens(self) -> int:
    return self.steps * self.config.tokens_per_step

  def _layout(self) -> dict[str, Any]:
    c, d = self.config, self.config.data
    return dict(size=self.size, model=to_dict(c.model), seq_len=d.seq_len,
                batch_size=c.batch_size, steps=c.steps, budget=self.budget,
                tasks=list(d.tasks), task_weights=to_dict(d.weights), seed=c.seed,
                optim=to_dict(c.optim), compute_dtype=c.compute_dtype,
                train_sparsity=self.train_sparsity, short_len=d.short_len,
                short_steps=d.short_steps, data_source=d.source, long_lens=list(d.long_lens),
                # With long_lens the dispatch sets each step's length: part of the run.
                long_every=c.steps_per_call if d.long_lens else 1, short_dense=c.short_dense)

  def to_dict(self) -> dict[str, Any]:
    """spec.json's contents (less run_id and label): the layout `identity` hashes, plus the
    derived numbers."""
    return {**self._layout(), **{k: getattr(self, k) for k in _DERIVED}}

  def identity(self) -> dict[str, Any]:
    """The fields that determine the trained model (what the run id hashes), each left out at
    the layout's default (see `_DEFAULTS`)."""
    d = {k: v for k, v in self._layout().items() if k not in _DEFAULTS or v != _DEFAULTS[k]}
    d["model"] = _non_default(self.model)
    fields, frac, _ = first_optim({})
    default = to_dict(OptimConfig(**fields, warmup_steps=warmup_steps(frac, self.steps)))
    optim = {k: v for k, v in d.pop("optim").items() if v != default[k]}
    return {**d, "optim": optim} if optim else d

  @property
  def run_id(self) -> str:
    return config_hash(self.identity())

  @property
  def label(self) -> str:
    """Readable name for tables and plots: size, pattern@sparsity, budget."""
    sp = "dense" if self.pattern == "dense" else f"{self.pattern}@{self.train_sparsity:g}"
    att = self.model.attention
    if att.is_content and att.per_query:
      sp += "/q1"  # kv-blocks chosen per query
    elif att.is_content and att.block_q and att.block_q != att.block_kv:
      sp += f"/q{att.block_q}"  # kv-blocks chosen per block_q queries
    curriculum = (f"c{self.short_len}" + ("d" if self.config.short_dense else "")
                  if self.short_len else "")  # d: the short phase trained dense
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


def _config_of(d: dict[str, Any]) -> Config:
  """The trainer's Config of a spec.json layout. The first studies wrote the grid's optimiser
  (`warmup_frac` of the steps, a per-width rule already applied); it reads as the trainer's.
  Fields added to the layout later are absent from older files: they read as their default."""
  d = {**_DEFAULTS, **d}
  optim = d["optim"]
  if "warmup_steps" not in optim:  # the first layout
    optim, frac, ref_width = first_optim(optim)
    if ref_width:
      raise ValueError(f"spec.json optim={d['optim']} has lr_ref_width={ref_width}; valid: 0 "
                       "(a planned run holds its own rate)")
    optim["warmup_steps"] = warmup_steps(frac, d["steps"])
  return from_dict(dict(
      model=d["model"], optim=optim, batch_size=d["batch_size"], steps=d["steps"],
      seed=d["seed"], compute_dtype=d["compute_dtype"], steps_per_call=d["long_every"],
      short_dense=d["short_dense"],
      data=dict(tasks=d["tasks"], weights=d["task_weights"], seq_len=d["seq_len"],
                short_len=d["short_len"], short_steps=d["short_steps"], seed=d["seed"],
                source=d["data_source"], long_lens=tuple(d["long_lens"]))))


def spec_from_dict(d: dict[str, Any]) -> RunSpec:
  """Inverse of `RunSpec.to_dict` (spec.json → RunSpec), for either optimiser layout."""
  return RunSpec(size=d["size"], budget=d["budget"], config=_config_of(d),
                 train_sparsity=d.get("train_sparsity", _DEFAULTS["train_sparsity"]))


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
  batch_sizes: sequences per step of some sizes, ((size, batch), ...); the others train with
    `batch_size`. On a GPU a small model's step is bound by per-step overhead, so a larger batch
    spends its budget in less time.
  optim: the trainer's optimiser for every run, with two rules applied per run: `warmup_frac`
    and `lr_ref_width`.
  """

  budgets: tuple[float, ...]
  sizes: tuple[str, ...]
  sparsities: tuple[float, ...] = (0.0,)
  patterns: tuple[str, ...] = ("local",)
  seq_lens: tuple[int, ...] = (256,)
  batch_size: int = 16
  batch_sizes: tuple[tuple[str, int], ...] = ()
  vocab_size: int = 512
  tasks: tuple[str, ...] = ("niah_single",)
  task_weights: tuple[float, ...] | None = None
  seed: int = 0
  optim: OptimConfig = OptimConfig()
  # > 0: each run warms up for this fraction of its steps (so every budget warms up alike), in
  # place of optim.warmup_steps; 0: optim.warmup_steps for every run.
  warmup_frac: float = 0.05
  # > 0: optim.lr is the rate of a model this wide, and a model of width w trains at
  # lr · lr_ref_width / w (the grid plans each run with its own rate). One rate for every size
  # left the deeper, wider ladder models at chance; 1/width from 3m's 1e-3 (192 wide) trained
  # 800k, 3m and 6m on all eight tasks (README, "Training recipe"). 0: optim.lr for every size.
  lr_ref_width: int = 0
  compute_dtype: str = "float32"  # bf16 on accelerators; f32 on CPU (bf16 matmuls are emulated)
  sink: int = 0
  implementation: str | None = None
  block: int | None = None  # attention block size (None: the implementation's default)
  # Content patterns choose their kv-blocks per this many queries (1: every query from itself,
  # as decoding does); None: per `block`. A q-block is represented by the queries ending at its
  # first position (causal selection), so 64-query blocks choose a question's blocks from the
  # queries before it: on the CPU pilot Quest 75% with the dense warm-up reached 0.47 per
  # question with 16-query blocks and 0.88 per query, dense 1.00
  # (benchmarks/results/recipe_cpu_sparse_q1.md).
  select_block_q: int | None = None
  model_overrides: tuple[tuple[str, Any], ...] = ()
  min_steps: int = 1
  sparse_sizes: tuple[str, ...] | None = None
  # Length curriculum: `short_frac` of each budget is spent first at `short_len` tokens per
  # sequence (same tokens per step), the rest at the grid's seq_len. 0: none.
  short_len: int = 0
  short_frac: float = 0.0
  # Sparse-trained runs spend the curriculum's short phase dense (train.Config.short_dense), a
  # dense warm-up before their sparse attention: sparse from step 0, the h200_quick study's 3m
  # top-k runs stayed at a loss of 3.4-3.8 where the dense 3m reached 0.74, and scored 0 on
  # multi-hop.
  short_dense: bool = False
  # After the curriculum, train at each of these lengths in turn (`long_every` steps each, the
  # same tokens per step; the trainer's data.long_lens), so the models know the lengths they are
  # evaluated at: trained at 512 and 4096 only, models scored clearly lower at 1024 and 2048
  # (benchmarks/results/recipe_h200_budget.md). (): seq_len only.
  long_lens: tuple[int, ...] = ()
  long_every: int = 50
  # Where training batches are made (the trainer's data.source): "host" (numpy + grain) or
  # "device" (each task's jitted generator; another random stream of the same tasks).
  data_source: str = "host"

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
    if not isinstance(self.lr_ref_width, int) or self.lr_ref_width < 0:
      raise ValueError(f"grid.lr_ref_width={self.lr_ref_width!r} must be an int >= 0 "
                       "(0: one learning rate for every size)")
    if not 0.0 <= self.warmup_frac < 1.0:
      raise ValueError(f"grid.warmup_frac={self.warmup_frac!r} must be in [0, 1) (0: "
                       "grid.optim.warmup_steps for every run)")
    if self.warmup_frac and self.optim.warmup_steps != OptimConfig.warmup_steps:
      raise ValueError(f"grid.optim.warmup_steps={self.optim.warmup_steps} is unused while "
                       f"grid.warmup_frac={self.warmup_frac} sets each run's warmup; valid: "
                       "leave it at its default, or set grid.warmup_frac=0")
    if self.data_source not in ("host", "device"):
      raise ValueError(f"grid.data_source={self.data_source!r} must be 'host' or 'device'")
    if self.task_weights is not None and len(self.task_weights) != len(self.tasks):
      raise ValueError(f"grid.task_weights={self.task_weights!r} needs one weight per task "
                       f"({len(self.tasks)})")
    if not isinstance(self.batch_size, int) or self.batch_size < 1:
      raise ValueError(f"grid.batch_size={self.batch_size!r} must be an int >= 1")
    for size, batch in self.batch_sizes:
      if size not in self.sizes or not isinstance(batch, int) or batch < 1:
        raise ValueError(f"grid.batch_sizes has ({size!r}, {batch!r}); valid: (a size of "
                         f"grid.sizes={self.sizes}, an int >= 1)")
    if len(dict(self.batch_sizes)) != len(self.batch_sizes):
      raise ValueError(f"grid.batch_sizes={self.batch_sizes!r} names a size twice")
    for s in self.sparse_sizes or ():
      if s not in self.sizes:
        raise ValueError(f"grid.sparse_sizes has {s!r}, which is not in grid.sizes={self.sizes}")
    if not isinstance(self.min_steps, int) or self.min_steps < 1:
      raise ValueError(f"grid.min_steps={self.min_steps!r} must be an int >= 1")
    if self.long_lens:
      low = self.short_len or 1
      if (len(self.seq_lens) != 1 or max(self.long_lens) != self.seq_lens[0]
          or any(not isinstance(n, int) or not low <= n <= self.seq_lens[0]
                 for n in self.long_lens)):
        raise ValueError(f"grid.long_lens={self.long_lens!r}: lengths in [{low}, seq_len], the "
                         f"largest the grid's one seq_len (seq_lens={self.seq_lens})")
      if not isinstance(self.long_every, int) or self.long_every < 1:
        raise ValueError(f"grid.long_every={self.long_every!r} must be an int >= 1")
    if self.select_block_q is not None:
      if not self.block or not any(p in CONTENT_PATTERNS for p in self.patterns):
        raise ValueError(f"grid.select_block_q={self.select_block_q!r} needs grid.block (the "
                         "kv-block size) and a content pattern in grid.patterns "
                         f"{self.patterns}; valid: {tuple(CONTENT_PATTERNS)}")
      lengths = self.seq_lens + self.long_lens + ((self.short_len,) if self.short_len else ())
      if (isinstance(self.select_block_q, bool) or not isinstance(self.select_block_q, int)
          or self.select_block_q < 1 or any(n % self.select_block_q for n in lengths)):
        raise ValueError(f"grid.select_block_q={self.select_block_q!r} must be an int >= 1 "
                         f"dividing every training length {sorted(set(lengths))}")
    if self.short_dense and not self.short_len:
      raise ValueError("grid.short_dense=True needs a curriculum (grid.short_len, "
                       "grid.short_frac): its short phase is what trains dense")
    if self.short_len or self.short_frac:
      if not (isinstance(self.short_len, int) and 0 < self.short_len < min(self.seq_lens)):
        raise ValueError(f"grid.short_len={self.short_len!r} must be an int in [1, "
                         f"{min(self.seq_lens)}) (below every grid.seq_lens) when "
                         f"grid.short_frac={self.short_frac} is set")
      if not 0.0 < self.short_frac < 1.0:
        raise ValueError(f"grid.short_frac={self.short_frac!r} must be in (0, 1) when "
                         f"grid.short_len={self.short_len} is set")
      for batch in sorted({self.batch_for(s) for s in self.sizes}):
        for t in self.seq_lens:
          if (batch * t) % self.short_len:
            raise ValueError(f"grid.short_len={self.short_len} must divide batch × seq_len "
                             f"= {batch * t} (the same tokens per step in both phases)")

  def batch_for(self, size: str) -> int:
    return dict(self.batch_sizes).get(size, self.batch_size)

  def optim_for(self, width: int, steps: int) -> OptimConfig:
    """The optimiser of one run of `width` and `steps` (its own rate and warmup)."""
    o = self.optim
    if self.lr_ref_width:
      o = dataclasses.replace(o, lr=o.lr * self.lr_ref_width / width)
    if self.warmup_frac:
      o = dataclasses.replace(o, warmup_steps=warmup_steps(self.warmup_frac, steps))
    return o

  def attention(self, pattern: str, sparsity: float) -> AttentionConfig:
    block = dict(block_q=self.block, block_kv=self.block) if self.block else {}
    if sparsity == 0.0:
      return AttentionConfig("dense", sink=self.sink, implementation=self.implementation, **block)
    if self.select_block_q == 1 and pattern in CONTENT_PATTERNS:
      block["per_query"] = True  # laid out in the grid's q-blocks, so the tiled kernels run it
    elif self.select_block_q and pattern in CONTENT_PATTERNS:
      block["block_q"] = self.select_block_q
    return AttentionConfig(pattern, sparsity=sparsity, sink=self.sink,
                           implementation=self.implementation, **block)

  def config(self, size: str, pattern: str, sparsity: float, seq_len: int,
             budget: float) -> Config:
    """The trainer's Config of one point: the steps `budget` buys by the trainer's rule
    (`Config.total_steps`), after the curriculum's share at short_len."""
    model = family(size, vocab_size=self.vocab_size, attention=self.attention(pattern, sparsity),
                   **dict(self.model_overrides))
    model.validate(seq_len)
    weights = self.task_weights or tuple(1.0 for _ in self.tasks)
    data = DataConfig(tasks=tuple(self.tasks), weights=tuple(weights), seq_len=seq_len,
                      short_len=self.short_len, seed=self.seed, source=self.data_source,
                      long_lens=tuple(self.long_lens))
    cfg = Config(model=model, data=data, batch_size=self.batch_for(size), seed=self.seed,
                 compute_dtype=self.compute_dtype, flop_budget=float(budget),
                 steps_per_call=self.long_every if self.long_lens else 1,
                 short_dense=self.short_dense and sparsity > 0)
    for n in self.long_lens:
      model.validate(n)
    if self.short_len:
      model.validate(self.short_len)
      short = nearest_steps(self.short_frac * budget, cfg.short_flops_per_step)
      cfg = dataclasses.replace(cfg, data=dataclasses.replace(data, short_steps=short))
    steps = cfg.total_steps
    return dataclasses.replace(cfg, steps=steps, flop_budget=0.0,
                               optim=self.optim_for(model.width, steps))

  def points(self) -> tuple[list[RunSpec], list[dict[str, Any]]]:
    """(run specs, skipped points with the reason), in a fixed order."""
    specs, skipped = [], []
    for budget in self.budgets:
      for seq_len in self.seq_lens:
        for size in self.sizes:
          combos = [("dense", 0.0)] if 0.0 in self.sparsities else []
          if self.sparse_sizes is None or size in self.sparse_sizes:
            combos += [(p, s) for s in self.sparsities if s > 0 for p in self.patterns]
          for pattern, sparsity in combos:
            cfg = self.config(size, pattern, sparsity, seq_len, budget)
            if cfg.steps < self.min_steps:
              skipped.append(dict(budget=budget, size=size, pattern=pattern, sparsity=sparsity,
                                  seq_len=seq_len, steps=cfg.steps,
                                  reason=f"needs steps >= {self.min_steps}, budget "
                                  f"{budget:.3g} buys {budget / cfg.flops_per_step:.2f} steps"))
              continue
            # The trainer's own checks, here where the study is planned: a point it would
            # refuse fails the plan before any run starts, not each attempt mid-sweep.
            train_validate(cfg, 1, 1, here=False)
            specs.append(RunSpec(size=size, budget=float(budget), config=cfg,
                                 train_sparsity=float(sparsity)))
    ids = [s.run_id for s in specs]
    if len(set(ids)) != len(ids):
      raise ValueError("grid has duplicate points (same config twice): check budgets/sizes/"
                       "sparsities for repeats")
    return specs, skipped
