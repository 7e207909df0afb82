"""The run store: a study folder's plan, its run folders and their job records.

A study folder `out/`:
  study.json                 the Study (what `status` and `report` read back)
  runs/<run_id>/spec.json    the RunSpec (run_id = hash of the fields that decide the result)
  runs/<run_id>/job.json     the sweep's record: state, attempts, last error, eval key
  runs/<run_id>/.job.lock    held (flock) by the process running this run's job
  runs/<run_id>/...          the trainer's outputs (config.json, status.json, metrics.jsonl,
                             checkpoints/) and eval.json.gz (this run's evaluation rows)
  results.csv                one row per run × eval setting × task (finished runs only)

A run is *done* when its eval.json.gz holds the study's current eval settings.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from pathlib import Path
from typing import Any, Iterator

from experiments.runs.files import DamagedFile, read_json, readable, write_json
from experiments.spec import study as study_lib
from experiments.spec.grid import RunSpec, spec_from_dict

# Every question's outcome of every eval setting: 3.5 MB of JSON for an h200 run, ~0.1 MB
# gzipped, and study folders travel to GPU machines (64 MiB a call) and into git.
EVAL_FILE = "eval.json.gz"
STATES = ("pending", "running", "preempted", "failed", "done")
# status_rows' live reading of a "running" record whose process is gone (the next sweep
# resumes it); never written to job.json.
STOPPED = "stopped"


class StudyMismatch(ValueError):
  """Another preset on a study folder without asking to add to it."""


def run_dirs(out: Path) -> list[Path]:
  order = read_json(Path(out) / "study.json", {}).get("run_order", [])
  return [Path(out) / "runs" / rid for rid in order]


def load_study(out: Path) -> study_lib.Study:
  d = read_json(Path(out) / "study.json", need=("study", "run_order"))
  if d is None:
    raise FileNotFoundError(f"{out}/study.json not found: is {out} a study folder "
                            "(made by `python -m experiments run`)?")
  return study_lib.from_json(d["study"])


def plan(study: study_lib.Study, out: Path, *, add: bool = False) -> list[Path]:
  """Writes study.json and one folder per run (existing folders are kept as they are).

  A folder remembers its preset (the study's name): another one is refused (StudyMismatch)
  unless `add`; then its runs join the folder's and the earlier runs stay in run_order (so in
  results.csv and the report), evaluated with the newest study's eval settings (re-evaluated,
  never retrained, if those differ). Without this, the new preset's run_order silently replaced
  the old one and the earlier runs vanished from the results."""
  out = Path(out)
  try:
    prev = read_json(out / "study.json", need=("study", "run_order"))
  except DamagedFile as e:  # its preset and run order are lost: guessing could drop runs
    raise DamagedFile(f"{e}; move it away to plan the folder again (run folders are kept, "
                      "finished runs are not redone)") from None
  kept: list[str] = []
  presets = [study.name]
  if prev is not None:
    old = prev["study"].get("name")
    presets = prev.get("presets", [old])
    if old != study.name and not add:
      raise StudyMismatch(
          f"{out} holds preset {old!r} (study.json); refusing preset {study.name!r} on it: pass "
          f"--add-to-study to add {study.name}'s runs to it (the {old} runs stay), or another "
          "--out")
    # Runs an earlier preset added stay; with `add`, so do all of the folder's runs.
    kept = list(prev["run_order"]) if old != study.name else list(prev.get("kept", []))
    presets = presets + [study.name] if presets[-1] != study.name else presets
  (out / "runs").mkdir(parents=True, exist_ok=True)
  specs, skipped = study.runs()
  for spec in specs:
    d = out / "runs" / spec.run_id
    d.mkdir(exist_ok=True)
    if readable(d / "spec.json", need=("run_id",)) is None:  # absent or damaged: rewrite it
      write_json(d / "spec.json", {**spec.to_dict(), "run_id": spec.run_id, "label": spec.label})
  new = [s.run_id for s in specs if s.run_id not in kept]
  record = {"study": study_lib.to_json(study), "run_order": kept + new, "skipped": skipped}
  if kept or len(presets) > 1:  # single-preset folders keep their study.json as it was
    record.update(presets=presets, kept=kept)
  write_json(out / "study.json", record)
  return [out / "runs" / rid for rid in kept + new]


def load_spec(run_dir: Path) -> RunSpec:
  return spec_of(read_json(Path(run_dir) / "spec.json"))


def spec_of(written: dict[str, Any]) -> RunSpec:
  """The RunSpec of a spec.json's contents, in either optimiser layout (`spec_from_dict`): the
  derived numbers and the run_id and label they add are recomputed, never read back."""
  return spec_from_dict(written)


# Records this process knows but could not (unwritable run dir) or must not (another process
# holds the run) write to job.json; they stand in for the file until the next sweep call.
_MEMORY: dict[Path, dict[str, Any]] = {}


def job_record(run_dir: Path) -> dict[str, Any]:
  """job.json; a damaged one reads as a failed run with no attempts used, so the sweep names it
  and tries the run again (the trainer resumes it from its checkpoint) instead of crashing."""
  run_dir = Path(run_dir)
  if run_dir in _MEMORY:
    return dict(_MEMORY[run_dir])
  try:
    return read_json(run_dir / "job.json", {"state": "pending", "attempts": 0},
                     need=("state",))
  except DamagedFile as e:
    return {"state": "failed", "attempts": 0, "damaged": True,
            "error": f"{e}: the run is tried again (resumes from its checkpoint)"}


def state(run_dir: Path, eval_key: str | None = None) -> str:
  """pending / running / preempted / failed / done (done = evaluated with `eval_key`)."""
  rec = job_record(run_dir)
  if rec["state"] == "done" and eval_key is not None:
    ev = readable(Path(run_dir) / EVAL_FILE, need=("eval_key", "rows"))
    if ev is None or ev.get("eval_key") != eval_key:
      return "pending"  # trained, but evaluated with other settings (or unreadably): again
  return rec["state"] if rec["state"] in STATES else "failed"


def _study_run_dirs(out: Path) -> tuple[list[Path], str | None]:
  """(run folders, eval key): from study.json, or, if that is damaged, every folder under
  runs/ with no eval key, so `status` still shows what the runs' own files say."""
  try:
    return run_dirs(out), load_study(out).eval.key
  except DamagedFile:
    return sorted(d for d in (Path(out) / "runs").glob("*") if d.is_dir()), None


def damaged_files(out: Path) -> list[str]:
  """What cannot be read back in a study folder, each with what the sweep does about it."""
  notes = []
  try:
    load_study(out)
  except DamagedFile as e:
    notes.append(f"{e}: runs listed from runs/; `run` refuses the folder until it is moved away")
  for d in _study_run_dirs(out)[0]:
    for name, need, then in (
        ("spec.json", ("run_id",), "the run is left out until a sweep rewrites it"),
        ("job.json", ("state",), "the run counts as failed and is tried again"),
        (EVAL_FILE, ("eval_key", "rows"), "the run is evaluated again"),
        ("status.json", (), "ignored (the trainer rewrites it)")):
      try:
        read_json(d / name, need=need)
      except DamagedFile as e:
        notes.append(f"{e}: {then}")
  return notes


def is_primary() -> bool:
  """Process 0 of a pod run (or any single-process run): the one that writes the run folder."""
  return int(os.environ.get("EXPERIMENTS_PROCESS_ID", "0")) == 0


def update(run_dir: Path, **fields: Any) -> dict[str, Any]:
  """Merges `fields` into job.json. An unwritable run dir does not raise (that crashed the whole
  sweep from inside a run's failure handler): the run is failed in this process's memory,
  naming the path, and the sweep goes on."""
  run_dir = Path(run_dir)
  rec = {k: v for k, v in job_record(run_dir).items() if k != "damaged"}
  rec.update(fields)
  if is_primary() and run_dir not in _MEMORY:
    try:
      write_json(run_dir / "job.json", rec)
    except OSError as e:
      rec = remember_failed(run_dir, rec, f"cannot write {run_dir / 'job.json'}: {e}")
  return rec


def remember_failed(run_dir: Path, rec: dict[str, Any], why: str) -> dict[str, Any]:
  err = rec.get("error")
  rec = {**rec, "state": "failed", "error": why + (f" (then: {err})" if err else "")}
  _MEMORY[Path(run_dir)] = rec
  return rec


class Held(Exception):
  """Another live process holds this run dir."""


@contextlib.contextmanager
def job_lock(run_dir: Path) -> Iterator[None]:
  """The run's lock, held for its whole job (training and evaluation), so two processes never
  work on one run dir whatever was killed (an orphaned worker of a killed sweep, a second
  sweep elsewhere). flock dies with its holder. Raises Held if taken; a filesystem without
  flock (some NFS/Lustre mounts) runs unlocked, as before. Pod: process 0 locks for all."""
  if not is_primary():
    yield
    return
  with open(Path(run_dir) / ".job.lock", "a") as f:  # OSError (read-only dir) goes up
    try:
      fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      raise Held(f"{run_dir} is held by another process (lock {run_dir}/.job.lock)") from None
    except OSError:
      pass
    yield


def mark_elsewhere(run_dir: Path, why: str) -> dict[str, Any]:
  """Another process trains this run: say "running" for this call, write nothing."""
  _MEMORY[Path(run_dir)] = {**job_record(run_dir), "state": "running", "elsewhere": why}
  return dict(_MEMORY[Path(run_dir)])


def remembered(run_dir: Path) -> bool:
  """This process holds a record for the run it could not or must not write (see _MEMORY)."""
  return Path(run_dir) in _MEMORY


def forget(run_dir: Path | None = None) -> None:
  """A fresh attempt at `run_dir` (or a new sweep call: every run): what an earlier one could
  not write is moot."""
  if run_dir is None:
    _MEMORY.clear()
  else:
    _MEMORY.pop(Path(run_dir), None)


def held_elsewhere(run_dir: Path) -> bool:
  try:
    with job_lock(run_dir):
      return False
  except Held:
    return True
  except OSError:
    return False


@contextlib.contextmanager
def study_lock(out: Path) -> Iterator[None]:
  """One sweep per study folder at a time (a second would train the same runs twice)."""
  Path(out).mkdir(parents=True, exist_ok=True)
  with open(Path(out) / ".sweep.lock", "w") as f:
    try:
      fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      raise RuntimeError(f"another sweep is running on {out} (lock {out}/.sweep.lock)") from None
    yield

# ------------------------------------------------------------------------------------ status
def status_rows(out: Path) -> list[dict[str, Any]]:
  out = Path(out)
  dirs, key = _study_run_dirs(out)
  rows = []
  for d in dirs:
    spec = readable(d / "spec.json", need=("run_id",))
    if spec is None:  # not here (a copied results folder) or damaged (damaged_files names it)
      continue
    rec = job_record(d)
    st = state(d, key)
    step = _last_step(d)
    if st == "running" and rec.get("pid") and rec.get("host") == os.uname().nodename:
      if not _alive(rec["pid"]):
        st = STOPPED  # the sweep that ran it died: the next run resumes it
    rows.append(dict(run_id=d.name, label=spec["label"], state=st, step=step,
                     steps=spec["steps"], train_flops=spec_of(spec).train_flops,
                     budget=spec["budget"], attempts=rec.get("attempts", 0),
                     train_wall_s=rec.get("train_wall_s"), eval_wall_s=rec.get("eval_wall_s"),
                     preempted_wall_s=rec.get("preempted_wall_s", 0.0),
                     error=rec.get("error") or ""))
  return rows


def _last_step(run_dir: Path) -> int:
  """Training progress: the last step metrics.jsonl logged (live while a run trains)."""
  status = readable(run_dir / "status.json") or {}  # the trainer's; damaged: step from metrics
  step = status.get("step", 0) if isinstance(status, dict) else 0
  step = step if isinstance(step, int) else 0
  path = run_dir / "metrics.jsonl"
  if path.exists():
    with open(path, "rb") as f:
      f.seek(max(0, path.stat().st_size - 4096))
      for line in f.read().decode(errors="ignore").splitlines()[::-1]:
        try:
          return max(step, int(json.loads(line)["step"]))
        except (ValueError, KeyError, TypeError):
          continue
  return step


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
    return True
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
