"""One H100, aimed at 30 minutes: 3 sizes × 4 training sparsities at one compute budget, 4096-token
context, all eight tasks (retrieval, multi-hop, aggregation), evaluated at 4k and 8k.

Sizes: the ladder's 6m, 20m and 50m (head dim 64). Each is trained dense and with content-based
block top-k attention (`topk_blocks`) at 50%, 75% and 90% target sparsity. That is 12 runs of
5e15 FLOPs each: 1700–3400 steps for 6m, 630–1090 for 20m, 300–460 for 50m, with batch 8 × 4096
tokens. Blocks are 64 with a 64-token sink, so the forced sink and diagonal blocks leave room for
90% (the kept fraction at 4096 is 10.5%).

Evaluation at 4096 and 8192 tokens, prefill and decode, 64 examples per task:
- dense, and each model's own training attention ("native");
- content selection at a fixed density of 0.25 and of 0.1;
- a length-adaptive budget, 0.756·sqrt(n) of n blocks, with the same average prefill FLOPs over
  the two lengths as density 0.1 (`experiments.settings.matched_adaptive`; the report compares
  the two);
- Quest scoring at density 0.1.
Static patterns are left to the smoke preset and the oracle check: their decode masks compile
once per task.

Time: estimated from the H100 measurements in `benchmarks/results/h100_training.md` (a 100M model
at 300 TFLOP/s; smaller ones lower), not yet run end to end. Measure with
`python -m experiments calibrate --preset h100`. Resumable across machines: copy the study
folder (no checkpoints needed for finished runs) and rerun the same command. Runs share compiled
programs through `<out>/.jax_cache`.
"""

from experiments import tasks
from experiments.grid import Grid, Optim
from experiments.study import EvalSpec, Study

ALL_TASKS = tuple(t for names in tasks.CATEGORIES.values() for t in names)

STUDY = Study(
    name="h100",
    grid=Grid(
        budgets=(5e15,),
        sizes=("6m", "20m", "50m"),
        sparsities=(0.0, 0.5, 0.75, 0.9),
        patterns=("topk_blocks",),
        seq_lens=(4096,),
        batch_size=8,
        vocab_size=512,
        tasks=ALL_TASKS,
        optim=Optim(lr=2e-3, warmup_frac=0.05, weight_decay=0.1),
        compute_dtype="bfloat16",
        block=64,
        sink=64,
        min_steps=200,
    ),
    eval=EvalSpec(tasks=ALL_TASKS, lengths=(4096, 8192),
                  settings=(("dense", 0.0), ("topk_blocks", 0.75), ("topk_blocks", 0.9),
                            ("topk_blocks", "adaptive", 0.7559293, 0.5),
                            ("quest", "density", 0.1)),
                  examples=64, batch_size=32, selection_block=64),
    max_attempts=2,
    checkpoint_every=500,
    log_every=50,
    wandb="offline",
)
