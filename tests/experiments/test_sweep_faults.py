"""Fault injection on the sweep side (issue 17): each test breaks one thing a user or a machine
can break and asserts that no finished result is lost, nothing wrong is reported as done, and the
message names the file or value. Fake in-process trainers where the fault allows; a real
subprocess sweep only for the orphaned worker and the early SIGTERM, which need processes."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from flax import nnx

import models
from experiments.cli import write_report
from experiments.runs import executors, files, results, store, sweep
from experiments.cli import main as cli
from experiments.spec.grid import Grid
from experiments.spec.study import EvalSpec, Study

REPO = Path(__file__).resolve().parents[2]


def _study(name="t", budgets=(1e10,), sparsities=(0.0, 0.5, 0.75), **kw):
  grid = Grid(budgets=budgets, sizes=("100k",), sparsities=sparsities, patterns=("local",),
              seq_lens=(32,), batch_size=2, vocab_size=128, implementation="xla")
  ev = EvalSpec(tasks=("niah_single",), lengths=(32,), settings=(("dense", 0.0),), examples=4,
                batch_size=4, phases=("prefill",))
  return Study(name=name, grid=grid, eval=ev, wandb="disabled", **kw)


class Fake:
  """A stand-in trainer: counts calls per run dir, writes a status.json like the trainer's."""

  def __init__(self, fail=None):
    self.calls, self.fail = {}, fail or (lambda run_dir: None)

  def __call__(self, spec, run_dir, study):
    self.calls[run_dir.name] = self.calls.get(run_dir.name, 0) + 1
    self.fail(run_dir)
    files.write_json(run_dir / "status.json", {"status": "finished", "step": spec.steps})
    return {"status": "finished", "step": spec.steps}


def loader(run_dir):
  return models.Transformer(store.load_spec(run_dir).model, rngs=nnx.Rngs(0)), "float32"


def _sweep(study, out, fake, **kw):
  return sweep.run_sweep(study, out, executors.make("local", trainer=fake, loader=loader),
                         log=kw.pop("log", lambda s: None), **kw)


def _env():
  return {**os.environ, "EXPERIMENTS_PROGRESS": "0", "PYTHONPATH": str(REPO)}


def _gone(pid: int) -> bool:
  """Dead or a zombie (a container's init may never reap the orphan)."""
  try:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
  except FileNotFoundError:
    return True


# ---------------------------------------------------------------------- 1. orphaned workers
def test_killed_sweep_takes_its_worker_with_it_and_the_rerun_continues_exactly(tmp_path):
  """kill -9 of `run --workers 1`: the worker used to keep training while the rerun started a
  second trainer on the same run dir (duplicated, non-monotonic steps). Now it is SIGTERMed
  with its parent (saves, records preempted), and the rerun resumes to the same results."""
  study = _study(budgets=(2e10,), sparsities=(0.0,), checkpoint_every=50, log_every=10)
  killed, whole = tmp_path / "killed", tmp_path / "whole"
  (run,) = store.plan(study, killed)
  code = ("import sys; from experiments.runs import executors, store, sweep; out = sys.argv[1]; "
          "sweep.run_sweep(store.load_study(out), out, executors.make('local', workers=1))")
  proc = subprocess.Popen([sys.executable, "-c", code, str(killed)], cwd=REPO, env=_env(),
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.time() + 120
  while time.time() < deadline and store._last_step(run) < 40:
    time.sleep(0.05)
  proc.kill()  # SIGKILL: the sweep gets no chance to clean up
  proc.wait()
  worker = store.job_record(run)["pid"]
  assert 40 <= store._last_step(run) < 437, "the kill did not land mid-run"
  t0 = time.time()
  while not _gone(worker) and time.time() - t0 < 10:
    time.sleep(0.1)
  assert _gone(worker), f"worker {worker} outlived its sweep by 10 s"
  assert store.job_record(run)["state"] == "preempted"  # it saved and said so, not "failed"

  os.environ.setdefault("EXPERIMENTS_PROGRESS", "0")
  assert sweep.run_sweep(study, killed, executors.make("local"),
                         log=lambda s: None)["done"] == [run.name]
  sweep.run_sweep(study, whole, executors.make("local"), log=lambda s: None)
  assert (killed / "results.csv").read_bytes() == (whole / "results.csv").read_bytes()
  logged = {out: [(r["step"], r["loss"]) for r in map(json.loads, (
      out / "runs" / run.name / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
      for out in (killed, whole)}
  steps = [s for s, _ in logged[killed]]
  assert steps == sorted(set(steps)) and steps[-1] == 437, steps  # one trainer at a time
  assert logged[killed] == logged[whole]  # and it resumed exactly


def test_a_run_held_by_another_process_is_left_to_it_not_failed(tmp_path, monkeypatch):
  """A live holder of the run's lock (an orphan, another sweep, `python -m train` by hand):
  the sweep neither trains it a second time nor counts an attempt; it says running."""
  import fcntl
  study = _study(sparsities=(0.0, 0.5), max_attempts=2)
  dirs = store.plan(study, tmp_path)
  held, rest = dirs[1], dirs[:1]
  fake = Fake()
  with open(held / ".job.lock", "a") as f:  # what a worker of a killed sweep still holds
    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    log = []
    by_state = _sweep(study, tmp_path, fake, log=log.append)
    assert held.name not in fake.calls and by_state["running"] == [held.name]
    assert sorted(by_state["done"]) == sorted(d.name for d in rest)
    assert store.job_record(held)["attempts"] == 0
    assert any(held.name in line and "ELSEWHERE" in line for line in log)
    assert held.name not in (tmp_path / "results.csv").read_text()
  # The trainer's own lock (`python -m train` on the run dir by hand): train.run raises
  # train.RunLocked, real_trainer makes it status "locked"; the record is put back as it was.
  import train
  import train.loop
  def locked(cfg):
    raise train.RunLocked(f"run_dir={cfg.run_dir!r} is being trained by pid 1")
  monkeypatch.setattr(train.loop, "run", locked)
  by_state = sweep.run_sweep(study, tmp_path, executors.make("local", loader=loader),
                             log=lambda s: None)
  monkeypatch.undo()
  assert by_state["running"] == [held.name]
  assert files.read_json(held / "job.json")["attempts"] == 0
  assert files.read_json(held / "job.json")["state"] == "pending"
  assert _sweep(study, tmp_path, fake)["done"] == [d.name for d in dirs]  # released: trained


# ----------------------------------------------------------- 2. a study folder's own preset
def test_another_preset_on_a_study_folder_is_refused_unless_added(tmp_path, capsys):
  a, b = _study("a", sparsities=(0.0, 0.5)), _study("b", budgets=(2e10,), sparsities=(0.0,))
  fake = Fake()
  _sweep(a, tmp_path, fake)
  before = {p: (tmp_path / p).read_bytes() for p in ("study.json", "results.csv")}
  with pytest.raises(store.StudyMismatch, match="preset 'a'.*preset 'b'.*--add-to-study"):
    _sweep(b, tmp_path, fake)
  assert {p: (tmp_path / p).read_bytes() for p in before} == before  # nothing touched
  # The CLI: one line naming both presets, before anything trains.
  store.plan(sweep.study_lib.load_preset("micro"), tmp_path / "m")
  with pytest.raises(SystemExit):
    cli(["run", "--preset", "smoke", "--out", str(tmp_path / "m")])
  err = capsys.readouterr().err.strip().splitlines()
  assert "'micro'" in err[0] and "'smoke'" in err[0] and len(err) <= 2, err
  assert not any((tmp_path / "m" / "runs").glob("*/job.json"))
  # Asked explicitly: b's run joins, a's stay (not retrained) in results.csv and the report.
  by_state = _sweep(b, tmp_path, fake, add_to_study=True)
  assert len(by_state["done"]) == 3 and sorted(fake.calls.values()) == [1, 1, 1]
  rows = results.read(tmp_path / "results.csv")
  assert len({r["run_id"] for r in rows}) == 3
  assert files.read_json(tmp_path / "study.json")["presets"] == ["a", "b"]
  # b is now the folder's preset: it runs again without the flag and still keeps a's runs.
  assert len(_sweep(b, tmp_path, fake)["done"]) == 3
  md = write_report(tmp_path, wandb_mode="disabled").read_text()
  assert all(r["run_id"] in md for r in rows)


# --------------------------------------------------- 3. damaged small files, read defensively
def test_damaged_job_eval_and_status_files_are_named_and_their_runs_redone(tmp_path, capsys):
  study = _study()
  dirs = store.plan(study, tmp_path)
  _sweep(study, tmp_path, Fake())
  good = (tmp_path / "results.csv").read_bytes()
  job, ev, st = dirs[0] / "job.json", dirs[1] / store.EVAL_FILE, dirs[2] / "status.json"
  job.write_text(job.read_text()[:25])  # cut mid-write by an old non-atomic writer / full disk
  ev.write_bytes(b"\x00\xff garbage")
  st.write_text('{"status": "fini')
  # status and report work on what is readable and name what is not.
  cli(["status", str(tmp_path)])
  out = capsys.readouterr().out
  for path in (job, ev, st):
    assert f"unreadable: {path}" in out, out
  assert "failed" in next(l for l in out.splitlines() if l.startswith(dirs[0].name))
  md = write_report(tmp_path, wandb_mode="disabled").read_text()
  assert "Unreadable files" in md and str(job) in md and str(ev) in md
  # The sweep names them, redoes those two runs (resumed and re-evaluated) and goes on; the
  # untouched run is not retrained, and the results are the same bytes as before the damage.
  fake, log = Fake(), []
  by_state = _sweep(study, tmp_path, fake, log=log.append)
  assert any(str(job) in line for line in log) and any(str(ev) in line for line in log)
  assert len(by_state["done"]) == 3 and fake.calls == {dirs[0].name: 1, dirs[1].name: 1}
  assert (tmp_path / "results.csv").read_bytes() == good
  # job.json and eval.json.gz were rewritten whole; the done run's status.json stays named
  assert [n.split(":")[0] for n in store.damaged_files(tmp_path)] == [str(st)]
  # A record of the wrong shape is damaged too, not a KeyError.
  job.write_text("[]")
  assert store.state(dirs[0]) == "failed" and str(job) in store.job_record(dirs[0])["error"]
  # A damaged study.json: status still lists the runs from runs/ and names it; a sweep refuses
  # the folder naming it (its preset and run order are gone) instead of re-planning blind.
  (tmp_path / "study.json").write_text('{"study": {"name"')
  cli(["status", str(tmp_path)])
  out = capsys.readouterr().out
  assert f"unreadable: {tmp_path / 'study.json'}" in out and "2 done" in out, out
  with pytest.raises(files.DamagedFile, match="study.json.*move it away"):
    _sweep(study, tmp_path, Fake())


def test_small_files_are_written_atomically(tmp_path, monkeypatch):
  path = tmp_path / "job.json"
  files.write_json(path, {"state": "done"})
  real = os.replace
  monkeypatch.setattr(os, "replace", lambda *a: (_ for _ in ()).throw(OSError(28, "No space")))
  with pytest.raises(OSError):
    files.write_json(path, {"state": "running"})
  monkeypatch.setattr(os, "replace", real)
  assert files.read_json(path) == {"state": "done"} and os.listdir(tmp_path) == ["job.json"]


# ---------------------------------------------------------------- 4. an unwritable run dir
def test_an_unwritable_run_dir_fails_that_run_and_the_sweep_goes_on(tmp_path, monkeypatch):
  """The run dir turns read-only while its run trains: the failure handler's job.json write
  used to raise out of run_job and end the sweep. (chmod alone does not stop root, so writes
  under a read-only dir are refused by a stand-in too.)"""
  study = _study()
  dirs = store.plan(study, tmp_path)
  bad = dirs[0]
  readonly = set()
  real_write = files.write_text

  def write_text(path, text):
    if Path(path).parent in readonly:
      raise PermissionError(13, "Permission denied", str(path))
    real_write(path, text)

  def fail(run_dir):
    if run_dir == bad:
      bad.chmod(0o555)
      readonly.add(bad)
      raise PermissionError(13, "Permission denied", str(bad / "checkpoints"))

  monkeypatch.setattr(files, "write_text", write_text)
  fake, log = Fake(fail), []
  try:
    by_state = _sweep(study, tmp_path, fake, log=log.append)
  finally:
    bad.chmod(0o755)
  assert by_state["failed"] == [bad.name]
  assert sorted(by_state["done"]) == sorted(d.name for d in dirs[1:])  # the others still ran
  line = next(l for l in log if l.startswith(f"FAILED {bad.name}"))
  assert f"cannot write {bad / 'job.json'}" in line and "checkpoints" in line
  md = write_report(tmp_path, wandb_mode="disabled").read_text()
  assert f"cannot write {bad / 'job.json'}" in md  # the report says so too (same process)


def test_a_worker_that_dies_without_a_record_is_failed_by_the_sweep(tmp_path, monkeypatch):
  """A worker killed (OOM, kill -9) or unable to write its job.json left the run 'running' for
  ever; the sweep now fails it with the exit code, and counts the attempt."""
  import subprocess as sp
  from experiments.runs.executors import local
  study = _study(sparsities=(0.0,), max_attempts=1)
  (run,) = store.plan(study, tmp_path)
  real = sp.Popen
  monkeypatch.setattr(local.subprocess, "Popen", lambda cmd, env: real(
      [sys.executable, "-c", "raise SystemExit(9)"], env=env))
  log = []
  by_state = sweep.run_sweep(study, tmp_path, executors.make("local", workers=1), log=log.append)
  assert by_state["failed"] == [run.name]
  assert "worker exited 9" in store.job_record(run)["error"]


# ---------------------------------------------------------------------------------- 5. CLI
@pytest.mark.parametrize("argv, names", [
    (["run", "--preset", "micro", "--workers", "-3"], "--workers -3"),
    (["run", "--preset", "nope"], "'nope'"),
    (["run", "--preset", "micro", "--executor", "k8s"], "'k8s'"),
    (["status", "/nonexistent/study"], "/nonexistent/study/study.json"),
    (["report", "/nonexistent/study"], "/nonexistent/study/study.json"),
    (["job", "/nonexistent/run"], "/nonexistent/run/spec.json"),
    (["frobnicate"], "'frobnicate'"),
])
def test_cli_errors_are_two_lines_naming_the_value(argv, names, capsys):
  with pytest.raises(SystemExit) as e:
    cli(argv)
  err = (capsys.readouterr().err + (e.value.code if isinstance(e.value.code, str) else ""))
  lines = err.strip().splitlines()
  assert e.value.code != 0 and 1 <= len(lines) <= 2 and names in lines[0], lines
  assert "Traceback" not in err


def test_debug_shows_the_traceback():
  with pytest.raises(FileNotFoundError):
    cli(["status", "/nonexistent/study", "--debug"])


@pytest.mark.parametrize("argv, names", [
    (["run", "--preset", "smoke", "--stop-after", "abc"], "'abc'"),
    (["run", "--preset", "smoke", "--workers", "two"], "'two'"),
    (["run", "--preset", "smoke", "--wandb", "on"], "'on'"),
    (["run", "--preset", "smoke", "--bogus"], "--bogus"),
    (["run", "--stop-after", "60"], "--preset"),
    (["status"], "DIR"),
])
def test_tyro_parse_errors_are_one_line_and_exit_2_before_anything_is_written(
    argv, names, tmp_path, capsys):
  """tyro's boxed error (5-15 lines) cut to the line naming the value, then where --help is."""
  out = tmp_path / "study"
  with pytest.raises(SystemExit) as e:
    cli(argv + (["--out", str(out)] if argv[0] == "run" else []))
  err = capsys.readouterr().err.strip().splitlines()
  assert e.value.code == 2 and len(err) == 2, err
  assert names in err[0] and err[0].startswith(f"python -m experiments {argv[0]}: error: "), err
  assert err[1] == f"(see python -m experiments {argv[0]} --help)" and "│" not in err[0], err
  assert not out.exists()


def test_every_documented_command_line_parses_as_before():
  """The flags argparse took, parsed by tyro into the command dataclasses (nothing runs)."""
  from experiments import cli as cli_lib
  a = cli_lib._parse(["run", "--preset", "h100", "--out", "o", "--executor", "slurm",
                      "--workers", "2", "--partition", "gpu", "--hosts", "h0,h1",
                      "--launch", "ssh", "--retry-failed", "--no-report", "--stop-after", "540",
                      "--wandb", "disabled", "--add-to-study"])
  assert a == cli_lib.Run(preset="h100", out="o", executor="slurm", workers=2, partition="gpu",
                          hosts="h0,h1", launch="ssh", retry_failed=True, no_report=True,
                          stop_after=540.0, wandb="disabled", add_to_study=True)
  assert cli_lib._parse(["run", "--preset", "smoke"]) == cli_lib.Run(preset="smoke")
  assert cli_lib._parse(["status", "d"]) == cli_lib.Status(dir="d")
  assert cli_lib._parse(["report", "d", "--wandb", "offline"]) == cli_lib.Report("d", "offline")
  assert cli_lib._parse(["job", "s/runs/r"]) == cli_lib.Job(run_dir="s/runs/r")
  assert cli_lib._parse(["presets"]) == cli_lib.Presets()
  assert cli_lib._parse(["calibrate", "--preset", "h100", "--steps", "5"]) == \
      cli_lib.Calibrate(preset="h100", steps=5)
  assert cli_lib._parse(["demo", "--head-dim", "32"]) == cli_lib.Demo(head_dim=32)
  assert cli_lib._parse(["probe", "s/runs/a", "s/runs/b", "--examples", "8"]) == \
      cli_lib.Probe(run_dirs=("s/runs/a", "s/runs/b"), examples=8)
  assert set(cli_lib._COMMANDS) == {"run", "status", "report", "job", "presets", "calibrate",
                                    "probe", "demo"}


def test_no_command_prints_the_command_list(capsys):
  with pytest.raises(SystemExit) as e:
    cli([])
  err = capsys.readouterr().err
  assert e.value.code == 2 and "run --preset NAME" in err and "status DIR" in err


def test_sigterm_in_the_first_second_of_a_job_is_recorded_as_preempted(tmp_path):
  (run, *_) = store.plan(_study(), tmp_path)
  proc = subprocess.Popen([sys.executable, "-m", "experiments", "job", str(run)], cwd=REPO,
                          env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  time.sleep(0.5)  # inside the imports (about 2 s)
  proc.send_signal(signal.SIGTERM)
  out, _ = proc.communicate(timeout=60)
  assert proc.returncode == 0, (proc.returncode, out[-2000:])  # not a bare 143
  rec = store.job_record(run)
  assert rec["state"] == "preempted" and rec.get("attempts", 0) == 0, rec
  assert "preempted" in out
