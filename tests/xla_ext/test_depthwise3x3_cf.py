"""xla_ext.depthwise3x3_cf: the channels-first 3x3 depthwise kernel against lax's grouped conv."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import jax
import jax.numpy as jnp

import xla_ext

pytestmark = pytest.mark.skipif(not xla_ext.available(), reason='xla_ext kernel not built')

ISAS = [i for i in ('generic', 'avx2', 'avx512') if xla_ext.available() and xla_ext.isa_supported(i)]


def padded_width(x4, junk_value):
  """[B, C, h, w] -> [B, C, h*(w+2)] with the two junk columns per row set to junk_value."""
  b, c, h, w = x4.shape
  xp = np.full((b, c, h, w + 2), junk_value, np.float32)
  xp[..., :w] = x4
  return xp.reshape(b, c, h * (w + 2))


def reference(x4, k_hwio, bias, stride, act):
  """float64 NumPy: zero padding 1, the zoo's 3x3 depthwise conv, + bias, activation."""
  b, c, h, w = x4.shape
  xp = np.pad(x4.astype(np.float64), ((0, 0), (0, 0), (1, 1), (1, 1)))
  ho, wo = (h - 1) // stride + 1, (w - 1) // stride + 1
  y = np.zeros((b, c, ho, wo)) + bias[None, :, None, None]
  for dy in range(3):
    for dx in range(3):
      tap = xp[:, :, dy:dy + stride * (ho - 1) + 1:stride, dx:dx + stride * (wo - 1) + 1:stride]
      y += tap * k_hwio[dy, dx, 0][None, :, None, None]
  if act in ('relu', 'relu6'):
    y = np.maximum(y, 0)
  if act == 'relu6':
    y = np.minimum(y, 6)
  return y


@settings(max_examples=40, deadline=None)
@given(b=st.integers(1, 2), c=st.integers(1, 6), h=st.integers(1, 20), w=st.integers(1, 40),
       stride=st.sampled_from([1, 2]), act=st.sampled_from(['none', 'relu', 'relu6']),
       isa=st.sampled_from(ISAS or ['generic']), seed=st.integers(0, 2**16))
def test_matches_reference(b, c, h, w, stride, act, isa, seed):
  rng = np.random.default_rng(seed)
  x4 = rng.standard_normal((b, c, h, w)).astype(np.float32)
  k = rng.standard_normal((3, 3, 1, c)).astype(np.float32)
  bias = rng.standard_normal(c).astype(np.float32)
  # Junk columns hold a huge value: any read of them would show in the result.
  y = xla_ext.depthwise3x3_cf(jnp.asarray(padded_width(x4, 1e6)), jnp.asarray(k),
                              jnp.asarray(bias), (h, w), stride, activation=act, isa=isa)
  want = reference(x4, k, bias, stride, act)
  ho, wo = want.shape[2:]
  got = np.asarray(y).reshape(b, c, ho, wo + 2)
  np.testing.assert_allclose(got[..., :wo], want, rtol=1e-5, atol=1e-5)
  assert np.all(got[..., wo:] == 0), 'junk columns of the output are defined as zeros'


def test_kernel_layouts_and_threads_agree():
  """[C, 9], [C, 3, 3] and HWIO [3, 3, 1, C] kernels give one result; so do 1 and all threads."""
  rng = np.random.default_rng(0)
  c, h, w = 40, 30, 33
  x = jnp.asarray(padded_width(rng.standard_normal((2, c, h, w)).astype(np.float32), -7.0))
  k = rng.standard_normal((3, 3, 1, c)).astype(np.float32)
  bias = jnp.asarray(rng.standard_normal(c).astype(np.float32))
  k9 = np.transpose(k[:, :, 0, :], (2, 0, 1)).reshape(c, 9)
  outs = [xla_ext.depthwise3x3_cf(x, jnp.asarray(kk), bias, (h, w), 2, activation='relu6',
                                  num_threads=nt)
          for kk, nt in ((k, 0), (k9, 0), (k9.reshape(c, 3, 3), 0), (k9, 1))]
  for o in outs[1:]:
    np.testing.assert_array_equal(np.asarray(o), np.asarray(outs[0]))


def test_nan_propagates_through_relu():
  x4 = np.ones((1, 1, 3, 3), np.float32)
  x4[0, 0, 1, 1] = np.nan
  k = np.ones((3, 3, 1, 1), np.float32)
  y = xla_ext.depthwise3x3_cf(jnp.asarray(padded_width(x4, 0.0)), jnp.asarray(k),
                              jnp.zeros((1,), jnp.float32), (3, 3), 1, activation='relu6')
  got = np.asarray(y).reshape(3, 5)[:, :3]
  assert np.isnan(got).all()  # every output's window contains the centre


def test_bad_input_is_a_clear_error():
  x = jnp.zeros((1, 4, 3 * 7), jnp.float32)
  k, b = jnp.zeros((4, 9), jnp.float32), jnp.zeros((4,), jnp.float32)
  with pytest.raises(ValueError, match='stride must be 1 or 2; got 3'):
    xla_ext.depthwise3x3_cf(x, k, b, (3, 5), 3)
  with pytest.raises(ValueError, match=r'h\*\(w\+2\)\] = \[B, C, 28\]'):
    xla_ext.depthwise3x3_cf(x, k, b, (4, 5), 1)
  with pytest.raises(ValueError, match=r'kernel must be \[4, 9\]'):
    xla_ext.depthwise3x3_cf(x, jnp.zeros((4, 8), jnp.float32), b, (3, 5), 1)
  with pytest.raises(ValueError, match=r'HWIO \[3, 3, 1, 4\]'):
    xla_ext.depthwise3x3_cf(x, jnp.zeros((3, 3, 4, 1), jnp.float32), b, (3, 5), 1)
  with pytest.raises(TypeError, match='float32; got x bfloat16'):
    xla_ext.depthwise3x3_cf(x.astype(jnp.bfloat16), k, b, (3, 5), 1)
  with pytest.raises(ValueError, match="activation must be one of .* got 'gelu'"):
    xla_ext.depthwise3x3_cf(x, k, b, (3, 5), 1, activation='gelu')


def test_runs_under_jit_inside_a_graph():
  """One compiled graph: depthwise kernel -> elementwise op -> depthwise kernel."""
  rng = np.random.default_rng(3)
  c, h, w = 3, 8, 9
  x4 = rng.standard_normal((1, c, h, w)).astype(np.float32)
  k = rng.standard_normal((3, 3, 1, c)).astype(np.float32)
  bias = np.zeros(c, np.float32)

  @jax.jit
  def f(x):
    y = xla_ext.depthwise3x3_cf(x, jnp.asarray(k), jnp.asarray(bias), (h, w), 1)
    return xla_ext.depthwise3x3_cf(y * 2.0, jnp.asarray(k), jnp.asarray(bias), (h, w), 2)

  got = np.asarray(f(jnp.asarray(padded_width(x4, 3.0)))).reshape(1, c, 4, 7)[..., :5]
  want = reference(2.0 * reference(x4, k, bias, 1, 'none').astype(np.float32), k, bias, 2, 'none')
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
