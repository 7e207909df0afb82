"""benchmarks/train_throughput.py: its rows are produced end to end on a CPU (the GPU calls it is
written for are too scarce to find a broken script on), and sparse rows are compared with the
dense row of their own model, length and implementation only."""

import json

import pytest

from benchmarks import train_throughput as tt


def test_one_cpu_row_end_to_end(tmp_path):
  out = tmp_path / "tt.json"
  tt.main(["--preset", "cpu", "--only", "100k:128:1:xla", "--steps", "2", "--out", str(out)])
  result = json.loads(out.read_text())
  (row,) = result["rows"]
  assert "error" not in row, row
  assert (row["size"], row["seq_len"], row["implementation"]) == ("100k", 128, "xla")
  assert row["block_density"] == 1.0 and row["batch"] == 4096 // 128
  assert row["step_time_s"] > 0 and row["attention_fwd_bwd_s"] > 0
  # step_time_s is rounded to 10 µs, tokens_per_s computed from the unrounded median
  assert row["tokens_per_s"] == pytest.approx(row["batch"] * 128 / row["step_time_s"], rel=1e-3)
  assert row["model_tflops_per_s"] == pytest.approx(row["step_flops"] / row["step_time_s"] / 1e12,
                                                    abs=0.01)
  assert result["settings"]["matmul_ceiling_flops"] > 0
  assert result["device"]["backend"] == "cpu"


def test_only_naming_no_row_is_an_error_before_any_work():
  with pytest.raises(SystemExit, match="names no row"):
    tt.main(["--preset", "cpu", "--only", "100k:128:0.5:xla"])


def test_proportional_uses_the_dense_row_of_the_same_model_length_and_impl():
  row = lambda size, t, d, impl, step, flops: dict(
      size=size, seq_len=t, density_target=d, implementation=impl, step_time_s=step,
      step_flops=flops)
  rows = [row("20m", 4096, 1.0, "pallas_triton", 0.10, 100.0),
          row("20m", 4096, 0.5, "pallas_triton", 0.06, 60.0),   # 0.06 / (0.10·0.6) = 1.0
          row("20m", 2048, 0.5, "pallas_triton", 0.05, 60.0),   # no dense row at 2048
          row("20m", 4096, 0.5, "xla", 0.05, 60.0),             # no dense xla row
          {"size": "50m", "seq_len": 4096, "density_target": 0.5,
           "implementation": "pallas_triton", "error": "timed out"}]
  tt.add_proportional(rows)
  assert rows[1]["proportional_step_time_s"] == pytest.approx(0.06)
  assert rows[1]["time_vs_proportional"] == 1.0
  assert all("time_vs_proportional" not in r for r in rows[0:1] + rows[2:])
