"""Each `-m gpu` check of the Mosaic GPU kernels in its own process, so one kernel's crash does
not hide the others.

The first real lowering (session 10, one H200) ended the whole pytest process with
CUDA_ERROR_MISALIGNED_ADDRESS on its first test, and the error (reported asynchronously, at
event destruction) named no kernel. Here every test id runs alone with CUDA_LAUNCH_BLOCKING=1,
and the table says which pass (forward, dq, dkv) and which shape fails, and how.

    python benchmarks/mosaic_gpu_cases.py OUT_DIR [-k EXPR]   (on a Hopper GPU)

Writes OUT_DIR/mosaic_gpu_cases.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

TESTS = "tests/sparse_ops/test_pallas_mosaic_gpu.py"
# The runtime repeats the same CUDA error once per event and buffer it frees: keep the first.
NOISE = re.compile(r"cuda_event\.cc|cuda_host_allocator|cuda_device_allocator|Source Location|"
                   r"cuda_status\.cc|Delay kernel timed out|^\s*$")


def collect(expr: str | None) -> list[str]:
  cmd = [sys.executable, "-m", "pytest", "-q", "--collect-only", "-m", "gpu", TESTS]
  if expr:
    cmd += ["-k", expr]
  out = subprocess.run(cmd, capture_output=True, text=True).stdout
  return [line.strip() for line in out.splitlines() if "::" in line]


def run_one(test_id: str, timeout: float) -> dict:
  env = {**os.environ, "CUDA_LAUNCH_BLOCKING": "1"}
  t0 = time.time()
  try:
    p = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
                        test_id], capture_output=True, text=True, timeout=timeout, env=env)
    rc, text = p.returncode, p.stdout + p.stderr
  except subprocess.TimeoutExpired as e:
    rc, text = "timeout", (e.stdout or b"").decode() + (e.stderr or b"").decode()
  lines = [line for line in text.splitlines() if not NOISE.search(line)]
  errors = [line for line in lines if re.search(r"Error|error|^E ", line)][:6]
  if rc == 0:  # pytest exits 0 on a skip too (no Hopper GPU here)
    verdict = "passed" if re.search(r"\b1 passed", text) else "skipped"
  elif rc == "timeout":
    verdict = "timeout"
  else:
    verdict = "crashed" if "CUDA_ERROR" in text or rc < 0 else "failed"
  return dict(test=test_id, verdict=verdict, rc=rc, seconds=round(time.time() - t0, 1),
              errors=errors, tail=lines[-15:])


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("out", type=Path)
  ap.add_argument("-k", dest="expr", default=None, help="pytest -k expression")
  ap.add_argument("--timeout", type=float, default=120.0, help="seconds per test")
  a = ap.parse_args()
  a.out.mkdir(parents=True, exist_ok=True)
  tests = collect(a.expr)
  print(f"{len(tests)} cases", flush=True)
  results, rows = [], ["| test | verdict | s | first error |", "|---|---|---|---|"]
  # Written after every case: a call stopped at its limit (session 17 lost a 110 s call that
  # wrote only at the end) still brings back the cases it finished.
  for t in tests:
    r = run_one(t, a.timeout)
    results.append(r)
    first = (r["errors"] or [""])[0].replace("|", "/")[:160]
    rows.append(f"| `{r['test'].split('::')[-1]}` | {r['verdict']} | {r['seconds']} | {first} |")
    print(rows[-1], flush=True)
    (a.out / "mosaic_gpu_cases.json").write_text(json.dumps(results, indent=1))
    (a.out / "mosaic_gpu_cases.md").write_text("\n".join(rows) + "\n")


if __name__ == "__main__":
  main()
