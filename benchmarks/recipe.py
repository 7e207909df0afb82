"""Learning-recipe ablations -> benchmarks/results/recipe_<preset>.{json,md}.

    python -m benchmarks.recipe --preset cpu      # 100k at T=128 on a CPU
    python -m benchmarks.recipe --preset h200     # 6m at T=512 on one H200
    python -m benchmarks.recipe --preset h200 --only base conv4   # some variants
    python -m benchmarks.recipe --plot cpu cpu_tasks h200 h200_diag h200_mix h200_learn
                                                   # curves -> recipe_curves.png

A fixed small problem (a preset's `base` config: one multi-question task, one model, one
optimiser) and variants that each change one thing. Every variant trains with the real trainer
(`train.run`, on-device batches) and is evaluated every `eval_every`
steps on the validation split, per question (`question_accuracy`), which gives its learning
curve; the final model is then scored on `final_examples` test contexts with a 95% interval
from a bootstrap over contexts (questions of one context are not independent). Each variant runs
in its own subprocess with a time limit, so one slow or failing variant is recorded and the rest
go on. The table lists, per variant: the change, final accuracy with its interval, the first
evaluated step at >= 0.9, wall time and steps/s.
"""

from __future__ import annotations

import argparse
import datetime
import json
import pathlib
import platform
import subprocess
import sys
import time
from typing import Any

import numpy as np

RESULTS = pathlib.Path(__file__).resolve().parent / "results"

# The eight tasks in multi-question forms: the study's categories, many questions per context.
MIX = ("niah_single(questions=8)", "niah_multikey(num_needles=16, questions=8)",
       "niah_multivalue(questions=4)", "niah_multiquery(num_needles=16, questions=4)",
       "variable_tracking(questions=4)", "chain_resolve(questions=4)",
       "common_words(questions=4)", "frequent_words(questions=3)")

# The mixture with chain_resolve's path form (one hop per answer token).
MIX_PATH = tuple("chain_resolve(path=True, questions=4)" if t.startswith("chain_resolve") else t
                 for t in MIX)

# Each preset: the base config (as train.Config fields, dotted), and variants: name -> the
# fields they change. "task" and "final_length" are the benchmark's own.
MQAR_512 = "niah_multikey(num_needles=24, questions=16)"
# The CPU canary's problem (tests/test_learning_canary.py), as changes to a preset's base.
CANARY = {"task": "niah_multikey(num_needles=8, questions=8)", "model.size": "100k",
          "model.vocab_size": 128, "data.seq_len": 128, "batch_size": 32, "steps": 400,
          "optim.lr": 3e-3, "eval_every": 100}
# The sparse-training pilots' problem (presets cpu_sparse, cpu_sparse_512) and their two arms.
SPARSE_BASE = {"task": "niah_multikey(num_needles=8, questions=8)", "model.size": "100k",
               "model.vocab_size": 128, "model.conv_kernel": 4, "data.seq_len": 256,
               "data.short_len": 128, "data.short_frac": 0.5, "batch_size": 16, "steps": 600,
               "optim.lr": 3e-3, "optim.weight_decay": 0.0, "optim.warmup_frac": 0.05,
               "compute_dtype": "float32", "model.attention.implementation": "reference",
               "model.attention.sink": 16, "model.attention.block_q": 16,
               "model.attention.block_kv": 16, "eval_every": 100, "eval_examples": 32,
               "final_examples": 96, "final_lengths": [256], "steps_per_call": 25,
               "limit_s": 600}
QUEST75 = {"model.attention.pattern": "quest", "model.attention.sparsity": 0.75}
QUEST75_WARM = {**QUEST75, "short_dense": True}
# kv-blocks chosen per query (preset cpu_sparse_q1 says why)
QUEST75_WARM_Q1 = {**QUEST75_WARM, "model.attention.block_q": 1}
QUEST90_WARM_Q1 = {**QUEST75_WARM_Q1, "model.attention.sparsity": 0.9}
# the same selection laid out in the base's 16-query blocks (AttentionConfig.per_query)
QUEST90_WARM_PQ = {**QUEST75_WARM, "model.attention.sparsity": 0.9,
                   "model.attention.per_query": True}
# ...in 8-key blocks: 64 a row at 512 tokens, as the h200 preset's rows at 4096 in 64-key blocks
QUEST90_WARM_PQ_B8 = {**QUEST90_WARM_PQ, "model.attention.block_q": 8,
                      "model.attention.block_kv": 8}
# The equal-FLOPs pilots (presets cpu_sparse_512_flops*): each sparse arm trains the steps that
# spend the dense arm's FLOPs (match_flops).
FLOPS_BASE = {**SPARSE_BASE, "data.seq_len": 512, "batch_size": 8, "final_lengths": [512],
              "eval_every": 50}
FLOPS_ARMS = {
    "dense": {},
    "quest75_warm_bq1": {**QUEST75_WARM_Q1, "flops_of": "dense"},
    "quest90_warm_bq1": {**QUEST90_WARM_Q1, "flops_of": "dense"},
}
PRESETS: dict[str, dict[str, Any]] = {
    "cpu": {
        "base": {"task": "niah_multikey(num_needles=8, questions=8)", "model.size": "100k",
                 "model.vocab_size": 128, "data.seq_len": 128, "batch_size": 32, "steps": 600,
                 "optim.lr": 3e-3, "optim.weight_decay": 0.1, "optim.warmup_frac": 0.05,
                 "compute_dtype": "float32", "model.attention.implementation": "reference",
                 "eval_every": 100, "eval_examples": 64, "final_examples": 128,
                 "steps_per_call": 25, "limit_s": 600},
        "variants": {
            "base": {},
            "conv4": {"model.conv_kernel": 4},
            "conv3": {"model.conv_kernel": 3},
            "conv2": {"model.conv_kernel": 2},
            "conv4_wd0": {"model.conv_kernel": 4, "optim.weight_decay": 0.0},
            # Depth, and learning rate vs warmup, at depth 8 (the 6m model's; width 64): the
            # H200 runs found 6m failing at lr 2e-3-3e-3 where 2-layer models learn.
            "conv4_d8": {"model.conv_kernel": 4, "model.depth": 8, "optim.weight_decay": 0.0},
            "conv4_d8_lr1e-3": {"model.conv_kernel": 4, "model.depth": 8,
                                "optim.weight_decay": 0.0, "optim.lr": 1e-3},
            "conv4_d8_warmup0.25": {"model.conv_kernel": 4, "model.depth": 8,
                                    "optim.weight_decay": 0.0, "optim.warmup_frac": 0.25},
        },
    },
    "h200": {
        # The issue's fixed problem: 6m at T=512, 24 pairs / 16 questions, batch 64, lr 2e-3.
        "base": {"task": MQAR_512, "model.size": "6m", "model.vocab_size": 512,
                 "data.seq_len": 512, "batch_size": 64, "steps": 2000, "optim.lr": 2e-3,
                 "optim.weight_decay": 0.1, "optim.warmup_frac": 0.05,
                 "compute_dtype": "bfloat16", "eval_every": 250, "eval_examples": 64,
                 "final_examples": 256, "steps_per_call": 50, "limit_s": 150},
        "variants": {
            "base": {},
            "conv4": {"model.conv_kernel": 4},
            "wd0": {"optim.weight_decay": 0.0},
            "lr1e-3": {"optim.lr": 1e-3},
            "lr4e-3": {"optim.lr": 4e-3},
            "warmup0.2": {"optim.warmup_frac": 0.2},
            "f32": {"compute_dtype": "float32"},
            "tied": {"model.tie_embeddings": True},
            "rope1e5": {"model.rope_base": 1e5},
            "heads8x32": {"model.num_heads": 8},
            "2x256": {"model.depth": 2},
            "4q": {"task": "niah_multikey(num_needles=24, questions=4)"},
            "lessfiller": {"data.seq_len": 192},
            "conv4_wd0": {"model.conv_kernel": 4, "optim.weight_decay": 0.0},
            "conv4_2x256": {"model.conv_kernel": 4, "model.depth": 2},
        },
    },
    # Which multi-question forms the recipe learns on its own, at the canary's scale (100k,
    # conv 4, T=128): each task alone, so a format that cannot be learned shows up cheaply.
    "cpu_tasks": {
        "base": {"task": "niah_multivalue(questions=2)", "model.size": "100k",
                 "model.vocab_size": 128, "data.seq_len": 128, "batch_size": 32, "steps": 800,
                 "optim.lr": 3e-3, "optim.weight_decay": 0.0, "optim.warmup_frac": 0.05,
                 "model.conv_kernel": 4, "compute_dtype": "float32",
                 "model.attention.implementation": "reference", "eval_every": 100,
                 "eval_examples": 64, "final_examples": 128, "steps_per_call": 25,
                 "limit_s": 900},
        "variants": {
            "multivalue": {},
            "multiquery": {"task": "niah_multiquery(num_needles=8, questions=2)"},
            "variable_tracking": {"task": "variable_tracking(questions=2)"},
            "chain_resolve": {"task": "chain_resolve(questions=2)"},
            "chain_resolve_path": {"task": "chain_resolve(path=True, questions=2)"},
            "common_words": {"task": "common_words(questions=2)"},
            "frequent_words": {"task": "frequent_words(questions=2)"},
        },
    },
    # Why the 6m model at 512 does not learn what the 100k one learns at 128 (session 6's first
    # H200 call): the CPU canary's problem on the GPU, then one difference at a time.
    "h200_diag": {
        "base": {"task": MQAR_512, "model.size": "6m", "model.vocab_size": 512,
                 "data.seq_len": 512, "batch_size": 64, "steps": 2000, "optim.lr": 2e-3,
                 "optim.weight_decay": 0.0, "optim.warmup_frac": 0.05, "model.conv_kernel": 4,
                 "compute_dtype": "bfloat16", "eval_every": 250, "eval_examples": 64,
                 "final_examples": 256, "steps_per_call": 50, "limit_s": 150},
        "variants": {
            "canary_bf16": {**CANARY},
            "100k_512": {"model.size": "100k", "compute_dtype": "float32"},
            "6m_canary": {**CANARY, "model.size": "6m"},
            "6m_512_xla_f32": {"model.attention.implementation": "xla",
                               "compute_dtype": "float32"},
            "2x256_512": {"model.depth": 2},
            "6m_512_lr1e-3_6k": {"optim.lr": 1e-3, "steps": 6000},
            "canary_f32_ref": {**CANARY, "compute_dtype": "float32",
                               "model.attention.implementation": "reference"},
        },
    },
    # All eight tasks at once (multi-question forms) at T=512: which tasks the recipe learns.
    "h200_mix": {
        "base": {"task": MIX, "model.size": "6m", "model.vocab_size": 512, "data.seq_len": 512,
                 "batch_size": 64, "steps": 3000, "optim.lr": 1e-3, "optim.weight_decay": 0.0,
                 "optim.warmup_frac": 0.05, "model.conv_kernel": 4, "compute_dtype": "bfloat16",
                 "eval_every": 500, "eval_examples": 32, "final_examples": 128,
                 "steps_per_call": 100, "limit_s": 240},
        "variants": {
            "6m_conv4": {},
            "6m_noconv": {"model.conv_kernel": 0},
            "3m_conv4": {"model.size": "3m"},
            "20m_conv4": {"model.size": "20m"},
            # The length curriculum: 80% of the steps at 512 (64 sequences), then 4096 (8).
            "6m_c512_4096": {"data.seq_len": 4096, "batch_size": 8, "data.short_len": 512,
                             "data.short_frac": 0.8, "final_lengths": [512, 4096]},
            "3m_c512_4096": {"model.size": "3m", "data.seq_len": 4096, "batch_size": 8,
                             "data.short_len": 512, "data.short_frac": 0.8,
                             "final_lengths": [512, 4096]},
        },
    },

    # Issue 16's bars: every category at T=4096 (retrieval >= 0.95, multi-hop and aggregation
    # >= 0.8), two ladder sizes, <= 10 minutes of training each; the mixture with
    # chain_resolve's path form (its one-token form stays at chance: h200_mix, cpu_tasks).
    "h200_learn": {
        "base": {"task": MIX_PATH, "model.size": "6m", "model.vocab_size": 512,
                 "data.seq_len": 4096, "batch_size": 8, "data.short_len": 512,
                 "data.short_frac": 0.7, "steps": 9000, "optim.lr": 1e-3,
                 "optim.weight_decay": 0.0, "optim.warmup_frac": 0.05, "model.conv_kernel": 4,
                 "compute_dtype": "bfloat16", "eval_every": 1000, "eval_examples": 32,
                 "final_examples": 192, "final_lengths": [1024, 2048, 4096],
                 "steps_per_call": 100, "limit_s": 290},
        "variants": {
            "6m": {},
            "3m": {"model.size": "3m", "steps": 11000},
            # Longer, and half the steps at 4096 (the first pair learned the tasks only once
            # at 4096, and was still rising).
            "6m_long": {"steps": 15000, "data.short_frac": 0.5, "eval_every": 2000,
                        "limit_s": 330},
            "3m_long": {"model.size": "3m", "steps": 18000, "data.short_frac": 0.5,
                        "eval_every": 2000, "limit_s": 330},
            # The learning rate scaled as 1 / width from 3m's 1e-3 (192 wide): 6m (256) at
            # 7.5e-4, 800k (128) at 1.5e-3; 100k (64) learned at 3e-3 on the CPU, 6m failed at
            # 2e-3 and was slow on the ordered answers at 1e-3.
            "6m_lr_width": {"steps": 17000, "data.short_frac": 0.5, "eval_every": 2000,
                            "optim.lr": 7.5e-4, "limit_s": 345},
            "800k_lr_width": {"model.size": "800k", "steps": 18000, "data.short_frac": 0.5,
                              "eval_every": 2000, "optim.lr": 1.5e-3, "limit_s": 230},
        },
    },
    # Issue 19's calibration: how the recipe spends a FLOP budget. The h200_learn 800k run
    # (18000 steps of 64 x 512 / 8 x 4096, 7.4e15 FLOPs, 155 s alone) is the reference. Here the
    # same FLOPs with 4x the tokens per step (the small models' steps are bound by per-step
    # overhead, not arithmetic), with and without the sqrt(4) learning rate, and the iso-FLOP
    # neighbours 300k and 3m at that budget; all scored at 1024, 2048 and 4096. `alone` runs by
    # itself first; the rest run side by side on the one GPU (--parallel), which measures what
    # sharing the GPU between runs costs each of them.
    "h200_budget": {
        "base": {"task": MIX_PATH, "model.size": "800k", "model.vocab_size": 512,
                 "data.seq_len": 4096, "batch_size": 32, "data.short_len": 512,
                 "data.short_frac": 0.5, "steps": 4500, "optim.lr": 3e-3,
                 "optim.weight_decay": 0.0, "optim.warmup_frac": 0.05, "model.conv_kernel": 4,
                 "compute_dtype": "bfloat16", "eval_every": 500, "eval_examples": 32,
                 "final_examples": 128, "final_lengths": [1024, 2048, 4096],
                 "steps_per_call": 50, "limit_s": 420},
        "variants": {
            "800k_b4x": {"alone": True},
            "800k_b4x_lr1x": {"optim.lr": 1.5e-3},
            "3m_b4x": {"model.size": "3m", "steps": 1740, "optim.lr": 2e-3, "eval_every": 250},
            "300k_b4x": {"model.size": "300k", "steps": 9000, "optim.lr": 4e-3,
                         "eval_every": 1000},
            # The next budget up (2.3e16, about 3x): which of 3m and 6m is nearer its optimum.
            "3m_b4x_2e16": {"model.size": "3m", "steps": 5400, "optim.lr": 2e-3,
                            "eval_every": 900, "final_examples": 96, "limit_s": 215},
            "6m_b4x_2e16": {"model.size": "6m", "steps": 2590, "optim.lr": 1.5e-3,
                            "eval_every": 518, "final_examples": 96, "limit_s": 215},
        },
    },
    # Does training through the eval lengths close the gap between them? The h200 study cycles
    # its long steps through 1024, 2048 and 4096 because models trained at 512 and 4096 alone
    # scored lower at 1024 than at 4096 (recipe_h200_budget.md); here the same question at the
    # smoke's scale (100k, its four tasks, a 64-token short phase, 256 tokens trained).
    "cpu_cycle": {
        "base": {"task": ["niah_single(questions=4)", "niah_multikey(questions=4)",
                          "chain_resolve(path=True, questions=2)", "common_words"],
                 "model.size": "100k", "model.vocab_size": 128, "model.conv_kernel": 4,
                 "data.seq_len": 256, "data.short_len": 64, "data.short_frac": 0.5,
                 "batch_size": 16, "steps": 1200, "optim.lr": 3e-3, "optim.weight_decay": 0.0,
                 "optim.warmup_frac": 0.05, "compute_dtype": "float32",
                 "model.attention.implementation": "reference", "eval_every": 200,
                 "eval_examples": 32, "final_examples": 96, "final_lengths": [64, 128, 256],
                 "steps_per_call": 25, "limit_s": 1200},
        "variants": {
            "64_then_256": {},
            "64_then_cycle": {"data.long_lens": (128, 256)},
        },
    },
    # Can a model trained sparse from step 0 learn retrieval, and does a dense warm-up (the
    # curriculum's short phase dense, train.Config.short_dense) fix it? The h200_quick study's
    # 3m top-k runs (sparse throughout) stayed at a loss of 3.4-3.8 where its dense 3m reached
    # 0.74. Here at the canary's scale: 16-token blocks, so 8 kv-blocks a row at the 128-token
    # short phase and 16 at 256; 75% sparse keeps a quarter of each row's causal blocks plus
    # the sink block and the diagonal. Scored with each model's own attention (prefill).
    "cpu_sparse": {
        "base": SPARSE_BASE,
        "variants": {
            "dense": {},
            "topk75": {"model.attention.pattern": "topk_blocks",
                       "model.attention.sparsity": 0.75},
            "topk75_warm": {"model.attention.pattern": "topk_blocks",
                            "model.attention.sparsity": 0.75, "short_dense": True},
            "quest75": QUEST75,
            "quest75_warm": QUEST75_WARM,
            # From quest75_warm, one change each: selection per 4 queries instead of 16 (a
            # q-block of the question part holds several questions, each wanting its own
            # needle's block); 3x the steps; 80% of the steps dense; half the sparsity.
            "quest75_warm_bq4": {**QUEST75_WARM, "model.attention.block_q": 4},
            "quest75_warm_3x": {**QUEST75_WARM, "steps": 1800, "eval_every": 300},
            "quest75_warm_dense0.8": {**QUEST75_WARM, "data.short_frac": 0.8},
            "quest50_warm": {**QUEST75_WARM, "model.attention.sparsity": 0.5},
            # 8-token blocks: 32 kv-blocks a row at 256, as 16-token blocks give at 512 (0.60
            # there): is it the blocks a row has, or the length?
            "quest75_warm_b8": {**QUEST75_WARM, "model.attention.block_q": 8,
                                "model.attention.block_kv": 8},
        },
    },
    # Selection per query (block_q=1) from quest75_warm: a q-block is represented by the
    # queries ending at its first position (causal selection), so with 16-token q-blocks the
    # question's own query hardly takes part in choosing its blocks, and with 4 it does only
    # when it opens the block (quest75_warm_bq4: 0.465, no gain). With one-query blocks every
    # query picks its blocks from itself, as the decode phase and MoBA/NSA do.
    "cpu_sparse_q1": {
        "base": SPARSE_BASE,
        "variants": {
            "quest75_bq1": {**QUEST75, "model.attention.block_q": 1},
            "quest75_warm_bq1": QUEST75_WARM_Q1,
            "quest90_warm_bq1": QUEST90_WARM_Q1,
            "topk75_warm_bq1": {"model.attention.pattern": "topk_blocks",
                                "model.attention.sparsity": 0.75, "short_dense": True,
                                "model.attention.block_q": 1},
        },
    },
    # At equal training FLOPs (the study's matching): dense 100k at 300 steps (half at 128,
    # short of its 0.999 at 600) against per-query Quest with the dense warm-up, whose cheaper
    # long steps buy more of them; then at 1.5x that budget.
    "cpu_sparse_512_flops": {"base": {**FLOPS_BASE, "steps": 300, "limit_s": 900},
                             "variants": FLOPS_ARMS},
    "cpu_sparse_512_flops_450": {"base": {**FLOPS_BASE, "steps": 450, "limit_s": 1200},
                                 "variants": FLOPS_ARMS},
    # The 90% arm at equal FLOPs again, in 8-key blocks (64 a row; cpu_sparse_512_q90_b8).
    "cpu_sparse_512_flops_450_b8": {
        "base": {**FLOPS_BASE, "steps": 450, "limit_s": 1200},
        "variants": {"dense": {},
                     "quest90_warm_pq_b8": {**QUEST90_WARM_PQ_B8, "flops_of": "dense"}}},
    # The same at 512 tokens (32 kv-blocks a row instead of 16, as the h200 study's 4096 has 64
    # against 1024's 16): does selection at 75% get closer to dense when a row has more blocks?
    "cpu_sparse_512": {
        "base": {**SPARSE_BASE, "data.seq_len": 512, "batch_size": 8, "final_lengths": [512],
                 "limit_s": 900},
        "variants": {"dense": {}, "quest75": QUEST75, "quest75_warm": QUEST75_WARM,
                     # h200's second training sparsity
                     "quest90_warm": {**QUEST75_WARM, "model.attention.sparsity": 0.9},
                     "quest75_warm_bq1": QUEST75_WARM_Q1,
                     "quest90_warm_bq1": QUEST90_WARM_Q1,
                     # a second seed (init and data) of the two 75% arms
                     "quest75_warm_seed1": {**QUEST75_WARM, "seed": 1, "data.seed": 1},
                     "quest75_warm_bq1_seed1": {**QUEST75_WARM_Q1, "seed": 1, "data.seed": 1}},
    },
    # The 90% arm per query plateaued at 0.777 (cpu_sparse_512: curve 0.71 0.75 0.76 over its
    # last 300 steps) where 75% reached 0.986. One change each: a longer dense phase (80% of
    # the steps instead of 50%), or twice the steps. Per query as the GPU runs it (16-query
    # blocks with per-query flags, which under `reference` train bitwise as one-query blocks:
    # tests/models/test_models.py).
    "cpu_sparse_512_q90": {
        "base": {**SPARSE_BASE, "data.seq_len": 512, "batch_size": 8, "final_lengths": [512],
                 "limit_s": 1500},
        "variants": {"quest90_warm_pq_dense0.8": {**QUEST90_WARM_PQ, "data.short_frac": 0.8},
                     "quest90_warm_pq_2x": {**QUEST90_WARM_PQ, "steps": 1200}},
    },
    # Is the 90% arm's plateau the row's few blocks? At 512 tokens in 16-key blocks the last
    # row has 32 blocks and keeps 4, sink and local included (2 chosen by content); in 8-key
    # blocks it has 64 and keeps 7 (4 by content), as the h200 preset's rows at 4096 in 64-key
    # blocks do.
    "cpu_sparse_512_q90_b8": {
        "base": {**SPARSE_BASE, "data.seq_len": 512, "batch_size": 8, "final_lengths": [512],
                 "limit_s": 1500},
        "variants": {"quest90_warm_pq_b16": QUEST90_WARM_PQ,
                     "quest90_warm_pq_b8": QUEST90_WARM_PQ_B8},
    },
}


def build_config(spec: dict[str, Any], run_dir: str):
  """A train.Config from a flat {dotted field: value} spec."""
  import models
  import train
  spec = dict(spec)
  size = spec.pop("model.size")
  model_fields = {k[6:]: spec.pop(k) for k in list(spec) if k.startswith("model.")
                  and not k.startswith("model.attention.")}
  attention = {k[16:]: spec.pop(k) for k in list(spec) if k.startswith("model.attention.")}
  model = models.family(size, attention=models.AttentionConfig(**attention), **model_fields)
  steps = spec.pop("steps")
  optim = {k[6:]: spec.pop(k) for k in list(spec) if k.startswith("optim.")}
  warmup = max(1, round(optim.pop("warmup_frac", 0.05) * steps))
  data = {k[5:]: spec.pop(k) for k in list(spec) if k.startswith("data.")}
  if "short_frac" in data:  # the length curriculum: this fraction of the steps at short_len
    data["short_steps"] = round(data.pop("short_frac") * steps)
  tasks = tuple(_tasks(spec.pop("task")))
  every, examples = spec.pop("eval_every"), spec.pop("eval_examples")
  for own in ("final_examples", "final_lengths", "limit_s", "alone"):
    spec.pop(own, None)
  return train.Config(
      run_dir=run_dir, model=model, steps=steps,
      optim=train.OptimConfig(warmup_steps=warmup, **optim),
      data=train.DataConfig(tasks=tasks, source="device", **data),
      eval=train.EvalConfig(every=every, examples=examples, batch_size=64),
      log=train.LogConfig(every=every, progress=False, wandb="disabled"),
      checkpoint=train.CheckpointConfig(every=steps, keep=1), **spec)


def match_flops(spec: dict[str, Any], ref: dict[str, Any]) -> dict[str, Any]:
  """`spec` (a variant with "flops_of": another variant) given the steps that spend the training
  FLOPs of `ref`: the same short phase (steps and length), then as many steps at its own cost
  as the rest of ref's budget buys (nearest whole step). A sparse variant's long steps are
  cheaper, so it trains more of them, as the study's grid gives it."""
  ref_cfg = build_config(ref, "/tmp/unused")
  budget = ref_cfg.flops_through(ref_cfg.total_steps)
  short = ref_cfg.short_phase_steps
  spec = {k: v for k, v in spec.items() if k not in ("flops_of", "data.short_frac")}
  spec["data.short_steps"] = short
  probe = build_config({**spec, "steps": short + 1}, "/tmp/unused")
  left = budget - probe.flops_through(short)
  spec["steps"] = short + max(1, round(left / probe.flops_per_step))
  return spec  # the run records its steps and train_flops (run_variant)


def _tasks(task: str | list[str]) -> list[str]:
  return [task] if isinstance(task, str) else list(task)


def _task(spec: str, length: int, vocab_size: int):
  from experiments import tasks
  return tasks.make(spec, length=length, vocab_size=vocab_size)


def final_scores(run_dir: str, tasks: tuple[str, ...], lengths: list[int], examples: int,
                 batch: int = 64) -> dict[str, dict[str, Any]]:
  """{length: {task: per-question exact match}} of the run's final model on `examples` test
  contexts of each task, with a 95% bootstrap interval over contexts. The model is loaded once
  and run as the study evaluates (`experiments.evaluation.evaluate.make_forward`, the run's
  compute dtype, the model's own attention in prefill: dense causal for a dense model)."""
  import train
  from experiments.evaluation import accounting, evaluate
  model, cfg, _ = train.load(run_dir)
  forward = evaluate.make_forward(model, cfg.compute_dtype)
  out = {}
  for length in lengths:
    out[str(length)] = {}
    own = accounting.phase_attention(cfg.model.attention, length, "prefill", 0)
    for spec in tasks:
      task = _task(spec, length, cfg.model.vocab_size)
      out[str(length)][spec] = scores_on_test(forward, own, task, examples, batch)
  return out


def scores_on_test(forward, phased, task, examples: int, batch: int = 64) -> dict[str, Any]:
  """Per-question exact match of `forward` (`evaluate.make_forward`'s) under `phased` on the
  task's first `examples` test contexts: `interval`'s numbers plus the per-context counts."""
  from experiments.tasks import scoring
  right_n, asked_n = [], []
  for start in range(0, examples, batch):
    rows = [task.example("test", i) for i in range(start, min(start + batch, examples))]
    b = {k: np.stack([r[k] for r in rows]) for k in ("inputs", "targets", "weights")}
    right, asked = scoring.question_scores(forward(b["inputs"], phased), b["targets"],
                                           b["weights"])
    right_n.extend(right.sum(1).tolist())
    asked_n.extend(asked.sum(1).tolist())
  return {**interval(right_n, asked_n), "right": right_n, "asked": asked_n}


def interval(right: list[int], asked: list[int]) -> dict[str, Any]:
  """Per-question accuracy over contexts (right[i] of asked[i] questions in context i) with a
  95% percentile bootstrap interval that resamples contexts, not questions."""
  from scipy import stats
  right, asked = np.asarray(right, float), np.asarray(asked, float)
  mean = float(right.sum() / asked.sum())
  ratio = lambda r, a, axis=-1: r.sum(axis=axis) / a.sum(axis=axis)
  if np.ptp(right / asked) == 0:
    low = high = mean
  else:
    ci = stats.bootstrap((right, asked), ratio, paired=True, vectorized=True,
                         confidence_level=0.95, n_resamples=2000, random_state=0,
                         method="percentile").confidence_interval
    low, high = float(ci.low), float(ci.high)
  return {"accuracy": mean, "ci95": [low, high], "contexts": len(right),
          "questions": int(asked.sum())}


def run_variant(spec: dict[str, Any], run_dir: str) -> dict[str, Any]:
  """Trains and scores one variant (in this process)."""
  import shutil
  import train
  from train import log as log_lib
  shutil.rmtree(run_dir, ignore_errors=True)
  cfg = build_config(spec, run_dir)
  start = time.perf_counter()
  result = train.run(cfg)
  wall = time.perf_counter() - start
  records = log_lib.read_metrics(run_dir)
  curves = {t: [(r["step"], r[f"eval/{t}/question_accuracy"]) for r in records
                if f"eval/{t}/question_accuracy" in r] for t in cfg.data.tasks}
  speed = [r["step_time_s"] for r in records if "step_time_s" in r]
  lengths = spec.get("final_lengths") or [cfg.data.seq_len]
  final = final_scores(run_dir, cfg.data.tasks, lengths, spec["final_examples"])
  return {"status": result.status, "wall_s": wall, "curves": curves,
          "curve": _mean_curve(curves),
          "loss": [(r["step"], r["loss"]) for r in records if "loss" in r],
          "median_step_s": float(np.median(speed[1:])) if len(speed) > 1 else None,
          "final_by_length": final, "final": _pool(final[str(lengths[-1])]),
          "data_source": cfg.data.source, "train_flops": cfg.flops_through(cfg.total_steps),
          "steps": cfg.total_steps, "short_steps": cfg.short_phase_steps,
          "device": _device(), "versions": _versions()}


def _mean_curve(curves: dict[str, list]) -> list:
  """The tasks' curves averaged step by step (they are evaluated at the same steps)."""
  steps = [s for s, _ in next(iter(curves.values()))]
  return [(s, float(np.mean([c[i][1] for c in curves.values()]))) for i, s in enumerate(steps)]


def _pool(per_task: dict[str, dict]) -> dict[str, Any]:
  """Every task's questions pooled (contexts resampled across tasks)."""
  return interval(sum((r["right"] for r in per_task.values()), []),
                  sum((r["asked"] for r in per_task.values()), []))


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
  parser.add_argument("--only", nargs="*", help="variants to run (default: all)")
  parser.add_argument("--out", type=pathlib.Path, help="JSON path (default: results/recipe_<preset>.json)")
  parser.add_argument("--runs", default="/tmp/recipe_runs")
  parser.add_argument("--parallel", type=int, default=1,
                      help="variants trained side by side on the one GPU (each a process with "
                           "1/N of its memory); those marked alone first, by themselves")
  parser.add_argument("--variant", help=argparse.SUPPRESS)  # child mode: run one, print JSON
  parser.add_argument("--plot", nargs="+", metavar="PRESET",
                      help="only draw these presets' committed curves to results/recipe_curves.png")
  args = parser.parse_args(argv)
  if args.plot:
    plot(args.plot, RESULTS / "recipe_curves.png")
    return
  preset = PRESETS[args.preset]
  if args.variant:
    spec = {**preset["base"], **preset["variants"][args.variant]}
    if "flops_of" in spec:
      spec = match_flops(spec, {**preset["base"], **preset["variants"][spec["flops_of"]]})
    print("RESULT " + json.dumps(run_variant(spec, f"{args.runs}/{args.variant}")), flush=True)
    return

  out = args.out or RESULTS / f"recipe_{args.preset}.json"
  names = args.only or list(preset["variants"])
  unknown = sorted(set(names) - set(preset["variants"]))
  if unknown:
    raise SystemExit(f"--only {unknown}: unknown; valid: {list(preset['variants'])}")
  report = json.loads(out.read_text()) if out.exists() else {}
  # The parent never initialises JAX (it would take the GPU's memory from its children); the
  # device and versions come from the variants' own processes.
  report.update(benchmark="learning-recipe ablations", preset=args.preset,
                date=datetime.date.today().isoformat(), base=preset["base"])
  report.setdefault("variants", {})
  def record(name: str, row: dict[str, Any], start: float) -> None:
    row["change"] = preset["variants"][name]
    row["process_s"] = time.perf_counter() - start
    for key in ("device", "versions"):
      if key in row:
        report[key] = row.pop(key)
    report["variants"][name] = row
    out.write_text(json.dumps(report, indent=1))  # after every variant: a time limit keeps some
    print(_line(name, row), flush=True)

  spec_of = lambda name: {**preset["base"], **preset["variants"][name]}
  alone = [n for n in names if args.parallel <= 1 or spec_of(n).get("alone")]
  together = [n for n in names if n not in alone]
  for name in alone:
    start = time.perf_counter()
    proc = _child(args, name, parallel=1)
    record(name, _result(proc, spec_of(name)["limit_s"]), start)
  for i in range(0, len(together), args.parallel):  # side by side on one GPU, a group at a time
    group = together[i:i + args.parallel]
    start = time.perf_counter()
    procs = {n: _child(args, n, parallel=len(group)) for n in group}
    for n, proc in procs.items():
      row = _result(proc, spec_of(n)["limit_s"] - (time.perf_counter() - start))
      row["side_by_side"] = group
      record(n, row, start)
  out.with_suffix(".md").write_text(table(report))
  print(table(report))


def _child(args, name: str, parallel: int) -> subprocess.Popen:
  """One variant in its own process; with others beside it, a share of the GPU's memory
  (JAX otherwise preallocates 75% of it in the first process)."""
  import os
  env = dict(os.environ)
  if parallel > 1:
    env["XLA_PYTHON_CLIENT_MEM_FRACTION"] = f"{0.9 / parallel:.3f}"
  return subprocess.Popen([sys.executable, "-m", "benchmarks.recipe", "--preset", args.preset,
                           "--variant", name, "--runs", args.runs], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, env=env)


def _result(proc: subprocess.Popen, limit: float) -> dict[str, Any]:
  """The child's RESULT line, or what went wrong (its stderr's tail, or the time limit)."""
  try:
    stdout, stderr = proc.communicate(timeout=max(limit, 1))
  except subprocess.TimeoutExpired:
    proc.kill()
    proc.communicate()
    return {"error": f"timed out after its limit ({limit:.0f} s left)"}
  lines = [l for l in stdout.splitlines() if l.startswith("RESULT ")]
  return json.loads(lines[-1][7:]) if lines else {"error": stderr[-2000:]}


def plot(names: list[str], out: pathlib.Path) -> None:
  """Learning curves (per-question accuracy vs step) of every variant of the given presets'
  results, one panel per preset."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  cols = min(3, len(names))
  rows = -(-len(names) // cols)
  fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 4 * rows), squeeze=False)
  for ax in axes.flat[len(names):]:
    ax.axis("off")
  for ax, name in zip(axes.flat, names):
    report = json.loads((RESULTS / f"recipe_{name}.json").read_text())
    for variant, row in report["variants"].items():
      if row.get("curve"):
        steps, acc = zip(*row["curve"])
        ax.plot(steps, acc, marker=".", label=variant)
    ax.set(title=f"{name}: {report['device']['kind']}", xlabel="step",
           ylabel="per-question accuracy (validation)", ylim=(-0.02, 1.02))
    ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(out, dpi=110)


def _first_at(curve, level=0.9):
  return next((s for s, a in curve if a >= level), None)


def _line(name, row) -> str:
  if "error" in row:
    return f"{name:14s} ERROR {row['error'][-300:]}"
  f = row["final"]
  return (f"{name:14s} {f['accuracy']:.3f} [{f['ci95'][0]:.3f}, {f['ci95'][1]:.3f}] "
          f"first>=0.9 at {_first_at(row['curve'])}  {row['wall_s']:.0f} s")


def table(report: dict[str, Any]) -> str:
  base = report["base"]
  lines = [f"# Learning-recipe ablations ({report['preset']}, {report['date']})", "",
           f"Device: {report.get('device', 'unknown')}; versions: "
           f"{report.get('versions', 'unknown')}.", "",
           f"Base: `{json.dumps(base)}`", "",
           "Per-question exact match on test contexts (95% bootstrap interval over contexts); "
           "the curve is per-question accuracy on validation contexts every "
           f"{base['eval_every']} steps.", "",
           "| variant | change | final accuracy [95% CI] | first eval ≥ 0.9 | curve | wall s | s/step |",
           "|---|---|---|---|---|---|---|"]
  for name, row in report["variants"].items():
    change = ", ".join(f"{k}={v}" for k, v in row["change"].items()) or "—"
    if "error" in row:
      lines.append(f"| {name} | {change} | error: {row['error'][-120:]!r} | | | | |")
      continue
    f = row["final"]
    curve = " ".join(f"{a:.2f}" for _, a in row["curve"])
    step_s = f"{row['median_step_s']:.4f}" if row.get("median_step_s") else ""
    lines.append(f"| {name} | {change} | {f['accuracy']:.3f} [{f['ci95'][0]:.3f}, "
                 f"{f['ci95'][1]:.3f}] | {_first_at(row['curve']) or '—'} | {curve} | "
                 f"{row['wall_s']:.0f} | {step_s} |")
  return "\n".join(lines + _category_table(report)) + "\n"


def _category_table(report: dict[str, Any]) -> list[str]:
  """Per variant, length and task category: the category's questions pooled over its tasks
  (contexts resampled across them), with the count of scored questions."""
  from experiments import tasks
  rows = []
  for name, row in report["variants"].items():
    for length, per_task in (row.get("final_by_length") or {}).items():
      by_cat: dict[str, dict[str, dict]] = {}
      for spec, r in per_task.items():
        by_cat.setdefault(tasks.TASKS[tasks.spec(spec)[0]].category, {})[spec] = r
      if len(per_task) > 1:
        cells = [f"{(p := _pool(rs))['accuracy']:.3f} [{p['ci95'][0]:.3f}, {p['ci95'][1]:.3f}] "
                 f"({p['questions']})" for rs in by_cat.values()]
        rows.append((name, length, dict(zip(by_cat, cells))))
  if not rows:
    return []
  cats = list(dict.fromkeys(c for _, _, cells in rows for c in cells))
  return ["", "Per category (questions of its tasks pooled; 95% bootstrap interval over contexts; "
          "scored questions in parentheses):", "",
          "| variant | length | " + " | ".join(cats) + " |", "|---|---|" + "---|" * len(cats)] + [
      f"| {name} | {length} | " + " | ".join(cells.get(c, "") for c in cats) + " |"
      for name, length, cells in rows]


def _device() -> dict[str, Any]:
  import jax
  d = jax.devices()[0]
  return {"backend": d.platform, "kind": d.device_kind, "count": jax.device_count(),
          "machine": platform.machine()}


def _versions() -> dict[str, str]:
  import flax
  import jax
  return {"python": platform.python_version(), "jax": jax.__version__, "flax": flax.__version__}


if __name__ == "__main__":
  main()
