"""A multi-host pod example (e.g. 4 hosts × 8 GPUs, or a TPU v5p-32 slice): each run spans every
host through jax.distributed; the launcher prints (or ssh-runs) the per-host commands.

    python -m experiments run --preset pod --hosts h0,h1,h2,h3 --launch ssh

Edit the hosts here or pass --hosts; the study folder must be on storage every host sees.
"""

from experiments.spec.grid import Grid
from experiments.spec.study import EvalSpec, Study
from train.config import OptimConfig
from experiments import tasks

ALL_TASKS = tuple(t for names in tasks.CATEGORIES.values() for t in names)

STUDY = Study(
    name="pod",
    grid=Grid(
        budgets=(1e18, 4e18),
        sizes=("100m", "170m", "400m"),
        sparsities=(0.0, 0.75, 0.9),
        patterns=("local", "block_random"),
        seq_lens=(8192,),
        batch_size=256,
        vocab_size=512,
        tasks=ALL_TASKS,
        optim=OptimConfig(lr=1e-3, weight_decay=0.1),
        warmup_frac=0.02,
        compute_dtype="bfloat16",
        block=128,
        min_steps=300,
    ),
    eval=EvalSpec(tasks=ALL_TASKS, lengths=(8192, 16384, 32768),
                  settings=(("dense", 0.0), ("local", 0.75), ("local", 0.9), ("local", 0.95),
                            ("block_random", 0.9), ("block_random", 0.95)),
                  examples=500, batch_size=16),
    max_attempts=3,
    checkpoint_every=1000,
    log_every=50,
    wandb="offline",
    executor="pod",
    executor_options=(("hosts", ("host0", "host1", "host2", "host3")), ("launch", "print")),
)
