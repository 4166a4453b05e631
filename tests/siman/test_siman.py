"""SiMaN's weight binarization (lmbxmu/SiMaN ``BinarizeConv2d.forward``, ``main.py``),
checked against NumPy references written here (np.percentile, argsort, the closed-form Jacobian of
the per-channel standardisation) and brute force."""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from common import binarize
from siman import siman


def np_standardize(w):
  """``(w - mean_c) / sqrt(var_c + 1e-5)`` per output channel (last axis), unbiased; [N, C]."""
  flat = np.asarray(w, np.float64).reshape(-1, w.shape[-1])
  c = flat - flat.mean(0)
  return c / np.sqrt(c.var(0, ddof=1) + 1e-5)


def np_project(w, p):
  """The official overwrite, transcribed: centre per channel, np.percentile over the layer."""
  w = np.asarray(w, np.float64)
  wc = w - w.mean(axis=(0, 1, 2), keepdims=True)
  lo = np.percentile(np.abs(wc).ravel(), p)
  hi = np.percentile(np.abs(wc).ravel(), 100 - p)
  return np.sign(wc) * np.clip(np.abs(wc), lo, hi), lo, hi


def rand(shape, seed, dist='normal'):
  r = np.random.RandomState(seed)
  x = r.laplace(size=shape) if dist == 'laplace' else r.randn(*shape)
  return (x * 0.05 + r.randn(shape[-1]) * 0.02).astype(np.float32)


# --- the code B and the forward value -------------------------------------------------------------


@pytest.mark.parametrize('shape', [(3, 3, 4, 6), (3, 3, 3, 5), (1, 1, 8, 3)])
def test_code_marks_the_larger_magnitude_half_of_each_channel(shape):
  w = rand(shape, 0)
  n, c = int(np.prod(shape[:-1])), shape[-1]
  x = np.abs(np_standardize(w))
  ref = np.zeros((n, c), np.float32)
  for j in range(c):
    ref[np.argsort(-x[:, j])[:n // 2], j] = 1.0        # top floor(N/2) magnitudes
  b_med = np.asarray(siman.binary_code(jnp.asarray(w), 'median')).reshape(n, c)
  b_sort = np.asarray(siman.binary_code(jnp.asarray(w), 'sort')).reshape(n, c)
  np.testing.assert_array_equal(b_med, ref)
  np.testing.assert_array_equal(b_sort, ref)             # the two official branches agree
  np.testing.assert_array_equal(b_med.sum(0), n // 2)
  bw = np.asarray(siman.siman_binarize(jnp.asarray(w))).reshape(n, c)
  np.testing.assert_array_equal(bw, 2 * ref - 1)         # exactly 2B - 1
  assert set(np.unique(bw)) == {-1.0, 1.0}
  if n % 2 == 0:
    np.testing.assert_array_equal(bw.sum(0), 0)          # each channel sums to 0


def test_code_uses_lower_median_on_ties():
  # N = 6, centred magnitudes 3,1,1,1,1,3: torch.median gives the lower middle (1), so only the
  # strictly larger entries are 1 -> 2 ones, fewer than N/2 (torch.median + ``>``).
  w = np.array([-3.0, -1.0, 1.0, 1.0, -1.0, 3.0], np.float32).reshape(1, 1, 6, 1)
  b = np.asarray(siman.binary_code(jnp.asarray(w), 'median')).ravel()
  np.testing.assert_array_equal(b, [1, 0, 0, 0, 0, 1])
  # The sort branch always sets N // 2 ones (ties broken by position).
  assert float(np.asarray(siman.binary_code(jnp.asarray(w), 'sort')).sum()) == 3


def test_forward_ignores_sign_scale_and_shift():
  w = rand((3, 3, 4, 5), 1)
  b = np.asarray(siman.siman_binarize(jnp.asarray(w)))
  np.testing.assert_array_equal(np.asarray(siman.siman_binarize(jnp.asarray(-w))), b)
  a = np.array([0.5, 2.0, 7.0, 0.1, 3.0], np.float32)
  shift = np.array([0.3, -1.0, 0.0, 2.0, -0.2], np.float32)
  np.testing.assert_array_equal(np.asarray(siman.siman_binarize(jnp.asarray(a * w + shift))), b)


def test_stored_code_is_used_as_given():
  w = rand((3, 3, 2, 4), 2)
  code = (np.random.RandomState(3).rand(3, 3, 2, 4) > 0.5).astype(np.float32)
  np.testing.assert_array_equal(
      np.asarray(siman.siman_binarize(jnp.asarray(w), jnp.asarray(code))), 2 * code - 1)


# --- the straight-through backward equals its closed form -----------------------------------------


def closed_form_grad(w, g):
  """dL/dw = J_std^T (g * sign(w2)) per channel, written out (no autodiff)."""
  n, c = int(np.prod(w.shape[:-1])), w.shape[-1]
  x = np.asarray(w, np.float64).reshape(n, c)
  xc = x - x.mean(0)
  s = np.sqrt(xc.var(0, ddof=1) + 1e-5)
  h = np.asarray(g, np.float64).reshape(n, c) * np.sign(xc / s)
  out = (h - h.mean(0)) / s - xc * (h * xc).sum(0) / ((n - 1) * s ** 3)
  return out.reshape(w.shape)


@pytest.mark.parametrize('code_given', [False, True])
def test_backward_equals_closed_form(code_given):
  w = rand((3, 3, 4, 6), 4)
  g = np.random.RandomState(5).randn(*w.shape).astype(np.float32)
  code = siman.binary_code(jnp.asarray(w)) if code_given else None
  grad = jax.grad(lambda v: jnp.sum(siman.siman_binarize(v, code) * g))(jnp.asarray(w))
  np.testing.assert_allclose(np.asarray(grad), closed_form_grad(w, g), rtol=2e-4, atol=2e-4)


def test_backward_has_no_window():
  # A weight 4 std out in the tail keeps its direct gradient g * sign / s (no clamp, unlike
  # ReCU, whose window would zero it and leave only the negative mean/var coupling).
  w = rand((1, 1, 16, 1), 6)
  w[0, 0, 3, 0] = 0.25
  g = np.zeros_like(w)
  g[0, 0, 3, 0] = 1.0
  grad = np.asarray(jax.grad(lambda v: jnp.sum(siman.siman_binarize(v) * g))(jnp.asarray(w)))
  np.testing.assert_allclose(grad, closed_form_grad(w, g), rtol=2e-4, atol=1e-5)
  s = np.std(w.ravel(), ddof=1)
  assert grad[0, 0, 3, 0] > 0.3 / s


def test_straight_through_node():
  x = jnp.asarray(np.random.RandomState(7).rand(5), jnp.float32)
  code = jnp.asarray([1.0, 0.0, 1.0, 0.0, 0.0])
  np.testing.assert_array_equal(siman.straight_through_code(x, code), [1, -1, 1, -1, -1])
  gx, gc = jax.grad(lambda a, b: jnp.sum(siman.straight_through_code(a, b) * jnp.arange(5.0)),
                    argnums=(0, 1))(x, code)
  np.testing.assert_array_equal(gx, np.arange(5.0))
  np.testing.assert_array_equal(gc, np.zeros(5))


# --- projection and percent schedule --------------------------------------------------------------


@pytest.mark.parametrize('n', [7, 100, 1153])
def test_percentile_matches_numpy(n):
  x = np.sort(np.abs(np.random.RandomState(n).randn(n))).astype(np.float32)
  f = jax.jit(siman.percentile_of_sorted)
  for q in (0.0, 0.0375, 7.3, 15.0, 50.0, 85.0, 100.0):
    np.testing.assert_allclose(float(f(jnp.asarray(x), q)), np.percentile(x, q), rtol=3e-6,
                               atol=1e-7)


@pytest.mark.parametrize('p', [0.0, 15.0, 7.3, 0.0375])
def test_projection_matches_numpy_reference(p):
  w = rand((3, 3, 4, 8), 8, 'laplace')
  got = np.asarray(jax.jit(siman.project)(jnp.asarray(w), jnp.float32(p)))
  ref, lo, hi = np_project(w, p)
  np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-7)
  wc = w - w.mean(axis=(0, 1, 2), keepdims=True)
  np.testing.assert_array_equal(np.sign(got), np.sign(wc))            # signs preserved
  assert np.abs(got).min() >= lo * (1 - 1e-6) and np.abs(got).max() <= hi * (1 + 1e-6)
  if p == 0.0:
    np.testing.assert_allclose(got.reshape(-1, 8).mean(0), 0.0, atol=1e-7)
    np.testing.assert_allclose(np.sort(np.abs(got).ravel()), np.sort(np.abs(wc).ravel()),
                               rtol=1e-6)
  if p == 15.0:
    frac_lo = np.mean(np.isclose(np.abs(got), lo))
    assert 0.14 <= frac_lo <= 0.16                                     # the bottom 15% raised


def test_percent_schedule():
  assert siman.percent_schedule(0, 400) == 15.0
  assert siman.percent_schedule(399, 400) == pytest.approx(15.0 / 400)
  assert siman.percent_schedule(200, 400) == pytest.approx(7.5)
  v = [siman.percent_schedule(e, 30) for e in range(30)]
  assert all(a > b for a, b in zip(v, v[1:]))
  np.testing.assert_allclose(v, 15 * (1 - np.arange(30) / 30))
  for bad in [(30, 30), (-1, 30), (0, 0), (1.5, 30)]:
    with pytest.raises(ValueError):
      siman.percent_schedule(*bad)
  with pytest.raises(ValueError):
    siman.percent_schedule(0, 10, percent_max=60.0)


# --- the paper's angle objective ------------------------------------------------------------------


def test_angle_alignment_k_is_the_brute_force_optimum():
  w = rand((1, 1, 10, 4), 9, 'laplace')
  x = np.abs(np_standardize(w))
  got = np.asarray(siman.angle_alignment_k(jnp.asarray(w)))
  for j in range(4):
    best, best_k = -1.0, None
    for bits in itertools.product([0, 1], repeat=10):
      b = np.asarray(bits, np.float64)
      if b.sum() == 0:
        continue
      cos = x[:, j] @ b / (np.linalg.norm(x[:, j]) * np.linalg.norm(b))
      if cos > best + 1e-12:
        best, best_k = cos, int(b.sum())
    assert got[j] == best_k


def test_angle_k_fraction_tracks_the_distribution():
  # Continuous optimum: 1/e ~ 0.37 for Laplacian weights (|w| exponential); for Gaussian weights
  # t = phi(t) / (2 (1 - Phi(t))) gives t = 0.612 and k/N = 2 (1 - Phi(t)) = 0.541.
  lap = rand((3, 3, 512, 2), 10, 'laplace')
  gau = np.random.RandomState(11).randn(3, 3, 512, 2).astype(np.float32)
  k_lap = np.asarray(siman.angle_alignment_k(jnp.asarray(lap))) / (9 * 512)
  k_gau = np.asarray(siman.angle_alignment_k(jnp.asarray(gau))) / (9 * 512)
  np.testing.assert_allclose(k_lap, 1 / np.e, atol=0.04)
  np.testing.assert_allclose(k_gau, 0.541, atol=0.04)


def test_laplace_fit():
  x = np.random.RandomState(12).laplace(0.3, 0.7, size=200000)
  mu, b = siman.laplace_fit(x)
  assert mu == pytest.approx(0.3, abs=0.01) and b == pytest.approx(0.7, rel=0.01)
  with pytest.raises(ValueError):
    siman.laplace_fit([])


# --- the activation binarizer SiMaN uses ----------------------------------------------------------


def test_siman_activation_thresholds_at_the_sample_mean():
  a = np.abs(np.random.RandomState(13).randn(2, 4, 4, 3)).astype(np.float32) + 0.5   # a > 0
  out = np.asarray(siman.siman_activation(jnp.asarray(a), True))
  ref = np.sign(a - a.mean(axis=(1, 2, 3), keepdims=True))
  np.testing.assert_array_equal(out, ref)
  assert (out > 0).any() and (out < 0).any()          # differs from sign(a) == +1 everywhere
  np.testing.assert_array_equal(np.asarray(siman.siman_activation(jnp.asarray(a), False)), out)


def test_bad_code_method():
  with pytest.raises(ValueError, match='median'):
    siman.binary_code(jnp.ones((1, 1, 4, 2)), 'topk')
