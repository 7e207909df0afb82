"""``python -m experiments``: see `experiments.cli`."""

from experiments import cli

if __name__ == "__main__":
  cli.main()
