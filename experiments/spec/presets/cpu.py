"""The study on a 2-core CPU with models that learn: the h200 study's design scaled down 16× in
length (contexts 64 / 128 / 256 in 4-token blocks have the same 16 / 32 / 64 blocks a row as
h200's 1024 / 2048 / 4096 in 64-token blocks), three training budgets, 12 runs, and two runs at
a fourth budget for (c)'s trend.

Measured (studies/cpu/README.md, 2 cores, ~3 hours with 2 workers): from 8e12 on, both dense
models learn every category (100k at 8e12: retrieval 1.00, multi-hop 0.996, aggregation 0.930
at 256). The report reproduces claims (a) and (b) and refutes (c) at equal training FLOPs (on
aggregation the gap closes ~0.1 a decade, crossing near 10^15 FLOPs) and (d).
"""

import dataclasses

from experiments.spec.grid import Grid
from experiments.spec.study import EvalSpec, Study
from train.config import OptimConfig

# Retrieval, multi-hop and aggregation in multi-question forms that fit the 64-token contexts.
TASKS = ("niah_single(questions=4)", "niah_multikey(questions=4)",
         "chain_resolve(path=True, questions=2)", "common_words(questions=2)")

GRID = Grid(
    budgets=(8e12, 2.7e12, 1.6e13), sizes=("100k", "300k"), sparse_sizes=("300k",),
    sparsities=(0.0,), patterns=("quest",), short_dense=True, select_block_q=1, seq_lens=(256,),
    batch_size=16, vocab_size=128, tasks=TASKS, optim=OptimConfig(lr=3e-3, weight_decay=0.0),
    warmup_frac=0.05, implementation="reference", block=4, sink=4, min_steps=200, short_len=64,
    short_frac=0.3, long_lens=(64, 128, 256), long_every=25,
    model_overrides=(("conv_kernel", 4),), data_source="device")

# The sparse arms train their 64-token phase dense (the recipe's warm start), so 64 cannot also be
# a length of their sparse cycle (train.config.validate): they cycle 128 and 256, as the
# recipe's CPU pilot did (benchmarks/results/recipe_cpu_cycle.md, `64_then_cycle`).
SPARSE = dataclasses.replace(GRID, sparsities=(0.75, 0.9), long_lens=(128, 256))

# A fourth budget for (c)'s trend (session 17): at twice 1.6e13, that budget's best dense and
# best sparse-trained models alone (100k dense, 300k Quest 75%): on aggregation the gap closed
# -0.273 / -0.234 / -0.197 over the first three budgets; is it still closing?
B4 = 3.2e13
FOURTH = (dataclasses.replace(GRID, budgets=(B4,), sizes=("100k",), sparse_sizes=None),
          dataclasses.replace(SPARSE, budgets=(B4,), sizes=("300k",), sparsities=(0.75,)))

COMPRESSIONS = (2, 4, 8, 16)
EVAL = EvalSpec(
    tasks=TASKS, lengths=(64, 128, 256),
    settings=(("dense", 0.0), *(("quest", 1 - 1 / c) for c in COMPRESSIONS),
              ("topk_blocks", 0.75), ("local", 0.5), ("local", 0.75),
              ("topk_blocks", "adaptive", 0.81, 0.5)),
    examples=128, task_examples=(("chain_resolve(path=True, questions=2)", 256),
                                 ("common_words(questions=2)", 256)),
    batch_size=64, selection_block=4, selection_queries=1)

STUDY = Study(
    name="cpu", grid=GRID, extra_grids=(SPARSE, *FOURTH), eval=EVAL, max_attempts=2,
    checkpoint_every=200, steps_per_call=25, log_every=25, executor_options=(("workers", 2),),
    wandb="offline", tolerance_margin=0.03)
