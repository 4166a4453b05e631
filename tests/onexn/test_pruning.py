"""1xN block masks against NumPy references of the official PyTorch code
(block constancy, int(G*p) pruned, lowest L1 pruned, rearrangement, errors, sparsity).

The references below are written from ``lmbxmu/1xN utils/conv_type.py``: they work on the PyTorch
layout ``[C_out, C_in, k, k]`` and its ``permute(1, 0, 2, 3).view(-1, N*k*k)`` flattening, so they
also check that the HWIO implementation groups the same weights.
"""
import jax
import numpy as np
import pytest

import onexn
from onexn import pruning


def rand_kernel(shape, seed=0):
  return np.random.RandomState(seed).randn(*shape).astype(np.float32)


def torch_layout(hwio):
  """HWIO -> PyTorch ``[C_out, C_in, kh, kw]``."""
  return np.transpose(hwio, (3, 2, 0, 1))


def hwio_layout(oihw):
  return np.transpose(oihw, (2, 3, 1, 0))


def ref_get_mask(hwio, n, p):
  """NumPy transcription of ``BlockL1Conv.get_mask`` (returns an HWIO float mask)."""
  w = torch_layout(hwio)
  c_out, c_in, k1, k2 = w.shape
  g = np.transpose(w, (1, 0, 2, 3)).reshape(-1, n * k1 * k2)
  prune = int(g.shape[0] * p)
  score = np.abs(g).sum(1)
  idx = np.argsort(score, kind='stable')[:prune]
  m = np.ones(g.shape[0], np.float32)
  m[idx] = 0
  m = np.repeat(m[:, None], n * k1 * k2, axis=1).reshape(c_in, c_out, k1, k2)
  return hwio_layout(np.transpose(m, (1, 0, 2, 3)))


def ref_get_rearr_mask(hwio, n, p):
  """NumPy transcription of ``BlockL1Conv.get_rearr_mask`` (``rearrange_w`` + scatter back)."""
  w = torch_layout(hwio)
  c_out = w.shape[0]
  index = np.argsort(np.abs(w.reshape(c_out, -1)).sum(1), kind='stable')
  m = torch_layout(ref_get_mask(hwio_layout(w[index]), n, p))
  re_m = np.zeros_like(m)
  for i in range(c_out):
    re_m[index[i]] = m[i]
  return hwio_layout(re_m)


SHAPES = [(3, 3, 6, 16), (1, 1, 12, 8), (1, 1, 5, 32), (3, 3, 1, 8)]


@pytest.mark.parametrize('shape', SHAPES)
@pytest.mark.parametrize('n', [1, 2, 4, 8])
@pytest.mark.parametrize('p', [0.0, 0.3, 0.75])
def test_block_mask_matches_official_flattening(shape, n, p):
  w = rand_kernel(shape, seed=n)
  m = np.asarray(onexn.block_mask(w, n, p))
  assert m.dtype == bool and m.shape == shape
  np.testing.assert_array_equal(m, ref_get_mask(w, n, p).astype(bool))


@pytest.mark.parametrize('shape,n', [((3, 3, 6, 16), 4), ((1, 1, 12, 8), 2), ((3, 3, 5, 32), 8)])
@pytest.mark.parametrize('p', [0.25, 0.5, 0.75])
def test_block_constancy_exact_count_smallest_pruned(shape, n, p):
  """Property 1, checked on the HWIO layout directly (independent of any flattening)."""
  w = rand_kernel(shape, seed=3)
  m = np.asarray(onexn.block_mask(w, n, p))
  kh, kw, c_in, c_out = shape
  blocks = m.reshape(kh, kw, c_in, c_out // n, n)
  # constant over the N outputs and the kh x kw positions of one input channel
  assert np.all(blocks == blocks[:1, :1, :, :, :1])
  kept = blocks[0, 0, :, :, 0]                         # [C_in, C_out/N]
  num_blocks = c_in * c_out // n
  assert (~kept).sum() == int(num_blocks * p)
  l1 = np.abs(w).reshape(kh, kw, c_in, c_out // n, n).sum(axis=(0, 1, 4))
  assert l1[~kept].max() <= l1[kept].min()
  # sparsity = p up to the per-layer int() rounding (property 9)
  assert 1 - m.mean() == pytest.approx(int(num_blocks * p) / num_blocks)
  np.testing.assert_allclose(np.asarray(onexn.block_scores(w, n)), l1, rtol=1e-5)


def test_n1_is_kernel_pruning_and_n_cout_is_input_channel_pruning():
  """Property 2."""
  w = rand_kernel((3, 3, 7, 8), seed=5)
  p = 0.6
  kl1 = np.abs(w).sum(axis=(0, 1)).ravel()
  k = int(kl1.size * p)
  ref = np.ones(kl1.size, bool)
  ref[np.argsort(kl1, kind='stable')[:k]] = False
  got = np.asarray(onexn.block_mask(w, 1, p))
  np.testing.assert_array_equal(got, np.broadcast_to(ref.reshape(7, 8), w.shape))

  w1 = rand_kernel((1, 1, 10, 8), seed=6)
  row = np.abs(w1[0, 0]).sum(1)                       # input-channel L1
  k = int(10 * p)
  keep_rows = np.ones(10, bool)
  keep_rows[np.argsort(row, kind='stable')[:k]] = False
  got = np.asarray(onexn.block_mask(w1, 8, p))
  np.testing.assert_array_equal(got[0, 0], np.repeat(keep_rows[:, None], 8, axis=1))


def test_dense_kernel_treated_as_1x1_conv():
  w = rand_kernel((12, 8), seed=7)
  np.testing.assert_array_equal(np.asarray(onexn.block_mask(w, 4, 0.5)),
                                ref_get_mask(w[None, None], 4, 0.5)[0, 0].astype(bool))


@pytest.mark.parametrize('shape,n', [((3, 3, 6, 16), 4), ((1, 1, 12, 8), 2), ((1, 1, 9, 32), 8)])
def test_rearrangement(shape, n):
  """Properties 3 and 5: π ascending by filter L1, official scatter-back, valid block mask in π."""
  w = rand_kernel(shape, seed=11)
  perm = np.asarray(onexn.rearrange_permutation(w))
  l1 = np.abs(w).reshape(-1, shape[-1]).sum(0)
  assert sorted(perm.tolist()) == list(range(shape[-1]))
  assert np.all(np.diff(l1[perm]) >= 0)
  m = np.asarray(onexn.rearranged_block_mask(w, n, 0.5))
  np.testing.assert_array_equal(m, ref_get_rearr_mask(w, n, 0.5).astype(bool))
  assert pruning.is_block_mask(m, n, perm)
  num_blocks = shape[2] * shape[3] // n
  assert (~m).sum() == int(num_blocks * 0.5) * n * shape[0] * shape[1]
  inv = np.asarray(pruning.inverse_permutation(perm))
  np.testing.assert_array_equal(perm[inv], np.arange(shape[-1]))


def test_rearrangement_retains_more_l1_on_constructed_example():
  """Property 5: filters of alternating magnitude; sorting groups large with large."""
  c_in, c_out, n = 8, 8, 2
  r = np.random.RandomState(0)
  scale = np.where(np.arange(c_out) % 2 == 0, 10.0, 0.1)
  w = (np.abs(r.randn(1, 1, c_in, c_out)) * scale).astype(np.float32)
  plain = np.asarray(onexn.block_mask(w, n, 0.5))
  rearr = np.asarray(onexn.rearranged_block_mask(w, n, 0.5))
  assert np.abs(w)[rearr].sum() > np.abs(w)[plain].sum() * 1.2


@pytest.mark.parametrize('n,p', [(16, 0.5), (32, 0.5), (16, 0.75)])
def test_straddle_blocks_reproduces_official_grouping(n, p):
  w = rand_kernel((1, 1, 144, 24), seed=n)          # MobileNet-V2 projection to 24 channels
  with pytest.raises(ValueError, match=r"layer 'block2/project'.*C_out=24.*N=%d" % n):
    onexn.block_mask(w, n, p, layer=('block2', 'project'))
  m = np.asarray(onexn.block_mask(w, n, p, straddle_blocks=True))
  np.testing.assert_array_equal(m, ref_get_mask(w, n, p).astype(bool))
  scores = np.asarray(onexn.block_scores(w, n, straddle_blocks=True))
  assert scores.shape == (144 * 24 // n,)
  np.testing.assert_array_equal(np.asarray(onexn.rearranged_block_mask(w, n, p,
                                                                      straddle_blocks=True)),
                                ref_get_rearr_mask(w, n, p).astype(bool))


def test_bad_inputs_raise_clear_errors():
  """Property 8."""
  w = rand_kernel((1, 1, 4, 8))
  for p in (-0.1, 1.0, 1.5):
    with pytest.raises(ValueError, match=r'\[0, 1\)'):
      onexn.block_mask(w, 4, p)
  for n in (0, -2, 2.0):
    with pytest.raises(ValueError, match='positive integer'):
      onexn.block_mask(w, n, 0.5)
  with pytest.raises(ValueError, match="layer 'fc'.*C_out=8.*N=3"):
    onexn.block_mask(w, 3, 0.5, layer='fc')
  with pytest.raises(ValueError, match='C_in\\*C_out=3\\*5'):
    onexn.block_mask(rand_kernel((1, 1, 3, 5)), 2, 0.5, straddle_blocks=True)
  with pytest.raises(ValueError, match='HWIO'):
    onexn.block_mask(np.zeros((2, 3, 4)), 2, 0.5)


def test_baselines():
  w = rand_kernel((3, 3, 6, 8), seed=2)
  p = 0.5
  mw = np.asarray(onexn.weight_mask(w, p))
  assert (~mw).sum() == int(w.size * p)
  assert np.abs(w)[~mw].max() <= np.abs(w)[mw].min()
  mf = np.asarray(onexn.filter_mask(w, p))
  l1 = np.abs(w).reshape(-1, 8).sum(0)
  pruned = ~mf[0, 0, 0]
  assert pruned.sum() == 4 and np.all(mf == mf[:1, :1, :1])
  assert l1[pruned].max() <= l1[~pruned].min()
  key = jax.random.PRNGKey(0)
  big = rand_kernel((1, 1, 64, 64))
  g = 64 * 64 // 4
  k = int(g * 0.75)
  with_rep = np.asarray(onexn.random_block_mask(big, 4, 0.75, key))
  pruned_blocks = (~with_rep[0, 0]).reshape(64, 16, 4)[..., 0].sum()
  assert pruning.is_block_mask(with_rep, 4)
  # sampling with replacement: distinct blocks ~ G (1 - exp(-k/G)) < k (``torch.randint``)
  assert pruned_blocks < k
  assert abs(pruned_blocks - g * (1 - np.exp(-k / g))) < 0.05 * g
  exact = np.asarray(onexn.random_block_mask(big, 4, 0.75, key, with_replacement=False))
  assert (~exact[0, 0]).reshape(64, 16, 4)[..., 0].sum() == k
  np.testing.assert_array_equal(exact, np.asarray(
      onexn.random_block_mask(big, 4, 0.75, key, with_replacement=False)))
