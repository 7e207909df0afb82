"""Checkpoints of a run: orbax `CheckpointManager` holding the train state (params, optimizer,
step) and every process's data-iterator state, async, keeping the last N.

The data state is saved through grain's orbax handler (one JSON file per process), from a
snapshot taken at save time, so an async save never reads an iterator that has moved on.

Integrity: orbax checks only the shard indexes (crc32c); array data is trusted, so a flipped
bit can restore silently and a truncated file fails with an opaque TensorStore message. Each
finished save is therefore sealed with `sha256.json` (every file of the step directory), and a
restore checks it first. A damaged step is reported by path and the restore falls back to the
previous kept step; the damaged ones are then moved to `checkpoints.damaged/` (so orbax no
longer lists them and the steps can be saved again). With no intact step it raises
`CheckpointError` and moves nothing, so every rerun fails the same way instead of silently
starting over. A step killed between its
commit and its seal has no manifest: it is restored unverified (orbax's own checks only).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

MANIFEST = "sha256.json"


class CheckpointError(RuntimeError):
  """No intact checkpoint to restore; the message names every damaged path."""


class _Snapshot:
  """The iterator protocol grain's handler needs, around one saved state (bytes)."""

  def __init__(self, state: bytes = b""):
    self.state = state

  def get_state(self) -> bytes:
    return self.state

  def set_state(self, state: bytes) -> None:
    self.state = state

  def start_prefetch(self) -> None:
    pass


def _digest(path: Path) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      h.update(block)
  return h.hexdigest()


def _files(step_dir: Path) -> list[Path]:
  return sorted(p for p in step_dir.rglob("*") if p.is_file() and p.name != MANIFEST)


def seal(step_dir: Path) -> None:
  """Writes step_dir/sha256.json: {relative path: [bytes, sha256]} of every file (atomic)."""
  sums = {str(p.relative_to(step_dir)): [p.stat().st_size, _digest(p)] for p in _files(step_dir)}
  tmp = step_dir / (MANIFEST + ".tmp")
  tmp.write_text(json.dumps(sums, indent=0))
  os.replace(tmp, step_dir / MANIFEST)


def verify(step_dir: Path) -> str | None:
  """None if step_dir matches its manifest (or has none: unverified), else what is wrong."""
  try:
    sums = json.loads((step_dir / MANIFEST).read_text())
  except FileNotFoundError:
    return None
  except ValueError:
    return f"{step_dir / MANIFEST}: unreadable manifest"
  for rel, (size, digest) in sums.items():
    path = step_dir / rel
    if not path.is_file():
      return f"{path}: missing"
    if path.stat().st_size != size:
      return f"{path}: {path.stat().st_size} bytes, {size} were saved (truncated?)"
    if _digest(path) != digest:
      return f"{path}: sha256 differs from the saved one (corrupted)"
  return None


class Checkpoints:
  def __init__(self, run_dir: Path, *, keep: int, async_save: bool):
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                           enable_async_checkpointing=async_save)
    self.manager = ocp.CheckpointManager((run_dir / "checkpoints").resolve(), options=options)
    self.primary = jax.process_index() == 0
    self._unsealed: list[int] = []  # saved steps whose manifest is not written yet
    self.damaged: list[str] = []  # what restore found wrong, by path

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def step_dir(self, step: int) -> Path:
    return Path(self.manager.directory) / str(step)

  def save(self, step: int, state: Any, data_state: Any) -> None:
    """Starts saving (returns before an async save is on disk; `wait` to be sure)."""
    snapshot = _Snapshot(json.dumps(data_state).encode())
    self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), data=grain.checkpoint.CheckpointSave(snapshot)),
        force=True)  # (orbax waits for the previous save first)
    self._unsealed.append(step)
    self.seal_finished()

  def seal_finished(self) -> None:
    """Seals the saves that have finished (cheap when none has: call it at every boundary, so
    a kill leaves at most the newest step unsealed)."""
    if not self._unsealed or self.manager.is_saving_in_progress():
      return
    if self.primary:
      for step in self._unsealed:
        if self.step_dir(step).is_dir():  # (max_to_keep may have removed it)
          seal(self.step_dir(step))
    self._unsealed = []

  def restore(self, abstract_state: Any, step: int | None = None, *,
              fallback: bool = True) -> tuple[Any, Any, int]:
    """-> (state laid out as `abstract_state`'s shardings, data state, step) of `step`, or of
    the newest intact step. With `fallback`, a damaged step is set aside and the next older
    one is tried; raises CheckpointError when none is intact."""
    steps = [step] if step is not None else sorted(self.manager.all_steps(), reverse=True)
    if not steps:
      raise FileNotFoundError(f"no checkpoint in {self.manager.directory}")
    bad = []  # damaged steps, newest first
    for s in steps:
      problem = verify(self.step_dir(s))
      if problem is None:
        try:
          snapshot = _Snapshot()
          out = self.manager.restore(s, args=ocp.args.Composite(
              state=ocp.args.StandardRestore(abstract_state),
              data=grain.checkpoint.CheckpointRestore(snapshot)))
          data = json.loads(snapshot.state.decode())
        except Exception as e:  # noqa: BLE001 — any failure to read a step means it is damaged
          problem = f"{self.step_dir(s)}: {type(e).__name__}: {str(e).splitlines()[0][:300]}"
        else:
          for b in bad:  # only now: with no intact step, every damaged one stays in place
            self._set_aside(b)
          if bad:
            self.manager.reload()  # orbax forgets the steps set aside
          return out["state"], data, s
      bad.append(s)
      self.damaged.append(problem)
      if self.primary:
        print(f"damaged checkpoint: {problem}", file=sys.stderr, flush=True)
      if not fallback:
        break
    raise CheckpointError(f"no intact checkpoint in {self.manager.directory}: "
                          + "; ".join(self.damaged))

  def _set_aside(self, step: int) -> None:
    """Moves a damaged step out of orbax's sight (kept for inspection, never restored)."""
    if self.primary:
      aside = Path(self.manager.directory).parent / "checkpoints.damaged"
      aside.mkdir(exist_ok=True)
      os.replace(self.step_dir(step), aside / f"{step}.{time.time_ns()}")
    multihost_utils.sync_global_devices(f"set_aside_{step}")

  def wait(self) -> None:
    self.manager.wait_until_finished()
    self.seal_finished()

  def close(self) -> None:
    self.manager.close()


def abstract(tree: Any, shardings: Any) -> Any:
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      tree, shardings)
