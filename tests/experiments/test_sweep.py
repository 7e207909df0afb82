"""Sweep mechanics with a stand-in trainer (fast, controllable): done runs are skipped, failed
runs are retried up to max_attempts and then reported without stopping the sweep, preempted runs
resume, results.csv is deterministic, `status` and the report name what failed."""

import csv
import dataclasses
import json

import numpy as np
import pytest
from flax import nnx

import models
from experiments.cli import write_report
from experiments.runs import executors, files, job, results, store, sweep
from experiments.cli import main as cli
from experiments.runs.executors.pod import PodExecutor
from experiments.spec.grid import Grid
from experiments.spec.study import EvalSpec, Study


def _study(**kw):
  grid = Grid(budgets=(1e10,), sizes=("100k",), sparsities=(0.0, 0.5, 0.75), patterns=("local",),
              seq_lens=(32,), batch_size=2, vocab_size=128, implementation="xla")
  ev = EvalSpec(tasks=("niah_single",), lengths=(32,), settings=(("dense", 0.0),), examples=4,
                batch_size=4, phases=("prefill",))
  return Study(name="t", grid=grid, eval=ev, wandb="disabled", **kw)


class FakeTrainer:
  """Counts calls per run; fails runs whose label contains `fail` (always), preempts once."""

  def __init__(self, fail=(), preempt=()):
    self.calls, self.fail, self.preempt = {}, fail, set(preempt)

  def __call__(self, spec, run_dir, study):
    self.calls[spec.label] = self.calls.get(spec.label, 0) + 1
    if any(f in spec.label for f in self.fail):
      return {"status": "failed", "message": "non-finite loss nan at step 3"}
    if spec.label in self.preempt:
      self.preempt.discard(spec.label)
      return {"status": "preempted", "message": "SIGTERM"}
    (run_dir / "trained").write_text(json.dumps({"seed": spec.seed}))
    return {"status": "finished", "step": spec.steps}


def loader(run_dir):
  cfg = store.load_spec(run_dir).model
  return models.Transformer(cfg, rngs=nnx.Rngs(0)), "float32"


def test_failures_are_retried_then_reported_and_do_not_stop_the_sweep(tmp_path, capsys):
  study = _study(max_attempts=3)
  fake = FakeTrainer(fail=("local@0.5",))
  ex = executors.make("local", trainer=fake, loader=loader)
  by_state = sweep.run_sweep(study, tmp_path, ex, log=lambda s: None)
  assert len(by_state["done"]) == 2 and len(by_state["failed"]) == 1
  labels = {s.run_id: s.label for s in study.runs()[0]}
  (bad,) = by_state["failed"]
  assert labels[bad] == "100k/local@0.5/1e+10/T32"
  assert fake.calls["100k/local@0.5/1e+10/T32"] == 3  # max_attempts
  assert fake.calls["100k/dense/1e+10/T32"] == 1
  # status names it, with the error
  cli(["status", str(tmp_path)])
  out = capsys.readouterr().out
  line = next(l for l in out.splitlines() if l.startswith(bad))
  assert "failed" in line and "non-finite" in line
  # ... and the wall each took or, unfinished, about what it needs (sweep.expected_wall)
  need = sweep.expected_wall(tmp_path, tmp_path / "runs" / bad)
  assert need > 0 and f"~{need:.0f}" in line.split()
  assert f"~{need:.0f} s of runs left" in out
  done = next(l for l in out.splitlines() if l.startswith(by_state["done"][0]))
  rec = store.job_record(tmp_path / "runs" / by_state["done"][0])
  assert f"{rec['train_wall_s'] + rec['eval_wall_s']:.0f}" in done.split()
  # the report names it too; results.csv holds only the finished runs
  md = write_report(tmp_path, wandb_mode="disabled").read_text()
  assert bad in md and "non-finite loss" in md and "Failed runs" in md
  rows = list(csv.DictReader(open(tmp_path / "results.csv")))
  assert {r["run_id"] for r in rows} == set(by_state["done"])
  assert (tmp_path / "plots" / "frontier.png").stat().st_size > 1000

  # Rerun: nothing is retrained (done skipped; failed used up its attempts) ...
  fake2 = FakeTrainer(fail=("local@0.5",))
  sweep.run_sweep(study, tmp_path, executors.make("local", trainer=fake2, loader=loader),
                  log=lambda s: None)
  assert fake2.calls == {}
  # ... unless asked to retry failed runs.
  fake3 = FakeTrainer()
  by_state = sweep.run_sweep(study, tmp_path, executors.make("local", trainer=fake3,
                                                             loader=loader),
                             retry_failed=True, log=lambda s: None)
  assert fake3.calls == {"100k/local@0.5/1e+10/T32": 1} and len(by_state["done"]) == 3


def test_preempted_run_stops_the_round_and_resumes_on_rerun(tmp_path):
  study = _study()
  fake = FakeTrainer(preempt={"100k/local@0.5/1e+10/T32"})
  ex = executors.make("local", trainer=fake, loader=loader)
  by_state = sweep.run_sweep(study, tmp_path, ex, log=lambda s: None)
  assert len(by_state["preempted"]) == 1 and len(by_state["done"]) == 1
  assert len(by_state["pending"]) == 1  # the sweep stopped instead of starting the next run
  (pre,) = by_state["preempted"]
  assert store.job_record(tmp_path / "runs" / pre)["attempts"] == 0  # not a failed attempt
  lost = store.job_record(tmp_path / "runs" / pre)["preempted_wall_s"]
  assert lost > 0  # the interrupted attempt's time is kept, not lost with its train_wall_s
  before = (tmp_path / "results.csv").read_text()
  by_state = sweep.run_sweep(study, tmp_path, ex, log=lambda s: None)
  assert len(by_state["done"]) == 3
  assert fake.calls["100k/dense/1e+10/T32"] == 1  # finished runs are never redone
  rec = store.job_record(tmp_path / "runs" / pre)
  assert rec["state"] == "done" and rec["preempted_wall_s"] == lost
  after = (tmp_path / "results.csv").read_text()
  assert after.startswith(before.strip().splitlines()[0])
  assert len(after.splitlines()) > len(before.splitlines())


def test_stop_after_leaves_runs_that_would_overrun_for_the_next_call(tmp_path):
  """A machine lent for a fixed time: after the first run, its measured wall time says the next
  will not fit, so the sweep stops cleanly; a second call (a fresh machine given the folder)
  finishes the rest, and nothing is trained twice."""
  import time as time_lib
  fake = FakeTrainer()

  def slow(spec, run_dir, study):
    time_lib.sleep(0.5)
    return fake(spec, run_dir, study)

  study = _study()
  ex = executors.make("local", trainer=slow, loader=loader)
  log = []
  by_state = sweep.run_sweep(study, tmp_path, ex, stop_after=0.8, log=log.append)
  assert len(by_state["done"]) == 1 and len(by_state["pending"]) == 2
  assert any(line.startswith("time limit:") for line in log)
  assert sweep.expected_wall(tmp_path, tmp_path / "runs" / by_state["pending"][0]) >= 0.5
  by_state = sweep.run_sweep(study, tmp_path, ex, stop_after=60, log=lambda s: None)
  assert len(by_state["done"]) == 3
  assert sorted(fake.calls.values()) == [1, 1, 1]
  with pytest.raises(SystemExit):
    cli(["run", "--preset", "smoke", "--stop-after", "0", "--out", str(tmp_path / "x")])


def test_only_runs_the_named_runs_and_refuses_a_name_that_picks_none(tmp_path, capsys):
  """--only plans a piece by hand: the named runs (by label, label prefix or id) are trained in
  the order named, the others stay pending; a name that picks no run fails before the folder
  exists."""
  fake = FakeTrainer()
  study = _study()
  ex = executors.make("local", trainer=fake, loader=loader)
  specs = study.runs()[0]
  with pytest.raises(ValueError, match="'100k/topk' names none of study t's runs"):
    sweep.run_sweep(study, tmp_path / "s", ex, only=("100k/topk",), log=lambda s: None)
  assert not (tmp_path / "s").exists()
  by_state = sweep.run_sweep(study, tmp_path / "s", ex, only=("100k/local@0.5", specs[0].run_id),
                             log=lambda s: None)
  # in the order named, not the study's (a piece starts its longest run first)
  assert specs[0].label != "100k/local@0.5/1e+10/T32"
  assert list(fake.calls) == ["100k/local@0.5/1e+10/T32", specs[0].label]
  assert len(by_state["done"]) == 2 and len(by_state["pending"]) == 1
  for rid in by_state["done"]:  # job.json counts each phase's XLA compilations (the stand-in
    rec = store.job_record(tmp_path / "s" / "runs" / rid)  # trainer compiles none; the second
    assert rec["train_compiles"] == 0 and rec["eval_compiles"] > 0  # eval may hit the cache
    assert rec["eval_compile_s"] >= 0.0
    # ... and where the evaluation's wall went: compiling ahead, then the passes per length
    assert rec["eval_prepare_s"] >= 0.0 and set(rec["eval_length_s"]) == {
        str(n) for n in study.eval.lengths}
  sweep.run_sweep(study, tmp_path / "s", ex, only=("100k/",), log=lambda s: None)
  assert sorted(fake.calls.values()) == [1, 1, 1]
  with pytest.raises(SystemExit):
    cli(["run", "--preset", "smoke", "--only", "nope", "--out", str(tmp_path / "x")])
  assert "error: --only 'nope' names none of study smoke's runs" in capsys.readouterr().err
  assert not (tmp_path / "x").exists()


def test_expected_wall_uses_the_same_size_else_other_sizes_with_a_margin(tmp_path):
  # (size, budget, training s, steps, preempted s); each finished run evaluated in 40 s
  runs = {"a": ("6m", 1e15, 60.0, 1000, 0.0), "b": ("6m", 1e15, 70.0, 1000, 30.0),
          "c": ("20m", 1e15, None, 300, 0.0), "d": ("6m", 2e15, None, 2000, 0.0),
          "e": ("6m", 1e15, None, 1500, 0.0), "f": ("20m", 4e15, None, 300, 0.0)}
  for rid, (size, budget, train, steps, preempted) in runs.items():
    (tmp_path / "runs" / rid).mkdir(parents=True)
    files.write_json(tmp_path / "runs" / rid / "spec.json",
                     {"size": size, "budget": budget, "steps": steps})
    if train is not None:
      files.write_json(tmp_path / "runs" / rid / "job.json",
                       {"state": "done", "train_wall_s": train, "eval_wall_s": 40.0,
                        "preempted_wall_s": preempted})
  files.write_json(tmp_path / "study.json", {"run_order": list(runs)})
  # the longest of the same size: b trained 70 s in its last attempt after 30 s preempted
  assert sweep.expected_wall(tmp_path, tmp_path / "runs" / "a") == pytest.approx(140.0)
  # a new size at the same budget: the other sizes' longest, with the margin
  assert sweep.expected_wall(tmp_path, tmp_path / "runs" / "c") == pytest.approx(
      140.0 * sweep.NEW_SIZE_MARGIN)
  # ... at 4x the budget: 4x the training, the evaluation unscaled, then the margin
  assert sweep.expected_wall(tmp_path, tmp_path / "runs" / "f") == pytest.approx(
      (4 * 100.0 + 40.0) * sweep.NEW_SIZE_MARGIN)
  # the same size at twice the budget: twice the training, the same evaluation
  assert sweep.expected_wall(tmp_path, tmp_path / "runs" / "d") == pytest.approx(240.0)
  # the same size and budget in 1.5x the steps (a sparse run): 1.5x the training
  assert sweep.expected_wall(tmp_path, tmp_path / "runs" / "e") == pytest.approx(190.0)


def test_results_are_deterministic_and_eval_changes_only_reevaluate(tmp_path):
  study = _study()
  fake = FakeTrainer()
  for out in (tmp_path / "a", tmp_path / "b"):
    sweep.run_sweep(study, out, executors.make("local", trainer=fake, loader=loader),
                    log=lambda s: None)
  assert (tmp_path / "a" / "results.csv").read_bytes() == \
      (tmp_path / "b" / "results.csv").read_bytes()
  # New eval settings: runs are evaluated again but not retrained.
  more = dataclasses.replace(study, eval=dataclasses.replace(
      study.eval, settings=(("dense", 0.0), ("local", 0.5))))
  calls = dict(fake.calls)
  sweep.run_sweep(more, tmp_path / "a", executors.make("local", trainer=fake, loader=loader),
                  log=lambda s: None)
  rows = list(csv.DictReader(open(tmp_path / "a" / "results.csv")))
  assert {r["eval_setting"] for r in rows} == {"native", "dense", "local@0.5"}
  assert {k: v - calls[k] for k, v in fake.calls.items()} == {k: 1 for k in calls}


def test_results_csv_has_the_columns_the_study_promises(tmp_path):
  study = _study()
  sweep.run_sweep(study, tmp_path, executors.make("local", trainer=FakeTrainer(),
                                                  loader=loader), log=lambda s: None)
  rows = results.read(tmp_path / "results.csv")
  need = {"run_id", "size", "params", "train_pattern", "train_sparsity_element",
          "train_sparsity_block", "eval_sparsity_element", "eval_sparsity_block", "budget",
          "train_flops_per_token", "inference_flops_per_token", "accuracy", "ci_low", "ci_high",
          "n", "task", "category", "eval_length", "phase", "eval_setting"}
  assert need <= set(rows[0])
  specs = {s.run_id: s for s in study.runs()[0]}
  for r in rows:
    s = specs[r["run_id"]]
    assert r["params"] == models.param_counts(s.model).total
    assert r["train_flops_per_token"] == models.flops_per_token(s.model, s.seq_len)
    assert r["n"] == 4 and 0 <= r["ci_low"] <= r["accuracy"] <= r["ci_high"] <= 1


def test_second_sweep_on_the_same_folder_is_refused(tmp_path):
  with store.study_lock(tmp_path):
    with pytest.raises(RuntimeError, match="another sweep is running"):
      with store.study_lock(tmp_path):
        pass


def test_unknown_executor_and_pod_commands():
  with pytest.raises(ValueError, match="executor='k8s'"):
    executors.make("k8s")
  pod = PodExecutor(hosts=("h0", "h1", "h2"), port=1234, python="/venv/bin/python",
                    workdir="/repo")
  cmds = pod.commands("/shared/runs/abc")
  assert [h for h, _ in cmds] == ["h0", "h1", "h2"]
  for i, (_, c) in enumerate(cmds):
    assert "EXPERIMENTS_COORDINATOR=h0:1234" in c and "EXPERIMENTS_NUM_PROCESSES=3" in c
    assert f"EXPERIMENTS_PROCESS_ID={i}" in c
    assert c.endswith("/venv/bin/python -m experiments job /shared/runs/abc")
  with pytest.raises(ValueError, match="launch='mpi'"):
    PodExecutor(launch="mpi")


def test_pod_environment_reaches_the_trainer_config(tmp_path, monkeypatch):
  study = _study()
  spec = study.runs()[0][0]
  monkeypatch.setenv("EXPERIMENTS_COORDINATOR", "h0:1234")
  monkeypatch.setenv("EXPERIMENTS_NUM_PROCESSES", "4")
  monkeypatch.setenv("EXPERIMENTS_PROCESS_ID", "2")
  cfg = job.train_config(spec, tmp_path, study)
  assert (cfg.distributed.coordinator, cfg.distributed.num_processes,
          cfg.distributed.process_id) == ("h0:1234", 4, 2)
  assert cfg.steps == spec.steps and cfg.model == spec.model and cfg.resume
  assert cfg.flops_per_step == pytest.approx(spec.step_flops)
  assert cfg.log.group == study.name
  np.testing.assert_equal(cfg.data.tasks, spec.tasks)


def test_wandb_offline_summary_holds_the_results_table_and_plots(tmp_path, monkeypatch):
  monkeypatch.setenv("WANDB_SILENT", "true")
  study = dataclasses.replace(_study(), wandb="offline")
  sweep.run_sweep(study, tmp_path, executors.make("local", trainer=FakeTrainer(),
                                                  loader=loader), log=lambda s: None)
  # one eval run per model, in the study's group, with flat config fields
  for d in store.run_dirs(tmp_path):
    (run,) = (d / "wandb").glob("offline-run-*-eval/*.wandb")
    blob = run.read_bytes()
    for key in (b"train_sparsity", b"pattern", b"budget", b"params", study.name.encode()):
      assert key in blob
  write_report(tmp_path)
  (summary,) = (tmp_path / "wandb").glob("offline-run-*-t-summary")
  (table,) = (summary / "files" / "media" / "table").glob("results_*.table.json")
  data = json.loads(table.read_text())
  rows = results.read(tmp_path / "results.csv")
  assert "inference_flops_per_token" in data["columns"] and len(data["data"]) == len(rows) == 6
  logged = list((summary / "files" / "media" / "images" / "plots").glob("*.png"))
  assert len(logged) == len(list((tmp_path / "plots").glob("*.png"))) >= 3  # every report plot


def test_report_logs_runs_trained_without_wandb_once_with_their_curves(tmp_path, monkeypatch):
  """A study trained with W&B off (a GPU machine without wandb) joins its W&B group when its
  report is written with a mode: every done run gets its eval summary and its training curve
  from metrics.jsonl, once (a second report logs none again)."""
  monkeypatch.setenv("WANDB_SILENT", "true")
  sweep.run_sweep(_study(), tmp_path, executors.make("local", trainer=FakeTrainer(),
                                                     loader=loader), log=lambda s: None)
  for d in store.run_dirs(tmp_path):
    assert not (d / "wandb").exists() and "wandb" not in store.job_record(d)
    (d / "metrics.jsonl").write_text("".join(
        json.dumps({"step": s, "loss": 5.0 / s, "tokens": 64 * s}) + "\n" for s in (1, 2, 3)))
  write_report(tmp_path, wandb_mode="offline")
  for d in store.run_dirs(tmp_path):
    (run,) = (d / "wandb").glob("offline-run-*-eval/*.wandb")
    blob = run.read_bytes()
    assert b"train/loss" in blob and b"acc/retrieval" in blob
    assert store.job_record(d)["wandb"] == "offline"
  write_report(tmp_path, wandb_mode="offline")
  assert all(len(list((d / "wandb").glob("offline-run-*-eval"))) == 1
             for d in store.run_dirs(tmp_path))


@pytest.mark.parametrize("per_device, visible, fraction", [(1, ["0", "1", "0"], None),
                                                           (2, ["0", "0", "0"], "0.450")])
def test_local_workers_share_an_accelerator_with_a_share_of_its_memory(
    tmp_path, monkeypatch, per_device, visible, fraction):
  """runs_per_device=2: both workers on accelerator 0, each allowed 0.45 of its memory; the
  default pins worker i to accelerator i and leaves the memory fraction alone. Either way a
  worker allocates on demand unless the caller chose otherwise."""
  from experiments.runs.executors import local
  envs = []

  class Done:
    returncode = 0

    def __init__(self, argv, env):
      envs.append(env)

    def poll(self):
      return 0
  monkeypatch.setattr(local.subprocess, "Popen", Done)
  monkeypatch.delenv("XLA_PYTHON_CLIENT_MEM_FRACTION", raising=False)
  monkeypatch.delenv("XLA_PYTHON_CLIENT_PREALLOCATE", raising=False)
  ex = executors.make("local", workers=2, runs_per_device=per_device)
  study = _study()
  dirs = store.plan(study, tmp_path)
  ex.run(dirs, log=lambda s: None)
  assert [e["CUDA_VISIBLE_DEVICES"] for e in envs] == visible
  assert {e.get("XLA_PYTHON_CLIENT_MEM_FRACTION") for e in envs} == {fraction}
  assert {e["XLA_PYTHON_CLIENT_PREALLOCATE"] for e in envs} == {"false"}
  envs.clear()
  monkeypatch.setenv("XLA_PYTHON_CLIENT_PREALLOCATE", "true")
  ex.run(store.plan(_study(), tmp_path / "again"), log=lambda s: None)
  assert {e["XLA_PYTHON_CLIENT_PREALLOCATE"] for e in envs} == {"true"}
  with pytest.raises(ValueError, match="runs_per_device=2 must be .* only with workers >= 2"):
    executors.make("local", workers=1, runs_per_device=2)


def test_per_query_sparse_arm_trains_and_evaluates_end_to_end(tmp_path):
  """The h200 preset's sparse arm on a tiny scale, with the real trainer: Quest 75% chosen per
  query (grid.select_block_q=1) after a dense short phase, evaluated with prefill content
  settings chosen per query (eval.selection_queries=1). Its native rows are its own per-query
  selection, and they equal the fixed setting of its density."""
  grid = Grid(budgets=(2e10,), sizes=("100k",), sparsities=(0.75,), patterns=("quest",),
              seq_lens=(64,), batch_size=4, vocab_size=128, tasks=("niah_single",),
              implementation="reference", block=16, select_block_q=1, short_len=32,
              short_frac=0.3, short_dense=True, data_source="device")
  ev = EvalSpec(tasks=("niah_single",), lengths=(64,), settings=(("quest", 0.75),),
                selection_block=16, selection_queries=1, examples=4, batch_size=4)
  study = Study(name="q1", grid=grid, eval=ev, wandb="disabled", checkpoint_every=50,
                steps_per_call=5)
  by_state = sweep.run_sweep(study, tmp_path, executors.make("local", workers=1),
                             log=lambda s: None)
  assert len(by_state["done"]) == 1 and not by_state["failed"]
  (spec,), _ = study.runs()
  att = spec.model.attention
  assert att.per_query and att.block_q == 16 and "/q1/" in spec.label
  rows = results.read(tmp_path / "results.csv")
  by = {(r["eval_setting"], r["phase"]): r for r in rows}
  for phase in ("prefill", "decode"):
    assert by[("native", phase)]["accuracy"] == by[("quest@0.75", phase)]["accuracy"]
    assert by[("native", phase)]["inference_flops_per_token"] == \
        by[("quest@0.75", phase)]["inference_flops_per_token"]
