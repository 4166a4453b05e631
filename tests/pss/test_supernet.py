"""The PSS-Net step, resize, BN post-statistics and weight-decay groups against references."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from common import models
from common.models import slimmable
from pss import supernet


def _resize_ref(img, size):
  # PyTorch F.interpolate(bilinear, align_corners=True) for one HxW plane, written out.
  h, w = img.shape
  out = np.zeros((size, size))
  for i in range(size):
    for j in range(size):
      y = i * (h - 1) / (size - 1)
      x = j * (w - 1) / (size - 1)
      y0, x0 = min(int(np.floor(y)), h - 2), min(int(np.floor(x)), w - 2)
      dy, dx = y - y0, x - x0
      out[i, j] = ((1 - dy) * (1 - dx) * img[y0, x0] + (1 - dy) * dx * img[y0, x0 + 1]
                   + dy * (1 - dx) * img[y0 + 1, x0] + dy * dx * img[y0 + 1, x0 + 1])
  return out


@pytest.mark.parametrize('size', [24, 28, 7])
def test_resize_align_corners(size):
  x = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype(np.float32)
  got = np.asarray(supernet.resize(jnp.asarray(x), size))
  for b in range(2):
    for c in range(3):
      np.testing.assert_allclose(got[b, :, :, c], _resize_ref(x[b, :, :, c], size), atol=1e-5)
  assert supernet.resize(jnp.asarray(x), 32) is not None
  np.testing.assert_array_equal(np.asarray(supernet.resize(jnp.asarray(x), 32)), x)


def test_resize_equals_torch_when_available():
  torch = pytest.importorskip('torch')
  x = np.random.default_rng(1).normal(size=(2, 32, 32, 3)).astype(np.float32)
  want = torch.nn.functional.interpolate(torch.from_numpy(x).permute(0, 3, 1, 2), size=(24, 24),
                                         mode='bilinear', align_corners=True)
  np.testing.assert_allclose(np.asarray(supernet.resize(jnp.asarray(x), 24)),
                             want.permute(0, 2, 3, 1).numpy(), atol=1e-5)


def _toy():
  """A two-weight 'supernet': counts[0] == 9 selects the max net's weight, else the subnet's."""
  rng = np.random.default_rng(0)
  params = {'wmax': jnp.asarray(rng.normal(size=(12, 5)), jnp.float32),
            'wsub': jnp.asarray(rng.normal(size=(12, 5)), jnp.float32)}

  def apply_fn(p, bs, x, counts):
    f = x.reshape(x.shape[0], -1)[:, :12]
    return jnp.where(counts[0] == 9, f @ p['wmax'], f @ p['wsub'] * counts[0] / 4.0), bs
  x = jnp.asarray(rng.normal(size=(6, 4, 4, 1)), jnp.float32)
  y = jnp.asarray(rng.integers(0, 5, 6))
  counts = {'max': jnp.asarray([9]), 'mid': jnp.asarray([3]), 'min': jnp.asarray([2])}
  res = {'max': 4, 'mid': 4, 'min': 4}
  return params, apply_fn, x, y, counts, res


def _np_ce(logits, y):
  z = logits - logits.max(1, keepdims=True)
  logp = z - np.log(np.exp(z).sum(1, keepdims=True))
  return -np.mean(logp[np.arange(len(y)), y]), logp


def test_loss_is_ce_plus_two_batchmean_kls_and_teacher_is_stop_gradient():
  params, apply_fn, x, y, counts, res = _toy()
  loss, (_, m, _) = supernet.pss_loss(apply_fn, params, {}, x, y, counts, res)
  f = np.asarray(x).reshape(6, -1)[:, :12]
  lmax = f @ np.asarray(params['wmax'])
  ce, logp_t = _np_ce(lmax, np.asarray(y))
  kls = []
  for c in (3, 2):
    _, logp_s = _np_ce(f @ np.asarray(params['wsub']) * c / 4.0, np.asarray(y))
    kls.append(np.sum(np.exp(logp_t) * (logp_t - logp_s)) / 6)   # KLDivLoss('batchmean')
  np.testing.assert_allclose(float(loss), ce + kls[0] + kls[1], rtol=1e-5)
  np.testing.assert_allclose([float(m['kl_mid']), float(m['kl_min'])], kls, rtol=1e-5)
  ce_mid, _ = _np_ce(f @ np.asarray(params['wsub']) * 3 / 4.0, np.asarray(y))
  np.testing.assert_allclose(float(m['cand_metric']), -ce_mid, rtol=1e-5)
  # The KL terms send no gradient into the max net: d loss / d wmax == d CE(max) / d wmax.
  g = jax.grad(lambda p: supernet.pss_loss(apply_fn, p, {}, x, y, counts, res)[0])(params)
  from common.losses import cross_entropy
  g_ce = jax.grad(lambda w: cross_entropy(apply_fn({'wmax': w, 'wsub': params['wsub']}, {}, x,
                                                   counts['max'])[0], y))(params['wmax'])
  np.testing.assert_allclose(g['wmax'], g_ce, atol=1e-6)


def test_recalibration_is_the_cumulative_average():
  bn = slimmable.MaskedBatchNorm(False)
  mask = jnp.asarray([1, 1, 1, 1, 0], jnp.float32)
  rng = np.random.default_rng(0)
  batches = [jnp.asarray(rng.normal(loc=i, scale=1 + i, size=(4, 3, 3, 5)), jnp.float32) * mask
             for i in range(5)]
  v = bn.init(jax.random.PRNGKey(0), batches[0], mask)
  fn = jax.jit(lambda x: bn.apply(v, x, mask, mutable=['batch_stats', 'bn_batch'])[1]['bn_batch'])
  got = supernet.recalibrate_bn(fn, batches)
  flat = [np.asarray(b).reshape(-1, 5) for b in batches]
  np.testing.assert_allclose(got['mean'], np.mean([f.mean(0) for f in flat], 0), atol=1e-5)
  np.testing.assert_allclose(got['var'], np.mean([f.var(0, ddof=1) for f in flat], 0), atol=1e-4)
  # PyTorch's momentum-1/(t+1) running update gives the same numbers.
  run_m, run_v = np.zeros(5), np.ones(5)
  for t, f in enumerate(flat):
    mom = 1 / (t + 1)
    run_m = (1 - mom) * run_m + mom * f.mean(0)
    run_v = (1 - mom) * run_v + mom * f.var(0, ddof=1)
  np.testing.assert_allclose(got['mean'], run_m, atol=1e-5)
  np.testing.assert_allclose(got['var'], run_v, atol=1e-4)
  with pytest.raises(ValueError, match='at least one batch'):
    supernet.recalibrate_bn(fn, [])


def test_weight_decay_mask_is_non_depthwise_convs_and_fc():
  model = models.get_model('slim_mobilenet_v1_tiny', 10)
  params = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)),
                                             train=False))['params']
  mask = supernet.decay_mask(params)
  flat = {'/'.join(str(k.key) for k in kp): v for kp, v in
          jax.tree_util.tree_flatten_with_path(mask)[0]}
  decayed = sorted(k for k, v in flat.items() if v)
  want = sorted(['conv1/kernel', 'fc/kernel'] + [f'block{i}/pw_conv/kernel' for i in range(5)])
  assert decayed == want
