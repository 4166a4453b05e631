"""Masks and param-tree transforms against brute-force NumPy references."""
import jax.numpy as jnp
import numpy as np
import pytest

from common import masks, transforms


def params_tree(seed=0):
  r = np.random.RandomState(seed)
  return {'conv1': {'kernel': jnp.asarray(r.randn(3, 3, 4, 8), jnp.float32)},
          'bn1': {'scale': jnp.ones(8), 'bias': jnp.zeros(8)},
          'layer1_0': {'conv1': {'kernel': jnp.asarray(r.randn(3, 3, 8, 8), jnp.float32)}},
          'fc': {'kernel': jnp.asarray(r.randn(8, 10), jnp.float32), 'bias': jnp.zeros(10)}}


def test_select_and_map_kernels():
  p = params_tree()
  sel = transforms.select(p)
  assert set(sel) == {('conv1', 'kernel'), ('layer1_0', 'conv1', 'kernel'), ('fc', 'kernel')}
  doubled = transforms.map_kernels(lambda w: 2 * w, p, where=transforms.is_conv_kernel)
  np.testing.assert_array_equal(doubled['conv1']['kernel'], 2 * p['conv1']['kernel'])
  np.testing.assert_array_equal(doubled['fc']['kernel'], p['fc']['kernel'])
  only_layer = transforms.select(p, transforms.under('layer1_0'))
  assert list(only_layer) == [('layer1_0', 'conv1', 'kernel')]
  q = transforms.set_path(p, ('fc', 'bias'), jnp.ones(10))
  assert float(q['fc']['bias'].sum()) == 10 and float(p['fc']['bias'].sum()) == 0
  with pytest.raises(KeyError, match='layer9'):
    transforms.get_path(p, ('layer9', 'kernel'))


@pytest.mark.parametrize('p', [0.0, 0.3, 0.5, 0.9, 1.0])
def test_magnitude_mask_exact_count_and_smallest(p):
  w = jnp.asarray(np.random.RandomState(1).randn(3, 3, 4, 8), jnp.float32)
  m = np.asarray(masks.magnitude_mask(w, p))
  k = int(w.size * p)
  assert m.sum() == w.size - k
  a = np.abs(np.asarray(w)).ravel()
  if 0 < k < w.size:
    assert a[~m.ravel()].max() <= a[m.ravel()].min()


def test_filter_l1_mask():
  w = np.random.RandomState(2).randn(3, 3, 4, 10).astype(np.float32)
  m = np.asarray(masks.filter_l1_mask(jnp.asarray(w), 0.35))
  l1 = np.abs(w).reshape(-1, 10).sum(0)
  pruned = np.where(~m[0, 0, 0])[0]
  assert len(pruned) == int(10 * 0.35)
  assert set(pruned) == set(np.argsort(l1)[:3])
  assert (m == m[:1, :1, :1]).all()   # constant over all but the output axis


def test_global_magnitude_masks_single_threshold():
  p = params_tree(3)
  mt = masks.global_magnitude_masks(p, 0.6)
  flat_w = np.concatenate([np.abs(np.asarray(w)).ravel() for w in transforms.select(p).values()])
  flat_m = np.concatenate([np.asarray(m).ravel() for m in
                           transforms.select(mt, lambda path, leaf: True).values()])
  assert (~flat_m).sum() == int(flat_w.size * 0.6)
  assert flat_w[~flat_m].max() <= flat_w[flat_m].min()
  rep = masks.sparsity_report(mt)
  assert rep['total'] == flat_w.size
  assert abs(rep['global_sparsity'] - int(flat_w.size * 0.6) / flat_w.size) < 1e-12


@pytest.mark.parametrize('sparsity', [0.6, 0.9, 0.95])
def test_global_magnitude_masks_keep_count(sparsity):
  # count='keep' keeps int(N (1 - p)) largest |w| (lottery-jackpots generate_pr_cfg), which is one
  # weight fewer than N - int(N p) whenever N p is not an integer (here N = 944).
  p = params_tree(4)
  mt = masks.global_magnitude_masks(p, sparsity, count='keep')
  flat_w = np.concatenate([np.abs(np.asarray(w)).ravel() for w in transforms.select(p).values()])
  flat_m = np.concatenate([np.asarray(m).ravel() for m in
                           transforms.select(mt, lambda path, leaf: True).values()])
  n_keep = int(flat_w.size * (1 - sparsity))
  assert flat_m.sum() == n_keep
  assert n_keep != flat_w.size - int(flat_w.size * sparsity)
  np.testing.assert_array_equal(np.sort(flat_w[flat_m]), np.sort(flat_w)[::-1][:n_keep][::-1])
  with pytest.raises(ValueError, match="count must be 'prune' or 'keep'; got 'kept'"):
    masks.global_magnitude_masks(p, sparsity, count='kept')


def test_apply_masks_and_errors():
  p = params_tree()
  mt = masks.per_layer_masks(p, 0.5, kind='filter')
  out = masks.apply_masks(p, mt)
  np.testing.assert_array_equal(out['fc']['kernel'],
                                np.asarray(p['fc']['kernel']) * np.asarray(mt['fc']['kernel']))
  np.testing.assert_array_equal(out['bn1']['scale'], p['bn1']['scale'])
  with pytest.raises(ValueError, match='no matching parameter'):
    masks.apply_masks(p, {'nope': {'kernel': jnp.ones((2, 2), bool)}})
  with pytest.raises(ValueError, match=r'mask shape \(2, 2\)'):
    masks.apply_masks(p, {'fc': {'kernel': jnp.ones((2, 2), bool)}})
  with pytest.raises(ValueError, match='sparsity must lie in'):
    masks.magnitude_mask(p['fc']['kernel'], 1.5)
  with pytest.raises(ValueError, match='unknown mask kind'):
    masks.per_layer_masks(p, 0.5, kind='block')
