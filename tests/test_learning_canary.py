"""The learning canary: a small ladder model, with the training recipe, learns multi-question
retrieval on a CPU in minutes. If the recipe (model, optimiser, task format, data path)
regresses, this fails.

The model is the ladder's 100k with the short convolution (`conv_kernel=4`); the task is
`niah_multikey` with 8 needles, all 8 asked, each question directly followed by its answer
(chance 1/30 at vocab 128). On the 2-core CPU the test takes about 76 s on one core. The
ablation behind it (benchmarks/results/recipe_cpu.md, 600 steps of the same problem): 1.00 per
question from step 300 with the convolution, 0.20 without.
"""

import time

import pytest

import models
import train

TASK = "niah_multikey(num_needles=8, questions=8)"


@pytest.mark.slow
def test_a_small_model_learns_multi_question_retrieval(tmp_path):
  model = models.family("100k", vocab_size=128, conv_kernel=4,
                        attention=models.AttentionConfig(implementation="reference"))
  cfg = train.Config(
      run_dir=str(tmp_path / "canary"), model=model, batch_size=32, steps=320,
      compute_dtype="float32", steps_per_call=40,
      optim=train.OptimConfig(lr=3e-3, warmup_steps=16, weight_decay=0.0),
      data=train.DataConfig(tasks=(TASK,), seq_len=128, source="device"),
      eval=train.EvalConfig(examples=64, batch_size=64),
      log=train.LogConfig(every=40, progress=False, wandb="disabled"),
      checkpoint=train.CheckpointConfig(every=10**6))
  start = time.perf_counter()
  result = train.run(cfg)
  took = time.perf_counter() - start
  assert result.status == "finished"
  accuracy = result.eval[TASK]["question_accuracy"]  # 64 validation contexts × 8 questions
  assert accuracy >= 0.95, (accuracy, f"{took:.0f} s")
