"""`h200`'s first budget without 100k (7.4e15 FLOPs): 300k, 800k, 3m, 6m dense, 800k with Quest
trained per query at 75% and 90% (dense 512-token phase), 3m with static local at 75%, evaluated
as `h200` evaluates. As first planned (3m with mean-pooled top-k from step 0 where the 800k Quest
arms are now, and the first evaluation) it was measured on one H200 (studies/h200_eval1,
sessions 10-11): about 28 minutes of runs, over its 25-minute target: the job
records hold 671 s of training and 738 s of evaluation (compiles included); 800k's training
(149 s) and 3m's (~115 s: 72.8 s of steps) ran in attempts cut at a piece's end (3m's 438 s
attempt also lost a part-done evaluation). Each fresh machine adds ~60-130 s of start-up. Its
runs and eval settings are `h200`'s, so `--preset h200 --add-to-study` on its folder adds the
rest of `h200` without retraining these.
"""

import dataclasses

from experiments.spec.presets import h200

STUDY = dataclasses.replace(h200.STUDY, name="h200_quick", extra_grids=(h200.STATIC,))
