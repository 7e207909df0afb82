"""The device-call scripts. benchmarks/study_piece.sh brings a study's records back whatever
happened: here the piece fails at once (no wheels to install, as on a machine where the carry
was forgotten), and its exit trap must still write the study archive without checkpoints, plus
the checkpoints of each unfinished run small enough for one returned file."""

import json
import os
import subprocess
import tarfile
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "study_piece.sh"


def _run(tmp_path: Path, state: str, ckpt_bytes: int) -> None:
  d = tmp_path / "studies" / "s" / "runs" / f"r_{state}_{ckpt_bytes}"
  (d / "checkpoints" / "7").mkdir(parents=True)
  (d / "checkpoints" / "7" / "state").write_bytes(os.urandom(ckpt_bytes))
  (d / "job.json").write_text(json.dumps({"state": state}, indent=1))


def test_records_and_small_unfinished_checkpoints_come_back_after_a_failure(tmp_path):
  _run(tmp_path, "preempted", 1000)  # comes back
  _run(tmp_path, "done", 1000)  # finished: its checkpoints are not needed
  _run(tmp_path, "pending", 17 * 2**20)  # over a returned file's 16 MiB
  out = tmp_path / "out"
  out.mkdir()
  work = tmp_path / "work"  # no benchmarks/device_env.sh here: the piece fails before training
  work.mkdir()
  r = subprocess.run(["bash", str(SCRIPT), "h200", str(tmp_path / "studies" / "s"), "5", "x"],
                     cwd=work, env={**os.environ, "OUT": str(out)}, capture_output=True,
                     text=True, timeout=120)
  assert r.returncode != 0
  assert sorted(p.name for p in out.iterdir()) == ["ckpt-r_preempted_1000.tgz", "s.tgz"]
  with tarfile.open(out / "s.tgz") as t:
    names = t.getnames()
  assert "s/runs/r_done_1000/job.json" in names
  assert not [n for n in names if "checkpoints" in n]
  with tarfile.open(out / "ckpt-r_preempted_1000.tgz") as t:
    assert "s/runs/r_preempted_1000/checkpoints/7/state" in t.getnames()


def test_refuses_a_call_without_out(tmp_path):
  env = {k: v for k, v in os.environ.items() if k != "OUT"}
  r = subprocess.run(["bash", str(SCRIPT), "h200", str(tmp_path / "s"), "5", "x"], env=env,
                     capture_output=True, text=True, timeout=60)
  assert r.returncode == 2 and "OUT is unset" in r.stderr


def test_gpu_measurements_names_its_issue_before_anything_runs(tmp_path):
  """benchmarks/gpu_measurements.sh takes the issue whose measurements to run (15, 15b or 22) and
  refuses anything else, and a call without OUT, before installing or running anything."""
  script = SCRIPT.parent / "gpu_measurements.sh"
  r = subprocess.run(["bash", str(script), "7"], env={**os.environ, "OUT": str(tmp_path)},
                     capture_output=True, text=True, timeout=60)
  assert r.returncode == 2 and "usage: bash benchmarks/gpu_measurements.sh 15|15b|22" in r.stderr
  env = {k: v for k, v in os.environ.items() if k != "OUT"}
  r = subprocess.run(["bash", str(script), "15"], env=env, capture_output=True, text=True,
                     timeout=60)
  assert r.returncode == 2 and "OUT is unset" in r.stderr
  assert not list(tmp_path.iterdir())


def _record(run: Path, state: str, step: int) -> None:
  run.mkdir(parents=True, exist_ok=True)
  (run / "job.json").write_text(json.dumps({"state": state}))
  (run / "status.json").write_text(json.dumps({"status": "x", "step": step}))


def test_the_next_piece_on_a_warm_machine_restores_records_the_working_tree_lacks(tmp_path):
  """A piece keeps its records outside the working tree; the next piece takes back each run
  further along there (evaluated, or a later step) and leaves the rest as the tree has them."""
  runs = tmp_path / "studies" / "s" / "runs"
  _record(runs / "evaluated", "done", 90)
  _record(runs / "trained_more", "preempted", 50)
  _record(runs / "newer_here", "preempted", 10)
  _record(runs / "as_far", "preempted", 30)
  out, work = tmp_path / "out", tmp_path / "work"
  out.mkdir(), work.mkdir()
  env = {**os.environ, "OUT": str(out), "STUDY_RECORDS": str(tmp_path / "records")}
  piece = ["bash", str(SCRIPT), "h200", str(runs.parent), "5", "x"]
  subprocess.run(piece, cwd=work, env=env, capture_output=True, timeout=120)
  # The next call's copy of the working tree, made before the first piece came back:
  for run in runs.iterdir():
    for f in run.iterdir():
      f.unlink()
  _record(runs / "trained_more", "preempted", 20)
  _record(runs / "newer_here", "done", 99)
  _record(runs / "only_here", "pending", 0)
  _record(runs / "as_far", "preempted", 30)
  r = subprocess.run(piece, cwd=work, env=env, capture_output=True, text=True, timeout=120)
  assert r.stdout.count("study_piece: restored") == 2
  state = {run.name: (json.loads((run / "job.json").read_text())["state"],
                      json.loads((run / "status.json").read_text())["step"])
           for run in runs.iterdir()}
  assert state == {"evaluated": ("done", 90), "trained_more": ("preempted", 50),
                   "newer_here": ("done", 99), "only_here": ("pending", 0),
                   "as_far": ("preempted", 30)}
