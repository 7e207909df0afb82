"""`h200`'s first budget alone (7.4e15 FLOPs): 300k, 800k, 3m, 6m dense, 3m with trained top-k at
75% and 90% and with static local at 75%, evaluated as `h200` evaluates. Predicted from measured
step times: about 16 minutes of training arithmetic plus ~1.5 minutes of compiles and
evaluation per run (~11 minutes for the seven; `h200.py` says where the numbers come from):
~27 minutes, over its 25-minute target, in three pieces of ≤ 10 minutes on one H200. Its runs
and eval settings are `h200`'s, so `--preset h200 --add-to-study` on its folder adds the other
budgets without retraining these.
"""

import dataclasses

from experiments.spec.presets import h200

STUDY = dataclasses.replace(h200.STUDY, name="h200_quick", extra_grids=(h200.STATIC,))
