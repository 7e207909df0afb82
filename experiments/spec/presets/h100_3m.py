"""The h100 study with the ladder's 3m model added: 16 runs, about 50 minutes on one H100.

The h100 preset's 12 runs showed that at 5e15 FLOPs only 6m, the smallest of its sizes, learns,
so its "does a larger sparse model beat a smaller dense one" compared working models with
models at chance. With 3m, the smaller dense model of a pair can learn too. Everything else is
the h100 preset's (`experiments/spec/presets/h100.py`), so the other 12 runs have the same ids:

    python -m experiments run --preset h100 --out runs/h100      # 12 runs, ~29 minutes
    python -m experiments run --preset h100_3m --out runs/h100 --add-to-study  # + 3m, ~21 min

(`--add-to-study`: a study folder remembers its preset and refuses another one without it.)

Measured on one H100 (`studies/h100/README.md`): each 3m run trained for 246–285 s
(6341–8363 steps of a model too small to keep the GPU busy) and evaluated in 23–69 s.
"""

import dataclasses

from experiments.spec.presets import h100

STUDY = dataclasses.replace(
    h100.STUDY, name="h100_3m",
    grid=dataclasses.replace(h100.STUDY.grid, sizes=("3m",) + h100.STUDY.grid.sizes))
