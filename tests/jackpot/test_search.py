"""Lottery-Jackpots math against NumPy references and the properties of the official code
(zyxxmu/lottery-jackpots ``utils/conv_type.py``, ``cifar.py: generate_pr_cfg``)."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from common import masks as common_masks
from common import transforms
import jackpot
from jackpot import search, select

CLS = ('fc', 'kernel')


def tree(seed=0):
  r = np.random.RandomState(seed)
  f = lambda *s: jnp.asarray(r.randn(*s), jnp.float32)
  return {'conv0': {'kernel': f(3, 3, 3, 8)}, 'conv1': {'kernel': 0.3 * f(3, 3, 8, 8)},
          'conv2': {'kernel': 2.0 * f(3, 3, 8, 16)},
          'bn0': {'scale': jnp.ones(8), 'bias': jnp.zeros(8)},
          'fc': {'kernel': f(1, 1, 16, 10), 'bias': jnp.zeros(10)}}


# --- exact selection -------------------------------------------------------------------------
@pytest.mark.parametrize('seed', [0, 1])
def test_kth_smallest_matches_sort_with_ties_and_negatives(seed):
  r = np.random.RandomState(seed)
  x = np.concatenate([r.randn(500), np.full(37, 0.99), np.full(20, -2.5), [0.0, -0.0, 1e-30]])
  x = r.permutation(x).astype(np.float32)
  s = np.sort(x)
  f = select.kth_smallest
  for k in [1, 2, 37, 100, 300, x.size - 1, x.size]:
    assert float(f(jnp.asarray(x), k)) == s[k - 1], k


def test_lowest_k_among_matches_stable_argsort():
  r = np.random.RandomState(3)
  x = np.round(r.randn(400), 1).astype(np.float32)       # many ties
  valid = r.rand(400) < 0.6
  f = select.lowest_k_among
  for k in [0, 1, 17, 120, int(valid.sum())]:
    got = np.asarray(f(jnp.asarray(x), k, jnp.asarray(valid)))
    idx = np.where(valid)[0]
    ref = np.zeros(400, bool)
    ref[idx[np.argsort(x[idx], kind='stable')[:k]]] = True
    np.testing.assert_array_equal(got, ref)
  # without a subset it is common.masks.lowest_k_mask's complement
  for k in [0, 5, 250, 400]:
    np.testing.assert_array_equal(np.asarray(f(jnp.asarray(x), k)),
                                  ~np.asarray(common_masks.lowest_k_mask(jnp.asarray(x), k)))


# --- rates and initial mask ------------------------------------------------------------------
@pytest.mark.parametrize('p', [0.5, 0.9, 0.95, 0.98])
def test_initial_mask_is_global_magnitude_mask(p):
  params = tree()
  rates = search.layer_rates(params, p, [CLS])
  counts = search.pruned_counts(params, rates)
  scores, masks, ks = search.init_search(params, counts)
  body = {k: v for k, v in transforms.select(params).items() if k != CLS}
  allw = np.concatenate([np.abs(np.asarray(w)).ravel() for w in body.values()])
  n_keep = int(allw.size * (1 - p))
  tau = np.sort(allw)[::-1][n_keep - 1]               # generate_pr_cfg's threshold
  gm = jax.tree_util.tree_map(np.asarray, common_masks.global_magnitude_masks(
      {k[0]: {'kernel': v} for k, v in body.items()}, p, count='keep'))
  kept = 0
  for path, w in body.items():
    w = np.abs(np.asarray(w))
    r_ref = np.sum(w < tau) / w.size
    assert rates[path] == r_ref
    assert counts[path] == int(w.size * r_ref)
    b = np.asarray(transforms.get_path(masks, path))
    np.testing.assert_array_equal(b, gm[path[0]]['kernel'])
    np.testing.assert_array_equal(b, w >= tau)
    s = np.asarray(transforms.get_path(scores, path))
    np.testing.assert_array_equal(s, np.where(b, 1.0, np.float32(0.99)))
    assert int(transforms.get_path(ks, path)) == (~b).sum()
    kept += b.sum()
  assert kept == n_keep                                    # int(N (1 - p)) kept globally
  assert rates[CLS] == 0.0 and np.asarray(masks['fc']['kernel']).all()


def test_uniform_rates_and_errors():
  params = tree()
  rates = search.layer_rates(params, 0.9, [CLS], mode='uniform')
  assert rates[CLS] == 0.0 and all(v == 0.9 for k, v in rates.items() if k != CLS)
  with pytest.raises(ValueError, match=r"layerwise must be one of \['l1', 'uniform'\]; got 'l2'"):
    search.layer_rates(params, 0.9, [CLS], mode='l2')
  with pytest.raises(ValueError, match=r'sparsity must lie in \[0, 1\); got 1.5'):
    search.layer_rates(params, 1.5, [CLS])
  with pytest.raises(ValueError, match="classifier kernel"):
    search.layer_rates(params, 0.9, [('head', 'kernel')])
  with pytest.raises(ValueError, match="variant must be one of"):
    search.init_search(params, {CLS: 0}, variant='v3')


# --- straight-through estimator --------------------------------------------------------------
def test_ste_gradient_is_w_times_grad_of_effective_weight():
  params = tree(1)
  counts = search.pruned_counts(params, search.layer_rates(params, 0.9, [CLS]))
  scores, masks, ks = search.init_search(params, counts)
  r = np.random.RandomState(2)
  consts = {path: jnp.asarray(r.randn(*w.shape), jnp.float32)
            for path, w in transforms.select(params).items()}

  def net(p):   # a nonlinear function of every entry of every masked kernel
    return sum(jnp.sum(c * jnp.sin(3.0 * transforms.get_path(p, path) + 1.0) ** 2)
               for path, c in consts.items())

  g_s = jax.jit(jax.grad(lambda s: net(search.effective_params(params, s, masks))))(scores)
  eff = common_masks.apply_masks(params, masks)
  g_eff = jax.jit(jax.grad(net))(eff)
  for path in transforms.select(params):
    w = np.asarray(transforms.get_path(params, path))
    ref = w * np.asarray(transforms.get_path(g_eff, path))
    got = np.asarray(transforms.get_path(g_s, path))
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)
    # dense: pruned positions (b = 0) get gradient too
    b = np.asarray(transforms.get_path(masks, path))
    if (~b).any():
      assert np.abs(got[~b]).max() > 0
  # the forward is exactly W * b
  out = search.effective_params(params, scores, masks)
  np.testing.assert_array_equal(out['conv1']['kernel'], eff['conv1']['kernel'])


# --- pop-up ----------------------------------------------------------------------------------
def _topk_ref(s, k):
  """b = 1 on the n - k largest scores (NumPy)."""
  keep = np.ones(s.size, bool)
  keep[np.argsort(s.ravel(), kind='stable')[:k]] = False
  return keep.reshape(s.shape)


def test_popup_without_ties_is_per_layer_top_k():
  r = np.random.RandomState(4)
  n, k = 300, 210
  f = search.popup
  for trial in range(3):
    b = np.ones(n, bool)
    b[r.choice(n, k, replace=False)] = False
    s = r.randn(n).astype(np.float32)
    new, q = f(jnp.asarray(s), jnp.asarray(b), k)
    ref = _topk_ref(s, k)
    np.testing.assert_array_equal(np.asarray(new), ref)
    assert (~np.asarray(new)).sum() == k
    assert int(q) == int((ref & ~b).sum())


def test_popup_unchanged_under_a_constructed_tie():
  # A tie at tau makes |B| > |A|: the equal-count rule of final_pop_up leaves b as it is.
  s3 = np.array([0.5, 0.5, 0.9, 0.8, 0.1, 0.7], np.float32)
  b3 = np.array([1, 1, 0, 1, 0, 1], bool)       # k = 2 pruned at 0.9 and 0.1
  # tau = 0.5 (2nd smallest): A = {2} (0.9 > 0.5), B = {0, 1} (<= 0.5): tie -> unchanged
  new, q = search.popup(jnp.asarray(s3), jnp.asarray(b3), 2)
  np.testing.assert_array_equal(np.asarray(new), b3)
  assert int(q) == 0
  # the same scores with the tie broken: the swap happens
  s4 = s3.copy()
  s4[1] = 0.55
  new, q = search.popup(jnp.asarray(s4), jnp.asarray(b3), 2)
  np.testing.assert_array_equal(np.asarray(new), np.array([0, 1, 1, 1, 0, 1], bool))
  assert int(q) == 1


def test_popup_rate_half_swaps_ceil_half_highest_first():
  r = np.random.RandomState(5)
  n, k = 200, 120
  b = np.ones(n, bool)
  b[:k] = False
  s = r.permutation(n).astype(np.float32)      # distinct scores
  tau = np.sort(s)[k - 1]
  A = np.where(~b & (s > tau))[0]
  B = np.where(b & (s <= tau))[0]
  assert len(A) == len(B) > 1
  new, q = search.popup(jnp.asarray(s), jnp.asarray(b), k, 0.5)
  new = np.asarray(new)
  want_q = math.ceil(len(A) * 0.5)
  assert int(q) == want_q
  revived = np.where(new & ~b)[0]
  pruned = np.where(~new & b)[0]
  assert set(revived) == set(A[np.argsort(-s[A])[:want_q]])
  assert set(pruned) == set(B[np.argsort(s[B])[:want_q]])
  assert (~new).sum() == k


def test_popup_single_swap_and_zero_k():
  s = np.array([0.3, 0.9, 0.1, 0.8], np.float32)
  b = np.array([1, 0, 1, 1], bool)             # k = 1, tau = 0.1: A = {1}, B = {2}
  new, q = search.popup(jnp.asarray(s), jnp.asarray(b), 1, 0.25)
  np.testing.assert_array_equal(np.asarray(new), [1, 1, 0, 1])
  assert int(q) == 1
  ones = np.ones(4, bool)                       # classifier: k = 0, nothing moves
  new, q = search.popup(jnp.asarray(s), jnp.asarray(ones), 0)
  assert np.asarray(new).all() and int(q) == 0


def test_adjust_rate_is_one_for_every_epoch():
  for E in (5, 30, 160):
    assert all(search.adjust_rate(e, E) == 1 for e in range(E))


# --- v1 vs v2 --------------------------------------------------------------------------------
def test_v1_uses_abs_scores_v2_raw_scores():
  r = np.random.RandomState(6)
  mag = r.rand(100).astype(np.float32) + 0.1
  sign = np.where(r.rand(100) < 0.5, -1.0, 1.0).astype(np.float32)
  k = 70
  m_pos = np.asarray(search.v1_mask(jnp.asarray(mag), k))
  m_mix = np.asarray(search.v1_mask(jnp.asarray(sign * mag), k))
  np.testing.assert_array_equal(m_pos, m_mix)            # v1: |s|
  np.testing.assert_array_equal(m_pos, _topk_ref(mag, k))
  b = np.ones(100, bool)
  b[np.argsort(mag)[:k]] = False                        # the v1 mask as a v2 start
  v2_pos, _ = search.popup(jnp.asarray(mag), jnp.asarray(b), k)
  v2_mix, _ = search.popup(jnp.asarray(sign * mag), jnp.asarray(b), k)
  np.testing.assert_array_equal(np.asarray(v2_pos), b)
  assert (np.asarray(v2_mix) != b).any()                 # v2: raw scores (negatives fall)
  np.testing.assert_array_equal(np.asarray(v2_mix), _topk_ref(sign * mag, k))


def test_v1_init_scores_and_forward_mask():
  params = tree(2)
  counts = search.pruned_counts(params, search.layer_rates(params, 0.9, [CLS]))
  s1, b1, k1 = search.init_search(params, counts, variant='v1')
  s2, b2, _ = search.init_search(params, counts, variant='v2')
  w = np.asarray(params['conv1']['kernel'])
  pruned = ~np.asarray(b2['conv1']['kernel'])
  assert set(np.unique(np.asarray(s1['conv1']['kernel'])[pruned])) == {np.float32(0.95)}
  assert set(np.unique(np.asarray(s2['conv1']['kernel'])[pruned])) == {np.float32(0.99)}
  # v1 recomputes the mask in the forward from |s|: at init it is the magnitude mask
  eff1 = search.effective_params(params, s1, b1, k1, variant='v1')
  np.testing.assert_array_equal(eff1['conv1']['kernel'], np.where(pruned, 0.0, w))
  # and follows the scores without any stored mask
  s_new = jax.tree.map(lambda s: s, s1)
  s_new['conv1']['kernel'] = jnp.asarray(np.abs(w))
  eff = search.effective_params(params, s_new, b1, k1, variant='v1')
  ref = np.where(_topk_ref(np.abs(w), int(k1['conv1']['kernel'])), w, 0.0)
  np.testing.assert_array_equal(eff['conv1']['kernel'], ref)


# --- export and overlap ----------------------------------------------------------------------
def test_export_is_w_times_b_and_iou():
  params = tree(3)
  counts = search.pruned_counts(params, search.layer_rates(params, 0.8, [CLS]))
  _, masks, _ = search.init_search(params, counts)
  out, rep = jackpot.export_sparse(params, masks)
  for path in transforms.select(params):
    b = np.asarray(transforms.get_path(masks, path))
    np.testing.assert_array_equal(transforms.get_path(out, path),
                                  np.where(b, np.asarray(transforms.get_path(params, path)), 0))
    assert rep['layers'][transforms.path_str(path)]['kept'] == b.sum()
  np.testing.assert_array_equal(out['bn0']['scale'], params['bn0']['scale'])
  assert jackpot.mask_iou(masks, masks) == 1.0
  flipped = jax.tree.map(lambda m: ~m, masks)
  assert jackpot.mask_iou(masks, flipped, exclude=[CLS]) == 0.0
  a = {'l': {'kernel': jnp.asarray([1, 1, 0, 0], bool)}}
  c = {'l': {'kernel': jnp.asarray([1, 0, 1, 0], bool)}}
  assert jackpot.mask_iou(a, c) == pytest.approx(1 / 3)
