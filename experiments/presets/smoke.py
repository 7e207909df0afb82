"""The whole study on a 2-core CPU in under 10 minutes: two ladder sizes (100k, 300k), dense and
75%-sparse local attention, one training budget, 128-token training context; evaluation on one
task per category plus niah_multikey, at the training length and twice it (extrapolation), dense
and at two inference sparsities, prefill and decode.

The budget (6.5e11 FLOPs) is what the 100k dense model needs to solve niah_single (~400 steps of
16 × 128 tokens); the 300k models get ~2.5× fewer steps at the same FLOPs. Training uses the
`reference` attention: at T=128 on a CPU the dense masked softmax is the fastest implementation,
and FLOPs are counted from the masks whatever runs (model FLOPs, DESIGN.md).
"""

from experiments.grid import Grid, Optim
from experiments.study import EvalSpec, Study

STUDY = Study(
    name="smoke",
    grid=Grid(
        budgets=(6.5e11,),
        sizes=("100k", "300k"),
        sparsities=(0.0, 0.75),
        patterns=("local",),
        seq_lens=(128,),
        batch_size=16,
        vocab_size=128,
        tasks=("niah_single", "niah_multikey", "chain_resolve", "common_words"),
        optim=Optim(lr=3e-3, warmup_frac=0.05),
        implementation="reference",
        min_steps=50,
    ),
    eval=EvalSpec(
        tasks=("niah_single", "niah_multikey", "chain_resolve", "common_words"),
        lengths=(128, 256),
        settings=(("dense", 0.0), ("local", 0.5), ("local", 0.85)),
        examples=64,
        batch_size=64,
    ),
    max_attempts=2,
    checkpoint_every=50,
    log_every=25,
    wandb="offline",
)
