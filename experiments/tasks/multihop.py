"""Multi-hop: chains of assignments `x1 ASSIGN value`, `x2 ASSIGN x1`, ... (RULER VT).

`num_chains` chains of `num_hops` assignments each, interleaved in the context with each
chain's assignments in order. Variables and values are distinct across chains.

- variable_tracking: `QUERY value` -> every variable of that value's chain, in
  assignment order.
- chain_resolve: `QUERY var` with var the chain's last variable -> the chain's value
  (`path=True`: -> the chain walked from var to the value, every variable on the way then
  the value, `num_hops` tokens. The single-token answer asks for every hop inside one forward
  pass, which no model of the ladder learned in our runs, `benchmarks/results/recipe_*.md`;
  the path spells one hop per answer token, as variable_tracking does in the other
  direction, and a question is right only if every hop and the value are).

Multi-question forms (`questions=n <= num_chains`): n distinct chains asked, in random order,
each question followed by its answer.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from experiments.tasks import base, device


@dataclasses.dataclass(frozen=True, kw_only=True)
class _Chains(base.Task):
  num_chains: int = 4
  num_hops: int = 4
  depth: tuple[float, float] = (0.0, 1.0)

  category = "multihop"

  def _validate(self):
    v = self.vocab
    base.check_int(self.name, "num_chains", self.num_chains, 1, len(v.values),
                   f"one distinct value per chain; {len(v.values)} values at vocab_size={self.vocab_size}")
    base.check_int(self.name, "num_hops", self.num_hops, 1, len(v.variables) // self.num_chains,
                   f"num_chains={self.num_chains} × num_hops distinct variables must fit "
                   f"the {len(v.variables)} at vocab_size={self.vocab_size}")
    base.check_depth(self.name, self.depth)

  @property
  def min_context_len(self):
    return 3 * self.num_chains * self.num_hops

  @property
  def max_questions(self):
    return self.num_chains

  @property
  def question_len(self):
    return 2

  def _asked(self, rng) -> np.ndarray:
    """-> [questions] distinct chains to ask."""
    if self.questions == 1:
      return np.array([rng.integers(self.num_chains)])
    return rng.choice(self.num_chains, self.questions, replace=False)

  def _device_asked(self, key) -> jax.Array:
    """`_asked` on device."""
    if self.questions == 1:
      return jax.random.randint(key, (1,), 0, self.num_chains)
    return device.sample(key, self.num_chains, self.questions)

  def _chains(self, rng):
    """-> context [C], variables [chains, hops], values [chains], chain of each item, starts."""
    v = self.vocab
    c, h = self.num_chains, self.num_hops
    variables = base.distinct(rng, v.variables, c * h)[:, 0].reshape(c, h)
    values = base.distinct(rng, v.values, c)[:, 0]
    # Interleave chains at random while keeping each chain's assignments in order.
    chain = rng.permutation(np.repeat(np.arange(c), h))
    hop = np.empty(c * h, np.int64)
    hop[np.argsort(chain, kind="stable")] = np.tile(np.arange(h), c)
    rhs = np.where(hop == 0, values[chain], variables[chain, np.maximum(hop - 1, 0)])
    items = np.stack([variables[chain, hop], np.full(c * h, v.ASSIGN), rhs], axis=1)
    starts = base.place(rng, self.context_len, c * h, 3, self.depth)
    context = base.fill(rng, v, self.context_len, starts, items)
    return context, variables, values, chain, starts

  def _device_chains(self, key):
    """`_chains` on device: -> context [C], variables [chains, hops], values [chains]."""
    v = self.vocab
    c, h = self.num_chains, self.num_hops
    k_vars, k_values, k_chain, k_place, k_fill = jax.random.split(key, 5)
    variables = device.distinct(k_vars, v.variables, c * h)[:, 0].reshape(c, h)
    values = device.distinct(k_values, v.values, c)[:, 0]
    # A uniform shuffle of the repeated chain ids: a uniform interleaving of the chains; the
    # k-th item of a chain (in context order) is its k-th hop.
    chain = jax.random.permutation(k_chain, jnp.repeat(jnp.arange(c), h))
    hop = jnp.zeros(c * h, jnp.int32).at[jnp.argsort(chain, stable=True)].set(
        jnp.tile(jnp.arange(h), c))
    rhs = jnp.where(hop == 0, values[chain], variables[chain, jnp.maximum(hop - 1, 0)])
    items = jnp.stack([variables[chain, hop], jnp.full(c * h, v.ASSIGN, jnp.int32), rhs], axis=1)
    starts = device.place(k_place, self.context_len, c * h, 3, self.depth)
    context = device.fill(k_fill, v, self.context_len, starts, items)
    return context, variables, values


@dataclasses.dataclass(frozen=True, kw_only=True)
class VariableTracking(_Chains):
  name = "variable_tracking"

  @property
  def answer_len(self):
    return self.num_hops

  def _sample(self, rng):
    context, variables, values, chain, starts = self._chains(rng)
    q = self._asked(rng)
    questions = np.stack([np.full(len(q), self.vocab.QUERY), values[q]], axis=1)
    return context, questions, variables[q], _evidence(starts, chain, q)

  def _device_sample(self, key):
    k_chains, k_asked = jax.random.split(key)
    context, variables, values = self._device_chains(k_chains)
    q = self._device_asked(k_asked)
    questions = jnp.stack([jnp.full(len(q), self.vocab.QUERY, jnp.int32), values[q]], axis=1)
    return context, questions, variables[q]


@dataclasses.dataclass(frozen=True, kw_only=True)
class ChainResolve(_Chains):
  path: bool = False

  name = "chain_resolve"

  def _validate(self):
    super()._validate()
    if not isinstance(self.path, bool):
      raise ValueError(f"chain_resolve: path={self.path!r} is invalid; valid: True or False")

  @property
  def answer_len(self):
    return self.num_hops if self.path else 1

  def _answers(self, variables, values, q, xp):
    """[questions, answer_len]: the value, or (path) the walk from the asked variable."""
    if not self.path:
      return values[q][:, None]
    # variables[c, k] is assigned variables[c, k - 1] (k > 0) and variables[c, 0] the value.
    return xp.concatenate([variables[q, :-1][:, ::-1], values[q][:, None]], axis=1)

  def _sample(self, rng):
    context, variables, values, chain, starts = self._chains(rng)
    q = self._asked(rng)
    questions = np.stack([np.full(len(q), self.vocab.QUERY), variables[q, -1]], axis=1)
    return context, questions, self._answers(variables, values, q, np), _evidence(starts, chain, q)

  def _device_sample(self, key):
    k_chains, k_asked = jax.random.split(key)
    context, variables, values = self._device_chains(k_chains)
    q = self._device_asked(k_asked)
    questions = jnp.stack([jnp.full(len(q), self.vocab.QUERY, jnp.int32), variables[q, -1]],
                          axis=1)
    return context, questions, self._answers(variables, values, q, jnp)


def _evidence(starts: np.ndarray, chain: np.ndarray, asked: np.ndarray) -> np.ndarray:
  """Starts of the asked chains' assignments, question order, each chain in context order."""
  return np.concatenate([starts[chain == q] for q in asked])
