"""Fault injection on the trainer (CPU): a second trainer on a run dir, kill -9 of the holder,
--resume with another identity, truncated / bit-flipped checkpoints, a cut metrics line, SIGTERM
during start-up, and bad values that must fail before anything is written.

Each test asserts that nothing finished is lost, nothing damaged is trained on or reported as
done, and the message names the file or value. Runs are in-process (one compile cache) except
those that must be killed or signalled.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from train import checkpoint as ckpt_lib
from train import guard
from train import log as log_lib
from train.__main__ import main

from test_train import losses  # tests/train is on sys.path under pytest

HERE = Path(__file__).resolve().parent
TINY = ["--model.vocab-size", "128", "--model.width", "32", "--model.depth", "1",
        "--model.num-heads", "2", "--data.seq-len", "64", "--batch-size", "4",
        "--compute-dtype", "float32", "--eval.examples", "4", "--data.tasks", "toy",
        "--data.factory", "toy_tasks:make", "--data.scorer", "toy_tasks:score",
        "--log.every", "1", "--log.no-progress", "--log.wandb", "disabled",
        "--checkpoint.every", "2", "--checkpoint.keep", "3", "--steps", "6",
        "--model.attention.implementation", "xla"]


@pytest.fixture(autouse=True)
def _toy_tasks_importable(monkeypatch):
  monkeypatch.syspath_prepend(str(HERE))


def env():
  return {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}


def snapshot(run_dir):
  """Every file of a run dir with its bytes: a refused command must leave it as it was."""
  return {str(p.relative_to(run_dir)): p.read_bytes() for p in sorted(Path(run_dir).rglob("*"))
          if p.is_file() and p.name != guard.LOCK_NAME}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """A finished 6-step run (checkpoints 2, 4, 6) and its losses."""
  run_dir = tmp_path_factory.mktemp("reference") / "run"
  assert main(["--run-dir", str(run_dir), *TINY, "--checkpoint.no-async-save"]) == 0
  got = losses(run_dir)
  assert sorted(got) == list(range(1, 7))
  return run_dir, got


def copy_of(reference, tmp_path):
  run_dir = tmp_path / "run"
  shutil.copytree(reference[0], run_dir)
  return run_dir


def array_file(run_dir, step):
  """The largest array data file of a step (parameters and optimizer state)."""
  files = [p for p in (run_dir / "checkpoints" / str(step) / "state").rglob("*")
           if p.is_file() and p.parent.name == "d"]
  return max(files, key=lambda p: p.stat().st_size)


# ------------------------------------------------------------------------- the run dir lock
def test_a_second_trainer_is_refused_naming_the_holder_before_writing(tmp_path, capsys):
  run_dir = tmp_path / "run"
  run_dir.mkdir()
  # A holder of the lock train.run takes (stdlib only: starts in a blink).
  holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from train import guard; "
                             "guard.lock(sys.argv[1]); print('locked', flush=True); "
                             "time.sleep(120)", str(run_dir)], stdout=subprocess.PIPE, env=env())
  try:
    assert holder.stdout.readline().strip() == b"locked"
    with pytest.raises(SystemExit) as e:
      main(["--run-dir", str(run_dir), *TINY])
    err = capsys.readouterr().err
    assert e.value.code == 2 and str(run_dir) in err and f"pid {holder.pid}" in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert snapshot(run_dir) == {}  # refused before writing anything
    with pytest.raises(guard.RunLocked):  # the name the sweep catches (train.RunLocked)
      main(["--run-dir", str(run_dir), *TINY, "--resume", "--debug"])
  finally:
    holder.send_signal(signal.SIGKILL)
    holder.wait()
  guard.unlock(guard.lock(run_dir))  # the kernel dropped the dead holder's lock


def test_a_live_trainer_holds_its_run_dir_and_kill_9_frees_it_for_an_exact_resume(
    tmp_path, reference, capsys):
  import train
  assert train.RunLocked is guard.RunLocked
  run_dir = tmp_path / "run"
  proc = subprocess.Popen([sys.executable, "-m", "train", "--run-dir", str(run_dir), *TINY],
                          env={**env(), "TOY_DELAY": "0.2"}, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  try:
    start = time.time()
    while not (run_dir / "metrics.jsonl").exists():
      assert proc.poll() is None and time.time() - start < 90
      time.sleep(0.05)
    with pytest.raises(SystemExit):  # the orphaned-worker case: a second trainer, same dir
      main(["--run-dir", str(run_dir), *TINY, "--resume"])
    assert f"pid {proc.pid}" in capsys.readouterr().err
    assert proc.poll() is None  # it was refused while the first one trained
  finally:
    proc.send_signal(signal.SIGKILL)
    proc.wait()
  assert main(["--run-dir", str(run_dir), *TINY, "--resume"]) == 0  # kill -9 freed the lock
  assert losses(run_dir) == reference[1]


# ------------------------------------------------------------------------ resume identity
@pytest.mark.parametrize("change, field", [
    (["--model.width", "64"], "model.width: 32 -> 64"),
    (["--model.attention.pattern", "local", "--model.attention.window", "16"],
     "model.attention.pattern: 'dense' -> 'local'"),
    (["--optim.lr", "1e-2"], "optim.lr"),
])
def test_resume_with_another_identity_is_refused_before_writing(tmp_path, reference, capsys,
                                                                change, field):
  run_dir = copy_of(reference, tmp_path)
  before = snapshot(run_dir)
  with pytest.raises(SystemExit) as e:
    main(["--run-dir", str(run_dir), *TINY, *change, "--resume"])
  err = capsys.readouterr().err
  assert e.value.code == 2 and field in err and "Traceback" not in err, err
  assert snapshot(run_dir) == before  # config.json, status, metrics, checkpoints untouched
  assert log_lib.read_status(run_dir)["status"] == "finished"


def test_resume_may_change_logging_and_cadence_and_keeps_config_json(tmp_path, reference):
  run_dir = copy_of(reference, tmp_path)
  before = (run_dir / "config.json").read_bytes()
  assert main(["--run-dir", str(run_dir), *TINY, "--log.every", "3", "--steps-per-call", "2",
               "--checkpoint.every", "3", "--resume"]) == 0
  assert (run_dir / "config.json").read_bytes() == before  # never rewritten on resume
  assert log_lib.read_status(run_dir)["status"] == "finished"


# ------------------------------------------------------------------------ damaged checkpoints
def truncate(path):
  path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def flip(path):
  data = bytearray(path.read_bytes())
  data[len(data) // 2] ^= 0x10
  path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", [truncate, flip])
def test_a_damaged_latest_checkpoint_is_named_and_the_run_resumes_exactly_from_the_previous(
    tmp_path, reference, capsys, damage):
  run_dir = copy_of(reference, tmp_path)
  bad = array_file(run_dir, 6)
  damage(bad)
  status = log_lib.read_status(run_dir)  # as if killed after the save, before "finished"
  (run_dir / "status.json").write_text(json.dumps({**status, "status": "running"}))
  # Loading it for evaluation refuses, naming the file.
  with pytest.raises(ckpt_lib.CheckpointError, match=str(bad)):
    import train
    train.load(run_dir)
  assert main(["--run-dir", str(run_dir), *TINY, "--resume"]) == 0
  assert str(bad) in capsys.readouterr().err
  status = log_lib.read_status(run_dir)
  assert status["status"] == "finished" and str(bad) in status["damaged_checkpoints"][0]
  assert losses(run_dir) == reference[1]  # steps 5, 6 trained again from step 4, bitwise
  assert (run_dir / "checkpoints.damaged").is_dir() and (run_dir / "checkpoints" / "6").is_dir()
  assert ckpt_lib.verify(run_dir / "checkpoints" / "6") is None  # the new step 6 is sealed


def test_no_intact_checkpoint_fails_loudly_and_trains_nothing(tmp_path, reference, capsys):
  run_dir = copy_of(reference, tmp_path)
  for step in (2, 4, 6):
    flip(array_file(run_dir, step))
  metrics = (run_dir / "metrics.jsonl").read_bytes()
  assert main(["--run-dir", str(run_dir), *TINY, "--resume"]) == 1
  err = capsys.readouterr().err
  status = log_lib.read_status(run_dir)
  assert status["status"] == "failed" and "no intact checkpoint" in status["message"]
  assert str(array_file(run_dir, 2)) in status["message"] and "no intact checkpoint" in err
  assert (run_dir / "metrics.jsonl").read_bytes() == metrics  # nothing trained
  # Left in place: a rerun fails the same way, never silently restarts from scratch.
  assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["2", "4", "6"]


# ------------------------------------------------------------------------ small files
def test_a_cut_last_metrics_line_does_not_stop_the_resume(tmp_path, reference):
  run_dir = copy_of(reference, tmp_path)
  shutil.rmtree(run_dir / "checkpoints" / "6")  # killed after logging step 6, before saving it
  (run_dir / "status.json").write_text('{"status": "runn')  # and a damaged status.json
  with open(run_dir / "metrics.jsonl", "a") as f:
    f.write('{"step": 7, "loss": 1.2')  # a write cut by the kill
  assert sorted(losses(run_dir)) == list(range(1, 7))  # read_metrics drops the cut line
  with pytest.raises(ValueError, match="status.json"):
    log_lib.read_status(run_dir)
  assert main(["--run-dir", str(run_dir), *TINY, "--resume"]) == 0
  assert losses(run_dir) == reference[1]  # truncated to step 4, then 5, 6 again: monotonic
  steps = [r["step"] for r in log_lib.read_metrics(run_dir)]
  assert steps == sorted(steps)
  assert log_lib.read_status(run_dir)["status"] == "finished"


def test_a_damaged_line_inside_metrics_is_named(tmp_path):
  (tmp_path / "metrics.jsonl").write_text('{"step": 1}\n{"st\n{"step": 2}\n')
  with pytest.raises(ValueError, match=r"metrics.jsonl:2"):
    log_lib.read_metrics(tmp_path)


# ------------------------------------------------------------------------ SIGTERM at start-up
def test_sigterm_in_the_first_second_exits_zero_with_status_preempted(tmp_path):
  run_dir = tmp_path / "run"
  proc = subprocess.Popen([sys.executable, "-m", "train", "--run-dir", str(run_dir), *TINY],
                          env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
  time.sleep(0.5)  # importing jax, models, tyro
  proc.send_signal(signal.SIGTERM)
  out = proc.communicate(timeout=120)[0].decode()
  assert proc.returncode == 0, out
  status = log_lib.read_status(run_dir)
  assert status["status"] == "preempted" and status["step"] == 0, status
  assert not losses(run_dir)  # stopped before the first step, nothing compiled


# ------------------------------------------------------------------------ bad values
@pytest.mark.parametrize("args, words", [
    (["--data.factory", "experiments.tasks:make", "--data.tasks", "niah_single",
      "--model.vocab-size", "16"], ["niah_single", "vocab_size=16"]),
    (["--data.factory", "experiments.tasks:make", "--data.tasks", "no_such_task"],
     ["no_such_task", "niah_single"]),
    (["--model.attention.implementation", "pallas_triton"], ["pallas_triton", "cpu"]),
    (["--data.seq-len", "1000000", "--model.attention.implementation", "reference"],
     ["data.seq_len=1000000", "GiB", "host RAM"]),
    (["--batch-size", "6", "--grad-accum", "4"], ["batch_size=6"]),
    (["--size", "huge"], ["size='huge' is unknown"]),
    # tyro's own parse errors: its boxed message cut to the line naming the value
    (["--data.seq-len", "abc"], ["--data.seq-len", "'abc'"]),
    (["--compute-dtype", "float33"], ["'float33'", "'bfloat16', 'float32'"]),
])
def test_bad_values_fail_in_one_line_before_the_run_dir_exists(tmp_path, capsys, args, words):
  run_dir = tmp_path / "run"
  with pytest.raises(SystemExit) as e:
    main(["--run-dir", str(run_dir), *TINY, *args])
  err = capsys.readouterr().err
  assert e.value.code == 2 and all(w in err for w in words), err
  assert len(err.strip().splitlines()) <= 2 and "Traceback" not in err, err
  assert not run_dir.exists()
  # --debug: the exception itself, for a traceback
  with pytest.raises(guard.ConfigError):
    main(["--run-dir", str(run_dir), *TINY, *args, "--debug"])
  assert not run_dir.exists()


def test_the_memory_floor_refuses_none_of_the_small_configs():
  """The estimate is a lower bound: the presets' shapes are far below a CPU's or an H200's."""
  import models
  import train
  from train import config
  for size, seq_len, batch in (("800k", 4096, 64), ("6m", 4096, 64), ("300k", 128, 16)):
    cfg = train.Config(model=models.family(size, vocab_size=512), batch_size=batch, steps=1,
                       data=train.DataConfig(seq_len=seq_len))
    need, _ = config.memory_floor(cfg, 1)
    assert need < 16 * 2**30, (size, need / 2**30)
  huge = train.Config(data=train.DataConfig(seq_len=1_000_000), steps=1)
  assert config.memory_floor(huge, 1)[0] > 64 * 2**30


def test_a_run_dir_that_cannot_be_created_is_named(tmp_path, capsys):
  """(Tests run as root, where chmod cannot make a folder read-only: a file in the way fails
  mkdir the same way.)"""
  (tmp_path / "file").write_text("")
  run_dir = tmp_path / "file" / "run"
  with pytest.raises(SystemExit) as e:
    main(["--run-dir", str(run_dir), *TINY])
  err = capsys.readouterr().err
  assert e.value.code == 2 and str(run_dir) in err and "cannot be created" in err, err
