"""Model and attention configs, and the size ladder (`family`).

Configs are frozen dataclasses: hashable (static under jit), printable, and CLI-friendly (tyro).
Every check runs in `__post_init__` or `validate(seq_len)`, in Python, so a bad config fails before
anything is traced or compiled, with a message naming the field.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Literal

import jax
import numpy as np

import sparse_ops as so

STATIC_PATTERNS = ("dense", "local", "strided", "block_random")
# Content-based: each layer picks its blocks from its own queries and keys (sparse_ops.select_blocks)
CONTENT_PATTERNS = {"topk_blocks": "mean", "quest": "quest", "vertical_slash": "vertical_slash"}
PATTERNS = STATIC_PATTERNS + tuple(CONTENT_PATTERNS)
Pattern = Literal["dense", "local", "strided", "block_random", "topk_blocks", "quest",
                  "vertical_slash"]
BUDGETS = ("density", "blocks", "adaptive", "coverage")


@dataclasses.dataclass(frozen=True)
class AttentionConfig:
  """Which (query, key) pairs each layer attends to, and how it is computed.

  pattern:
    dense         causal attention.
    local         causal sliding window of `window` keys (`q - window < k <= q`).
    strided       Sparse-Transformer style: a local window of `window` keys (default: `stride`)
                  plus every key at a distance that is a multiple of `stride`.
    block_random  random `block_kv`-sized tiles kept with probability `density` (seed `seed`),
                  plus the local window (default 1: the diagonal, so no row is empty).
    topk_blocks, quest, vertical_slash
                  content-based: each layer keeps, per q-block and kv-head, the best kv-blocks
                  by mean-pooled, Quest min/max, or vertical-slash scores of its own q and k
                  (`sparse_ops.select_blocks`), under `budget`:
                    density   budget_value = kept fraction of each row's causal blocks
                              (default: 1 - sparsity, or `density`)
                    blocks    budget_value = blocks per row
                    adaptive  budget_value = c in c·n**budget_alpha (longer rows keep less)
                    coverage  budget_value = estimated attention mass to cover (inference only:
                              its cost depends on the content, so training FLOPs are unknown)
                  The sink (rounded up to blocks) and the diagonal blocks are always kept.
  sink: the first `sink` keys are visible to every query, added to any pattern.
  sparsity: a target element sparsity against dense causal (``so.flops.sparsity``); when set, the
    pattern's knob (local: window, strided: stride, block_random: density) is solved at each
    sequence length for the closest achievable value, so one config means "90% sparse" at any T.
  block_q, block_kv: kernel block sizes (None: the implementation's default for the length).
  per_query: content patterns only: every query chooses its own kv-blocks, from itself
    (`so.select_blocks(per_query=True)`: the pairs of one-query blocks), while the kernels run
    q-blocks of `block_q` rows over the union of their queries' blocks. Selection from a block's
    own queries would let a later token choose an earlier query's blocks; from the queries before
    the block (per-block selection) a question's blocks are chosen without it.
  implementation: a `sparse_ops` implementation name, or None for the best one here.
  """

  pattern: Pattern = "dense"
  window: int = 0
  sink: int = 0
  stride: int = 0
  density: float = 1.0
  seed: int = 0
  sparsity: float | None = None
  block_q: int | None = None
  block_kv: int | None = None
  per_query: bool = False
  implementation: str | None = None
  budget: str = "density"
  budget_value: float | None = None
  budget_alpha: float = 0.5

  def __post_init__(self):
    if self.pattern not in PATTERNS:
      raise ValueError(f"attention.pattern={self.pattern!r} is unknown; valid: {PATTERNS}")
    for name in ("window", "sink", "stride", "seed"):
      value = getattr(self, name)
      if not isinstance(value, int) or value < 0:
        raise ValueError(f"attention.{name}={value!r} must be a non-negative int")
    if not 0.0 <= self.density <= 1.0:
      raise ValueError(f"attention.density={self.density!r} must be in [0, 1]")
    if self.sparsity is not None and not 0.0 <= self.sparsity < 1.0:
      raise ValueError(f"attention.sparsity={self.sparsity!r} must be in [0, 1)")
    for name in ("block_q", "block_kv"):
      value = getattr(self, name)
      if value is not None and (not isinstance(value, int) or value <= 0):
        raise ValueError(f"attention.{name}={value!r} must be a positive int or None")
    if self.implementation is not None and self.implementation not in so.IMPLEMENTATIONS:
      raise ValueError(f"attention.implementation={self.implementation!r} is unknown; valid: "
                       f"{sorted(so.IMPLEMENTATIONS)} or None")
    if self.budget not in BUDGETS:
      raise ValueError(f"attention.budget={self.budget!r} is unknown; valid: {BUDGETS}")
    if self.per_query not in (False, True):
      raise ValueError(f"attention.per_query={self.per_query!r} must be a bool")
    if self.per_query and not self.is_content:
      raise ValueError(f"attention.per_query=True needs a content pattern "
                       f"{tuple(CONTENT_PATTERNS)}, not {self.pattern!r}")
    if self.is_content:
      self.selection_budget()  # raises with the field named if the budget is not valid
    elif self.sparsity is None:
      if self.pattern == "local" and self.window < 1:
        raise ValueError("attention.window=0: pattern='local' needs window >= 1 (or sparsity=)")
      if self.pattern == "strided" and self.stride < 1:
        raise ValueError("attention.stride=0: pattern='strided' needs stride >= 1 (or sparsity=)")
    elif self.pattern == "dense":
      raise ValueError(f"attention.sparsity={self.sparsity} needs a sparse pattern, not 'dense'")

  @property
  def is_content(self) -> bool:
    return self.pattern in CONTENT_PATTERNS

  def selection_budget(self) -> so.Budget:
    """The `sparse_ops.Budget` of a content-based pattern."""
    value = self.budget_value
    if self.budget == "density" and value is None:
      value = 1.0 - self.sparsity if self.sparsity is not None else self.density
    if value is None:
      raise ValueError(f"attention.budget_value is needed for budget={self.budget!r}")
    try:
      if self.budget == "density":
        return so.Budget.density(float(value))
      if self.budget == "blocks":
        return so.Budget.blocks(int(value))
      if self.budget == "adaptive":
        return so.Budget.adaptive(float(value), self.budget_alpha)
      return so.Budget.coverage(float(value))
    except ValueError as e:
      raise ValueError(f"attention.budget_value={value!r} (budget={self.budget!r}): {e}") from e

  def selection_blocks(self, seq_len: int) -> tuple[int, int]:
    """(queries, keys) per selection block at `seq_len`: one query each when `per_query`, else
    the layout's blocks."""
    block_q, block_kv = self.blocks(seq_len)
    return (1 if self.per_query else block_q), block_kv

  def _selection_args(self, seq_len: int, budget_value=None) -> dict:
    """What selecting and counting share, so the FLOPs counted are those of what runs.
    `budget_value` (a jax scalar, may be traced): the budget's value instead of the config's,
    same kind (`so.Budget.traced`)."""
    block_q, block_kv = self.selection_blocks(seq_len)
    budget = self.selection_budget()
    if budget_value is not None:
      budget = budget.traced(budget_value)
    return dict(block_q=block_q, block_kv=block_kv, budget=budget,
                sink_blocks=-(-self.sink // block_kv))

  def select(self, q, k, dense_before=None, budget_value=None) -> so.BlockLayout:
    """The layout a content-based pattern picks from q [B, T, Hq, D] and k [B, T, Hkv, D]
    (`budget_value`: see `_selection_args`)."""
    args = self._selection_args(q.shape[1], budget_value)
    if self.per_query:  # the same selection, laid out in the kernel's q-blocks
      args["block_q"] = self.blocks(q.shape[1])[0]
    return so.select_blocks(q, k, scoring=CONTENT_PATTERNS[self.pattern],
                            dense_before=dense_before, per_query=self.per_query, **args)

  def select_mask(self, q, k, dense_before=None, budget_value=None) -> jax.Array:
    """The kept-block booleans [B, Hkv, nq, nk] behind `select` (`so.select_block_mask`), per
    selection block (nq = T when `per_query`)."""
    return so.select_block_mask(q, k, scoring=CONTENT_PATTERNS[self.pattern],
                                dense_before=dense_before,
                                **self._selection_args(q.shape[1], budget_value))

  def counted(self, seq_len: int,
              dense_before: int | None = None) -> so.masks.Mask | so.flops.Selected:
    """What `so.flops` counts for this config at `seq_len`: its static mask, or the selection
    its layers make (`select`'s arguments, exact before any content). `dense_before` (content
    only): queries before it are dense, as in the decode phase."""
    if not self.is_content:
      if dense_before is not None:
        raise ValueError(f"dense_before={dense_before} applies to content patterns; "
                         f"pattern={self.pattern!r} is static (its decode phase is a mask)")
      return self.mask(seq_len)
    return so.flops.Selected(**self._selection_args(seq_len), dense_before=dense_before)

  def pairs(self, seq_len: int) -> int:
    """Allowed (query, key) pairs per head at `seq_len`: what FLOP counts use."""
    return so.flops.pairs(self.counted(seq_len), seq_len)

  def selection_counts(self, seq_len: int, dense_before: int | None = None) -> tuple[int, int]:
    """(allowed pairs, visited blocks) per head of a content-based pattern at `seq_len`
    (`so.flops` on `counted`)."""
    if not self.is_content:
      raise ValueError(f"attention.pattern={self.pattern!r} is static: count its mask instead")
    sel = self.counted(seq_len, dense_before)
    return so.flops.pairs(sel, seq_len), int(so.flops.visited_blocks(sel, seq_len))

  def selection_sparsity(self, seq_len: int,
                         dense_before: int | None = None) -> dict[str, float]:
    """Element and block sparsity (against dense causal) of every selection at `seq_len`."""
    if not self.is_content:
      raise ValueError(f"attention.pattern={self.pattern!r} is static: count its mask instead")
    sel = self.counted(seq_len, dense_before)
    return {"element": so.flops.sparsity(sel, seq_len),
            "block": so.flops.block_sparsity(sel, seq_len)}

  # ------------------------------------------------------------------------------ validation
  def validate(self, seq_len: int) -> None:
    """Checks that the blocks fit `seq_len` and that the sparsity target is reachable."""
    for name in ("block_q", "block_kv"):
      value = getattr(self, name)
      if value is not None and seq_len % value:
        raise ValueError(f"attention.{name}={value} must divide seq_len={seq_len}")
    if self.sparsity is not None and not self.is_content:
      self.mask(seq_len)  # raises if the target cannot be approached

  # --------------------------------------------------------------------------- mask / layout
  def mask(self, seq_len: int) -> so.masks.Mask:
    """The `sparse_ops` mask this config means at length `seq_len` (cached)."""
    if self.is_content:
      raise ValueError(f"attention.pattern={self.pattern!r} is content-based: it has no static "
                       "mask (its layout comes from `select(q, k)`)")
    return _mask(self, seq_len)

  def blocks(self, seq_len: int) -> tuple[int, int]:
    """(block_q, block_kv) used at `seq_len`: the configured ones or the implementation's."""
    impl = self.implementation or so.default_implementation()
    default = so.IMPLEMENTATIONS[impl].default_blocks(seq_len, seq_len, 64)
    return (self.block_q or default[0], self.block_kv or default[1])

  def layout(self, seq_len: int) -> so.BlockLayout:
    block_q, block_kv = self.blocks(seq_len)
    return so.BlockLayout.from_mask(self.mask(seq_len), seq_len, seq_len, block_q=block_q,
                                    block_kv=block_kv)


def _build(cfg: AttentionConfig, seq_len: int, *, window: int, stride: int,
           density: float) -> so.masks.Mask:
  causal = so.masks.Causal()
  if cfg.pattern == "dense":
    mask = causal
  elif cfg.pattern == "local":
    mask = so.masks.Local(window)
  elif cfg.pattern == "strided":
    mask = causal & (so.masks.Local(window or stride) | so.masks.Strided(stride))
  else:  # block_random
    tile = cfg.block_kv or cfg.blocks(seq_len)[1]
    mask = causal & (so.masks.BlockRandom(density, cfg.seed, tile) | so.masks.Local(window or 1))
  if cfg.sink:
    mask = mask | (so.masks.Sink(cfg.sink) & causal)
  return mask


@functools.lru_cache(maxsize=256)
def _mask(cfg: AttentionConfig, seq_len: int) -> so.masks.Mask:
  knobs = dict(window=cfg.window, stride=cfg.stride, density=cfg.density)
  if cfg.sparsity is None:
    return _build(cfg, seq_len, **knobs)
  sparsity = lambda **kw: so.flops.sparsity(_build(cfg, seq_len, **{**knobs, **kw}), seq_len)
  target = cfg.sparsity
  if cfg.pattern == "block_random":
    # nnz grows monotonically with density (a tile is kept iff its hash < threshold): bisect.
    lo, hi = 0.0, 1.0
    for _ in range(30):
      mid = (lo + hi) / 2
      lo, hi = (mid, hi) if sparsity(density=mid) > target else (lo, mid)
    best = min((lo, hi), key=lambda d: abs(sparsity(density=d) - target))
    return _build(cfg, seq_len, **{**knobs, "density": best})
  if cfg.pattern == "local":  # sparsity falls as the window grows
    window = _bisect(lambda w: sparsity(window=w), target, 1, seq_len, rising=False)
    return _check_reached(cfg, seq_len, sparsity(window=window), window=window)
  # strided: with window = stride a query sees ~stride + q/stride keys, so sparsity rises with the
  # stride up to ~sqrt(T/2): take the first stride at or past the target there, then widen the
  # window (sparsity falls with it) to land on the target between integer strides.
  # (The smallest such stride: the most strided keys for the target.) Counted in closed form:
  # the generic count checks every partial block elementwise, and strided blocks are all partial.
  sparsity = lambda stride, window: _strided_sparsity(seq_len, stride, window, cfg.sink)
  top = max(2, math.isqrt(seq_len // 2) + 1)
  stride = _bisect(lambda s: sparsity(s, s), target, 1, top, rising=True)
  if sparsity(stride, stride) < target and stride < top:
    stride += 1
  window = _bisect(lambda w: sparsity(stride, w), target, stride, seq_len, rising=False)
  got = sparsity(stride, window)
  return _check_reached(cfg, seq_len, got, stride=stride, window=window)


def _strided_sparsity(t: int, stride: int, window: int, sink: int) -> float:
  """Sparsity of ``Causal & (Local(window) | Strided(stride)) | Sink(sink) & Causal`` over T=t.

  The allowed distances q - k form a set D; distance d occurs T - d times. Sink keys k < sink
  add the queries q >= k whose distance q - k is not already in D.
  """
  dist = np.union1d(np.arange(min(window, t)), np.arange(0, t, stride))
  nnz = int((t - dist).sum())
  if sink:
    reach = t - np.arange(min(sink, t))  # queries at or after sink key k
    nnz += int((reach - np.searchsorted(dist, reach)).sum())
  return 1.0 - nnz / (t * (t + 1) / 2)


def _bisect(sparsity_of, target: float, lo: int, hi: int, *, rising: bool) -> int:
  """The int knob in [lo, hi] whose sparsity is closest to target (sparsity monotone in it)."""
  while hi - lo > 1:
    mid = (lo + hi) // 2
    lo, hi = (lo, mid) if (sparsity_of(mid) > target) == rising else (mid, hi)
  return min((lo, hi), key=lambda n: abs(sparsity_of(n) - target))


def _check_reached(cfg: AttentionConfig, seq_len: int, got: float, **knobs) -> so.masks.Mask:
  if abs(got - cfg.sparsity) > 0.05:
    raise ValueError(f"attention.sparsity={cfg.sparsity} is out of reach for pattern="
                     f"{cfg.pattern!r} at seq_len={seq_len} (closest: {got:.3f} at {knobs})")
  base = dict(window=cfg.window, stride=cfg.stride, density=cfg.density)
  return _build(cfg, seq_len, **{**base, **knobs})


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """A Llama-style decoder: pre-RMSNorm blocks of GQA attention (RoPE) and a SwiGLU MLP.

  num_kv_heads: None means multi-head attention (= num_heads); 1 is multi-query.
  head_dim: None means width // num_heads.
  mlp_dim: None means 8/3·width rounded up to a multiple of 64 (SwiGLU at ~4·width² params).
  """

  vocab_size: int = 512
  width: int = 64
  depth: int = 2
  num_heads: int = 4
  num_kv_heads: int | None = None
  head_dim: int | None = None
  mlp_dim: int | None = None
  tie_embeddings: bool = False
  rope_base: float = 10_000.0
  norm_eps: float = 1e-6
  remat: bool = False  # recompute each block's activations in the backward pass (saves memory)
  # A short causal depthwise convolution over the attention block's normalised input (Canon-A /
  # Zoology short conv): each position mixes in the previous conv_kernel - 1 tokens, so a value
  # token "knows" the key before it without spending an attention layer on it. 0: none.
  conv_kernel: int = 0
  attention: AttentionConfig = AttentionConfig()

  def __post_init__(self):
    for name in ("vocab_size", "width", "depth", "num_heads"):
      value = getattr(self, name)
      if not isinstance(value, int) or value <= 0:
        raise ValueError(f"model.{name}={value!r} must be a positive int")
    if not isinstance(self.conv_kernel, int) or not 0 <= self.conv_kernel <= 16:
      raise ValueError(f"model.conv_kernel={self.conv_kernel!r} must be an int in [0, 16]")
    for name in ("num_kv_heads", "head_dim", "mlp_dim"):
      value = getattr(self, name)
      if value is not None and (not isinstance(value, int) or value <= 0):
        raise ValueError(f"model.{name}={value!r} must be a positive int or None")
    if self.head_dim is None and self.width % self.num_heads:
      raise ValueError(f"model.num_heads={self.num_heads} must divide model.width={self.width} "
                       "(or set model.head_dim)")
    if self.num_heads % self.kv_heads:
      raise ValueError(f"model.num_kv_heads={self.num_kv_heads} must divide "
                       f"model.num_heads={self.num_heads} (GQA groups)")
    if self.head_size % 2:
      raise ValueError(f"model.head_dim={self.head_size} must be even (RoPE rotates pairs)")

  @property
  def kv_heads(self) -> int:
    return self.num_kv_heads or self.num_heads

  @property
  def head_size(self) -> int:
    return self.head_dim or self.width // self.num_heads

  @property
  def hidden(self) -> int:
    return self.mlp_dim or 64 * -(-8 * self.width // (3 * 64))

  def validate(self, seq_len: int) -> None:
    if not isinstance(seq_len, int) or seq_len <= 0:
      raise ValueError(f"seq_len={seq_len!r} must be a positive int")
    self.attention.validate(seq_len)


# --------------------------------------------------------------------------------- size ladder

# One rule: width = 32 · depth (aspect ratio 32), num_heads = max(4, width // 64), so head_dim is
# 64 from width 256 on (GPU-sized) and width/4 below. Names are the non-embedding parameter
# counts, rounded; `models.param_counts` gives the exact ones.
_DEPTHS = {"100k": 2, "300k": 3, "800k": 4, "3m": 6, "6m": 8, "20m": 12, "50m": 16,
           "100m": 20, "170m": 24, "400m": 32, "800m": 40, "1b": 44}
SIZES = tuple(_DEPTHS)


def family(size: str, **overrides) -> ModelConfig:
  """The ladder's config named `size` (see `SIZES`), with any field overridden."""
  if size not in _DEPTHS:
    raise ValueError(f"model size={size!r} is unknown; valid: {list(SIZES)}")
  depth = _DEPTHS[size]
  width = 32 * depth
  fields = dict(depth=depth, width=width, num_heads=max(4, width // 64))
  return ModelConfig(**{**fields, **overrides})
