"""Checkpoints of a run: orbax `CheckpointManager` holding the train state (params, optimizer,
step) and every process's data-iterator state, async, keeping the last N.

The data state is saved through grain's orbax handler (one JSON file per process), from a
snapshot taken at save time, so an async save never reads an iterator that has moved on.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp


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


class Checkpoints:
  def __init__(self, run_dir: Path, *, keep: int, async_save: bool):
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                           enable_async_checkpointing=async_save)
    self.manager = ocp.CheckpointManager((run_dir / "checkpoints").resolve(), options=options)

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state: Any, data_state: Any) -> None:
    """Starts saving (returns before an async save is on disk; `wait` to be sure)."""
    snapshot = _Snapshot(json.dumps(data_state).encode())
    self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), data=grain.checkpoint.CheckpointSave(snapshot)),
        force=True)

  def restore(self, abstract_state: Any, step: int | None = None) -> tuple[Any, Any, int]:
    """-> (state laid out as `abstract_state`'s shardings, data state, step)."""
    step = self.manager.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {self.manager.directory}")
    snapshot = _Snapshot()
    out = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state),
        data=grain.checkpoint.CheckpointRestore(snapshot)))
    return out["state"], json.loads(snapshot.state.decode()), step

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.close()


def abstract(tree: Any, shardings: Any) -> Any:
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      tree, shardings)
