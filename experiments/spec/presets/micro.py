"""The end-to-end path in seconds, for tests: two tiny runs (dense and sparse 100k), a few steps,
a handful of eval examples. Numbers mean nothing; the mechanics are what it exercises."""

from experiments.spec.grid import Grid
from experiments.spec.study import EvalSpec, Study
from train.config import OptimConfig

STUDY = Study(
    name="micro",
    grid=Grid(
        budgets=(2e10,),
        sizes=("100k",),
        sparsities=(0.0, 0.5),
        patterns=("local",),
        seq_lens=(64,),
        batch_size=4,
        vocab_size=128,
        tasks=("niah_single",),
        optim=OptimConfig(lr=3e-3, weight_decay=0.0),  # no decay: the runs (and ids) it always had
        implementation="reference",
    ),
    eval=EvalSpec(tasks=("niah_single", "chain_resolve"), lengths=(64,),
                  settings=(("dense", 0.0), ("local", 0.5), ("topk_blocks", 0.5)),
                  selection_block=16, examples=8, batch_size=8),
    max_attempts=2,
    checkpoint_every=20,
    log_every=10,
    wandb="disabled",
)
