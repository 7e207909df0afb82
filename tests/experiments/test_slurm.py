"""The slurm executor for real: a single-node Slurm cluster on this machine (started by
.ci/slurm_setup.sh when it is not already up), two tiny runs submitted through submitit as a job
array, trained and evaluated inside Slurm jobs, results collected here."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from experiments.runs import files, results, store, sweep
from experiments.runs.executors.slurm import SlurmExecutor
from experiments.spec.grid import Grid
from experiments.spec.study import EvalSpec, Study

SETUP = Path(__file__).resolve().parents[2] / ".ci" / "slurm_setup.sh"


def _node_ready() -> bool:
  if not shutil.which("sinfo"):
    return False
  try:
    out = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=20)
  except (OSError, subprocess.SubprocessError):
    return False
  return out.returncode == 0 and any(s.startswith(("idle", "mix", "alloc"))
                                     for s in out.stdout.split())


@pytest.fixture(scope="module")
def slurm_cluster():
  if _node_ready():
    return
  why = None
  if os.geteuid() != 0:
    why = "not root: cannot install/start slurm-wlm and munge (run .ci/slurm_setup.sh as root)"
  elif not shutil.which("apt-get") and not shutil.which("slurmctld"):
    why = "no apt-get and no slurmctld: cannot install Slurm on this machine"
  if why is None:
    proc = subprocess.run(["bash", str(SETUP)], capture_output=True, text=True, timeout=900)
    if proc.returncode == 0 and _node_ready():
      return
    why = f".ci/slurm_setup.sh failed (rc {proc.returncode}): {proc.stderr[-1500:]}"
  if os.environ.get("CI"):
    pytest.fail(f"CI must run the slurm test: {why}")
  pytest.skip(f"slurm unavailable: {why}. It runs wherever .ci/slurm_setup.sh can start a "
              "cluster (as root with apt-get), and always under CI, where CI=1 fails instead")


def test_two_runs_through_slurm(tmp_path, slurm_cluster):
  grid = Grid(budgets=(5e9,), sizes=("100k",), sparsities=(0.0, 0.5), patterns=("local",),
              seq_lens=(32,), batch_size=2, vocab_size=128, implementation="reference")
  ev = EvalSpec(tasks=("niah_single",), lengths=(32,), settings=(("dense", 0.0), ("local", 0.5)),
                examples=4, batch_size=4)
  study = Study(name="slurm-test", grid=grid, eval=ev, wandb="disabled", checkpoint_every=10,
                max_attempts=1)
  ex = SlurmExecutor(timeout_min=10, cpus_per_task=1, poll_s=1.0)
  logs = []
  by_state = sweep.run_sweep(study, tmp_path, ex, log=logs.append)
  assert len(by_state["done"]) == 2, (by_state, logs, [
      store.job_record(d) for d in store.run_dirs(tmp_path)])
  jobs = set()
  for d in store.run_dirs(tmp_path):
    rec = store.job_record(d)
    assert rec["state"] == "done" and rec["slurm_job"], rec  # it ran inside a Slurm job
    jobs.add(rec["slurm_job"])
    status = files.read_json(d / "status.json")
    assert status["status"] == "finished" and status["step"] == store.load_spec(d).steps
  assert len(jobs) == 2
  assert any("slurm: submitted 2 job(s)" in line for line in logs)
  rows = results.read(tmp_path / "results.csv")
  assert {r["run_id"] for r in rows} == set(by_state["done"])
  assert all(r["n"] == 4 for r in rows)
  # submitit kept each job's log under the study folder
  assert list((tmp_path / "slurm").glob("*/*_log.out"))


def test_rerun_waits_for_queued_jobs_instead_of_resubmitting(tmp_path, slurm_cluster):
  grid = Grid(budgets=(3e9,), sizes=("100k",), sparsities=(0.0, 0.5), patterns=("local",),
              seq_lens=(32,), batch_size=2, vocab_size=128, implementation="reference")
  ev = EvalSpec(tasks=("niah_single",), lengths=(32,), settings=(("dense", 0.0),), examples=4,
                batch_size=4, phases=("prefill",))
  study = Study(name="slurm-rerun", grid=grid, eval=ev, wandb="disabled", max_attempts=1)
  ex = SlurmExecutor(timeout_min=10, cpus_per_task=1, poll_s=1.0)
  dirs = store.plan(study, tmp_path)
  # A sweep that submitted its jobs and then died: the jobs are queued/running, nobody waits.
  jobs = ex.submit(dirs)
  submitted = sorted(j.job_id for j in jobs)
  logs = []
  by_state = sweep.run_sweep(study, tmp_path, ex, log=logs.append)
  assert len(by_state["done"]) == 2, (by_state, logs)
  assert any("waiting for them instead of submitting again" in line for line in logs), logs
  assert not any("slurm: submitted" in line for line in logs), logs
  ran = sorted(store.job_record(d)["slurm_job"] for d in dirs)
  assert ran == submitted  # each run trained once, in the job first submitted for it
