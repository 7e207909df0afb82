"""Run-folder files written atomically and read back defensively (JSON records, text).

JAX-free: the analysis layer reads study folders through this and `results` alone.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


class DamagedFile(ValueError):
  """A small file that exists but cannot be read back (truncated, garbled, wrong shape)."""



def write_text(path: Path, text: str) -> None:
  """Atomic: a reader (status, another executor) never sees half a file, and a crash or a full
  disk leaves the previous version, not a truncated one."""
  path = Path(path)
  tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
  try:
    with open(tmp, "w", newline="") as f:  # the text's own line ends (csv writes \r\n)
      f.write(text)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  finally:
    tmp.unlink(missing_ok=True)


def write_json(path: Path, obj: Any, *, compact: bool = False) -> None:
  """Indented, or with `compact` on one line: a run's eval.json holds every question's outcome
  (9.3 MB indented for an h200 run, 3.5 MB compact), and study folders travel to GPU machines."""
  write_text(path, json.dumps(obj, separators=(",", ":")) if compact else
             json.dumps(obj, indent=1))


def read_json(path: Path, default: Any = None, *, need: tuple[str, ...] = ()) -> Any:
  """The file's JSON, `default` if it does not exist; DamagedFile naming the path if it does
  but cannot be parsed, or is not an object holding the keys in `need`."""
  try:
    d = json.loads(Path(path).read_text())
  except FileNotFoundError:
    return default
  except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError is a ValueError
    raise DamagedFile(f"{path}: unreadable ({type(e).__name__}: {e})") from None
  if need and not (isinstance(d, dict) and all(k in d for k in need)):
    raise DamagedFile(f"{path}: not the expected record (needs keys {list(need)})")
  return d


def readable(path: Path, need: tuple[str, ...] = ()) -> Any:
  """read_json that answers None for a damaged file too (callers that report it elsewhere)."""
  try:
    return read_json(path, need=need)
  except DamagedFile:
    return None
