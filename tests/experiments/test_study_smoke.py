"""The whole study path with the real trainer on the `micro` preset: grid → train → evaluate →
report; killed midway and rerun it finishes without redoing finished runs and gives the same
results.csv as an uninterrupted run; a diverging (NaN) run is reported without stopping it."""

import dataclasses
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import sparse_ops as so
from experiments.cli import write_report
from experiments.evaluation import accounting as acc
from experiments.runs import executors, files, results, store, sweep
from experiments.spec import study as study_lib
from experiments.spec import settings as settings_lib
from experiments import tasks

REPO = Path(__file__).resolve().parents[2]


def _env():
  return {**os.environ, "EXPERIMENTS_PROGRESS": "0", "PYTHONPATH": str(REPO)}


def test_killed_study_resumes_to_the_same_results(tmp_path):
  whole, killed = tmp_path / "whole", tmp_path / "killed"
  cmd = [sys.executable, "-m", "experiments", "run", "--preset", "micro"]
  # Interrupted: SIGKILL (no chance to clean up) once the first run is done and the second
  # has started, i.e. mid-sweep with one finished and one partial run.
  proc = subprocess.Popen(cmd + ["--out", str(killed)], cwd=REPO, env=_env(),
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.time() + 240
  first = second = None
  while time.time() < deadline and proc.poll() is None:
    dirs = store.run_dirs(killed) if (killed / "study.json").exists() else []
    if len(dirs) == 2 and store.job_record(dirs[0])["state"] == "done" and \
        store.job_record(dirs[1])["state"] == "running":
      first, second = dirs
      break
    time.sleep(0.2)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert first is not None, ("the sweep never reached its second run: "
                             f"{[store.job_record(d) for d in store.run_dirs(killed)]}")
  done_record = store.job_record(first)
  assert not (killed / "results.csv").exists() or \
      store.job_record(second)["state"] != "done"

  rerun = subprocess.run(cmd + ["--out", str(killed)], cwd=REPO, env=_env(),
                         capture_output=True, text=True, timeout=300)
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  assert "1 already done" in rerun.stdout, rerun.stdout[-3000:]
  assert store.job_record(first) == done_record  # the finished run was not touched
  assert store.job_record(second)["state"] == "done", store.job_record(second)

  plain = subprocess.run(cmd + ["--out", str(whole)], cwd=REPO, env=_env(),
                         capture_output=True, text=True, timeout=300)
  assert plain.returncode == 0, plain.stderr[-3000:]
  a = (whole / "results.csv").read_text()
  b = (killed / "results.csv").read_text()
  diff = [(x, y) for x, y in zip(a.splitlines(), b.splitlines()) if x != y]
  assert a == b and len(a.splitlines()) > 1, (len(a.splitlines()), len(b.splitlines()), diff[:3])
  for out in (whole, killed):
    assert (out / "report.md").exists() and list((out / "plots").glob("*.png"))
  # the runs' training curves, read from their metrics.jsonl, drawn and linked
  curves = sweep.training_curves(whole)
  assert sorted(curves) == sorted(d.name for d in store.run_dirs(whole))
  for d in store.run_dirs(whole):
    flops, loss = zip(*curves[d.name]["points"])
    assert flops[-1] == pytest.approx(store.load_spec(d).train_flops, rel=1e-9)
    assert list(flops) == sorted(flops) and all(math.isfinite(x) for x in loss)
  assert "![training](plots/training.png)" in (whole / "report.md").read_text()
  _check_sparsity_columns(whole)


def _check_sparsity_columns(out):
  """Every row's sparsity numbers are sparse_ops.flops on the mask that setting means, or, for
  content selection, sparse_ops.selected_pairs for its blocks, budget and phase."""
  specs = {d.name: store.load_spec(d) for d in store.run_dirs(out)}
  study = store.load_study(out)
  settings = {"native": "native"}
  settings.update({settings_lib.parse(s).name: s for s in study.eval.settings})
  assert any(r["eval_budget"] for r in results.read(out / "results.csv"))
  for r in results.read(out / "results.csv"):
    spec = specs[r["run_id"]]
    t = r["eval_length"]
    att = acc.setting_attention(spec.model, settings[r["eval_setting"]], study.eval.selection_block)
    task = tasks.make(r["task"], length=t, vocab_size=spec.model.vocab_size)
    if att.is_content:
      sel = acc.phase_attention(att, t, r["phase"], acc.dense_prefix(task))
      bq, bk = sel.attention.selection_blocks(t)
      pairs, visited = so.selected_pairs(t, t, block_q=bq, block_kv=bk,
                                         budget=att.selection_budget(), sink_blocks=0,
                                         dense_before=sel.dense_before)
      assert r["eval_sparsity_element"] == 1 - pairs / (t * (t + 1) // 2)
      assert r["eval_sparsity_block"] == 1 - visited / so.flops.causal_blocks(t, t, bq, bk)
      continue
    mask = acc.phase_mask(att, t, r["phase"], acc.dense_prefix(task))
    assert r["eval_sparsity_element"] == so.flops.sparsity(mask, t)
    bq, bk = att.blocks(t)
    layout = so.BlockLayout.from_mask(mask, t, t, block_q=bq, block_kv=bk)
    assert r["eval_sparsity_block"] == so.flops.block_sparsity(layout)
    train_mask = spec.model.attention.mask(spec.seq_len)
    assert r["train_sparsity_element"] == so.flops.sparsity(train_mask, spec.seq_len)


def test_nan_run_fails_and_is_reported_while_the_sweep_goes_on(tmp_path):
  micro = study_lib.load_preset("micro")
  study = dataclasses.replace(micro, failing=("local",), max_attempts=2,
                              eval=dataclasses.replace(micro.eval, lengths=(64,),
                                                       tasks=("niah_single",)))
  os.environ.setdefault("EXPERIMENTS_PROGRESS", "0")
  by_state = sweep.run_sweep(study, tmp_path, executors.make("local"), log=lambda s: None)
  assert len(by_state["done"]) == 1 and len(by_state["failed"]) == 1
  (bad,) = by_state["failed"]
  rec = store.job_record(tmp_path / "runs" / bad)
  assert rec["attempts"] == 2 and "non-finite loss" in rec["error"]
  assert files.read_json(tmp_path / "runs" / bad / "status.json")["status"] == "failed"
  (row,) = [r for r in store.status_rows(tmp_path) if r["run_id"] == bad]
  assert row["state"] == "failed" and "non-finite" in row["error"]
  md = write_report(tmp_path, wandb_mode="disabled").read_text()
  assert f"`{bad}`" in md.split("## Does")[0] and "non-finite loss" in md
