"""One H100, about 30 minutes: 3 budgets × 3 sizes, dense and 75% local / block-random training
(>= 12 runs), 1024-token training context, evaluation at 1k, 2k and 4k on all eight tasks.

Sizes are the ladder's 3m, 6m and 20m (width 192–384): large enough for the Pallas kernels'
blocks and for attention FLOPs to matter at 4k, small enough that 12+ runs fit the half hour.
Resumable across machines: copy (or share) the study folder and rerun the same command.

Not yet timed on an H100: the half-hour is an estimate. Measure it with
`python -m experiments calibrate --preset h100` on the GPU and adjust the budgets.
"""

from experiments.grid import Grid, Optim
from experiments.study import EvalSpec, Study
from experiments import tasks

ALL_TASKS = tuple(t for names in tasks.CATEGORIES.values() for t in names)

STUDY = Study(
    name="h100",
    grid=Grid(
        budgets=(3e15, 1e16),
        sizes=("3m", "6m", "20m"),
        sparsities=(0.0, 0.75),
        patterns=("local", "block_random"),
        seq_lens=(1024,),
        batch_size=64,
        vocab_size=512,
        tasks=ALL_TASKS,
        optim=Optim(lr=2e-3, warmup_frac=0.05, weight_decay=0.1),
        compute_dtype="bfloat16",
        block=128,
        min_steps=200,
    ),
    eval=EvalSpec(tasks=ALL_TASKS, lengths=(1024, 2048, 4096),
                  settings=(("dense", 0.0), ("local", 0.5), ("local", 0.75), ("local", 0.9),
                            ("block_random", 0.75), ("block_random", 0.9)),
                  examples=200, batch_size=32),
    max_attempts=2,
    checkpoint_every=500,
    log_every=50,
    wandb="offline",
)
