"""The C++ 1xN block-sparse matmul (xla_ext) against a NumPy reference (paper Fig. 3
decode; the kernel equals the dense masked product).

The BSR arrays are built here with plain NumPy from a random block mask, independently of
``onexn.pack``; the reference is the float64 dense product with the masked weight.
"""
import ctypes
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import xla_ext
from xla_ext import _build

pytestmark = pytest.mark.skipif(not xla_ext.available(),
                                reason=f'xla_ext kernel unavailable: {xla_ext.load_error()}')

ISAS = [i for i in ('generic', 'avx2', 'avx512') if xla_ext.available() and xla_ext.isa_supported(i)]


def random_bsr(rng, k, groups, n, keep_prob, empty_groups=(), full_groups=()):
  """Block keep flags [K, G] -> (row_ptr, col_idx, values, dense masked W [K, G*N])."""
  keep = rng.random((k, groups)) < keep_prob
  keep[:, list(empty_groups)] = False
  keep[:, list(full_groups)] = True
  w = rng.standard_normal((k, groups * n)).astype(np.float32)
  dense = w * np.repeat(keep, n, axis=1)
  row_ptr, col_idx, values = [0], [], []
  for g in range(groups):
    for c in range(k):
      if keep[c, g]:
        col_idx.append(c)
        values.append(w[c, g * n:(g + 1) * n])
    row_ptr.append(len(col_idx))
  values = np.asarray(values, np.float32).reshape(-1, n)
  return (np.asarray(row_ptr, np.int32), np.asarray(col_idx, np.int32), values, dense)


def rel_err(y, ref):
  y = np.asarray(y, np.float64)
  return float(np.max(np.abs(y - ref)) / max(1e-30, np.max(np.abs(ref)))) if ref.size else 0.0


@settings(max_examples=30, deadline=None)
@given(rows=st.integers(1, 130), k=st.integers(1, 70), groups=st.integers(1, 9),
       n=st.sampled_from([1, 2, 3, 4, 8, 16, 32]), keep_prob=st.sampled_from([0.0, 0.1, 0.5, 0.9, 1.0]),
       isa=st.sampled_from(ISAS), threads=st.sampled_from([1, 2]), seed=st.integers(0, 2**16))
def test_kernel_matches_dense_masked_matmul(rows, k, groups, n, keep_prob, isa, threads, seed):
  rng = np.random.default_rng(seed)
  # Group 0 all pruned, group 1 all kept (when there is one), the rest random.
  rp, ci, vals, dense = random_bsr(rng, k, groups, n, keep_prob, empty_groups=[0],
                                   full_groups=[1] if groups > 1 else [])
  x = rng.standard_normal((rows, k)).astype(np.float32)
  ref = x.astype(np.float64) @ dense
  y = xla_ext.block_sparse_matmul(x, rp, ci, vals, isa=isa, num_threads=threads)
  assert y.shape == (rows, groups * n) and y.dtype == jnp.float32
  assert rel_err(y, ref) < 1e-5
  assert np.all(np.asarray(y)[:, :n] == 0)  # the empty block gives exact zeros


def test_large_tiles_and_threads_are_deterministic():
  """Many row tiles, several ISAs: thread count never changes a bit (fixed summation order)."""
  rng = np.random.default_rng(1)
  rp, ci, vals, dense = random_bsr(rng, 96, 12, 8, 0.4)
  x = rng.standard_normal((1000, 96)).astype(np.float32)
  ref = x.astype(np.float64) @ dense
  for isa in ISAS:
    f = jax.jit(lambda x, threads, isa=isa: xla_ext.block_sparse_matmul(x, rp, ci, vals, isa=isa,
                                                                         num_threads=threads),
                static_argnums=1)
    y1, y2 = np.asarray(f(x, 1)), np.asarray(f(x, 2))
    assert rel_err(y1, ref) < 1e-5
    np.testing.assert_array_equal(y1, y2)


def test_leading_dims_are_rows():
  rng = np.random.default_rng(2)
  rp, ci, vals, dense = random_bsr(rng, 20, 3, 4, 0.5)
  x = rng.standard_normal((2, 3, 7, 20)).astype(np.float32)
  y = xla_ext.block_sparse_matmul(x, rp, ci, vals)
  assert y.shape == (2, 3, 7, 12)
  assert rel_err(y, x.astype(np.float64) @ dense) < 1e-5


def test_no_rows_and_no_segments():
  rng = np.random.default_rng(3)
  rp, ci, vals, _ = random_bsr(rng, 5, 2, 4, 0.0)
  assert ci.size == 0
  y = xla_ext.block_sparse_matmul(rng.standard_normal((9, 5)).astype(np.float32), rp, ci, vals)
  np.testing.assert_array_equal(np.asarray(y), np.zeros((9, 8), np.float32))
  y0 = xla_ext.block_sparse_matmul(np.zeros((0, 5), np.float32), rp, ci, vals)
  assert y0.shape == (0, 8)


def test_bfloat16_input_and_output():
  rng = np.random.default_rng(4)
  rp, ci, vals, dense = random_bsr(rng, 40, 4, 8, 0.5)
  x = jnp.asarray(rng.standard_normal((77, 40)), jnp.bfloat16)
  ref = np.asarray(x, np.float64) @ dense  # the kernel reads bf16 exactly, accumulates in f32
  y32 = xla_ext.block_sparse_matmul(x, rp, ci, vals, out_dtype=jnp.float32)
  assert y32.dtype == jnp.float32 and rel_err(y32, ref) < 1e-5
  y16 = xla_ext.block_sparse_matmul(x, rp, ci, vals)
  assert y16.dtype == jnp.bfloat16
  # Round-to-nearest-even to bf16 (8 mantissa bits) of the float32 result.
  np.testing.assert_array_equal(np.asarray(y16), np.asarray(y32.astype(jnp.bfloat16)))


def test_python_side_errors():
  rp = np.array([0, 1], np.int32)
  ci = np.array([0], np.int32)
  vals = np.ones((1, 4), np.float32)
  x = np.ones((3, 2), np.float32)
  with pytest.raises(TypeError, match='float32 or bfloat16'):
    xla_ext.block_sparse_matmul(x.astype(np.int32), rp, ci, vals)
  with pytest.raises(TypeError, match='int32'):
    xla_ext.block_sparse_matmul(x, rp.astype(np.int64), ci, vals)
  with pytest.raises(ValueError, match='nnzb'):
    xla_ext.block_sparse_matmul(x, rp, ci, np.ones((2, 4), np.float32))
  with pytest.raises(ValueError, match='isa'):
    xla_ext.block_sparse_matmul(x, rp, ci, vals, isa='sse9')
  with pytest.raises(ValueError, match='num_threads'):
    xla_ext.block_sparse_matmul(x, rp, ci, vals, num_threads=-1)


def test_corrupt_encoding_is_an_error_not_a_crash():
  """The handler validates the encoding (C++ side): an index outside [0, K) is an error."""
  x = np.ones((3, 2), np.float32)
  vals = np.ones((1, 4), np.float32)
  with pytest.raises(Exception, match='outside'):
    jax.block_until_ready(xla_ext.block_sparse_matmul(x, np.array([0, 1], np.int32),
                                                      np.array([5], np.int32), vals))
  with pytest.raises(Exception, match='row_ptr'):
    jax.block_until_ready(xla_ext.block_sparse_matmul(x, np.array([0, 2], np.int32),
                                                      np.array([0], np.int32), vals))


def test_isa_queries():
  assert xla_ext.isa_supported('generic')
  assert xla_ext.best_isa() in ISAS
  with pytest.raises(ValueError):
    xla_ext.isa_supported('auto')


def test_compile_on_import_fallback(tmp_path):
  """The cache build compiles the shipped sources into a loadable library with the handler."""
  include_dir = jax.ffi.include_dir()
  digest = _build.source_digest(include_dir)
  assert digest == _build.source_digest(include_dir)  # stable key: rebuilt only on change
  out = os.path.join(tmp_path, f'libbsmm-{digest}.so')
  _build.compile_shared_library(include_dir, out)
  lib = ctypes.cdll.LoadLibrary(out)
  assert lib.XlaExtBlockSparseMatmul and lib.XlaExtBsmmBestIsa
  assert [f for f in os.listdir(tmp_path)] == [os.path.basename(out)]  # no temp files left
