"""Look at the tasks: `python -m experiments.tasks {show,throughput,build} ...`.

  show niah_multikey --length 256 --knob num_needles=6   decoded example, answer marked
  show "chain_resolve(path=True, questions=2)"           a task spec with knobs, as grids take
  throughput --lengths 4096 65536                        tokens/s per task, this core
  build common_words --length 4096 --data-dir /data --split test=256   TFDS array_record
"""

from __future__ import annotations

import argparse
import ast
import sys

import numpy as np

from experiments.tasks import registry, speed


def _knobs(pairs: list[str]) -> dict:
  out = {}
  for pair in pairs:
    key, sep, value = pair.partition("=")
    if not sep:
      raise SystemExit(f"--knob {pair!r} must look like name=value")
    try:
      out[key] = ast.literal_eval(value)
    except (ValueError, SyntaxError):
      raise SystemExit(f"--knob {pair!r}: value must be a Python literal") from None
  return out


def show(args) -> None:
  task = registry.make(args.task, length=args.length, vocab_size=args.vocab_size, seed=args.seed,
                       **_knobs(args.knob))
  ex = task.example(args.split, args.index)
  v, a = task.vocab, len(ex["answer"])
  print(f"{task}\n{args.split}[{args.index}]  category={task.category}  length={task.length}")
  # Input p is an answer token when position p - 1 predicts it (weights[p - 1] > 0).
  answer = np.r_[False, ex["weights"][:-1] > 0]
  parts, start = [], 0
  for p in range(1, task.length + 1):
    if p == task.length or answer[p] != answer[start]:
      text = v.decode(ex["inputs"][start:p])
      parts.append(f"[[ {text} ]]" if answer[start] else text)
      start = p
  print(f"\n{' '.join(parts)}\n")
  depth = (ex["evidence"] - 1) / max(task.context_len - 1, 1)
  print(f"answer ({task.questions} question(s), {a} tokens, marked [[ ]]): "
        f"{ex['answer'].tolist()}")
  shown = ", ".join(f"{p} ({d:.2f})" for p, d in zip(ex["evidence"][:16], depth[:16]))
  more = f", ... ({len(depth)} in all)" if len(depth) > 16 else ""
  print(f"evidence at position (depth in context): {shown}{more}")


def throughput(args) -> None:
  names = args.tasks or list(registry.TASKS)
  print(f"{'task':20s}" + "".join(f"{f'T={n}':>16s}" for n in args.lengths) + "   (tokens/s)")
  for name in names:
    rates = [speed.tokens_per_second(registry.make(name, length=n, vocab_size=args.vocab_size),
                                     min_seconds=args.seconds) for n in args.lengths]
    print(f"{name:20s}" + "".join(f"{r:16,.0f}" for r in rates))


def build(args) -> None:
  from experiments.tasks import tfds_builders  # tfds only when building
  splits = {k: int(n) for k, n in _knobs(args.split).items()} if args.split else None
  b = tfds_builders.builder(args.task, data_dir=args.data_dir, length=args.length,
                            vocab_size=args.vocab_size, seed=args.seed, splits=splits,
                            **_knobs(args.knob))
  b.download_and_prepare()
  print(f"built {b.name}/{b.builder_config.name} into {b.data_dir}")


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(prog="python -m experiments.tasks", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = parser.add_subparsers(dest="command", required=True)

  def common(p, task=True, spec=False):
    if spec:  # a name or a spec with knobs; make() names the valid ones
      p.add_argument("task", help=f"one of {sorted(registry.TASKS)}, or a spec such as "
                     "'chain_resolve(path=True)'")
    elif task:
      p.add_argument("task", choices=sorted(registry.TASKS))
    if task or spec:
      p.add_argument("--length", type=int, default=256)
      p.add_argument("--seed", type=int, default=0)
      p.add_argument("--knob", action="append", default=[], metavar="NAME=VALUE")
    p.add_argument("--vocab-size", type=int, default=512)

  p = sub.add_parser("show", help="print a decoded example with its answer marked")
  common(p, spec=True)
  p.add_argument("--split", default="test")
  p.add_argument("--index", type=int, default=0)
  p.set_defaults(run=show)

  p = sub.add_parser("throughput", help="generation tokens/s per task on this core")
  common(p, task=False)
  p.add_argument("--tasks", nargs="*", choices=sorted(registry.TASKS))
  p.add_argument("--lengths", type=int, nargs="+", default=[4096])
  p.add_argument("--seconds", type=float, default=1.0)
  p.set_defaults(run=throughput)

  p = sub.add_parser("build", help="build a TFDS (array_record) eval set")
  common(p)
  p.add_argument("--data-dir", required=True)
  p.add_argument("--split", action="append", default=[], metavar="SPLIT=N")
  p.set_defaults(run=build)

  args = parser.parse_args(argv)
  try:
    args.run(args)
  except ValueError as e:
    raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
  main(sys.argv[1:])
