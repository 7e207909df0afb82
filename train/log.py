"""Where a run reports: a progress bar, `metrics.jsonl`, `status.json` and W&B (offline default).

Only process 0 writes. Achieved TFLOP/s use the model FLOPs of `models.flops_per_token` (the
study's one counter); MFU divides them by the per-device peak in `PEAKS` (dense bf16, vendor
spec) times the device count, and, where we measured one, by the ceiling seen on that device.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any, Callable

import jax

# device_kind substring -> (spec dense bf16 peak, measured bf16 matmul ceiling or None), FLOP/s.
PEAKS: dict[str, tuple[float, float | None]] = {
    "H200": (989e12, None),
    "H100": (989e12, 660e12),  # TARGETS.md: 8192³ bf16 matmul on one H100 80GB HBM3
    "A100": (312e12, None),
    "L4": (121e12, None),
    "TPU v6": (918e12, None),
    "TPU v5p": (459e12, None),
    "TPU v5": (197e12, None),  # v5e ("TPU v5 lite")
    "TPU v4": (275e12, None),
}


def device_peak(override_tflops: float = 0.0) -> tuple[float | None, float | None]:
  """(spec peak, measured ceiling) per device in FLOP/s; (None, None) when unknown (e.g. CPU)."""
  if override_tflops > 0:
    return override_tflops * 1e12, None
  kind = jax.devices()[0].device_kind
  for name, peaks in PEAKS.items():
    if name in kind:
      return peaks
  return None, None


def git_sha(where: Path | None = None) -> str:
  """HEAD of the code's repository, with "-dirty" when tracked files differ from it (the code
  that ran is then not that commit: e.g. a working tree copied onto a GPU machine)."""
  # GIT_OPTIONAL_LOCKS=0: `git status` must not take index.lock (a git command run at the same
  # time, e.g. a commit, would fail on it).
  git = lambda *args: subprocess.run(["git", *args], capture_output=True, text=True, timeout=10,
                                     cwd=where or Path(__file__).resolve().parent,
                                     env={**os.environ, "GIT_OPTIONAL_LOCKS": "0"})
  try:
    sha = git("rev-parse", "HEAD").stdout.strip()
    if not sha:
      return "unknown"
    changed = git("status", "--porcelain", "--untracked-files=no")
    return sha + ("-dirty" if changed.returncode or changed.stdout.strip() else "")
  except (OSError, subprocess.SubprocessError):
    return "unknown"


def run_id(run_dir: Path) -> str:
  """Deterministic in the run folder: a resumed run continues the same W&B run."""
  digest = hashlib.sha1(str(run_dir.resolve()).encode()).hexdigest()[:8]
  slug = "".join(c if c.isalnum() or c in "-_" else "-" for c in run_dir.name)[:48]
  return f"{slug}-{digest}"


def write_status(run_dir: Path, status: str, **fields: Any) -> None:
  """status.json: "running", "finished", "preempted" or "failed" (+ step, message)."""
  if jax.process_index() != 0:
    return
  tmp = run_dir / "status.json.tmp"
  tmp.write_text(json.dumps({"status": status, "time": time.time(), **fields}, indent=1))
  os.replace(tmp, run_dir / "status.json")  # atomic: a sweep never reads half a file


def read_status(run_dir: str | os.PathLike) -> dict[str, Any] | None:
  """status.json, None if there is none; ValueError naming the file if it is damaged."""
  path = Path(run_dir) / "status.json"
  if not path.exists():
    return None
  try:
    return json.loads(path.read_text())
  except ValueError as e:
    raise ValueError(f"{path} is damaged: {e}") from e


def _read_lines(path: Path) -> list[tuple[str, dict[str, Any]]]:
  """(line, record) of metrics.jsonl. A final line that does not parse is a write cut by a
  crash and is dropped; a bad line before the end is damage, and raises naming file:line."""
  lines = [l for l in path.read_text().splitlines() if l.strip()]
  out = []
  for i, line in enumerate(lines):
    try:
      out.append((line, json.loads(line)))
    except ValueError as e:
      if i == len(lines) - 1:
        break
      raise ValueError(f"{path}:{i + 1} is damaged ({e}): {line[:80]!r}") from e
  return out


def read_metrics(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
  path = Path(run_dir) / "metrics.jsonl"
  if not path.exists():
    return []
  return [record for _, record in _read_lines(path)]


@dataclasses.dataclass
class Logger:
  run_dir: Path
  config: dict[str, Any]
  total_steps: int
  tokens_per_step: int
  flops_through: Callable[[int], float]  # training FLOPs of the first n steps
  progress: bool = True
  wandb_mode: str = "offline"
  project: str = "sparse-frontier"
  group: str = ""
  peak_tflops: float = 0.0

  def __post_init__(self):
    self.primary = jax.process_index() == 0
    self.peak, self.ceiling = device_peak(self.peak_tflops)
    self.devices = jax.device_count()
    self._bar = self._wandb = None
    self._last_time, self._last_step = None, None

  def start(self, step: int) -> None:
    """Opens the outputs, dropping metrics past `step` (left by a run killed after its last
    checkpoint: the resumed run writes those steps again)."""
    self._last_time, self._last_step = time.perf_counter(), step
    if not self.primary:
      return
    path = self.run_dir / "metrics.jsonl"
    if path.exists():  # (and a last line cut by a crash, so appends start on a fresh line)
      kept = [l for l, record in _read_lines(path) if record.get("step", 0) <= step]
      tmp = path.with_suffix(".jsonl.tmp")
      tmp.write_text("".join(l + "\n" for l in kept))
      os.replace(tmp, path)  # atomic: a kill here keeps the old file, never half of it
    self._file = open(path, "a")
    if self.progress:
      from tqdm import tqdm
      self._bar = tqdm(total=self.total_steps, initial=step, unit="step", dynamic_ncols=True)
    if self.wandb_mode != "disabled":
      import wandb
      self._wandb = wandb.init(
          project=self.project, group=self.group or None, name=self.run_dir.name,
          id=run_id(self.run_dir), resume="allow", mode=self.wandb_mode,
          dir=str(self.run_dir), config={**self.config, "git_sha": git_sha()})

  def throughput(self, step: int) -> dict[str, float]:
    """Speed since the previous call: tokens/s, TFLOP/s, step time, MFU."""
    now = time.perf_counter()
    steps = max(step - self._last_step, 1)
    dt = max(now - self._last_time, 1e-9)
    flops_s = (self.flops_through(step) - self.flops_through(self._last_step)) / dt
    self._last_time, self._last_step = now, step
    out = {"step_time_s": dt / steps, "tokens_per_s": self.tokens_per_step * steps / dt,
           "tflops_per_s": flops_s / 1e12}
    if self.peak:
      out["mfu"] = flops_s / (self.peak * self.devices)
    if self.ceiling:
      out["mfu_vs_measured_ceiling"] = flops_s / (self.ceiling * self.devices)
    return out

  def log(self, step: int, metrics: dict[str, Any]) -> None:
    if not self.primary:
      return
    record = {"step": step, **{k: _plain(v) for k, v in metrics.items()}}
    self._file.write(json.dumps(record) + "\n")
    self._file.flush()
    if self._wandb is not None:
      self._wandb.log(record, step=step)
    if self._bar is not None and "loss" in record:
      post = {"loss": f"{record['loss']:.4f}"}
      if "tokens_per_s" in record:
        post["tok/s"] = f"{record['tokens_per_s']:.3g}"
        post["TFLOP/s"] = f"{record['tflops_per_s']:.3g}"
      if "mfu" in record:
        post["MFU"] = f"{100 * record['mfu']:.1f}%"
      self._bar.set_postfix(post, refresh=False)

  def advance(self, step: int) -> None:
    if self._bar is not None:
      self._bar.update(step - self._bar.n)

  def message(self, text: str) -> None:
    if not self.primary:
      return
    if self._bar is not None:
      self._bar.write(text)
    else:
      print(text, flush=True)

  def close(self, status: str) -> None:
    if not self.primary or self._last_time is None:
      return
    self._last_time = None  # closed
    if self._bar is not None:
      self._bar.close()
    self._file.close()
    if self._wandb is not None:
      self._wandb.summary["status"] = status
      self._wandb.finish(exit_code=0 if status in ("finished", "preempted") else 1)


def _plain(v: Any) -> Any:
  if hasattr(v, "item"):
    return v.item()
  return v
