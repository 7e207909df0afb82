"""``python -m experiments``: see `experiments.cli`."""

if __name__ == "__main__":
  # Before anything else: a SIGTERM while the CLI module loads (about 0.1 s) ended a `job` as a
  # bare exit 143 with no record. It is noted here, and cli.main stops on it as on a later one.
  import signal
  _noted: list[int] = []
  signal.signal(signal.SIGTERM, lambda signum, frame: _noted.append(signum))

  from experiments import cli
  cli.main(noted_sigterm=_noted)
