"""The whole study on a 2-core CPU in under 10 minutes: the ladder's two smallest sizes (100k,
300k) at one training budget and a 128-token context; 100k dense vs 300k dense and 300k with 50%-
sparse local attention (the question pits larger sparse models against smaller dense ones, so the
smallest sparse run is left out to save time). Evaluation on four tasks (retrieval ×2, multihop,
aggregation) at half, the full and twice the training length (RoPE extrapolation measured), dense,
at two local sparsities, and with content-based block selection under a fixed and a
length-adaptive budget of equal average FLOPs (the report compares them), prefill and decode.

Training follows the README's recipe: the short convolution, multi-question forms for retrieval
and multi-hop (common_words keeps its single form: the evaluation asks that one), batches made on
the device. The budget (4e12 FLOPs) buys the 300k model 850 steps of 16 × 128 tokens, what it
needs to answer both retrieval tasks (1e12 / 8 a step left it at 0.46 and 0.23); two runs train at
a time, one per core. Training uses the `reference` attention: at T=128 on a CPU the dense masked
softmax is the fastest implementation, and FLOPs are counted from the masks whatever runs (model
FLOPs, DESIGN.md).

Measured on the shared 2-core CPU (2026-12-01, session 8, studies/smoke/README.md): 756 s for the
study with other processes on the cores (519 s on idle cores before this version); dense at T=128,
per question: 100k 1.000 on all four tasks (chain_resolve's path form included); 300k 0.995 /
0.979 / 0.010 / 0.417; the 50%-local 300k 0.177 / 0.198 / 0.000 / 0.000.
"""

from experiments.spec.grid import Grid
from experiments.spec.study import EvalSpec, Study
from train.config import OptimConfig

STUDY = Study(
    name="smoke",
    grid=Grid(
        budgets=(4e12,),
        sizes=("100k", "300k"),
        sparse_sizes=("300k",),
        sparsities=(0.0, 0.5),
        patterns=("local",),
        seq_lens=(128,),
        batch_size=16,
        vocab_size=128,
        # The training recipe (README, "Training recipe"): the same four tasks in their
        # multi-question forms (every question followed by its answer: 4-8 supervised answers
        # per sequence instead of one), made on the device, and the short convolution.
        tasks=("niah_single(questions=4)", "niah_multikey(questions=4)",
               "chain_resolve(path=True, questions=4)", "common_words"),
        optim=OptimConfig(lr=3e-3, weight_decay=0.0),  # no decay: the runs (and ids) it always had
        warmup_frac=0.05,
        implementation="reference",
        min_steps=50,
        model_overrides=(("conv_kernel", 4),),
        data_source="device",
    ),
    eval=EvalSpec(
        # Multi-question contexts: each question scored on its own (4 per context; 2 walks of
        # chain_resolve, the most a 64-token context holds), intervals over contexts.
        tasks=("niah_single(questions=4)", "niah_multikey(questions=4)",
               "chain_resolve(path=True, questions=2)", "common_words"),
        lengths=(64, 128, 256),
        # Content-based selection (8-token blocks): a fixed budget keeping 25% of each row's
        # blocks, and a length-adaptive one, 0.81·sqrt(n) of n blocks, with the same average
        # prefill FLOPs over the three lengths (exactly: experiments.spec.settings.matched_adaptive).
        settings=(("dense", 0.0), ("local", 0.5), ("local", 0.85), ("topk_blocks", 0.75),
                  ("topk_blocks", "adaptive", 0.81, 0.5)),
        selection_block=8,
        examples=48,
        batch_size=48,
    ),
    max_attempts=2,
    checkpoint_every=100,
    steps_per_call=25,
    executor_options=(("workers", 2),),
    log_every=25,
    wandb="offline",
)
