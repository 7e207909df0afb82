"""The integer vocabulary every task speaks: special tokens and disjoint token ranges.

Layout for `Vocab(size)`: ids 0..6 are the specials, then five contiguous ranges
(keys, values, variables, words, filler) share the remaining `size - 7` ids in fixed
proportions, so one number fixes the whole vocabulary.
"""

from __future__ import annotations

import dataclasses

import numpy as np

PAD, BOS, SEP, QUERY, ANSWER, BIND, ASSIGN = range(7)
SPECIALS = ("PAD", "BOS", "SEP", "QUERY", "ANSWER", "BIND", "ASSIGN")
MIN_SIZE = 128
MAX_SIZE = 2**31 - 1

# Sixteenths of the non-special ids per range; filler takes what is left (about 1/8).
_SHARES = (("keys", 4), ("values", 4), ("variables", 3), ("words", 3))

_SHORT = {"keys": "k", "values": "v", "variables": "x", "words": "w", "filler": "."}
_SPECIAL_TEXT = ("_", "<s>", "|", "?", "=>", ":", "=")


@dataclasses.dataclass(frozen=True)
class Vocab:
  """Token ids for a vocabulary of `size` ids.

  Needles read `key BIND value`, assignments `var ASSIGN value` or `var ASSIGN var`;
  filler tokens make up the haystack and never carry information.
  """

  size: int

  PAD = PAD
  BOS = BOS
  SEP = SEP
  QUERY = QUERY
  ANSWER = ANSWER
  BIND = BIND
  ASSIGN = ASSIGN

  def __post_init__(self):
    if not isinstance(self.size, (int, np.integer)) or not MIN_SIZE <= self.size <= MAX_SIZE:
      raise ValueError(f"vocab_size={self.size!r} must be an int in [{MIN_SIZE}, {MAX_SIZE}]")

  @property
  def ranges(self) -> dict[str, range]:
    """Name -> contiguous id range, in id order: keys, values, variables, words, filler."""
    rest = self.size - len(SPECIALS)
    out, start = {}, len(SPECIALS)
    for name, sixteenths in _SHARES:
      n = rest * sixteenths // 16
      out[name] = range(start, start + n)
      start += n
    out["filler"] = range(start, self.size)
    return out

  @property
  def keys(self) -> range:
    return self.ranges["keys"]

  @property
  def values(self) -> range:
    return self.ranges["values"]

  @property
  def variables(self) -> range:
    return self.ranges["variables"]

  @property
  def words(self) -> range:
    return self.ranges["words"]

  @property
  def filler(self) -> range:
    return self.ranges["filler"]

  def in_range(self, tokens: np.ndarray, name: str) -> np.ndarray:
    """[...] int -> [...] bool: which tokens lie in range `name`."""
    r = self.ranges[name]
    tokens = np.asarray(tokens)
    return (tokens >= r.start) & (tokens < r.stop)

  def token_text(self, token: int) -> str:
    """One token as short text: specials as symbols, range tokens as prefix + offset (`k3`)."""
    token = int(token)
    if 0 <= token < len(SPECIALS):
      return _SPECIAL_TEXT[token]
    for name, r in self.ranges.items():
      if token in r:
        return _SHORT[name] if name == "filler" else f"{_SHORT[name]}{token - r.start}"
    raise ValueError(f"token={token} must be in [0, {self.size})")

  def decode(self, tokens: np.ndarray) -> str:
    """[T] int -> text with runs of filler collapsed to `.×n`, so long contexts stay readable."""
    tokens = np.asarray(tokens)
    filler = self.in_range(tokens, "filler")
    # Every non-filler token, and the first token of every filler run, starts a part.
    starts = np.flatnonzero(~filler | np.r_[True, ~filler[:-1]])
    ends = np.r_[starts[1:], len(tokens)]
    return " ".join(f".×{e - s}" if filler[s] else self.token_text(tokens[s])
                    for s, e in zip(starts, ends))
