"""xla_ext.conv: the oneDNN training convolutions against XLA's convolution and a NumPy brute
force, under jit / vmap / pmap, per-platform lowering, determinism and errors."""
import numpy as np
import pytest

import jax
import jax.numpy as jnp
from hypothesis import given, settings, strategies as st

from xla_ext import conv as xc

pytestmark = pytest.mark.skipif(not xc.available(),
                                reason=f'conv kernels unavailable: {xc.load_error()}')

DN = ('NHWC', 'HWIO', 'NHWC')


def xla_conv(x, w, strides, pads, groups):
  return jax.lax.conv_general_dilated(x, w, strides, pads, dimension_numbers=DN,
                                      feature_group_count=groups)


def numpy_conv(x, w, strides, pads, groups):
  """Brute force in float64: y[b,o,p,co] = sum_{i,j,ci} xpad[b, s o + i, s p + j, g Cig + ci] w."""
  x = np.asarray(x, np.float64)
  w = np.asarray(w, np.float64)
  (pt, pb), (pl, pr) = pads
  xp = np.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
  kh, kw, cig, co = w.shape
  cog = co // groups
  ho = (xp.shape[1] - kh) // strides[0] + 1
  wo = (xp.shape[2] - kw) // strides[1] + 1
  y = np.zeros((x.shape[0], ho, wo, co))
  for g in range(groups):
    for i in range(kh):
      for j in range(kw):
        patch = xp[:, i:i + strides[0] * (ho - 1) + 1:strides[0],
                   j:j + strides[1] * (wo - 1) + 1:strides[1], g * cig:(g + 1) * cig]
        y[..., g * cog:(g + 1) * cog] += patch @ w[i, j, :, g * cog:(g + 1) * cog]
  return y


def loss_of(conv_fn, strides, pads, groups, dy):
  return lambda x, w: jnp.sum(conv_fn(x, w, strides, pads, groups) * dy)


def assert_close(a, b, scale=None):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  scale = scale if scale is not None else max(np.abs(b).max(), 1e-6)
  # float32 rounding of sums of at most a few thousand products
  np.testing.assert_allclose(a, b, rtol=0, atol=2e-5 * scale)


@st.composite
def conv_cases(draw):
  groups_kind = draw(st.sampled_from(['dense', 'depthwise', 'grouped']))
  if groups_kind == 'dense':
    ci, co, groups = draw(st.integers(1, 21)), draw(st.integers(1, 21)), 1
  elif groups_kind == 'depthwise':
    ci = draw(st.integers(1, 20))
    co, groups = ci, ci
  else:
    groups = draw(st.integers(2, 3))
    ci, co = groups * draw(st.integers(1, 5)), groups * draw(st.integers(1, 5))
  k = draw(st.sampled_from([1, 3]))
  kw = draw(st.sampled_from([k, 1, 3]))
  stride = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
  pads = tuple((draw(st.integers(0, 2)), draw(st.integers(0, 2))) for _ in range(2))
  h, w = draw(st.integers(max(1, k - sum(pads[0])), 9)), draw(st.integers(max(1, kw - sum(pads[1])), 9))
  batch = draw(st.sampled_from([1, 2, 3, 17]))
  return dict(batch=batch, h=h, w=w, ci=ci, co=co, k=(k, kw), strides=stride, pads=pads,
              groups=groups, seed=draw(st.integers(0, 2**16)))


@settings(max_examples=20, deadline=None)
@given(conv_cases())
def test_values_and_gradients_equal_xla(case):
  rs = np.random.RandomState(case['seed'])
  g = case['groups']
  x = jnp.asarray(rs.randn(case['batch'], case['h'], case['w'], case['ci']), jnp.float32)
  w = jnp.asarray(rs.randn(*case['k'], case['ci'] // g, case['co']), jnp.float32)
  s, p = case['strides'], case['pads']
  y_ref = xla_conv(x, w, s, p, g)
  y = xc.conv(x, w, s, p, g)
  assert y.shape == y_ref.shape
  assert_close(y, y_ref)
  dy = jnp.asarray(rs.randn(*y_ref.shape), jnp.float32)
  gx, gw = jax.grad(loss_of(xc.conv, s, p, g, dy), argnums=(0, 1))(x, w)
  rx, rw = jax.grad(loss_of(xla_conv, s, p, g, dy), argnums=(0, 1))(x, w)
  assert_close(gx, rx)
  assert_close(gw, rw)


def test_forward_matches_numpy_brute_force():
  rs = np.random.RandomState(0)
  for shape, k, s, p, g in [((2, 7, 6, 5), (3, 3, 5, 7), (2, 1), ((1, 0), (2, 1)), 1),
                            ((1, 6, 6, 6), (3, 3, 1, 6), (2, 2), ((1, 1), (1, 1)), 6),
                            ((3, 5, 5, 4), (1, 1, 4, 9), (1, 1), ((0, 0), (0, 0)), 1)]:
    x = rs.randn(*shape).astype(np.float32)
    w = rs.randn(*k).astype(np.float32)
    assert_close(xc.conv_fwd(jnp.asarray(x), jnp.asarray(w), s, p, g), numpy_conv(x, w, s, p, g))


def test_gradients_match_numpy_adjoints():
  # <dy, conv(x, w)> is bilinear: its gradient in x (in w) is the adjoint applied to dy, which the
  # brute force gives column by column as conv(e_k, w) (conv(x, e_k)).
  rs = np.random.RandomState(1)
  s, p = (2, 2), ((1, 1), (1, 1))
  x = rs.randn(2, 5, 5, 3).astype(np.float32)
  w = rs.randn(3, 3, 3, 2).astype(np.float32)
  dy = rs.randn(*numpy_conv(x, w, s, p, 1).shape).astype(np.float32)
  dw_ref = np.zeros(w.shape)
  for idx in np.ndindex(*w.shape):
    e = np.zeros(w.shape, np.float32)
    e[idx] = 1
    dw_ref[idx] = np.sum(numpy_conv(x, e, s, p, 1) * dy)
  dx_ref = np.zeros(x.shape)
  for idx in np.ndindex(*x.shape):
    e = np.zeros(x.shape, np.float32)
    e[idx] = 1
    dx_ref[idx] = np.sum(numpy_conv(e, w, s, p, 1) * dy)
  dx = xc.conv_bwd_data(jnp.asarray(dy), jnp.asarray(w), x.shape, s, p)
  dw = xc.conv_bwd_weights(jnp.asarray(x), jnp.asarray(dy), (3, 3), s, p)
  assert_close(dx, dx_ref)
  assert_close(dw, dw_ref)


def test_jit_vmap_pmap():
  rs = np.random.RandomState(2)
  s, p = (1, 1), ((1, 1), (1, 1))
  xs = jnp.asarray(rs.randn(3, 2, 6, 6, 4), jnp.float32)
  ws = jnp.asarray(rs.randn(3, 3, 3, 4, 5), jnp.float32)
  f = lambda x, w: jnp.sum(jnp.tanh(xc.conv(x, w, s, p, 1)))
  r = lambda x, w: jnp.sum(jnp.tanh(xla_conv(x, w, s, p, 1)))
  grad_f, grad_r = jax.grad(f, argnums=(0, 1)), jax.grad(r, argnums=(0, 1))
  for fn, ref in ((jax.jit(grad_f), grad_r),):
    for a, b in zip(fn(xs[0], ws[0]), ref(xs[0], ws[0])):
      assert_close(a, b)
  for axes in ((0, None), (0, 0)):   # a batch of inputs with one kernel, and kernel per input
    got = jax.jit(jax.vmap(grad_f, in_axes=axes))(xs, ws if axes[1] == 0 else ws[0])
    want = jax.vmap(grad_r, in_axes=axes)(xs, ws if axes[1] == 0 else ws[0])
    for a, b in zip(got, want):
      assert_close(a, b)
  n = jax.local_device_count()
  got = jax.pmap(grad_f)(xs[:n], ws[:n])
  for a, b in zip(got, jax.vmap(grad_r)(xs[:n], ws[:n])):
    assert_close(a, b)


def test_platform_dependent_lowering():
  # One traced function: the FFI calls when lowered for CPU, XLA's convolution for GPU.
  f = lambda x, w: jax.value_and_grad(
      lambda x, w: jnp.sum(xc.conv(x, w, (2, 2), ((1, 1), (1, 1)), 1)), argnums=(0, 1))(x, w)
  args = (jnp.zeros((2, 6, 6, 3)), jnp.zeros((3, 3, 3, 4)))
  checks = [jax.export.DisabledSafetyCheck.custom_call(t) for t in xc.TARGETS.values()]
  for platform, has_ffi in (('cpu', True), ('cuda', False)):
    text = jax.export.export(jax.jit(f), platforms=[platform], disabled_checks=checks)(
        *args).mlir_module()
    for target in ('fwd', 'bwd_data', 'bwd_weights'):
      assert (xc.TARGETS[target] in text) == has_ffi, (platform, target)
    assert ('stablehlo.convolution' in text) == (not has_ffi), platform


def test_bit_identical_for_any_thread_count():
  rs = np.random.RandomState(3)
  x = jnp.asarray(rs.randn(37, 8, 8, 6), jnp.float32)
  dy = jnp.asarray(rs.randn(37, 8, 8, 5), jnp.float32)
  w = jnp.asarray(rs.randn(3, 3, 6, 5), jnp.float32)
  p = ((1, 1), (1, 1))
  for n in (1, 2, 3):
    np.testing.assert_array_equal(xc.conv_bwd_weights(x, dy, (3, 3), (1, 1), p, num_threads=n),
                                  xc.conv_bwd_weights(x, dy, (3, 3), (1, 1), p))
    np.testing.assert_array_equal(xc.conv_fwd(x, w, (1, 1), p, num_threads=n),
                                  xc.conv_fwd(x, w, (1, 1), p))


def test_empty_batch_gives_zero_weight_gradient():
  dw = xc.conv_bwd_weights(jnp.zeros((0, 4, 4, 2)), jnp.zeros((0, 4, 4, 3)), (3, 3), (1, 1),
                           ((1, 1), (1, 1)))
  np.testing.assert_array_equal(dw, np.zeros((3, 3, 2, 3)))


def _has_avx512():
  import xla_ext  # pylint: disable=g-import-not-at-top
  return xla_ext.available() and xla_ext.isa_supported('avx512')


@pytest.mark.skipif(not _has_avx512(), reason='the hand-written weight gradient needs AVX-512')
def test_hand_written_weight_gradient_matches_brute_force():
  rs = np.random.RandomState(4)
  x = rs.randn(3, 6, 5, 18).astype(np.float32)
  dy = rs.randn(3, 6, 5, 20).astype(np.float32)
  xp = np.pad(x.astype(np.float64), ((0, 0), (1, 1), (1, 1), (0, 0)))
  ref = np.stack([np.stack([np.einsum('bhwc,bhwd->cd', xp[:, i:i + 6, j:j + 5], dy)
                            for j in range(3)]) for i in range(3)])
  assert_close(xc.conv_wgrad_direct(jnp.asarray(x), jnp.asarray(dy), (3, 3), (1, 1)), ref)


def test_bad_arguments_name_the_op_and_value():
  x = jnp.zeros((1, 4, 4, 3))
  w = jnp.zeros((3, 3, 3, 2))
  with pytest.raises(ValueError, match=r'conv_fwd: strides must be two ints >= 1'):
    xc.conv_fwd(x, w, (0, 1), ((1, 1), (1, 1)))
  with pytest.raises(ValueError, match=r'conv_fwd: kernel \[3, 3, 3, 2\] must be'):
    xc.conv_fwd(x, w, (1, 1), ((1, 1), (1, 1)), groups=3)
  with pytest.raises(TypeError, match=r'conv_fwd: x must be a float32 4-D array; got bfloat16'):
    xc.conv_fwd(x.astype(jnp.bfloat16), w, (1, 1), ((1, 1), (1, 1)))
  with pytest.raises(ValueError, match=r'conv_bwd_data: dy \[1, 4, 4, 2\] is not the output'):
    xc.conv_bwd_data(jnp.zeros((1, 4, 4, 2)), w, (1, 5, 5, 3), (1, 1), ((0, 0), (0, 0)))
  with pytest.raises(ValueError, match=r'conv_bwd_weights: groups must be an int >= 1; got 0'):
    xc.conv_bwd_weights(x, jnp.zeros((1, 4, 4, 2)), (3, 3), (1, 1), ((1, 1), (1, 1)), groups=0)
  with pytest.raises(ValueError, match='has no output pixel'):
    xc.conv_fwd(jnp.zeros((1, 1, 1, 3)), w, (1, 1), ((0, 0), (0, 0)))


def test_drop_in_routes_only_what_it_supports():
  x = jnp.ones((1, 5, 5, 2))
  w = jnp.ones((3, 3, 2, 2))
  assert xc.supports(x, w, (1, 1), 'SAME', dimension_numbers=DN) == ((1, 1), ((1, 1), (1, 1)))
  assert xc.supports(x, w, (1, 1), 'SAME', rhs_dilation=(2, 2), dimension_numbers=DN) is None
  assert xc.supports(x.astype(jnp.bfloat16), w, (1, 1), 'SAME', dimension_numbers=DN) is None
  assert xc.supports(x, w, (1, 1), 'SAME', dimension_numbers=('NCHW', 'OIHW', 'NCHW')) is None
  y = xc.conv_general_dilated(x, w, (1, 1), 'SAME', rhs_dilation=(2, 2), dimension_numbers=DN)
  np.testing.assert_array_equal(y, jax.lax.conv_general_dilated(
      x, w, (1, 1), 'SAME', rhs_dilation=(2, 2), dimension_numbers=DN))
