"""DCFF per-layer math against closed forms and NumPy
references written here (literal C x C x C KL, brute-force distances, slicing instead of fusion)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dcff import fusion


def he_filters(c=16, cin=16, k=3, seed=0):
  """He-normal filters (the ResNet-56 stage-1 case: d = 144)."""
  rng = np.random.default_rng(seed)
  return (rng.normal(size=(k, k, cin, c)) * np.sqrt(2.0 / (k * k * cin))).astype(np.float32)


def softmax_rows_ref(z):
  z = np.asarray(z, np.float64)
  e = np.exp(z - z.max(1, keepdims=True))
  return e / e.sum(1, keepdims=True)


def kl_literal(p):
  """The official ``C x C x C`` expression, literally."""
  p = np.asarray(p)
  with np.errstate(divide='ignore', invalid='ignore'):
    return np.mean(p[:, None, :] * np.log(p[:, None, :] / (p[None, :, :] + np.float32(1e-7))),
                   axis=2)


# --- temperature ------------------------------------------------------------------------

def test_temperature_endpoints_and_monotone():
  for big_e in (10, 30, 90, 300):
    ts = [fusion.temperature(e, big_e) for e in range(big_e + 1)]
    assert ts[0] == pytest.approx(1.0, abs=1e-9)
    assert ts[-1] == pytest.approx(1e4, rel=1e-6)
    # Strictly increasing until 1/(1+exp(-e)) rounds to 1 in float64 (e ~ 37), flat after.
    assert all(b > a for a, b in zip(ts[:30], ts[1:31]))
    assert all(b >= a for a, b in zip(ts, ts[1:]))
    assert abs(fusion.temperature(1, big_e) - 4621.7) < 1.0


def test_temperature_spec_values():
  # main_cifar.py's T(e) with T_s=1, T_e=1e4, k=1: T(0..6) = 1, 4622, 7616, 9052, 9640, 9866, 9951; T(10) = 9999 (E = 300).
  want = [1, 4622, 7616, 9052, 9640, 9866, 9951]
  got = [fusion.temperature(e, 300) for e in range(7)]
  np.testing.assert_allclose(got, want, atol=1.0)
  assert round(fusion.temperature(10, 300)) == 9999


def test_temperature_custom_range():
  assert fusion.temperature(0, 5, t_start=2.0, t_end=50.0, k=0.5) == pytest.approx(2.0)
  assert fusion.temperature(5, 5, t_start=2.0, t_end=50.0, k=0.5) == pytest.approx(50.0)


@pytest.mark.parametrize('kw', [dict(epoch=-1, num_epochs=10), dict(epoch=0, num_epochs=0),
                                dict(epoch=0, num_epochs=10, t_start=5.0, t_end=1.0),
                                dict(epoch=0, num_epochs=10, k=0.0)])
def test_temperature_bad_input(kw):
  with pytest.raises(ValueError):
    fusion.temperature(**kw)


# --- inter-similarity distribution ---------------------------------------------------------

def test_distances_match_brute_force():
  w = he_filters(c=8, cin=4)
  f = w.reshape(-1, 8).T.astype(np.float64)
  ref = np.sqrt(((f[:, None, :] - f[None, :, :]) ** 2).sum(-1))
  d = fusion.filter_distances(w)
  assert d.dtype == np.float32
  np.testing.assert_allclose(d, ref, rtol=1e-6)
  assert np.all(np.diag(d) == 0)


def test_large_layer_distances_match_brute_force():
  # The BLAS Gram path of big layers (C^2 d > 2^27) against the brute-force differences.
  f = np.random.default_rng(4).normal(size=(600, 400)) * 0.05
  assert 600 * 600 * 400 > fusion.CDIST_MAX_WORK
  d = fusion.distances64(f)
  sub = f[:50]
  ref = np.sqrt(((sub[:, None, :] - f[None, :, :]) ** 2).sum(-1))
  np.testing.assert_allclose(d[:50], ref, rtol=1e-9)
  assert np.all(np.diag(d) == 0) and np.all(d >= 0)


def test_distribution_rows_and_diagonal():
  w = he_filters()
  f = w.reshape(-1, 16).T.astype(np.float64)
  d = np.sqrt(((f[:, None, :] - f[None, :, :]) ** 2).sum(-1))
  p = fusion.similarity_distribution(w, 1.0)
  np.testing.assert_allclose(p, softmax_rows_ref(-d), atol=1e-6)
  np.testing.assert_allclose(p.sum(1), 1.0, atol=1e-6)
  assert np.all(np.argmax(p, 1) == np.arange(16))
  assert np.all(np.diag(p) == p.max(1))
  assert 0.15 < p[0, 0] < 0.6  # soft at T = 1 (spec: P[j,j] ~ 0.32)


def test_distribution_limits():
  w = he_filters()
  np.testing.assert_array_equal(fusion.similarity_distribution(w, 1e4), np.eye(16))
  np.testing.assert_allclose(fusion.similarity_distribution(w, 1e-6), 1.0 / 16, atol=1e-5)


def test_distribution_bad_temperature():
  with pytest.raises(ValueError, match='temperature'):
    fusion.similarity_distribution(he_filters(), 0.0)


# --- scores, finiteness, bookkeeping ------------------------------------------------------

def test_scores_finite_at_t1_nonfinite_at_epoch1():
  w = he_filters()
  s0 = fusion.kl_importance(fusion.similarity_distribution(w, 1.0))
  assert np.all(np.isfinite(s0))
  s1 = fusion.kl_importance(fusion.similarity_distribution(w, fusion.temperature(1, 300)))
  assert not np.any(np.isfinite(s1))
  kept, replaced = fusion.update_scores(s0, s1)
  assert not replaced
  np.testing.assert_array_equal(kept, s0)
  assert set(fusion.select_filters(kept, 8)) == set(fusion.select_filters(s0, 8))


def test_update_scores_replaces_when_finite_and_refuses_nan_first():
  a, b = np.arange(4.0), np.arange(4.0)[::-1].copy()
  out, replaced = fusion.update_scores(a, b)
  assert replaced and np.array_equal(out, b)
  part = b.copy()
  part[2] = np.nan
  out, replaced = fusion.update_scores(a, part)
  assert not replaced and np.array_equal(out, a)
  with pytest.raises(FloatingPointError, match='non-finite'):
    fusion.update_scores(None, part)


def test_layer_update_freezes_selection_in_faithful_mode():
  w = he_filters(seed=3)
  u0 = fusion.layer_update(w, 0, 300, 8)
  assert u0['replaced'] and u0['temperature'] == pytest.approx(1.0)
  w2 = w + he_filters(seed=4)  # the filters moved a lot
  u1 = fusion.layer_update(w2, 1, 300, 8, prev_scores=u0['scores'], prev_selected=u0['selected'])
  assert not u1['replaced'] and u1['changed'] == 0
  np.testing.assert_array_equal(u1['selected'], u0['selected'])
  # P_sel uses the *current* T: one-hot rows picking the selected filters.
  np.testing.assert_array_equal(u1['p_sel'], np.eye(16, dtype=np.float32)[u0['selected']])
  # Epoch 0's P_sel is soft and its rows are the selected filters' distributions.
  p0 = fusion.similarity_distribution(w, 1.0)
  np.testing.assert_array_equal(u0['p_sel'], p0[u0['selected']])


def test_layer_update_dynamic_mode_follows_weights():
  w = he_filters(seed=5)
  u0 = fusion.layer_update(w, 0, 300, 8, mode='dynamic')
  w2 = he_filters(seed=6)
  u1 = fusion.layer_update(w2, 1, 300, 8, prev_scores=u0['scores'],
                           prev_selected=u0['selected'], mode='dynamic')
  assert u1['replaced']
  # The dynamic scores are the float64 KL of P at min(T, cap) = 1 on the current weights.
  f = w2.reshape(-1, 16).T.astype(np.float64)
  d = np.sqrt(((f[:, None, :] - f[None, :, :]) ** 2).sum(-1))
  ref = kl_literal(softmax_rows_ref(-d)).sum(1)
  np.testing.assert_allclose(u1['scores'], ref, rtol=1e-5)
  assert set(u1['selected'].tolist()) == set(np.argsort(-ref, kind='stable')[:8].tolist())
  with pytest.raises(ValueError, match='score mode'):
    fusion.layer_update(w, 0, 300, 8, mode='fast')


def test_float64_alone_does_not_keep_scores_finite():
  # Why the dynamic mode caps T: in float64, exp(-D*T) still underflows at T(1).
  w = he_filters()
  lp = fusion.log_similarity_distribution(w, fusion.temperature(1, 300))
  p64 = np.exp(lp)
  assert not np.all(np.isfinite(fusion.kl_importance(p64)))
  # ... and the stable (log-space) KL alone ties every score (top-k = index order).
  s = fusion.kl_importance(p64, log_p=lp)
  assert np.all(np.isfinite(s)) and np.ptp(s) == 0


# --- efficient KL == literal formula -------------------------------------------------------

def test_kl_efficient_matches_literal():
  rng = np.random.default_rng(1)
  p = rng.dirichlet(np.ones(12), size=12).astype(np.float32)
  np.testing.assert_allclose(fusion.kl_matrix(p), kl_literal(p), atol=1e-5)
  np.testing.assert_allclose(fusion.kl_importance(p), kl_literal(p).sum(1), atol=1e-5)


def test_kl_nan_rows_match_literal():
  rng = np.random.default_rng(2)
  p = rng.dirichlet(np.ones(10), size=10).astype(np.float32)
  p[3, 7] = 0.0
  p[6, [1, 2]] = 0.0
  p = p / p.sum(1, keepdims=True)
  want = ~np.isfinite(kl_literal(p).sum(1))
  got = ~np.isfinite(fusion.kl_importance(p))
  np.testing.assert_array_equal(got, want)
  assert set(np.flatnonzero(got)) == {3, 6}
  fin = ~want
  np.testing.assert_allclose(fusion.kl_importance(p)[fin], kl_literal(p).sum(1)[fin], atol=1e-5)


# --- selection ----------------------------------------------------------------------------------

def test_select_filters():
  s = np.array([0.3, 0.9, 0.1, 0.9, 0.5], np.float32)
  np.testing.assert_array_equal(fusion.select_filters(s, 3), [1, 3, 4])
  assert fusion.boundary_ties(s, 1) == 1 and fusion.boundary_ties(s, 3) == 0
  for bad in (0, 6, 2.5):
    with pytest.raises(ValueError, match='m must be'):
      fusion.select_filters(s, bad)
  with pytest.raises(ValueError, match='non-finite'):
    fusion.select_filters(np.array([1.0, np.nan]), 1)


def test_stable_slots_keep_kept_filters_in_place():
  prev = np.array([5, 2, 7, 0])
  np.testing.assert_array_equal(fusion.stable_slots(prev, np.array([0, 7, 2, 5])), prev)
  np.testing.assert_array_equal(fusion.stable_slots(prev, np.array([9, 0, 7, 5])), [5, 9, 7, 0])
  np.testing.assert_array_equal(fusion.stable_slots(prev, np.array([3, 1, 7, 0])), [3, 1, 7, 0])


# --- fused conv and its gradient -------------------------------------------------------

def conv(x, w):
  return jax.lax.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)),
                                      dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


def test_fuse_one_hot_selects_originals():
  w = jnp.asarray(he_filters(c=10, cin=3))
  sel = np.array([7, 2, 9, 0])
  p = np.eye(10, dtype=np.float32)[sel]
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 6, 6, 3))
  np.testing.assert_array_equal(fusion.fuse(w, p), w[..., sel])
  np.testing.assert_allclose(conv(x, fusion.fuse(w, p)), conv(x, w[..., sel]), atol=1e-6)
  b = jnp.arange(10.0)
  np.testing.assert_array_equal(fusion.fuse(b, p), b[sel])


def test_fuse_soft_matches_numpy():
  w = he_filters(c=6, cin=2)
  p = np.random.default_rng(0).dirichlet(np.ones(6), size=3).astype(np.float32)
  ref = np.stack([sum(p[i, g] * w[..., g] for g in range(6)) for i in range(3)], -1)
  np.testing.assert_allclose(fusion.fuse(jnp.asarray(w), p), ref, atol=1e-6)
  with pytest.raises(ValueError, match='P_sel'):
    fusion.fuse(jnp.asarray(w), p[:, :5])


def test_fuse_gradient():
  w = jnp.asarray(he_filters(c=6, cin=2))
  x = jax.random.normal(jax.random.PRNGKey(1), (2, 5, 5, 2))
  p = jnp.asarray(np.random.default_rng(3).dirichlet(np.ones(6), size=3).astype(np.float32))

  def loss_fused(wf):
    return jnp.sum(jnp.sin(conv(x, wf)))

  g_w = jax.grad(lambda w_: loss_fused(fusion.fuse(w_, p)))(w)
  g_fused = jax.grad(loss_fused)(fusion.fuse(w, p))
  manual = np.einsum('hwim,mo->hwio', np.asarray(g_fused), np.asarray(p))  # P_sel^T dL/dW_fused
  np.testing.assert_allclose(g_w, manual, atol=1e-5)
  # P_sel is a constant: no gradient flows into it.
  g_p = jax.grad(lambda p_: loss_fused(fusion.fuse(w, p_)))(p)
  assert np.all(np.asarray(g_p) == 0)
  # One-hot P_sel: unselected filters get exactly zero loss gradient.
  sel = np.array([4, 1])
  g1 = jax.grad(lambda w_: loss_fused(fusion.fuse(w_, np.eye(6, dtype=np.float32)[sel])))(w)
  unsel = [j for j in range(6) if j not in sel]
  assert np.all(np.asarray(g1)[..., unsel] == 0)
  assert np.all(np.abs(np.asarray(g1)[..., sel]).sum((0, 1, 2)) > 0)
