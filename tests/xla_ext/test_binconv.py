"""xla_ext.binconv: bit packing and the packed binary conv (every ISA this CPU has, and the
pure-JAX fallback) against a NumPy reference of the zero-padded +-1 convolution."""
import os

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import jax.numpy as jnp

import xla_ext
from xla_ext import binconv as bc

needs_kernel = pytest.mark.skipif(not xla_ext.available(), reason='xla_ext kernel not built')
ISAS = list(bc.supported_isas()) if xla_ext.available() else []


def signs(rng, shape):
  """+-1 float32 with no zeros (the packed form has no zero)."""
  return np.where(rng.random(shape) < 0.5, -1.0, 1.0).astype(np.float32)


def reference_dot(x, w, stride):
  """int64 NumPy: sum over taps *inside* the image of x . w (zero padding k // 2)."""
  b, h, wd, _ = x.shape
  k = w.shape[0]
  pad = (k - 1) // 2
  ho, wo = (h + 2 * pad - k) // stride + 1, (wd + 2 * pad - k) // stride + 1
  xp = np.pad(x.astype(np.int64), ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  y = np.zeros((b, ho, wo, w.shape[-1]), np.int64)
  for dy in range(k):
    for dx in range(k):
      tap = xp[:, dy:dy + stride * (ho - 1) + 1:stride, dx:dx + stride * (wo - 1) + 1:stride]
      y += np.einsum('bhwc,co->bhwo', tap, w[dy, dx].astype(np.int64))
  return y


def reference_epilogue(dot, alpha, bn, residual, activation, slope):
  y = dot.astype(np.float32) * alpha
  if bn is not None:
    y = (y - bn[0]) * bn[1] + bn[2]
  if residual is not None:
    y = y + residual
  if activation == 'hardtanh':
    y = np.clip(y, -1, 1)
  elif activation == 'prelu':
    y = np.where(y >= 0, y, slope * y)
  return y


def test_pack_bits_layout():
  x = np.ones((2, 70), np.float32)
  x[0, 0] = -1.0        # word 0 bit 0
  x[0, 33] = -2.5       # word 1 bit 1
  x[1, 69] = -1e-30     # word 2 bit 5
  x[1, 3] = 0.0         # exact zero -> +1 (bit 0)
  x[1, 4] = -0.0        # negative zero -> +1 as well
  words = np.asarray(bc.pack_bits(jnp.asarray(x)))
  assert words.dtype == np.uint32 and words.shape == (2, 3)
  np.testing.assert_array_equal(words, [[1, 2, 0], [0, 0, 1 << 5]])
  back = np.asarray(bc.unpack_bits(jnp.asarray(words), 70))
  np.testing.assert_array_equal(back, np.where(x < 0, -1.0, 1.0))


@settings(max_examples=10, deadline=None)
@given(shape=st.lists(st.integers(1, 5), min_size=0, max_size=2), c=st.integers(1, 130),
       seed=st.integers(0, 2**16))
def test_pack_unpack_roundtrip(shape, c, seed):
  x = signs(np.random.default_rng(seed), tuple(shape) + (c,))
  words = bc.pack_bits(jnp.asarray(x))
  assert words.shape == tuple(shape) + (-(-c // 32),)
  np.testing.assert_array_equal(np.asarray(bc.unpack_bits(words, c)), x)


def test_pack_weights_layout():
  rng = np.random.default_rng(0)
  w = signs(rng, (3, 3, 40, 20))
  p = bc.pack_weights(w)
  assert p.words.shape == (9 * 2, 32) and p.wpop.shape == (9, 32)
  words = np.asarray(p.words).reshape(9, 2, 32)
  for t, o, c in [(0, 0, 0), (4, 19, 39), (8, 7, 33), (5, 3, 31)]:
    bit = (int(words[t, c // 32, o]) >> (c % 32)) & 1
    assert bit == int(w[t // 3, t % 3, c, o] < 0)
  np.testing.assert_array_equal(words[:, :, 20:], 0)          # padded output channels
  np.testing.assert_array_equal(np.asarray(p.wpop)[:, :20], (w < 0).sum(axis=2).reshape(9, 20))


def _problem(rng, b, h, w, c_in, c_out, k, stride, epi):
  x = signs(rng, (b, h, w, c_in))
  wt = signs(rng, (k, k, c_in, c_out))
  ho, wo = (h + 2 * ((k - 1) // 2) - k) // stride + 1, (w + 2 * ((k - 1) // 2) - k) // stride + 1
  alpha = rng.uniform(0.1, 2.0, c_out).astype(np.float32)
  bn = residual = slope = None
  activation = 'none'
  if epi:
    bn = (rng.standard_normal(c_out).astype(np.float32),
          rng.uniform(0.05, 2.0, c_out).astype(np.float32),
          rng.standard_normal(c_out).astype(np.float32))
    residual = rng.standard_normal((b, ho, wo, c_out)).astype(np.float32)
    activation = rng.choice(['none', 'hardtanh', 'prelu'])
    slope = rng.uniform(0.0, 0.5, c_out).astype(np.float32) if activation == 'prelu' else None
  return x, wt, alpha, bn, residual, activation, slope


def _run(x, wt, alpha, bn, residual, activation, slope, stride, **kw):
  j = lambda a: None if a is None else jnp.asarray(a)
  return np.asarray(bc.binary_conv2d(
      bc.pack_bits(jnp.asarray(x)), bc.pack_weights(wt), jnp.asarray(alpha), stride=stride,
      bn=None if bn is None else tuple(jnp.asarray(v) for v in bn), residual=j(residual),
      activation=activation, slope=j(slope), **kw))


PATHS = [dict(backend='ffi', isa=i) for i in ISAS] + [dict(backend='jax')]


@settings(max_examples=15, deadline=None)
@given(b=st.integers(1, 2), h=st.integers(1, 9), w=st.integers(1, 9),
       c_in=st.one_of(st.integers(1, 70), st.sampled_from([32, 64, 96, 127])),
       c_out=st.integers(1, 40), k=st.sampled_from([1, 3]), stride=st.sampled_from([1, 2]),
       epi=st.booleans(), seed=st.integers(0, 2**16))
def test_binary_conv_matches_numpy(b, h, w, c_in, c_out, k, stride, epi, seed):
  """Odd channel counts, channels not a multiple of 32, stride 2, borders (maps down to 1x1:
  every tap of a pixel can be padding), on every ISA and the fallback: the integer counts
  exactly, the epilogue to float32 rounding."""
  rng = np.random.default_rng(seed)
  x, wt, alpha, bn, residual, activation, slope = _problem(rng, b, h, w, c_in, c_out, k, stride,
                                                           epi)
  dot = reference_dot(x, wt, stride)
  want = reference_epilogue(dot, alpha, bn, residual, activation, slope)
  for path in PATHS:
    if path['backend'] == 'ffi' and not xla_ext.available():
      continue
    # alpha = 1 and no epilogue: the output *is* the integer count.
    counts = _run(x, wt, np.ones_like(alpha), None, None, 'none', None, stride, **path)
    np.testing.assert_array_equal(counts, dot.astype(np.float32), err_msg=str(path))
    got = _run(x, wt, alpha, bn, residual, activation, slope, stride, **path)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * (1 + np.abs(want).max()),
                               err_msg=str(path))


@needs_kernel
@pytest.mark.parametrize('isa', ISAS)
def test_threads_and_resnet_shape(isa):
  """A ResNet-18 layer shape, big enough to be split over threads: the same integers with one
  thread and all of them, equal to the reference."""
  rng = np.random.default_rng(1)
  x, wt = signs(rng, (1, 14, 14, 256)), signs(rng, (3, 3, 256, 128))
  one = np.ones(128, np.float32)
  a = _run(x, wt, one, None, None, 'none', None, 2, isa=isa, num_threads=1)
  c = _run(x, wt, one, None, None, 'none', None, 2, isa=isa, num_threads=0)
  np.testing.assert_array_equal(a, c)
  np.testing.assert_array_equal(a, reference_dot(x, wt, 2).astype(np.float32))


@needs_kernel
def test_isa_env_var_forces_one(monkeypatch):
  monkeypatch.setenv(bc.ISA_ENV, 'generic')
  assert bc.resolve_isa('auto') == 'generic'
  assert bc.resolve_isa('avx2' if 'avx2' in ISAS else 'generic') in ISAS
  monkeypatch.setenv(bc.ISA_ENV, 'sse9')
  with pytest.raises(ValueError, match="XLA_EXT_BINCONV_ISA must be one of.*'sse9'"):
    bc.resolve_isa('auto')
  monkeypatch.delenv(bc.ISA_ENV)
  assert bc.resolve_isa('auto') == bc.best_isa() == ISAS[-1]


@needs_kernel
def test_bad_inputs_name_the_value():
  rng = np.random.default_rng(0)
  xp = bc.pack_bits(jnp.asarray(signs(rng, (1, 4, 4, 40))))
  p = bc.pack_weights(signs(rng, (3, 3, 40, 8)))
  a = jnp.ones(8)
  with pytest.raises(ValueError, match='stride must be 1 or 2; got 3'):
    bc.binary_conv2d(xp, p, a, stride=3)
  with pytest.raises(ValueError, match="activation must be one of .*; got 'relu'"):
    bc.binary_conv2d(xp, p, a, activation='relu')
  with pytest.raises(ValueError, match=r'x must be uint32 \[B, H, W, 2\]'):
    bc.binary_conv2d(xp[..., :1], p, a)
  with pytest.raises(ValueError, match=r'alpha must be \[8\]; got \[7\]'):
    bc.binary_conv2d(xp, p, jnp.ones(7))
  with pytest.raises(ValueError, match="isa must be one of .*; got 'neon'"):
    bc.binary_conv2d(xp, p, a, isa='neon')
  with pytest.raises(ValueError, match="backend must be one of .*; got 'gpu'"):
    bc.binary_conv2d(xp, p, a, backend='gpu')
  with pytest.raises(ValueError, match=r'k in \(1, 3\); got shape \[5, 5, 40, 8\]'):
    bc.pack_weights(np.ones((5, 5, 40, 8)))
