"""Masks: exact nnz, sound block bounds, algebra, validation."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from sparse_ops import masks as M


def primitive(draw):
  kind = draw(st.sampled_from(["causal", "full", "local", "sink", "strided", "random", "vs",
                               "prefix"]))
  if kind == "prefix":
    return M.QueryPrefix(draw(st.integers(0, 60)))
  if kind == "causal":
    return M.Causal()
  if kind == "full":
    return M.Full()
  if kind == "local":
    return M.Local(draw(st.integers(1, 70)))
  if kind == "sink":
    return M.Sink(draw(st.integers(1, 20)))
  if kind == "strided":
    return M.Strided(draw(st.integers(1, 9)))
  if kind == "random":
    return M.BlockRandom(draw(st.floats(0, 1)), draw(st.integers(0, 2**31)),
                         draw(st.sampled_from([1, 4, 16])))
  cols = tuple(draw(st.lists(st.integers(0, 60), max_size=3)))
  diags = tuple(draw(st.lists(st.integers(0, 30), min_size=0 if cols else 1, max_size=3)))
  return M.VerticalSlash(cols, diags)


@st.composite
def any_mask(draw, depth=2):
  m = primitive(draw)
  for _ in range(draw(st.integers(0, depth))):
    other = primitive(draw)
    m = (m & other) if draw(st.booleans()) else (m | other)
  return m


@st.composite
def mask_and_lengths(draw):
  heads = draw(st.sampled_from([None, 3]))
  if heads is None:
    m = draw(any_mask())
  else:
    m = M.MultiHead([draw(any_mask(depth=1)) for _ in range(heads)])
  return m, draw(st.integers(1, 90)), draw(st.integers(1, 90))


@settings(max_examples=300)
@given(mask_and_lengths())
def test_nnz_equals_brute_force(case):
  m, t, s = case
  assert m.nnz(t, s) == int(M.dense(m, t, s).sum())


@settings(max_examples=200)
@given(any_mask(), st.integers(1, 40), st.integers(1, 40), st.data())
def test_block_bounds_are_sound(m, t, s, data):
  """any/all from closed forms never contradict the elements; primitives are exact."""
  dense = M.dense(m, t + 40, s + 40)
  q0 = data.draw(st.integers(0, t - 1)); q1 = data.draw(st.integers(q0 + 1, q0 + 40))
  k0 = data.draw(st.integers(0, s - 1)); k1 = data.draw(st.integers(k0 + 1, k0 + 40))
  any_, all_ = (bool(np.asarray(x)) for x in m.block_bounds(np.array(q0), np.array(q1),
                                                            np.array(k0), np.array(k1)))
  block = dense[q0:q1, k0:k1]
  assert any_ >= bool(block.any()) and all_ <= bool(block.all())
  if not isinstance(m, (M.And, M.Or)):
    assert any_ == bool(block.any())
    if not isinstance(m, M.VerticalSlash):  # its "all" is only claimed for 1×1 rectangles
      assert all_ == bool(block.all())


def test_closed_forms_for_large_lengths():
  t = 1 << 20
  assert M.Causal().nnz(t, t) == t * (t + 1) // 2
  assert M.Local(1024).nnz(t, t) == 1024 * t - 1024 * 1023 // 2
  assert M.Full().nnz(t, 77) == 77 * t
  assert M.Sink(4).nnz(t, t) == 4 * t


def test_algebra_simplifies_known_containment():
  assert M.Local(8) & M.Causal() == M.Local(8)
  assert M.Causal() & M.VerticalSlash((1,), (0,)) == M.VerticalSlash((1,), (0,))
  assert M.Full() & M.Sink(2) == M.Sink(2)
  assert isinstance(M.Sink(2) & M.Causal(), M.And)
  # and |: a dense pattern's sink adds nothing to Causal(), which cuDNN's dense check needs
  assert M.Causal() | (M.Sink(64) & M.Causal()) == M.Causal()
  assert M.Local(8) | M.Causal() == M.Causal() and M.Sink(2) | M.Full() == M.Full()
  assert M.Full() | M.Local(3) == M.Full()
  assert isinstance(M.Sink(2) | M.Causal(), M.Or)  # a sink alone also sees later keys


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_or_and_and_mean_the_elementwise_union_and_intersection(data):
  a, b = primitive(data.draw), primitive(data.draw)
  t, s = data.draw(st.integers(1, 70)), data.draw(st.integers(1, 70))
  da, db = M.dense(a, t, s), M.dense(b, t, s)
  np.testing.assert_array_equal(M.dense(a | b, t, s), da | db)
  np.testing.assert_array_equal(M.dense(a & b, t, s), da & db)
  first = data.draw(st.integers(0, t - 1))  # a few rows alone: those rows of the whole
  np.testing.assert_array_equal(M.dense(a, t, s, q_start=first), da[first:])


def test_multihead_predicate_and_heads():
  m = M.MultiHead([M.Local(2), M.Causal()]) & M.Causal()
  assert m.num_heads == 2
  d = M.dense(m, 5, 5)
  assert d.shape == (2, 5, 5)
  np.testing.assert_array_equal(d[0], M.dense(M.Local(2), 5, 5))
  np.testing.assert_array_equal(d[1], np.tril(np.ones((5, 5), bool)))
  with pytest.raises(ValueError, match="3 and 2 heads"):
    M.MultiHead([M.Causal()] * 3) & M.MultiHead([M.Causal()] * 2)


def test_block_random_is_stateless_and_near_density():
  m = M.BlockRandom(0.3, seed=7, block=4)
  d = M.dense(m, 400, 400)
  assert abs(d.mean() - 0.3) < 0.05
  np.testing.assert_array_equal(d, M.dense(M.BlockRandom(0.3, seed=7, block=4), 400, 400))
  assert (d != M.dense(M.BlockRandom(0.3, seed=8, block=4), 400, 400)).any()
  # constant on each 4×4 tile
  tiles = d.reshape(100, 4, 100, 4)
  assert (tiles.all((1, 3)) | ~tiles.any((1, 3))).all()


@pytest.mark.parametrize("make, message", [
    (lambda: M.Local(0), "window=0 must be a positive integer"),
    (lambda: M.Local(-3), "window=-3"),
    (lambda: M.Sink(0), "n=0"),
    (lambda: M.Strided(0), "stride=0"),
    (lambda: M.BlockRandom(1.5), r"density=1.5 must be in \[0, 1\]"),
    (lambda: M.BlockRandom(-0.1), r"density=-0.1 must be in \[0, 1\]"),
    (lambda: M.BlockRandom(0.5, block=0), "block=0"),
    (lambda: M.VerticalSlash((-1,), ()), "columns"),
    (lambda: M.VerticalSlash((), (-2,)), "diagonals"),
    (lambda: M.MultiHead([]), "at least one"),
    (lambda: M.Causal().nnz(0, 4), "q_len=0"),
    (lambda: M.QueryPrefix(-1), "n=-1 must be a non-negative integer"),
])
def test_bad_parameters_name_the_value(make, message):
  with pytest.raises(ValueError, match=message):
    make()
