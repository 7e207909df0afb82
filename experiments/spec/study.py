"""A study: the training grid, the evaluation settings and how runs are executed and logged.

Presets under `experiments/spec/presets/` each define `STUDY`; `load_preset(name)` returns it.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from typing import Any

from experiments.spec import settings as settings_lib
from experiments import tasks as tasks_lib
from experiments.spec.grid import Grid, RunSpec, config_hash, first_optim, to_dict
from train.config import OptimConfig

PHASES = ("prefill", "decode")


@dataclasses.dataclass(frozen=True)
class EvalSpec:
  """Each model × task × length × inference setting × phase, teacher-forced.

  settings: inference attention, one tuple each (`experiments.spec.settings` has the formats):
    ("local", 0.75) a static pattern at that element sparsity, ("dense", 0.0) dense causal;
    content-based selection with a fixed budget, ("topk_blocks", 0.9) (block density 0.1) or
    ("quest", "density", 0.1) or ("quest", "blocks", 4), or an adaptive one,
    ("topk_blocks", "adaptive", c, alpha) (c·n**alpha of n causal blocks per row). Every model
    is also evaluated with its own training attention ("native").
  selection_block: block size (q and kv) at which content settings select; None: the model's.
    Static settings keep the model's blocks (their meaning does not depend on them).
  selection_queries: content settings choose their kv-blocks once per this many queries in
    prefill (1: every query from itself); None: per `selection_block`. A q-block is represented
    by the queries ending at its first position (causal), so with 64-query blocks a question's
    blocks are chosen from the queries before it: on the CPU pilot a dense model scored 0.617
    per question under Quest 75% with 16-query blocks and 1.000 per query, as in decode
    (benchmarks/results/selection_eval_cpu_512.md). Decode always selects per query.
  lengths: context lengths; may exceed the training length (RoPE extrapolation is measured).
  examples: per task × length, from `split`, the same examples for every model and setting.
  task_examples: ((task, examples), ...) for tasks that need other than `examples`: a task whose
    contexts hold many questions reaches a category's question count with fewer contexts.
  decode_rows: the fewest question/answer rows a decode forward computes as its sparse tail
    (0: each task's tail rounded up to a power of two). A floor at or above every task's tail
    compiles one decode program per setting and length instead of one per power of two; the
    extra rows are context rows, dense either way.
  """

  tasks: tuple[str, ...]
  lengths: tuple[int, ...]
  settings: tuple[tuple[Any, ...], ...] = (("dense", 0.0),)
  phases: tuple[str, ...] = PHASES
  examples: int = 64
  batch_size: int = 32
  split: str = "test"
  native: bool = True
  seed: int = 0  # task seed of the eval examples (the training mixture uses the grid's)
  selection_block: int | None = None
  decode_rows: int = 0
  selection_queries: int | None = None
  task_examples: tuple[tuple[str, int], ...] = ()

  def examples_of(self, task: str) -> int:
    """Contexts of `task` per length: its `task_examples` entry, else `examples`."""
    return dict(self.task_examples).get(task, self.examples)

  def __post_init__(self):
    for t in self.tasks:  # a name, or a name with knobs: "niah_multikey(questions=8)"
      if tasks_lib.spec(t)[0] not in tasks_lib.TASKS:
        raise ValueError(f"eval.tasks has {t!r}; valid: {sorted(tasks_lib.TASKS)}, optionally "
                         "with knobs, e.g. 'niah_multikey(questions=8)'")
      for n in self.lengths:
        tasks_lib.make(t, length=n, vocab_size=64 << 10)  # bad knobs fail here, not mid-study
    for p in self.phases:
      if p not in PHASES:
        raise ValueError(f"eval.phases has {p!r}; valid: {PHASES}")
    parsed = [settings_lib.parse(s) for s in self.settings]  # raises naming the bad one
    names = [p.name for p in parsed]
    if len(set(names)) != len(names):
      raise ValueError(f"eval.settings repeats a setting: {names}")
    b = self.selection_block
    if b is not None and (isinstance(b, bool) or not isinstance(b, int) or b <= 0):
      raise ValueError(f"eval.selection_block={b!r} must be a positive int or None")
    for t in self.lengths if b is not None else ():
      if t % b:
        raise ValueError(f"eval.selection_block={b} must divide every eval length "
                         f"(lengths={self.lengths})")
    sq = self.selection_queries
    if sq is not None and (isinstance(sq, bool) or not isinstance(sq, int) or sq <= 0
                           or any(t % sq for t in self.lengths)):
      raise ValueError(f"eval.selection_queries={sq!r} must be a positive int dividing every "
                       f"eval length (lengths={self.lengths}), or None")
    for t, n in self.task_examples:
      if t not in self.tasks or isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise ValueError(f"eval.task_examples has ({t!r}, {n!r}): the task must be one of "
                         f"eval.tasks {list(self.tasks)} and its examples an int >= 2")
    if self.examples < 2 or self.batch_size < 1:
      raise ValueError(f"eval.examples={self.examples} must be >= 2 (intervals need n >= 2) and "
                       f"eval.batch_size={self.batch_size} >= 1")
    if isinstance(self.decode_rows, bool) or not isinstance(self.decode_rows, int) or (
        self.decode_rows < 0 or self.decode_rows > min(self.lengths, default=0)):
      raise ValueError(f"eval.decode_rows={self.decode_rows!r} must be an int in [0, "
                       f"{min(self.lengths, default=0)}] (the shortest eval length)")
    if self.split not in ("train", "validation", "test"):
      raise ValueError(f"eval.split={self.split!r} must be train, validation or test")

  @property
  def key(self) -> str:
    """Hash of the settings: a run's cached evaluation is reused only if this matches."""
    d = to_dict(self)
    if d["selection_block"] is None:  # added later: studies that don't set it keep their key
      del d["selection_block"]
    if d["decode_rows"] == 0:  # likewise
      del d["decode_rows"]
    if d["selection_queries"] is None:  # likewise
      del d["selection_queries"]
    if not d["task_examples"]:  # likewise
      del d["task_examples"]
    return config_hash(d)


@dataclasses.dataclass(frozen=True)
class Study:
  """name: the sweep's name (W&B group). max_attempts: tries per run before it is reported as
  failed. checkpoint_every: training steps between checkpoints (what an interruption loses).
  failing: run labels' substrings whose learning rate is multiplied by `failing_lr` (inf: the
  first update makes the loss NaN) — a deliberately diverging run, to show that a failure
  neither stops nor hides in the sweep.
  extra_grids: more grids whose runs join `grid`'s (after them, in order): a study whose
    budgets bracket different sizes, or that trains a pattern at one budget only, is a grid per
    such block. A point two grids share (the same run id, e.g. a dense run) is planned once.
  """

  name: str
  grid: Grid
  eval: EvalSpec
  max_attempts: int = 2
  checkpoint_every: int = 100
  steps_per_call: int = 1
  log_every: int = 10
  wandb: str = "offline"  # "offline" | "online" | "disabled"
  wandb_project: str = "sparse-frontier"
  executor: str = "local"
  executor_options: tuple[tuple[str, Any], ...] = ()
  failing: tuple[str, ...] = ()
  failing_lr: float = float("inf")
  extra_grids: tuple[Grid, ...] = ()
  probe: bool = False  # activation-sparsity probe of every done run after the sweep (issue 21)
  # The report's tolerance: a drop below dense up to this (accuracy per question) is tolerated
  # unless significantly larger (`analysis.tolerance.curves`); 0: any significant drop ends it.
  tolerance_margin: float = 0.0

  def __post_init__(self):
    if not self.name or not all(c.isalnum() or c in "-_" for c in self.name):
      raise ValueError(f"study.name={self.name!r} must be non-empty [A-Za-z0-9_-]")
    if self.max_attempts < 1:
      raise ValueError(f"study.max_attempts={self.max_attempts} must be >= 1")
    if self.wandb not in ("offline", "online", "disabled"):
      raise ValueError(f"study.wandb={self.wandb!r} must be offline, online or disabled")
    margin = self.tolerance_margin
    if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not 0 <= margin < 1:
      raise ValueError(f"study.tolerance_margin={self.tolerance_margin!r} must be a number in "
                       "[0, 1) (accuracy per question)")

  def runs(self) -> tuple[list[RunSpec], list[dict[str, Any]]]:
    """The grid's run specs (with the deliberate failures applied) and its skipped points."""
    specs, skipped, seen = [], [], set()
    for grid in (self.grid, *self.extra_grids):
      g_specs, g_skipped = grid.points()
      specs += [s for s in g_specs if s.run_id not in seen]
      seen |= {s.run_id for s in g_specs}
      skipped += [k for k in g_skipped if k not in skipped]
    out = []
    for s in specs:
      if any(f in s.label for f in self.failing):
        optim = dataclasses.replace(s.optim, lr=s.optim.lr * self.failing_lr, clip_norm=0.0)
        s = dataclasses.replace(s, config=dataclasses.replace(s.config, optim=optim))
      out.append(s)
    return out, skipped


def presets() -> list[str]:
  import experiments.spec.presets as pkg
  return sorted(m.name for m in pkgutil.iter_modules(pkg.__path__))


def load_preset(name: str) -> Study:
  if name not in presets():
    raise ValueError(f"preset={name!r} is unknown; valid: {presets()}")
  return importlib.import_module(f"experiments.spec.presets.{name}").STUDY


def to_json(study: Study) -> dict[str, Any]:
  d = to_dict(study)
  # Fields added later, left out at their default: study.json as it was.
  for added_later in ("extra_grids", "probe", "tolerance_margin"):
    if not d[added_later]:
      del d[added_later]
  if not d["eval"]["task_examples"]:
    del d["eval"]["task_examples"]
  return d


def from_json(d: dict[str, Any]) -> Study:
  """Inverse of `to_json` (study.json → Study). The first studies wrote the grid's own
  optimiser, its two per-run rules inside: they read as the grid's fields."""
  d = dict(d)
  extra = tuple(_grid_from_json(g) for g in d.pop("extra_grids", ()))
  e = dict(d.pop("eval"))
  e["settings"] = tuple(settings_lib.setting_from_json(s) for s in e["settings"])
  for k in ("tasks", "lengths", "phases"):
    e[k] = tuple(e[k])
  e["task_examples"] = tuple((t, n) for t, n in e.get("task_examples", ()))
  d["executor_options"] = tuple((k, tuple(v) if isinstance(v, list) else v)
                                for k, v in d.get("executor_options", ()))
  d["failing"] = tuple(d.get("failing", ()))
  return Study(grid=_grid_from_json(d.pop("grid")), eval=EvalSpec(**e), extra_grids=extra, **d)


def _grid_from_json(g: dict[str, Any]) -> Grid:
  g = dict(g)
  if "warmup_steps" not in g["optim"]:  # the first layout
    g["optim"], g["warmup_frac"], g["lr_ref_width"] = first_optim(g["optim"])
  g["optim"] = OptimConfig(**g["optim"])
  g["batch_sizes"] = tuple(tuple(x) for x in g.get("batch_sizes", ()))
  for k in ("budgets", "sizes", "sparsities", "patterns", "seq_lens", "tasks"):
    g[k] = tuple(g[k])
  g["long_lens"] = tuple(g.get("long_lens", ()))  # added later
  if g.get("sparse_sizes") is not None:
    g["sparse_sizes"] = tuple(g["sparse_sizes"])
  if g.get("task_weights") is not None:
    g["task_weights"] = tuple(g["task_weights"])
  g["model_overrides"] = tuple(tuple(x) for x in g.get("model_overrides", ()))
  return Grid(**g)
