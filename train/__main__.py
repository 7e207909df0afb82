"""`python -m train [--flags]`: one training run from the command line (tyro, from `Config`).

    python -m train --run-dir runs/try --model.width 64 --model.depth 2 --steps 300
    python -m train --run-dir runs/try --resume            # continue it exactly
    python -m train --size 100k --run-dir runs/a --flop-budget 1e13 \\
        --model.attention.pattern local --model.attention.sparsity 0.9

`--size NAME` starts from `models.family(NAME)`; explicit --model.* flags then override it.
Exit status: 0 finished or preempted (SIGTERM, even during start-up), 1 failed (e.g.
non-finite loss, no intact checkpoint), 2 a bad value or a run dir another trainer holds (one
line on stderr; `--debug` shows the traceback instead).
"""

from __future__ import annotations

if __name__ == "__main__":  # before the heavy imports: a SIGTERM during them is a clean stop
  from train import guard as _guard
  _guard.catch_sigterm_early()

import contextlib
import dataclasses
import io
import sys

import tyro

import models
from train import guard
from train.config import Config
from train.loop import run


def main(argv: list[str] | None = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  debug = "--debug" in argv
  argv = [a for a in argv if a != "--debug"]
  try:
    return _main(argv)
  except (guard.ConfigError, guard.RunLocked) as e:
    if debug:
      raise
    print(f"error: {e}", file=sys.stderr)
    raise SystemExit(2) from None


def _main(argv: list[str]) -> int:
  default = Config()
  if "--size" in argv:  # a ladder size as the model's defaults, before tyro parses the rest
    i = argv.index("--size")
    if i + 1 >= len(argv):
      raise guard.ConfigError("--size needs a value: one of " + ", ".join(models.SIZES))
    size = argv[i + 1]
    del argv[i:i + 2]
    try:
      model = models.family(size, vocab_size=default.model.vocab_size)
    except ValueError as e:
      raise guard.ConfigError(str(e)) from e
    default = dataclasses.replace(default, model=model)
  cfg = _parse(argv, default)
  result = run(cfg)
  if result.status == "failed":
    print(result.message, file=sys.stderr)
    return 1
  return 0


def _parse(argv: list[str], default: Config) -> Config:
  """tyro's parse, with its boxed error (8-10 lines) cut to the line that names the value and
  what is valid; --help and every other output pass through unchanged."""
  err = io.StringIO()
  try:
    with contextlib.redirect_stderr(err):
      return tyro.cli(Config, args=argv, default=default, description=__doc__)
  except SystemExit as e:
    if e.code in (0, None):
      sys.stderr.write(err.getvalue())
      raise
    raise guard.ConfigError(guard.box_message(err.getvalue()) + " (--help lists every flag)") from None


if __name__ == "__main__":
  sys.exit(main())
