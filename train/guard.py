"""What keeps a run dir safe from a second trainer and from an early SIGTERM (stdlib only, so
`python -m train` can arm it before the heavy imports).

    RunLocked      a second trainer on a run dir that another live process trains
    ConfigError    a config / run-dir problem found before anything was written or compiled
    lock(run_dir)  fcntl.flock on run_dir/.lock for the life of the returned handle
    catch_sigterm_early() / sigterm_received()   SIGTERM before `train.run` installs its own
    box_message(text)   a tyro error box cut to its first paragraph, one line (both CLIs)
"""

from __future__ import annotations

import fcntl
import os
import signal
from pathlib import Path


class RunLocked(RuntimeError):
  """Another live process holds the run dir's lock (the sweep catches exactly this name)."""


class ConfigError(ValueError):
  """A bad value found before the run started: the CLI prints it as one line (exit 2)."""


LOCK_NAME = ".lock"


def lock(run_dir: Path) -> int:
  """Takes run_dir/.lock exclusively -> its fd (keep it open: closing it, or the process dying,
  even by kill -9, releases the lock, so a dead trainer never blocks its run dir). Raises
  RunLocked, having written nothing, if another process holds it."""
  path = Path(run_dir) / LOCK_NAME
  fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except BlockingIOError:
    holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
    os.close(fd)
    raise RunLocked(f"run_dir={str(run_dir)!r} is being trained by pid {holder} (lock {path}); "
                    "wait for it or stop it first") from None
  os.ftruncate(fd, 0)  # the holder's pid, for the message above (the lock is the flock itself)
  os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
  return fd


def unlock(fd: int | None) -> None:
  if fd is not None:
    os.close(fd)  # releases the flock


_early = {"received": False}


def _note(signum, frame):
  del signum, frame
  _early["received"] = True


def catch_sigterm_early() -> None:
  """Arms a SIGTERM handler that only notes the signal; `train.run` honours it at its first step
  boundary (status preempted, exit 0) instead of the process dying with 143 and no status."""
  signal.signal(signal.SIGTERM, _note)


def sigterm_received() -> bool:
  return _early["received"]


def box_message(text: str) -> str:
  """The first paragraph of a rich error box as one line: '│ a │\\n│ b │\\n│ ─── │' -> 'a b'
  (both CLIs, `python -m train` and `python -m experiments`, cut tyro's errors so). A blank
  line ends it too: what follows one is the
  detail ("Got errors: - <class 'NoneType'>: ..." after "Error parsing --stop-after: ...")."""
  lines = []
  for line in text.splitlines():
    inner = line.strip().strip("│╭╮╰╯").strip()
    if inner.startswith("─") or not inner:  # a rule or a blank line: the paragraph ends
      if lines:
        break
      continue
    lines.append(inner)
  return " ".join(lines) or text.strip()
