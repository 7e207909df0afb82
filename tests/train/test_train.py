"""The trainer end to end: learning, exact resume after SIGKILL, SIGTERM, non-finite loss,
multi-process and fsdp equivalence, and config errors before compiling.

Mechanics use the toy tasks of `toy_tasks.py` (resolved by dotted path like any task suite);
learning uses the real `niah_single`. Runs that must be killed or need their own jax runtime
(several processes, forced host devices) are subprocesses.
"""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from train import log as log_lib
from train.__main__ import main

HERE = Path(__file__).resolve().parent
TOY = ["--model.vocab-size", "128", "--model.width", "32", "--model.depth", "2",
       "--model.num-heads", "2", "--data.seq-len", "32", "--batch-size", "8",
       "--compute-dtype", "float32", "--eval.examples", "8", "--data.tasks", "toy",
       "--data.factory", "toy_tasks:make", "--data.scorer", "toy_tasks:score",
       "--data.shards", "2", "--log.every", "1", "--log.no-progress", "--log.wandb", "disabled",
       "--checkpoint.every", "4", "--steps", "12", "--model.attention.implementation", "reference"]


@pytest.fixture(scope="session")
def launch(tmp_path_factory):
  """Starts `python -m train` on the toy tasks; the subprocesses of a session share a persistent
  XLA cache, so identical programs compile once."""
  cache = str(tmp_path_factory.mktemp("xla_cache"))

  def start(run_dir, *args, delay=0.0, env=None, tag=""):
    env = {**os.environ, "TOY_DELAY": str(delay),
           "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
           "JAX_COMPILATION_CACHE_DIR": cache, "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
           "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0", **(env or {})}
    log = open(Path(f"{run_dir}{tag}.log"), "w")
    return subprocess.Popen([sys.executable, "-m", "train", "--run-dir", str(run_dir), *TOY, *args],
                            env=env, stdout=log, stderr=subprocess.STDOUT)

  return start


def finish(proc, timeout=240):
  try:
    code = proc.wait(timeout=timeout)
  except subprocess.TimeoutExpired:
    proc.kill()
    raise
  return code


def losses(run_dir):
  out = {}
  for record in log_lib.read_metrics(run_dir):
    if "loss" in record:
      assert record["step"] not in out, f"step {record['step']} logged twice"
      out[record["step"]] = record["loss"]
  return out


def wait_for(condition, proc, timeout=120):
  start = time.time()
  while not condition():
    assert proc.poll() is None, "the run ended before the test could interrupt it"
    assert time.time() - start < timeout
    time.sleep(0.05)


def two_process_losses(launch, tmp_path, port_offset, *args):
  """Losses of one run launched as two processes (jax.distributed on localhost)."""
  port = 20000 + (os.getpid() + port_offset) % 20000
  procs = [launch(tmp_path / "run", *args, "--distributed.num-processes", "2",
                  "--distributed.process-id", str(i), "--distributed.coordinator",
                  f"localhost:{port}", tag=str(i)) for i in range(2)]
  try:
    codes = [finish(p) for p in procs]
  finally:
    for p in procs:
      p.kill()
  assert codes == [0, 0], (tmp_path / "run0.log").read_text() + (tmp_path / "run1.log").read_text()
  return losses(tmp_path / "run")


def committed(run_dir, step):
  return (Path(run_dir) / "checkpoints" / str(step) / "state" / "commit_success.txt").exists()


@pytest.fixture(scope="module")
def reference(tmp_path_factory, launch):
  """An uninterrupted 12-step toy run, one process, one device, data.shards=2."""
  run_dir = tmp_path_factory.mktemp("reference") / "run"
  assert finish(launch(run_dir)) == 0, Path(str(run_dir) + ".log").read_text()
  got = losses(run_dir)
  assert sorted(got) == list(range(1, 13)) and len(set(got.values())) > 1
  return got


def test_exact_resume_after_sigkill(tmp_path, reference, launch):
  run_dir = tmp_path / "run"
  proc = launch(run_dir, delay=0.03)
  wait_for(lambda: committed(run_dir, 4) and max(losses(run_dir), default=0) >= 6, proc)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert log_lib.read_status(run_dir)["status"] == "running"  # killed: nobody wrote the end
  assert finish(launch(run_dir, "--resume")) == 0
  assert log_lib.read_status(run_dir)["status"] == "finished"
  assert losses(run_dir) == reference  # bitwise, every step, data order included


def test_sigterm_saves_exits_zero_and_resume_continues(tmp_path, reference, launch):
  run_dir = tmp_path / "run"
  proc = launch(run_dir, delay=0.03)
  wait_for(lambda: max(losses(run_dir), default=0) >= 2, proc)
  proc.send_signal(signal.SIGTERM)
  assert finish(proc) == 0
  status = log_lib.read_status(run_dir)
  assert status["status"] == "preempted" and 2 <= status["step"] < 12
  assert committed(run_dir, status["step"])
  assert finish(launch(run_dir, "--resume")) == 0
  assert log_lib.read_status(run_dir)["status"] == "finished"
  assert losses(run_dir) == reference


CURRICULUM = ["--data.short-len", "16", "--data.short-steps", "6"]


def test_curriculum_resumes_exactly_across_the_switch_and_counts_its_flops(tmp_path, launch):
  """6 steps of 16 sequences × 16 tokens, then 6 of 8 × 32: killed mid short phase, the resumed
  run reproduces the uninterrupted one bitwise (both input pipelines' states and the switch), and
  the FLOPs it reports are the two phases' exact sum."""
  import train
  from train.config import from_dict
  ref_dir, run_dir = tmp_path / "ref", tmp_path / "run"
  assert finish(launch(ref_dir, *CURRICULUM)) == 0, Path(f"{ref_dir}.log").read_text()
  ref = losses(ref_dir)
  assert sorted(ref) == list(range(1, 13))
  proc = launch(run_dir, *CURRICULUM, delay=0.03)
  wait_for(lambda: committed(run_dir, 4) and max(losses(run_dir), default=0) >= 5, proc)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert finish(launch(run_dir, *CURRICULUM, "--resume")) == 0
  assert losses(run_dir) == ref
  cfg = from_dict(json.loads((run_dir / "config.json").read_text()))
  assert cfg.short_batch_size == 16 and cfg.phase(5) == (16, 16) and cfg.phase(6) == (32, 8)
  assert 0 < cfg.short_flops_per_step < cfg.flops_per_step
  want = 6 * cfg.short_flops_per_step + 6 * cfg.flops_per_step
  assert log_lib.read_status(run_dir)["flops"] == pytest.approx(want, rel=1e-12)
  logged = {r["step"]: r["flops"] for r in log_lib.read_metrics(run_dir) if "flops" in r}
  assert logged[6] == pytest.approx(6 * cfg.short_flops_per_step, rel=1e-12)
  # A budget buys the short steps first, then the nearest whole number of long steps.
  budget = dataclasses.replace(cfg, steps=0, flop_budget=want + 0.4 * cfg.flops_per_step)
  assert budget.total_steps == 12


def test_short_dense_trains_the_short_phase_dense_then_the_sparse_pattern(tmp_path, monkeypatch):
  """A sparse model with short_dense: its short-phase losses are the dense model's bitwise (same
  init, same batches, dense attention), its long-phase losses are not, and a model sparse from
  step 0 differs from the first loss on; the FLOPs are the dense short steps' plus the sparse
  long steps'."""
  from train.config import from_dict
  monkeypatch.syspath_prepend(str(HERE))
  common = [*TOY, "--data.short-len", "16", "--data.short-steps", "2", "--steps", "4",
            "--eval.examples", "0"]
  local = ["--model.attention.pattern", "local", "--model.attention.window", "4"]
  runs = {"dense": [], "warm": [*local, "--short-dense"], "sparse": local}
  for name, args in runs.items():
    assert main(["--run-dir", str(tmp_path / name), *common, *args]) == 0, name
  got = {name: losses(tmp_path / name) for name in runs}
  assert [got["warm"][s] for s in (1, 2)] == [got["dense"][s] for s in (1, 2)]
  assert all(got["warm"][s] != got["dense"][s] for s in (3, 4))
  assert got["sparse"][1] != got["dense"][1]
  cfg = from_dict(json.loads((tmp_path / "warm" / "config.json").read_text()))
  dense = from_dict(json.loads((tmp_path / "dense" / "config.json").read_text()))
  assert cfg.short_dense and cfg.short_flops_per_step == dense.short_flops_per_step
  assert cfg.flops_per_step < dense.flops_per_step  # the long steps are sparse
  want = 2 * dense.short_flops_per_step + 2 * cfg.flops_per_step
  assert log_lib.read_status(tmp_path / "warm")["flops"] == pytest.approx(want, rel=1e-12)


def test_several_steps_per_call_give_the_single_steps_losses_bitwise(tmp_path, reference, launch):
  run_dir = tmp_path / "run"
  assert finish(launch(run_dir, "--steps-per-call", "5")) == 0
  assert losses(run_dir) == reference


# On-device batches (`data.source=device`), 3 steps per call: calls end at 3, 4 (checkpoint), 6
# (the curriculum switch), 8, 9 and 12.
DEVICE = ["--data.source", "device", "--steps-per-call", "3", *CURRICULUM]


@pytest.fixture(scope="module")
def device_reference(tmp_path_factory, launch):
  run_dir = tmp_path_factory.mktemp("device_reference") / "run"
  assert finish(launch(run_dir, *DEVICE)) == 0, Path(str(run_dir) + ".log").read_text()
  got = losses(run_dir)
  assert sorted(got) == list(range(1, 13)) and len(set(got.values())) > 1
  return got


def test_device_batches_resume_exactly_after_sigkill_mid_call(tmp_path, device_reference, launch):
  run_dir = tmp_path / "run"
  proc = launch(run_dir, *DEVICE, delay=0.01)
  wait_for(lambda: committed(run_dir, 4) and max(losses(run_dir), default=0) >= 4, proc)
  proc.send_signal(signal.SIGKILL)  # inside a call: the host sleeps in the data callbacks
  proc.wait()
  assert finish(launch(run_dir, *DEVICE, "--resume")) == 0
  assert losses(run_dir) == device_reference


def test_device_batches_sigterm_saves_at_the_call_boundary(tmp_path, device_reference, launch):
  run_dir = tmp_path / "run"
  proc = launch(run_dir, *DEVICE, delay=0.01)
  wait_for(lambda: max(losses(run_dir), default=0) >= 3, proc)
  proc.send_signal(signal.SIGTERM)
  assert finish(proc) == 0
  status = log_lib.read_status(run_dir)
  assert status["status"] == "preempted" and status["step"] in (4, 6, 8, 9)
  assert committed(run_dir, status["step"])
  assert finish(launch(run_dir, *DEVICE, "--resume")) == 0
  assert losses(run_dir) == device_reference


def test_device_batches_on_two_processes_reach_the_losses_of_one(tmp_path, device_reference,
                                                                  launch):
  got = two_process_losses(launch, tmp_path, 7, *DEVICE)
  np.testing.assert_allclose([got[s] for s in device_reference], list(device_reference.values()),
                             rtol=2e-5)


# data.long_lens: the long steps cycle through 16 and 32 tokens (16 × 16 / 8 × 32 sequences), a
# call of 2 steps each: steps 0-1 at 16, 2-3 at 32, 4-5 at 16, ...
LONG = ["--data.long-lens", "16", "32", "--steps-per-call", "2"]


def step_flops_by_hand(cfg, lengths):
  import models
  return [models.flops_per_token(cfg.model, n) * cfg.tokens_per_step for n in lengths]


def test_long_lens_resume_exactly_after_sigkill_and_count_each_steps_flops(tmp_path, launch,
                                                                           capsys):
  """Host batches at both lengths (two input pipelines interleaved per call): killed mid run, the
  resumed run reproduces the uninterrupted one bitwise; the FLOPs it logs are each step's at its
  own length."""
  from train.config import from_dict
  ref_dir, run_dir = tmp_path / "ref", tmp_path / "run"
  assert finish(launch(ref_dir, *LONG)) == 0, Path(f"{ref_dir}.log").read_text()
  ref = losses(ref_dir)
  assert sorted(ref) == list(range(1, 13)) and len(set(ref.values())) > 1
  proc = launch(run_dir, *LONG, delay=0.03)
  wait_for(lambda: committed(run_dir, 4) and max(losses(run_dir), default=0) >= 6, proc)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert log_lib.read_status(run_dir)["status"] == "running"
  assert finish(launch(run_dir, *LONG, "--resume")) == 0
  assert log_lib.read_status(run_dir)["status"] == "finished"
  assert losses(run_dir) == ref
  cfg = from_dict(json.loads((run_dir / "config.json").read_text()))
  assert cfg.data.long_lens == (16, 32) and [cfg.phase(s) for s in (0, 1, 2, 3, 4)] == [
      (16, 16), (16, 16), (32, 8), (32, 8), (16, 16)]
  costs = step_flops_by_hand(cfg, ([16] * 2 + [32] * 2) * 3)
  logged = {r["step"]: r["flops"] for r in log_lib.read_metrics(run_dir) if "flops" in r}
  assert [logged[s] for s in range(1, 13)] == pytest.approx(
      [sum(costs[:s]) for s in range(1, 13)], rel=1e-12)
  assert log_lib.read_status(run_dir)["flops"] == pytest.approx(sum(costs), rel=1e-12)
  # Changing steps_per_call would move the lengths: refused on resume with long_lens.
  with pytest.raises(SystemExit):
    main(["--run-dir", str(run_dir), *TOY, *LONG, "--steps-per-call", "3", "--resume"])
  assert "steps_per_call: 2 -> 3" in capsys.readouterr().err


@pytest.mark.parametrize("source", ["host", "device"])
def test_long_lens_batches_have_each_steps_scheduled_length(tmp_path, monkeypatch, source):
  """Every step trains on batches of `Config.phase(step)`'s length and rows (after a 16-token
  short phase of 2 steps, the cycle 16, 32 from step 2); the in-training eval stays at 32."""
  import train
  from train import loop
  from train.config import from_dict
  monkeypatch.syspath_prepend(str(HERE))
  seen = []  # host: (rows, length, batches) per call; device: (step, rows, length) per batch made
  if source == "host":
    real_global = loop.mesh_lib.global_batch

    def global_batch(local, mesh, calls=False):
      k, _, _, t = local["inputs"].shape
      seen.append((local["inputs"].shape[1] * local["inputs"].shape[2], t, k))
      return real_global(local, mesh, calls)
    monkeypatch.setattr(loop.mesh_lib, "global_batch", global_batch)
  else:
    real_device = loop.data_lib.device_batches

    def device_batches(tasks, weights, *, batch_size, accum, seed, steps):
      make = real_device(tasks, weights, batch_size=batch_size, accum=accum, seed=seed,
                         steps=steps)

      def batches(first):
        out = make(first)
        t, rows = out["inputs"].shape[-1], out["inputs"].shape[1] * out["inputs"].shape[2]
        jax.debug.callback(lambda f: seen.extend((int(f) + i, rows, t) for i in range(steps)),
                           first)
        return out
      return batches
    monkeypatch.setattr(loop.data_lib, "device_batches", device_batches)
  evaluated = []
  real_eval_sets = loop._Evaluator._eval_sets
  monkeypatch.setattr(loop._Evaluator, "_eval_sets", lambda self: evaluated.append(
      {n: t.length for n, t in self.tasks.items()}) or real_eval_sets(self))
  compiled = []  # the multi-step programs compiled: one per length, whatever the call lengths

  def listener(event, seconds, fun_name="", **kw):
    if event == "/jax/core/compile/backend_compile_duration" and fun_name == "jit(multi)":
      compiled.append(fun_name)
  jax.monitoring.register_event_duration_secs_listener(listener)
  run_dir = tmp_path / "run"
  try:
    assert main(["--run-dir", str(run_dir), *TOY, *LONG, "--data.source", source,
                 "--data.short-len", "16", "--data.short-steps", "2", "--steps", "9",
                 "--eval.every", "4"]) == 0
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)
  assert len(compiled) == 2, compiled  # lengths 16 and 32, through calls of 2 and 1 steps
  cfg = from_dict(json.loads((run_dir / "config.json").read_text()))
  assert [cfg.phase(s)[0] for s in range(9)] == [16, 16, 16, 16, 32, 32, 16, 16, 32]
  starts = [0]
  while (end := loop.call_end(cfg, starts[-1])) < 9:
    starts.append(end)
  assert all(cfg.phase(s) == cfg.phase(a) for a, b in zip(starts, starts[1:] + [9])
             for s in range(a, b))  # each call has one length
  if source == "host":  # every call gets steps_per_call batches (a short call's padded)
    assert seen == [(*reversed(cfg.phase(a)), 2) for a in starts]
  else:  # a call makes steps_per_call batches from its first step; the last made for a step
    made = {s: (rows, t) for s, rows, t in seen}  # is the one its call consumed
    assert sorted(made) == list(range(10)) and all(
        made[s] == tuple(reversed(cfg.phase(s))) for s in range(9))
  assert evaluated == [{"toy": 32}]  # built once, at data.seq_len
  status = log_lib.read_status(run_dir)
  assert status["status"] == "finished" and status["step"] == 9 and "toy" in status["eval"]
  got = losses(run_dir)
  assert sorted(got) == list(range(1, 10)) and all(np.isfinite(list(got.values())))
  assert [r["step"] for r in log_lib.read_metrics(run_dir) if "eval/toy/token_accuracy" in r] == [
      4, 8, 9]


@pytest.mark.parametrize("source", ["host", "device"])
def test_non_finite_loss_stops_naming_the_step_and_marks_the_run_failed(tmp_path, capsys,
                                                                        source):
  run_dir = tmp_path / "run"
  argv = ["--run-dir", str(run_dir), *TOY, "--data.tasks", "toy_nan", "--steps", "40",
          "--checkpoint.every", "2", "--checkpoint.no-async-save", "--data.source", source,
          "--steps-per-call", "5" if source == "device" else "1"]
  assert main(argv) == 1
  status = log_lib.read_status(run_dir)
  assert status["status"] == "failed"
  bad = status["step"]
  assert f"at step {bad}" in status["message"] and f"at step {bad}" in capsys.readouterr().err
  good = losses(run_dir)
  assert sorted(good) == list(range(1, bad)) and all(np.isfinite(list(good.values())))
  saved = sorted(int(p.name) for p in (run_dir / "checkpoints").iterdir() if p.name.isdigit())
  assert saved and max(saved) == 2 * ((bad - 1) // 2)  # the last good one, nothing after
  # ... and it resumes: from the last good step (the same data then fails again, as it should).
  assert main(argv + ["--resume"]) == 1
  assert log_lib.read_status(run_dir)["step"] == bad


def test_two_processes_reach_the_losses_of_one(tmp_path, reference, launch):
  got = two_process_losses(launch, tmp_path, 0, "--grad-accum", "2")
  assert sorted(got) == sorted(reference)
  np.testing.assert_allclose([got[s] for s in reference], list(reference.values()), rtol=2e-5)


def test_fsdp_on_8_host_devices_reaches_the_losses_of_one(tmp_path, reference, launch):
  run_dir = tmp_path / "run"
  env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
  code = finish(launch(run_dir, "--mesh.data", "2", "--mesh.fsdp", "4", env=env))
  assert code == 0, Path(str(run_dir) + ".log").read_text()
  got = losses(run_dir)
  np.testing.assert_allclose([got[s] for s in reference], list(reference.values()), rtol=2e-5)
  # The saved parameters really were split over the fsdp axis.
  sharding = json.loads((run_dir / "checkpoints" / "12" / "state" / "_sharding").read_text())
  specs = [json.loads(v)["partition_spec"] if isinstance(v, str) else v["partition_spec"]
           for k, v in sharding.items() if "params" in k]
  assert sum("fsdp" in json.dumps(s) for s in specs) >= len(specs) - 5  # all but the norms


@pytest.mark.parametrize("args, field", [
    (["--model.width", "64", "--model.num-heads", "5"], "num_heads"),
    (["--model.num-heads", "4", "--model.num-kv-heads", "3"], "num_kv_heads"),
    (["--model.attention.block-q", "48"], "block_q"),
    (["--model.attention.block-kv", "64"], "block_kv"),
    (["--batch-size", "6", "--grad-accum", "4"], "batch_size"),
    (["--mesh.fsdp", "3"], "mesh.fsdp"),
    (["--steps", "0"], "steps"),
    (["--data.short-len", "32", "--data.short-steps", "4"], "data.short_len"),
    (["--data.short-len", "16"], "data.short_steps"),
    (["--data.short-len", "24", "--data.short-steps", "4"], "data.short_len"),
    (["--data.short-len", "16", "--data.short-steps", "40"], "data.short_steps"),
    (["--data.short-len", "16", "--data.short-steps", "6", "--steps", "0", "--flop-budget", "1e3"],
     "data.short_steps"),
    (["--steps-per-call", "0"], "steps_per_call"),
    (["--short-dense", "--model.attention.pattern", "local", "--model.attention.window", "4"],
     "short_dense=True needs a curriculum"),
    (["--short-dense", "--data.short-len", "16", "--data.short-steps", "2"],
     "short_dense=True with model.attention.pattern='dense'"),
    (["--data.tasks", "toy", "toy", "toy", "--batch-size", "2", "--data.source", "device",
      "--data.shards", "1"], "batch_size=2 leaves task(s)"),
])
def test_bad_configs_fail_before_compiling_naming_the_field(tmp_path, capsys, args, field):
  run_dir = tmp_path / "run"
  # Config checks in __post_init__ surface through tyro as a usage error (exit 2, message on
  # stderr); run-level checks (`train.config.validate`) raise ValueError.
  with pytest.raises((ValueError, SystemExit)) as error:
    main(["--run-dir", str(run_dir), *TOY, *args])
  assert field in str(error.value) + capsys.readouterr().err
  assert not run_dir.exists()  # failed before creating anything, let alone compiling


def test_unknown_size_name_fails_naming_it(tmp_path, capsys):
  with pytest.raises(SystemExit) as error:
    main(["--size", "huge", "--run-dir", str(tmp_path / "run")])
  assert error.value.code == 2 and "size='huge' is unknown" in capsys.readouterr().err


def test_learns_niah_single_at_128_tokens(tmp_path):
  """Real task suite, default factory and scorer; FLOP budget stopping; W&B offline; progress."""
  import train
  import models
  model = models.ModelConfig(vocab_size=128, width=64, depth=2, num_heads=4)
  cfg = train.Config(run_dir=str(tmp_path / "niah"), model=model, batch_size=32,
                     compute_dtype="float32", optim=train.OptimConfig(lr=3e-3, warmup_steps=20),
                     data=train.DataConfig(tasks=("niah_single",), seq_len=128),
                     eval=train.EvalConfig(examples=64), log=train.LogConfig(every=20))
  steps = 120
  cfg = dataclasses.replace(cfg, flop_budget=(steps + 0.4) * cfg.flops_per_step)
  result = train.run(cfg)
  assert result.status == "finished" and result.step == steps
  scores = result.eval["niah_single"]
  # Chance is 1/|values| (< 0.05 at vocab 128); the trained model retrieves the needle.
  assert scores["exact_match"] > 0.8, scores
  status = log_lib.read_status(cfg.run_dir)
  assert status["status"] == "finished" and status["eval"]["niah_single"] == scores
  last = [r for r in log_lib.read_metrics(cfg.run_dir) if "loss" in r][-1]
  assert last["tokens"] == steps * 32 * 128 and last["tokens_per_s"] > 0
  assert last["flops"] == pytest.approx(steps * cfg.flops_per_step)
  wandb_runs = list((tmp_path / "niah" / "wandb").glob("offline-run-*"))
  assert len(wandb_runs) == 1 and wandb_runs[0].name.endswith(log_lib.run_id(tmp_path / "niah"))

  # The checkpoint holds that model: loaded back, it scores the same on the same examples.
  from experiments import tasks
  from experiments.tasks import scoring
  loaded, loaded_cfg, step = train.load(cfg.run_dir)
  assert step == steps and loaded_cfg == dataclasses.replace(cfg, resume=False)
  source = tasks.make("niah_single", length=128, vocab_size=128, seed=0).source("validation")
  rows = [source[i] for i in range(64)]
  batch = {k: np.stack([r[k] for r in rows]) for k in ("inputs", "targets", "weights")}
  predictions = jax.jit(lambda x: loaded(x).argmax(-1))(batch["inputs"])
  again = scoring.score(np.asarray(predictions), batch["targets"], batch["weights"])
  assert abs(again["exact_match"].mean() - scores["exact_match"]) <= 1 / 64
  # Resuming a finished run trains nothing and keeps its outcome.
  resumed = train.run(dataclasses.replace(cfg, resume=True))
  assert (resumed.status, resumed.step, resumed.eval) == ("finished", steps, result.eval)


def test_evaluator_runs_the_shared_loop_and_drops_the_padding(tmp_path, monkeypatch):
  """`_Evaluator` scores through `train.evaluation.score_batches` (the loop the study and the
  oracle run); 7 examples in batches of 3 (the last padded for the devices) score as the model
  run on all 7 at once."""
  import models
  import train
  from train import evaluation, loop
  from train import mesh as mesh_lib
  from train import step as step_lib
  monkeypatch.syspath_prepend(str(HERE))
  import toy_tasks
  model = models.ModelConfig(vocab_size=128, width=32, depth=2, num_heads=2,
                             attention=models.AttentionConfig(implementation="reference"))
  cfg = train.Config(run_dir=str(tmp_path), model=model, compute_dtype="float32",
                     data=train.DataConfig(tasks=("toy",), seq_len=32,
                                           factory="toy_tasks:make", scorer="toy_tasks:score"),
                     eval=train.EvalConfig(examples=7, batch_size=3))
  codec = step_lib.Params(cfg.model)
  mesh = mesh_lib.make_mesh(cfg.mesh)
  state = step_lib.init_state(codec, step_lib.optimizer(cfg.optim, 10), cfg.model,
                              jax.random.key(0))
  shardings = mesh_lib.state_shardings(jax.eval_shape(lambda: state), mesh)
  task = toy_tasks.make("toy", length=32, vocab_size=128, seed=0)
  evaluator = loop._Evaluator(cfg, codec, {"toy": task}, mesh, shardings["params"])
  calls = []
  real = evaluation.score_batches
  monkeypatch.setattr(loop.eval_lib, "score_batches",
                      lambda p, b, s: calls.append([x["inputs"].shape[0] for x in b])
                      or real(p, b, s))
  got = evaluator(state["params"])
  b = evaluator.rows  # 3 on one device: batches of 3, 3 and 1 examples
  assert calls == [[min(b, 7 - i) for i in range(0, 7, b)]] and b % jax.device_count() == 0
  source = task.source("validation")
  x = np.stack([source[i]["inputs"] for i in range(7)])
  y = np.stack([source[i]["targets"] for i in range(7)])
  w = np.stack([source[i]["weights"] for i in range(7)])
  preds = np.asarray(step_lib.make_predict(cfg, codec)(state["params"], {"inputs": x}))
  want = toy_tasks.score(preds, y, w)["token_accuracy"].mean()
  assert got == {"toy": {"token_accuracy": pytest.approx(want, abs=1e-12)}}
