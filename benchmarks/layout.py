"""Times BlockLayout.from_mask in fresh processes (page faults of new memory included).

    python benchmarks/layout.py --repeats 5 --out benchmarks/results/layout_cpu.json

Floor, Causal at T=2**20 with 128×128 blocks (nq = nk = 8192): the full lists must hold 8191
slots per row (padded slots repeat the last index, so every slot is written):
8192 × 8191 × 4 B = 268,402,688 B forward and the same transposed; with the width-1 partial
lists and the four count arrays (8 × 32 KiB) 537,067,520 B ≈ 512.2 MiB. Writing that at the
~14 GB/s a fresh-process memset reaches here (page faults on transparent huge pages included:
512 MiB in 0.038 s) predicts ~0.04 s; the band path writes each list once, row by row or in
cache-sized chunks, plus O(rows × runs) binary searches, so ~0.05–0.1 s is the expectation.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

CASES = [  # (mask expression, T, block)
    ("masks.Causal()", 1 << 20, 128),
    ("masks.Local(4096) & masks.Causal()", 1 << 20, 128),
    ("(masks.Sink(128) | masks.Local(4096)) & masks.Causal()", 1 << 20, 128),
    ("masks.Causal()", 131072, 64),
]

CHILD = """
import time, json
from sparse_ops import masks, BlockLayout
m = {expr}
t0 = time.perf_counter()
layout = BlockLayout.from_mask(m, {t}, {t}, block_q={b}, block_kv={b})
dt = time.perf_counter() - t0
nbytes = sum(x.nbytes for x in (layout.kv_indices, layout.full_kv_indices, layout.q_indices,
                                layout.full_q_indices))
print(json.dumps(dict(seconds=dt, index_bytes=int(nbytes))))
"""


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__)
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--out")
  args = p.parse_args(argv)
  rows = []
  for expr, t, b in CASES:
    runs = [json.loads(subprocess.run([sys.executable, "-c", CHILD.format(expr=expr, t=t, b=b)],
                                      check=True, capture_output=True, text=True).stdout)
            for _ in range(args.repeats)]
    secs = [r["seconds"] for r in runs]
    rows.append(dict(mask=expr, T=t, block=b, median_s=statistics.median(secs), seconds=secs,
                     index_mib=runs[0]["index_bytes"] / 2**20))
    print(f"{expr:55} T={t:>8} block={b:>3} median {rows[-1]['median_s']:.3f} s "
          f"(runs {', '.join(f'{s:.3f}' for s in secs)}), indices {rows[-1]['index_mib']:.0f} MiB")
  if args.out:
    import os, platform
    with open(args.out, "w") as f:
      json.dump(dict(cpu_count=os.cpu_count(), platform=platform.platform(), rows=rows), f,
                indent=1)


if __name__ == "__main__":
  main()
