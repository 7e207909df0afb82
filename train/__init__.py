"""One training run: configs, data pipeline, step, loop, checkpoints, logging, mesh.

    from train import Config, run
    result = run(Config(run_dir="runs/x", steps=100))   # -> train.loop.Result
    model, cfg, step = load("runs/x")                     # the trained model, for evaluation

`train.data` (the grain pipeline) stays importable without jax: the rest loads on first use.
"""

_LAZY = {"Config": "train.config", "DataConfig": "train.config", "OptimConfig": "train.config",
         "MeshConfig": "train.config", "CheckpointConfig": "train.config",
         "LogConfig": "train.config", "EvalConfig": "train.config",
         "DistributedConfig": "train.config", "run": "train.loop", "Result": "train.loop", "load": "train.loop",
         # errors a caller may catch by name: a second trainer on a run dir, a bad value found
         # before anything ran, no intact checkpoint (`train.load`)
         "RunLocked": "train.guard", "ConfigError": "train.guard",
         "CheckpointError": "train.checkpoint"}


def __getattr__(name):
  if name in _LAZY:
    import importlib
    return getattr(importlib.import_module(_LAZY[name]), name)
  raise AttributeError(f"module 'train' has no attribute {name!r}")


__all__ = sorted(_LAZY)
