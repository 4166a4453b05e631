"""The channels-first C++ 1xN kernel with its fused epilogue (xla_ext.block_sparse_matmul_cf).

The BSR-by-output-block decode of the paper's Fig. 3 (kernel == dense masked matmul), with
the epilogue ``act(W^T x + bias + residual)``. The BSR arrays are built here with plain NumPy from
a random block mask, independently of ``onexn.pack``; the reference is the float64 einsum of the
masked dense weight, plus bias and residual, then the activation, all in NumPy.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import xla_ext
from tests.xla_ext.test_bsmm import random_bsr  # one BSR reference builder for both files

pytestmark = pytest.mark.skipif(not xla_ext.available(),
                                reason=f'xla_ext kernel unavailable: {xla_ext.load_error()}')

ISAS = [i for i in ('generic', 'avx2', 'avx512') if xla_ext.available() and xla_ext.isa_supported(i)]
ACTS = ('none', 'relu', 'relu6')
# Pixel counts around the vector (8 / 16 lanes) and tile boundaries of the three ISAs (tiles of
# up to 2 x 8, 3 x 8 and 6 x 16 pixels, an image's tiles split evenly), incl. images of several
# uneven tiles (e.g. 193..208 = 13 vectors of 16) and 14x14 = 196; hypothesis adds any P <= 200.
PIXELS = [1, 2, 7, 8, 9, 15, 16, 17, 23, 24, 25, 31, 32, 33, 40, 47, 48, 49, 55, 56, 57, 63, 64,
          65, 80, 95, 96, 97, 105, 112, 113, 144, 160, 191, 192, 193, 196, 208]


def np_act(z, activation):
  if activation == 'relu':
    return np.maximum(z, 0)
  if activation == 'relu6':
    return np.clip(z, 0, 6)
  return z


def reference(x, dense, bias=None, residual=None, activation='none'):
  """float64: (pre-activation, act(pre-activation)) of y[b, c, p] = sum_k W[k, c] x[b, k, p] + ..."""
  z = np.einsum('kc,bkp->bcp', dense.astype(np.float64), x.astype(np.float64))
  if bias is not None:
    z = z + bias.astype(np.float64)[None, :, None]
  if residual is not None:
    z = z + residual.astype(np.float64)
  return z, np_act(z, activation)


def max_err(y, ref, pre):
  """Largest error relative to the pre-activation scale (the activations are 1-Lipschitz, so the
  kernel's float32 rounding of the pre-activation bounds the error after them too)."""
  y = np.asarray(y, np.float64)
  if not ref.size:
    return 0.0
  return float(np.max(np.abs(y - ref)) / max(1e-30, np.max(np.abs(pre))))


@settings(max_examples=30, deadline=None)
@given(b=st.integers(1, 3), k=st.integers(1, 40), groups=st.integers(1, 5),
       n=st.sampled_from([1, 2, 4, 8, 16, 32]),
       p=st.one_of(st.sampled_from(PIXELS), st.integers(1, 200)),
       keep_prob=st.sampled_from([0.0, 0.1, 0.5, 0.9, 1.0]), with_bias=st.booleans(),
       with_residual=st.booleans(), activation=st.sampled_from(ACTS),
       threads=st.sampled_from([0, 1, 3]), seed=st.integers(0, 2**16))
def test_kernel_matches_numpy_reference(b, k, groups, n, p, keep_prob, with_bias, with_residual,
                                        activation, threads, seed):
  rng = np.random.default_rng(seed)
  # Group 0 all pruned (an empty group), group 1 all kept (when there is one), the rest random.
  rp, ci, vals, dense = random_bsr(rng, k, groups, n, keep_prob, empty_groups=[0],
                                      full_groups=[1] if groups > 1 else [])
  m = groups * n
  # Scaled so that ReLU6 clips at both ends in most examples.
  x = (2 * rng.standard_normal((b, k, p))).astype(np.float32)
  bias = (3 * rng.standard_normal(m)).astype(np.float32) if with_bias else None
  res = (3 * rng.standard_normal((b, m, p))).astype(np.float32) if with_residual else None
  pre, ref = reference(x, dense, bias, res, activation)
  # The empty group is act((0 + bias) + residual) in float32: exact, whatever the ISA.
  empty = np.zeros((b, n, p), np.float32)
  if bias is not None:
    empty = empty + bias[None, :n, None]
  if res is not None:
    empty = empty + res[:, :n]
  empty = np_act(empty, activation)
  for isa in ISAS:
    y = xla_ext.block_sparse_matmul_cf(x, rp, ci, vals, bias, res, activation=activation,
                                       num_threads=threads, isa=isa)
    assert y.shape == (b, m, p) and y.dtype == jnp.float32
    assert max_err(y, ref, pre) < 1e-5, isa
    np.testing.assert_array_equal(np.asarray(y)[:, :n], empty, err_msg=isa)


@settings(max_examples=20, deadline=None)
@given(b=st.integers(1, 3), k=st.integers(1, 40), groups=st.integers(1, 5),
       n=st.sampled_from([1, 2, 4, 8, 16, 32]),
       p=st.one_of(st.sampled_from(PIXELS), st.integers(1, 200)),
       keep_prob=st.sampled_from([0.0, 0.1, 0.5, 0.9, 1.0]), seed=st.integers(0, 2**16))
def test_channels_first_is_bit_identical_to_nhwc_kernel(b, k, groups, n, p, keep_prob, seed):
  """Same packed weights, same ISA: the two layouts run the same FMAs in the same order."""
  rng = np.random.default_rng(seed)
  rp, ci, vals, dense = random_bsr(rng, k, groups, n, keep_prob, empty_groups=[0])
  x = rng.standard_normal((b, k, p)).astype(np.float32)
  x_rows = np.ascontiguousarray(x.transpose(0, 2, 1))  # [B, P, K]: NHWC with H*W flattened
  for isa in ISAS:
    y_cf = np.asarray(xla_ext.block_sparse_matmul_cf(x, rp, ci, vals, isa=isa))
    y_nhwc = np.asarray(xla_ext.block_sparse_matmul(x_rows, rp, ci, vals, isa=isa))
    y_flat = np.asarray(xla_ext.block_sparse_matmul(x_rows.reshape(b * p, k), rp, ci, vals,
                                                    isa=isa))
    np.testing.assert_array_equal(y_cf, y_nhwc.transpose(0, 2, 1), err_msg=isa)
    np.testing.assert_array_equal(y_cf, y_flat.reshape(b, p, -1).transpose(0, 2, 1), err_msg=isa)


@pytest.mark.parametrize('isa', ISAS)
def test_epilogue_order_and_clipping_by_hand(isa):
  """K = 1, one group of N = 1, weight 1: y = act(x + bias + residual), residual before act."""
  one = np.array([0, 1], np.int32), np.array([0], np.int32), np.ones((1, 1), np.float32)
  x = np.array([[[-3.0, -3.0, 1.0, 4.0, 7.0, -10.0, 0.25, 2.0]]], np.float32)   # [1, 1, 8]
  res = np.array([[[5.0, 1.0, -2.0, 4.0, -0.5, 3.0, 0.0, 10.0]]], np.float32)
  bias = np.array([0.5], np.float32)
  f = lambda **kw: np.asarray(xla_ext.block_sparse_matmul_cf(x, *one, isa=isa, **kw))[0, 0]
  # x + 0.5 + res = [2.5, -1.5, -0.5, 8.5, 7.0, -6.5, 0.75, 12.5]
  np.testing.assert_array_equal(f(bias=bias, residual=res),
                                [2.5, -1.5, -0.5, 8.5, 7.0, -6.5, 0.75, 12.5])
  # ReLU of the sum (not relu(x + bias) + residual, which would give 5.0, 1.0, -1.5, ...).
  np.testing.assert_array_equal(f(bias=bias, residual=res, activation='relu'),
                                [2.5, 0, 0, 8.5, 7.0, 0, 0.75, 12.5])
  np.testing.assert_array_equal(f(bias=bias, residual=res, activation='relu6'),
                                [2.5, 0, 0, 6, 6, 0, 0.75, 6])
  np.testing.assert_array_equal(f(activation='relu6'), [0, 0, 1, 4, 6, 0, 0.25, 2])
  np.testing.assert_array_equal(f(bias=bias), x[0, 0] + 0.5)
  np.testing.assert_array_equal(f(residual=res, activation='relu'), np.maximum(x + res, 0)[0, 0])


@pytest.mark.parametrize('isa', ISAS)
def test_nan_and_inf_propagate_like_jnp(isa):
  """NaN stays NaN through ReLU / ReLU6 (as with jnp.maximum / jnp.clip), +-inf clip to 0 / 6; rows
  of x that no kept segment reads are never touched (bsmm_cf_impl.h), so a NaN there reaches no
  output (unlike a dense masked matmul, where 0 * NaN = NaN)."""
  rng = np.random.default_rng(20)
  k, groups, n, b, p = 6, 3, 4, 2, 37  # 37 pixels: full and partial vectors for every ISA
  keep = np.zeros((k, groups), bool)
  keep[[0, 2], 0] = True
  keep[[1, 2, 3], 1] = True
  keep[[0, 4], 2] = True  # input row 5 is read by no group
  w = rng.standard_normal((k, groups * n)).astype(np.float32)
  rp = np.concatenate([[0], np.cumsum(keep.sum(0))]).astype(np.int32)
  ci = np.concatenate([np.nonzero(keep[:, g])[0] for g in range(groups)]).astype(np.int32)
  vals = np.concatenate([w[keep[:, g], g * n:(g + 1) * n] for g in range(groups)])
  x = rng.standard_normal((b, k, p)).astype(np.float32)
  res = rng.standard_normal((b, groups * n, p)).astype(np.float32)
  x[0, 2, 5] = np.nan   # read by groups 0 and 1 -> channels 0..7 of image 0, pixel 5
  x[1, 4, 36] = np.nan  # read by group 2 only, in the last (partial) vector of image 1
  x[:, 5, :] = np.nan   # read by nobody
  res[1, 9, 0] = np.nan
  x[0, 0, 1] = np.inf   # groups 0 and 2 (w may have either sign): +-inf before the act
  inf_chans = [0, 1, 2, 3, 8, 9, 10, 11]  # groups 0 and 2 read row 0
  for act in ACTS:
    y = np.asarray(xla_ext.block_sparse_matmul_cf(x, rp, ci, vals, residual=res, activation=act,
                                                  isa=isa))
    nan = np.zeros(y.shape, bool)
    nan[0, 0:8, 5] = True
    nan[1, 8:12, 36] = True
    nan[1, 9, 0] = True
    np.testing.assert_array_equal(np.isnan(y), nan, err_msg=act)
    # W * inf + finite = sign(W) * inf, then the activation: inf -> inf / 6, -inf -> 0.
    np.testing.assert_array_equal(y[0, inf_chans, 1],
                                  np_act(np.sign(w[0, inf_chans]) * np.inf, act), err_msg=act)
    inf_pix = np.zeros(y.shape, bool)
    inf_pix[0, inf_chans, 1] = True
    assert np.all(np.isfinite(y[~nan & ~inf_pix])), act


@pytest.mark.parametrize('isa', ISAS)
def test_thread_count_never_changes_a_bit(isa):
  """Many tiles (and, for one image, split output groups): fixed summation order per output."""
  rng = np.random.default_rng(21)
  rp, ci, vals, dense = random_bsr(rng, 64, 12, 8, 0.5)
  for b, p in ((3, 196), (1, 49)):
    x = rng.standard_normal((b, 64, p)).astype(np.float32)
    bias = rng.standard_normal(96).astype(np.float32)
    res = rng.standard_normal((b, 96, p)).astype(np.float32)
    f = jax.jit(lambda x, bias, res, t: xla_ext.block_sparse_matmul_cf(
        x, rp, ci, vals, bias, res, activation='relu6', num_threads=t, isa=isa),
                static_argnums=3)
    ys = [np.asarray(f(x, bias, res, t)) for t in (1, 0, 2, 3, 8)]
    pre, ref = reference(x, dense, bias, res, 'relu6')
    assert max_err(ys[0], ref, pre) < 1e-5
    for y in ys[1:]:
      np.testing.assert_array_equal(ys[0], y)


def test_empty_shapes():
  rng = np.random.default_rng(22)
  rp, ci, vals, _ = random_bsr(rng, 5, 2, 4, 0.0)
  assert ci.size == 0
  bias = np.arange(8, dtype=np.float32) - 3
  y = xla_ext.block_sparse_matmul_cf(rng.standard_normal((2, 5, 9)).astype(np.float32), rp, ci,
                                     vals, bias, activation='relu')
  np.testing.assert_array_equal(np.asarray(y), np.broadcast_to(np.maximum(bias, 0)[None, :, None],
                                                               (2, 8, 9)))
  rp, ci, vals, _ = random_bsr(rng, 5, 2, 4, 1.0)
  assert xla_ext.block_sparse_matmul_cf(np.zeros((2, 5, 0), np.float32), rp, ci,
                                        vals).shape == (2, 8, 0)
  assert xla_ext.block_sparse_matmul_cf(np.zeros((0, 5, 3), np.float32), rp, ci,
                                        vals).shape == (0, 8, 3)


def test_python_side_errors_name_the_bad_value():
  rng = np.random.default_rng(23)
  rp, ci, vals, _ = random_bsr(rng, 3, 2, 4, 1.0)
  x = np.ones((2, 3, 5), np.float32)
  f = xla_ext.block_sparse_matmul_cf
  with pytest.raises(ValueError, match=r'\[B, K, P\].*\(3, 5\)'):
    f(x[0], rp, ci, vals)
  with pytest.raises(ValueError, match=r'\[B, K, P\].*\(1, 2, 3, 5\)'):
    f(x[None], rp, ci, vals)
  with pytest.raises(TypeError, match='float32.*int32'):
    f(x.astype(np.int32), rp, ci, vals)
  with pytest.raises(TypeError, match='float32.*bfloat16'):
    f(jnp.asarray(x, jnp.bfloat16), rp, ci, vals)
  with pytest.raises(TypeError, match='float32.*float16'):
    f(x.astype(np.float16), rp, ci, vals)
  with pytest.raises(TypeError, match='int32.*int64'):
    f(x, rp, ci.astype(np.int64), vals)
  with pytest.raises(ValueError, match=r'activation.*gelu'):
    f(x, rp, ci, vals, activation='gelu')
  with pytest.raises(ValueError, match=r'isa.*sse9'):
    f(x, rp, ci, vals, isa='sse9')
  with pytest.raises(ValueError, match=r'num_threads.*-1'):
    f(x, rp, ci, vals, num_threads=-1)
  with pytest.raises(ValueError, match=r'bias must be float32 \[8\].*\(7,\)'):
    f(x, rp, ci, vals, bias=np.ones(7, np.float32))
  with pytest.raises(ValueError, match=r'bias must be float32 \[8\].*\(1, 8\)'):
    f(x, rp, ci, vals, bias=np.ones((1, 8), np.float32))
  with pytest.raises(ValueError, match=r'residual must be float32 \[2, 8, 5\].*\[2, 8, 4\]'):
    f(x, rp, ci, vals, residual=np.ones((2, 8, 4), np.float32))
  with pytest.raises(ValueError, match=r'residual must be float32.*float16'):
    f(x, rp, ci, vals, residual=np.ones((2, 8, 5), np.float16))
  with pytest.raises(ValueError, match='nnzb'):
    f(x, rp, ci, np.ones((ci.size + 1, 4), np.float32))


def test_corrupt_encoding_is_an_error_not_a_crash():
  x = np.ones((1, 2, 5), np.float32)
  vals = np.ones((1, 4), np.float32)
  with pytest.raises(Exception, match=r'col_idx\[0\] = 2 is outside \[0, 2\)'):
    jax.block_until_ready(xla_ext.block_sparse_matmul_cf(x, np.array([0, 1], np.int32),
                                                         np.array([2], np.int32), vals))
  with pytest.raises(Exception, match='row_ptr'):
    jax.block_until_ready(xla_ext.block_sparse_matmul_cf(x, np.array([0, 2], np.int32),
                                                         np.array([0], np.int32), vals))
