"""``python -m experiments <command>``: the study's entry point.

Commands: ``demo`` (a sparse_ops tour, the embedded default until the study lands).
"""

import sys


def main(argv=None) -> None:
  argv = list(sys.argv[1:] if argv is None else argv)
  commands = {"demo": "experiments.demo"}
  if not argv or argv[0] not in commands:
    print(f"usage: python -m experiments {{{','.join(commands)}}} [options]", file=sys.stderr)
    raise SystemExit(2)
  import importlib
  importlib.import_module(commands[argv[0]]).main(argv[1:])


if __name__ == "__main__":
  main()
