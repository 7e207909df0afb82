"""One training run, start to finish: `run(config) -> Result`.

Outputs in `config.run_dir`:
  config.json     the run's config (`train.config.from_dict` reads it back)
  status.json     "running" / "finished" / "preempted" / "failed", step, message, final numbers
  metrics.jsonl   one JSON line per logged step (loss, lr, grad_norm, tokens, FLOPs, speed, MFU)
                  and per evaluation (eval/<task>/<metric>)
  checkpoints/    orbax: train state + data-iterator state of the last `checkpoint.keep` saves
  wandb/          the W&B run (offline unless log.wandb says otherwise)

Stops after `config.total_steps`, on SIGTERM (saves, status "preempted", returns normally so
the process exits 0), or on a non-finite loss (keeps the last good checkpoint, status "failed").
`resume=True` continues from the latest checkpoint exactly: same params, optimizer state and
data order, so on CPU every later loss is bitwise what an uninterrupted run logs.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import json
import math
import signal
import threading
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

import models
from train import checkpoint as ckpt_lib
from train import data as data_lib
from train import evaluation as eval_lib
from train import guard
from train import log as log_lib
from train import mesh as mesh_lib
from train import step as step_lib
from train.config import (MAY_CHANGE_ON_RESUME, Config, identity_changes, make_tasks, resolve,
                          validate)


@dataclasses.dataclass
class Result:
  run_dir: Path
  status: str  # "finished", "preempted" or "failed"
  step: int
  loss: float | None
  eval: dict[str, dict[str, float]]  # task -> metric -> mean over the eval examples
  message: str = ""


class Batches:
  """This process's data shards as one iterator of [A, B_local/A, T] batches (A = grad_accum),
  with the checkpointable state of all of them."""

  def __init__(self, cfg: Config, sources: list[Any], batch_size: int | None = None):
    nproc, pid = jax.process_count(), jax.process_index()
    shards = cfg.data.shards or nproc
    per_process = shards // nproc
    weights = list(cfg.data.weights or [1.0] * len(sources))
    self.accum = cfg.grad_accum
    batch_size = batch_size or cfg.batch_size
    self.datasets = [
        data_lib.mixture(sources, weights, batch_size=batch_size // shards,
                         seed=cfg.data.seed, shard_index=j, shard_count=shards,
                         num_threads=cfg.data.num_threads)
        for j in range(pid * per_process, (pid + 1) * per_process)]
    self.iterators = [iter(d) for d in self.datasets]

  def __next__(self) -> dict[str, np.ndarray]:
    parts = [next(it) for it in self.iterators]
    # Each shard splits into the A microbatches on its own, so microbatch a holds the a-th chunk
    # of every shard wherever the shards are computed.
    return {k: np.concatenate([p[k].reshape(self.accum, -1, *p[k].shape[1:]) for p in parts], 1)
            for k in data_lib.KEYS}

  def get_state(self) -> list[Any]:
    return [it.get_state() for it in self.iterators]

  def set_state(self, state: list[Any]) -> None:
    if len(state) != len(self.iterators):
      raise ValueError(f"checkpoint holds {len(state)} data shards for this process, the config "
                       f"gives {len(self.iterators)}: resume with the same data.shards")
    for it, s in zip(self.iterators, state):
      it.set_state(s)


class _DeviceBatches:
  """The data 'iterator' of `data.source="device"`: batches are made from the step inside the
  jitted call, so there is no state to checkpoint."""

  def get_state(self) -> dict[str, str]:
    return {"source": "device"}

  def set_state(self, state: Any) -> None:
    if state != self.get_state():
      raise ValueError(f"checkpoint holds host data-iterator state {str(state)[:80]}; this run "
                       "has data.source='device': resume with the config it was saved with")


def call_end(cfg: Config, step: int) -> int:
  """The step at which the call starting after `step` completed steps ends: the next multiple
  of `steps_per_call`, or an earlier checkpoint, eval, curriculum, `data.long_lens` length
  change or final step (so each call has one sequence length: `Config.phase`). A grid fixed
  by the step count alone, so a resumed run makes the same calls as an uninterrupted one."""
  ends = [cfg.total_steps, (step // cfg.steps_per_call + 1) * cfg.steps_per_call,
          (step // cfg.checkpoint.every + 1) * cfg.checkpoint.every]
  if cfg.eval.every:
    ends.append((step // cfg.eval.every + 1) * cfg.eval.every)
  short = cfg.short_phase_steps
  if step < short:
    ends.append(short)
  elif cfg.data.long_lens:  # each length of the cycle runs whole steps_per_call blocks
    ends.append(short + ((step - short) // cfg.steps_per_call + 1) * cfg.steps_per_call)
  return min(ends)


class _Stop:
  """SIGTERM (preemption) asks the loop to save and leave at the next step boundary."""

  def __init__(self):
    self.requested = False
    self._previous = None

  def __enter__(self):
    self.requested = guard.sigterm_received()  # one that came before this handler
    if threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    return self

  def _handle(self, signum, frame):
    del signum, frame
    self.requested = True

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)

  def agreed(self) -> bool:
    """Every process stops at the same step if any of them was told to."""
    if jax.process_count() == 1:
      return self.requested
    flags = multihost_utils.process_allgather(np.int32(self.requested))
    return bool(np.asarray(flags).any())


def run(cfg: Config) -> Result:
  """Trains one model as `cfg` says; see the module docstring for what lands where.

  Before anything is written: the config, the tasks and the memory floor are checked
  (`guard.ConfigError`), then process 0 locks the run dir for the whole run (`guard.RunLocked`
  if another live trainer holds it), then a resumed run's config is compared with its
  config.json. SIGTERM from the first line on (or caught earlier by `python -m train`) stops
  the run cleanly at the first step boundary."""
  with _Stop() as stop:
    mesh_lib.initialize(cfg.distributed)
    try:
      validate(cfg, jax.device_count(), jax.process_count())
      phase_tasks = make_tasks(cfg)
    except ValueError as e:
      raise guard.ConfigError(str(e)) from e
    run_dir = Path(cfg.run_dir)
    fd, error = None, None
    if jax.process_index() == 0:  # only process 0 locks: the others are the same run
      try:
        run_dir.mkdir(parents=True, exist_ok=True)
        fd = guard.lock(run_dir)
      except guard.RunLocked as e:
        error = e
      except OSError as e:  # e.g. read-only: say which folder, not a traceback
        error = guard.ConfigError(f"run_dir={str(run_dir)!r} cannot be created or locked: "
                                  f"{e.strerror or e}")
    if jax.process_count() > 1:  # every process leaves if process 0 could not lock
      if int(multihost_utils.broadcast_one_to_all(np.int32(error is not None))):
        raise error or guard.RunLocked(f"run_dir={str(run_dir)!r}: process 0 could not lock it")
    elif error is not None:
      raise error
    try:
      return _train(cfg, run_dir, phase_tasks, stop)
    finally:
      guard.unlock(fd)


def _compiled_calls(cfg: Config, mesh, abstract, shardings, step_at, phase_tasks, phase_rows,
                    weights, start: int) -> dict[int, tuple[Any, Any]]:
  """{length: (multi-step call, device batch maker or None)} for the lengths the run has left
  to train, compiled ahead and side by side: each program is lowered here (under the mesh, in
  this thread) and the XLA compilations, which dominate a small model's start on a GPU (~20 s
  each), run in a thread pool. The device path's batch maker is its own program, the same for
  every model of a study (the compilation cache shares it between runs)."""
  k = cfg.steps_per_call
  batch_sharding = mesh_lib.batch_sharding(mesh, calls=True)
  multi_at = lambda length: jax.jit(step_lib.make_multi_step(step_at(length)), in_shardings=(
      shardings, batch_sharding, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())),
      out_shardings=(shardings, None),
      donate_argnums=0)
  ahead, step = [], start
  while step < cfg.total_steps:
    length = cfg.phase(step)[0]
    if length not in ahead:
      ahead.append(length)
    step = call_end(cfg, step)
  if cfg.data.source != "device":  # host batches: compiled at their first call
    return {length: (multi_at(length), None) for length in ahead}
  state_spec = jax.tree.map(lambda x, sh: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh),
                            abstract, shardings)
  lowered = {}
  with jax.set_mesh(mesh):
    for length in ahead:
      make = jax.jit(data_lib.device_batches(
          phase_tasks[length], weights, batch_size=phase_rows[length], accum=cfg.grad_accum,
          seed=cfg.data.seed, steps=k), out_shardings=batch_sharding)
      first = jax.ShapeDtypeStruct((), jnp.int32)
      batch_spec = jax.tree.map(
          lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=batch_sharding),
          jax.eval_shape(make, first))
      make_low = make.lower(first)
      lowered[length] = (multi_at(length).lower(state_spec, batch_spec,
                                                jax.ShapeDtypeStruct((), jnp.int32)), make_low)
  with concurrent.futures.ThreadPoolExecutor(max(1, min(8, 2 * len(lowered)))) as pool:
    futures = {length: (pool.submit(m.compile), pool.submit(g.compile))
               for length, (m, g) in lowered.items()}
    return {length: (m.result(), g.result()) for length, (m, g) in futures.items()}


def _check_identity(cfg: Config, run_dir: Path) -> bool:
  """Raises ConfigError if a resumed run's config differs from its config.json in a field that
  makes the run (`config.MAY_CHANGE_ON_RESUME` lists the others); -> whether config.json must
  be written (absent, or a fresh run replacing a run that has no checkpoint)."""
  path = run_dir / "config.json"
  if not path.exists() or not cfg.resume:  # (not resuming: checkpoints, if any, refuse it next)
    return True
  try:
    changes = identity_changes(cfg, json.loads(path.read_text()))
  except (ValueError, TypeError) as e:  # damaged, or no longer a valid config
    raise guard.ConfigError(f"{path} is unreadable ({e}): cannot check that --resume continues "
                            "the same run") from e
  if changes:
    raise guard.ConfigError(f"--resume: {run_dir} was trained with another config ("
                            + "; ".join(changes) + f"); only {', '.join(MAY_CHANGE_ON_RESUME)} "
                            "may change on resume: use another run_dir for a new run")
  return False


def _train(cfg: Config, run_dir: Path, phase_tasks: dict[int, dict[str, Any]],
           stop: "_Stop") -> Result:
  primary = jax.process_index() == 0
  write_config = _check_identity(cfg, run_dir)
  checkpoints = ckpt_lib.Checkpoints(run_dir, keep=cfg.checkpoint.keep,
                                     async_save=cfg.checkpoint.async_save)
  if checkpoints.latest_step() is not None and not cfg.resume:
    checkpoints.close()
    raise guard.ConfigError(f"run_dir={str(run_dir)!r} already holds checkpoints; pass "
                            "resume=True (--resume) to continue it, or choose another run_dir")
  if primary and write_config:  # never rewritten on resume: it is the run's identity
    (run_dir / "config.json").write_text(json.dumps(cfg.to_dict(), indent=1))

  mesh = mesh_lib.make_mesh(cfg.mesh)
  total = cfg.total_steps
  codec = step_lib.Params(cfg.model)
  tx = step_lib.optimizer(cfg.optim, total)

  init_state = functools.partial(step_lib.init_state, codec, tx, cfg.model)
  key = jax.random.key(cfg.seed)
  abstract = jax.eval_shape(init_state, key)
  shardings = mesh_lib.state_shardings(abstract, mesh)
  tasks = phase_tasks[cfg.data.seq_len]
  phase_tasks = {length: list(ts.values()) for length, ts in phase_tasks.items()}
  phase_rows = {length: cfg.rows_at(length) for length in phase_tasks}
  weights = list(cfg.data.weights or [1.0] * len(cfg.data.tasks))
  if cfg.data.source == "device":
    phases = {length: _DeviceBatches() for length in phase_tasks}
  else:
    phases = {length: Batches(cfg, [t.source("train") for t in ts], phase_rows[length])
              for length, ts in phase_tasks.items()}
  batches_at = lambda step: phases[cfg.phase(step)[0]]

  def iterator_state(step: int) -> Any:
    """The data-iterator state a checkpoint at `step` holds: the state of the phase's iterator
    (with `data.long_lens` and host data, of every length's, which the cycle interleaves)."""
    if cfg.data.long_lens and cfg.data.source == "host":
      return {"lengths": {str(length): it.get_state() for length, it in phases.items()}}
    return batches_at(step).get_state()

  def set_data_state(step: int, state: Any) -> None:
    if not (cfg.data.long_lens and cfg.data.source == "host"):
      return batches_at(step).set_state(state)
    held = state.get("lengths") if isinstance(state, dict) else None
    if not isinstance(held, dict) or set(held) != {str(n) for n in phases}:
      raise ValueError(f"checkpoint holds data-iterator state {str(state)[:80]}; this run needs "
                       f"one per length {sorted(phases)}: resume with the config it was saved "
                       "with")
    for length, it in phases.items():
      it.set_state(held[str(length)])

  if cfg.resume and checkpoints.latest_step() is not None:
    try:  # verified; a damaged newest step is set aside for the previous kept one
      state, data_state, _ = checkpoints.restore(ckpt_lib.abstract(abstract, shardings))
    except ckpt_lib.CheckpointError as e:  # none intact: never train on damaged state
      latest = checkpoints.latest_step()
      checkpoints.close()
      log_lib.write_status(run_dir, "failed", step=latest, message=str(e))
      return Result(run_dir, "failed", latest, None, {}, str(e))
    set_data_state(int(state["step"]), data_state)
  else:
    state = step_lib.place(init_state(key), shardings)
  start = int(state["step"])
  try:
    previous = log_lib.read_status(run_dir)
  except ValueError:  # a damaged status.json only loses the short cut below: it is rewritten
    previous = None
  if start >= total and previous and previous.get("status") == "finished":
    checkpoints.close()  # resuming a finished run: nothing to do, its outcome stands
    return Result(run_dir, "finished", start, previous.get("loss"), previous.get("eval", {}),
                  previous.get("message", ""))

  # One train step per model config (cfg.model_at: a dense short phase has its own).
  by_model = functools.cache(lambda model: step_lib.make_train_step(
      cfg, codec if model == cfg.model else step_lib.Params(model), tx))
  step_at = lambda length: by_model(cfg.model_at(length))
  calls = _compiled_calls(cfg, mesh, abstract, shardings, step_at, phase_tasks, phase_rows,
                          weights, start)
  k = cfg.steps_per_call

  def dispatch(state, step: int, n: int):
    """Runs steps step..step+n-1 as one call -> (state, metrics [steps_per_call], n valid)."""
    length = cfg.phase(step)[0]
    multi, make = calls[length]
    if make is not None:
      batches = make(np.int32(step))
    else:  # padded to steps_per_call with copies of the last batch, which the call skips
      host = [next(phases[length]) for _ in range(n)]
      host += host[-1:] * (k - n)
      batches = mesh_lib.global_batch({key: np.stack([b[key] for b in host])
                                       for key in data_lib.KEYS}, mesh, calls=True)
    return multi(state, batches, np.int32(n))

  evaluator = _Evaluator(cfg, codec, tasks, mesh, shardings["params"])
  logger = log_lib.Logger(
      run_dir, cfg.to_dict(), total, cfg.tokens_per_step, cfg.flops_through,
      progress=cfg.log.progress, wandb_mode=cfg.log.wandb, project=cfg.log.project,
      group=cfg.log.group, peak_tflops=cfg.log.peak_tflops)
  counts = models.param_counts(cfg.model)
  provenance = dict(git_sha=log_lib.git_sha(), devices=jax.device_count(),
                    processes=jax.process_count())
  if checkpoints.damaged:  # set aside by the restore: said in every later status
    provenance["damaged_checkpoints"] = checkpoints.damaged
    for problem in checkpoints.damaged:
      logger.message(f"damaged checkpoint set aside, resumed from step {start}: {problem}")
  log_lib.write_status(run_dir, "running", step=start, **provenance)
  logger.start(start)
  logger.message(f"{run_dir}: {counts.total:,} params ({counts.nonembed:,} non-embedding), "
                 f"{total} steps of {cfg.tokens_per_step:,} tokens, "
                 f"{cfg.flops_per_step:.3g} FLOPs/step, {jax.device_count()} devices "
                 f"(mesh data×fsdp={tuple(mesh.shape.values())}), from step {start}"
                 + (f"; the first {cfg.data.short_steps} steps at {cfg.data.short_len} tokens "
                    f"({cfg.short_flops_per_step:.3g} FLOPs/step)" if cfg.data.short_len else "")
                 + (f"; the long steps cycle through {cfg.data.long_lens} tokens, "
                    f"{cfg.steps_per_call} steps each" if cfg.data.long_lens else ""))

  step, loss, scores, status, message = start, None, {}, "finished", ""
  saved = start
  # Metrics are read one call late: while the device runs a call the host reads the previous
  # call's metrics (and loads the next host batches). Calls that save, evaluate or stop read
  # their own metrics first, so nothing is saved or scored after a non-finite loss.
  pending: list[tuple[int, Any, int]] = []  # (first step of a call, its metrics, n steps)

  def read(upto: int) -> int | None:
    """Reads the pending calls ending at or before `upto`; returns the first step with a bad
    loss."""
    nonlocal loss
    while pending and pending[0][0] + pending[0][2] - 1 <= upto:
      first, m, n = pending.pop(0)
      m = {key: v[:n] for key, v in jax.device_get(m).items()}
      last = first + n - 1
      speed = None
      for i, value in enumerate(np.asarray(m["loss"], np.float64)):
        s = first + i
        loss = float(value)
        if not math.isfinite(loss):
          return s
        if s % cfg.log.every == 0 or s == total:
          speed = speed or logger.throughput(last)  # one wall-clock reading per call
          logger.log(s, {"loss": loss, "grad_norm": float(m["grad_norm"][i]),
                         "lr": float(m["lr"][i]), "tokens": s * cfg.tokens_per_step,
                         "flops": cfg.flops_through(s), **speed})
      logger.advance(last)
    return None

  # The mesh is set while steps are traced so that kernels XLA cannot partition (Pallas
  # attention) run per shard instead of on gathered inputs (sparse_ops.partition).
  with jax.set_mesh(mesh):
    try:
      if stop.agreed():  # SIGTERM before the first call (imports, restore): nothing to compile
        status, message = "preempted", f"SIGTERM before training: stopped at step {start}"
      while status != "preempted" and step < total:
        checkpoints.seal_finished()
        end = call_end(cfg, step)
        state, metrics = dispatch(state, step, end - step)
        pending.append((step + 1, metrics, end - step))
        step = end
        stopping = stop.agreed()
        evaluate = (cfg.eval.every and step % cfg.eval.every == 0) or step == total
        save = step % cfg.checkpoint.every == 0 or step == total or stopping
        bad = read(step if (evaluate or save) else pending[-1][0] - 1)
        if bad is not None:
          step, status = bad, "failed"
          message = (f"non-finite loss {loss} at step {bad}; stopped. The last good checkpoint "
                     f"is step {checkpoints.latest_step()} in {run_dir / 'checkpoints'}")
          break
        if evaluate:
          scores = evaluator(state["params"])
          logger.log(step, {f"eval/{t}/{m}": v for t, s in scores.items() for m, v in s.items()})
        if save and saved != step:
          checkpoints.save(step, state, iterator_state(step))
          saved = step
        if stopping:
          status, message = "preempted", f"SIGTERM: saved step {step} and stopped"
          break
      checkpoints.wait()
    except BaseException as e:
      checkpoints.wait()
      log_lib.write_status(run_dir, "failed", step=step, message=f"{type(e).__name__}: {e}")
      logger.close("failed")
      raise
    finally:
      checkpoints.close()

  if message:
    logger.message(message)
  log_lib.write_status(run_dir, status, step=step, loss=loss, message=message, eval=scores,
                       params=counts.total, nonembed_params=counts.nonembed,
                       tokens=step * cfg.tokens_per_step, flops=cfg.flops_through(step),
                       **provenance)
  logger.close(status)
  return Result(run_dir, status, step, loss, scores, message)


class _Evaluator:
  """Teacher-forced argmax on each task's first `eval.examples` validation examples, scored by
  `data.scorer` through the shared loop (`train.evaluation.score_batches`); every process
  computes its rows, process 0's view of all rows is returned."""

  def __init__(self, cfg: Config, codec: step_lib.Params, tasks: dict[str, Any], mesh,
               param_shardings):
    self.cfg, self.tasks, self.mesh = cfg, tasks, mesh
    self.sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(mesh_lib.BATCH_AXES))
    self.predict = jax.jit(step_lib.make_predict(cfg, codec),
                           in_shardings=(param_shardings, self.sharding))
    # Rows per call: a multiple of the devices, so every batch shards evenly once padded.
    self.rows = -(-cfg.eval.batch_size // jax.device_count()) * jax.device_count()
    self._sets = None

  def _eval_sets(self) -> dict[str, list[dict[str, np.ndarray]]]:
    """Batches of `rows` validation examples (the last one may be shorter)."""
    n, b = self.cfg.eval.examples, self.rows
    sets = {}
    for name, task in self.tasks.items():
      source = task.source("validation")
      examples = [source[i] for i in range(n)]
      sets[name] = [{k: np.stack([r[k] for r in examples[s:s + b]]) for k in data_lib.KEYS}
                    for s in range(0, n, b)]
    return sets

  def _predictions(self, params, inputs: np.ndarray) -> np.ndarray:
    """Predictions of one batch: padded with zero rows to `rows`, sharded over the processes
    and devices, gathered back, the padding dropped."""
    real = inputs.shape[0]
    padded = np.concatenate([inputs, np.zeros((self.rows - real, *inputs.shape[1:]),
                                              inputs.dtype)])
    nproc, pid = jax.process_count(), jax.process_index()
    local = padded.shape[0] // nproc
    sharded = jax.make_array_from_process_local_data(self.sharding,
                                                     padded[pid * local:(pid + 1) * local])
    preds = self.predict(params, {"inputs": sharded})
    return np.asarray(multihost_utils.process_allgather(preds, tiled=True))[:real]

  def __call__(self, params) -> dict[str, dict[str, float]]:
    if self.cfg.eval.examples == 0:
      return {}
    if self._sets is None:
      self._sets = self._eval_sets()
    scorer = resolve(self.cfg.data.scorer)
    predict = functools.partial(self._predictions, params)
    return {name: {m: float(np.asarray(v, np.float64).mean()) for m, v in
                   eval_lib.score_batches(predict, batches, scorer).items()}
            for name, batches in self._sets.items()}


def load(run_dir: str | Path, step: int | None = None) -> tuple[models.Transformer, Config, int]:
  """(model with f32 params, config, step) of a run folder's checkpoint (default: the latest),
  on one device, for evaluation."""
  from train.config import from_dict
  run_dir = Path(run_dir)
  cfg = from_dict(json.loads((run_dir / "config.json").read_text()))
  codec = step_lib.Params(cfg.model)
  tx = step_lib.optimizer(cfg.optim, cfg.total_steps)

  abstract = jax.eval_shape(functools.partial(step_lib.init_state, codec, tx, cfg.model),
                            jax.random.key(cfg.seed))
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  checkpoints = ckpt_lib.Checkpoints(run_dir, keep=1 << 30, async_save=False)
  try:
    state, _, step = checkpoints.restore(  # verified; a damaged one raises, naming its path
        ckpt_lib.abstract(abstract, jax.tree.map(lambda _: device, abstract)), step,
        fallback=False)
  finally:
    checkpoints.close()
  return codec.model(state["params"]), cfg, step
