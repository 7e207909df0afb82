"""Run-folder files written atomically and read back defensively (JSON records, text).

JAX-free: the analysis layer reads study folders through this and `results` alone.
"""

from __future__ import annotations

import gzip
import json
import os
import zlib
from pathlib import Path
from typing import Any


class DamagedFile(ValueError):
  """A small file that exists but cannot be read back (truncated, garbled, wrong shape)."""



def write_text(path: Path, text: str) -> None:
  """Atomic: a reader (status, another executor) never sees half a file, and a crash or a full
  disk leaves the previous version, not a truncated one. A path ending in .gz is written
  gzipped (with no timestamp, so the same text gives the same bytes)."""
  path = Path(path)
  tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
  try:
    with open(tmp, "wb") as f:  # the text's own line ends (csv writes \r\n)
      data = text.encode()
      f.write(gzip.compress(data, mtime=0) if path.suffix == ".gz" else data)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  finally:
    tmp.unlink(missing_ok=True)


def write_json(path: Path, obj: Any, *, compact: bool = False) -> None:
  """Indented, or with `compact` on one line (gzipped where the path ends in .gz)."""
  write_text(path, json.dumps(obj, separators=(",", ":")) if compact else
             json.dumps(obj, indent=1))


def read_json(path: Path, default: Any = None, *, need: tuple[str, ...] = ()) -> Any:
  """The file's JSON, `default` if it does not exist; DamagedFile naming the path if it does
  but cannot be parsed, or is not an object holding the keys in `need`."""
  path = Path(path)
  try:
    data = path.read_bytes()
    d = json.loads(gzip.decompress(data) if path.suffix == ".gz" else data)
  except FileNotFoundError:
    return default
  # JSONDecodeError is a ValueError; a cut gzip stream raises EOFError, a garbled one
  # BadGzipFile or zlib.error
  except (ValueError, UnicodeDecodeError, EOFError, gzip.BadGzipFile, zlib.error) as e:
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
