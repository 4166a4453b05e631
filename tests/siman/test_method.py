"""The SiMaN ``common.train`` hooks (siman/train.py): the per-forward projection as explicit steps
on the parameter tree (post_step, epoch_start with the replayed validation projections), the code
B as state written by the training forward and read (stale) by eval, as the official Parameter B,
the sign-STE control, the decay mask and config errors. NumPy references are written here."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from common.models import bnn_layers
from common import train
from common import transforms
from siman import siman
from siman.configs import digits
from siman.configs import recipes
from siman.train import CODES, SiMaN

WIDTHS = [4, 4, 8, 8, 8, 8]
X = jnp.asarray(np.random.RandomState(0).randn(3, 32, 32, 3), jnp.float32)


def make(**method):
  c = digits.get_config()
  c.model.widths = list(WIDTHS)
  c.num_epochs = 10
  for k, v in method.items():
    c.method[k] = v
  m = SiMaN(c)
  m.setup(train.RunInfo(num_classes=10, image_shape=(32, 32, 3)))
  return m


def np_project(w, p):
  w = np.asarray(w, np.float64)
  wc = w - w.mean(axis=(0, 1, 2), keepdims=True)
  lo, hi = np.percentile(np.abs(wc), p), np.percentile(np.abs(wc), 100 - p)
  return np.sign(wc) * np.clip(np.abs(wc), lo, hi)


def np_code(w):
  flat = np.asarray(w, np.float64).reshape(-1, w.shape[-1])
  c = flat - flat.mean(0)
  x = np.abs(c / np.sqrt(c.var(0, ddof=1) + 1e-5))
  b = np.zeros_like(flat)
  np.put_along_axis(b, np.argsort(-x, axis=0)[:flat.shape[0] // 2], 1.0, axis=0)
  return b.reshape(w.shape)


@pytest.fixture(scope='module')
def setup():
  """Method, model and variables with NumPy-random values (no init compile on the shared CPU);
  the code B is the method's own initial state: ``binary_codes`` of those params."""
  m = make()
  model = m.build_model()
  shapes = jax.eval_shape(lambda: m.init_variables(model, jax.random.PRNGKey(0), X[:1]))
  r = np.random.RandomState(1)

  def fill(path, s):
    name = transforms.path_tuple(path)[-1]
    if name in ('var', 'scale', 'alpha'):
      return np.abs(r.randn(*s.shape)).astype(np.float32) * 0.1 + 0.5
    return (r.randn(*s.shape) * 0.1).astype(np.float32)

  params = jax.tree_util.tree_map_with_path(fill, shapes['params'])
  bs = {k: jax.tree_util.tree_map_with_path(fill, v)
        for k, v in shapes['batch_stats'].items() if k != CODES}
  bs[CODES] = jax.jit(siman.binary_codes)(params)
  assert jax.tree.structure(bs) == jax.tree.structure(shapes['batch_stats'])
  return m, model, {'params': params, 'batch_stats': bs}


def binary_kernels(params):
  return transforms.select(params, siman.is_binary_kernel(params))


_JITTED = {}


def forward_and_kernels(m, model, params, batch_stats, train_mode):
  """``m.forward`` (jitted once per mode) and the kernel each BinaryConv computed with."""
  if (id(m), train_mode) not in _JITTED:
    def f(params, batch_stats):
      seen = []

      def spy(next_fun, args, kwargs, context):
        if isinstance(context.module, bnn_layers.BinaryConv) and context.method_name == '__call__':
          seen.append(context.module.variables['params']['kernel'])
        return next_fun(*args, **kwargs)

      with nn.intercept_methods(spy):
        out = m.forward(model, params, batch_stats, {}, {'image': X}, train_mode, jax.random.PRNGKey(1))
      return out, seen
    _JITTED[(id(m), train_mode)] = jax.jit(f)
  out, seen = _JITTED[(id(m), train_mode)](params, batch_stats)
  return out, [np.asarray(k) for k in seen]


def test_initial_codes_and_extra(setup):
  m, _, v = setup
  codes = v['batch_stats'][CODES]
  kernels = binary_kernels(v['params'])
  assert set(codes) == {transforms.path_str(p[:-1]) for p in kernels} == {
      f'conv{i}' for i in range(1, 6)}
  for p, w in kernels.items():
    np.testing.assert_array_equal(np.asarray(codes[p[0]]), np_code(np.asarray(w)))
  extra = m.init_extra(v['params'], v['batch_stats'], None)
  assert float(extra['percent']) == 0.0            # the official buffer's initial value


def test_train_forward_writes_code_and_eval_uses_the_stale_one(setup):
  # Train with w, then eval with w' != w: the eval kernel is the old 2B - 1, B unchanged.
  m, model, v = setup
  params = v['params']
  (_, bs_train, _), seen = forward_and_kernels(m, model, params, v['batch_stats'], True)
  keys = [f'conv{i}' for i in range(1, 6)]
  for p, w in binary_kernels(params).items():
    np.testing.assert_array_equal(np.asarray(bs_train[CODES][p[0]]), np_code(np.asarray(w)))
  for kernel, key in zip(seen, keys):
    np.testing.assert_array_equal(kernel, 2 * np.asarray(bs_train[CODES][key]) - 1)
  noise = np.random.RandomState(2)
  params2 = transforms.map_kernels(
      lambda w: w + jnp.asarray(noise.randn(*w.shape) * 0.5 * float(jnp.std(w)), jnp.float32),
      params, siman.is_binary_kernel(params))
  new_codes = {p[0]: np_code(np.asarray(w)) for p, w in binary_kernels(params2).items()}
  assert any(not np.array_equal(new_codes[k], np.asarray(bs_train[CODES][k])) for k in keys)
  (_, bs_eval, _), seen = forward_and_kernels(m, model, params2, bs_train, False)
  assert len(seen) == 5
  for kernel, key in zip(seen, keys):
    np.testing.assert_array_equal(kernel, 2 * np.asarray(bs_train[CODES][key]) - 1)
    np.testing.assert_array_equal(np.asarray(bs_eval[CODES][key]),
                                  np.asarray(bs_train[CODES][key]))
  # ... while a training forward with w' computes with (and stores) the new code.
  (_, bs_new, _), seen = forward_and_kernels(m, model, params2, bs_train, True)
  for kernel, key in zip(seen, keys):
    np.testing.assert_array_equal(kernel, 2 * new_codes[key] - 1)
    np.testing.assert_array_equal(np.asarray(bs_new[CODES][key]), new_codes[key])


def test_post_step_projects_binary_kernels_only(setup):
  m, _, v = setup
  extra = {'percent': jnp.float32(9.0)}
  new, extra2 = jax.jit(m.post_step)(v['params'], extra, jnp.int32(0))
  assert extra2 is not None and float(extra2['percent']) == 9.0
  for p, w in transforms.select(v['params']).items():
    got = np.asarray(transforms.get_path(new, p))
    if p in binary_kernels(v['params']):
      np.testing.assert_allclose(got, np_project(np.asarray(w), 9.0), rtol=1e-5, atol=1e-7)
    else:
      np.testing.assert_array_equal(got, np.asarray(w))       # stem conv0 and fc untouched


@pytest.mark.parametrize('epoch,k', [(0, 3), (3, 3), (3, 1), (3, 0)])
def test_epoch_start_replays_validation_projections_then_sets_percent(setup, epoch, k):
  _, _, v = setup
  m = make(eval_projections=k)
  state = train.TrainState(step=jnp.zeros((), jnp.int32), params=v['params'],
                           batch_stats=v['batch_stats'], opt_state=None,
                           extra=m.init_extra(v['params'], v['batch_stats'], None),
                           rng=jnp.zeros(2, jnp.uint32))
  new = m.epoch_start(state, epoch)
  p_now, p_prev = 15 * (1 - epoch / 10), 15 * (1 - (epoch - 1) / 10)
  assert float(new.extra['percent']) == pytest.approx(p_now)
  for p, w in binary_kernels(v['params']).items():
    ref = np.asarray(w)
    if epoch > 0:
      # post_step already did the first of the K validation projections; replay the other K-1.
      for _ in range(max(k - 1, 0)):
        ref = np_project(ref, p_prev)
    ref = np_project(ref, p_now)
    np.testing.assert_allclose(np.asarray(transforms.get_path(new.params, p)), ref, rtol=1e-4,
                               atol=1e-6)
  np.testing.assert_array_equal(np.asarray(new.params['fc']['kernel']),
                                np.asarray(v['params']['fc']['kernel']))
  for key, code in v['batch_stats'][CODES].items():
    np.testing.assert_array_equal(np.asarray(new.extra['codes_epoch_start'][key]),
                                  np.asarray(code))


def test_auto_eval_projection_count_is_the_number_of_eval_batches():
  m = make(eval_projections=-1)
  m.config.dataset.eval_batch_size = 100
  assert m._num_eval_batches() == 4                    # digits test split: 360 images


def test_decay_masks_of_the_arms(setup):
  m, _, v = setup
  mask = m.decay_mask(v['params'])
  off = {transforms.path_str(p) for p, d in transforms.select(mask, lambda p, l: True).items()
         if not d}
  assert off == {f'conv{i}/{leaf}' for i in range(1, 6) for leaf in ('kernel', 'alpha')}
  assert make(decay_rule='all').decay_mask(v['params']) is None
  c = digits.get_config()
  # The controls decay every parameter.
  c.method = recipes.method_config(weight_binarizer='sign_ste')
  assert SiMaN(c).decay_mask(v['params']) is None


def test_sign_ste_control_binarizes_by_sign_with_identity_gradient(setup):
  _, _, v = setup
  m = make(weight_binarizer='sign_ste')
  eff = m.effective_params(v['params'], {})
  for p, w in transforms.select(v['params']).items():
    got = np.asarray(transforms.get_path(eff, p))
    if p in binary_kernels(v['params']):
      np.testing.assert_array_equal(got, np.sign(np.asarray(w)))
    else:
      np.testing.assert_array_equal(got, np.asarray(w))
  g = jax.grad(lambda prm: jnp.sum(m.effective_params(prm, {})['conv3']['kernel'] * 2.0))(
      v['params'])
  np.testing.assert_array_equal(np.asarray(g['conv3']['kernel']), 2.0)
  assert m.init_extra(v['params'], v['batch_stats'], None) == {}


def test_centred_sign_arm_keeps_siman_training_and_binarizes_by_centred_sign(setup):
  """The control isolating the code: forward sign(w - mean_c w), backward identity onto the
  standardised weight (closed form below), SiMaN's projection state and decay rule, no code."""
  _, _, v = setup
  m = make(weight_binarizer='centred_sign')
  assert m.projects and m.decay_rule == 'official'
  extra = m.init_extra(v['params'], {}, None)
  assert set(extra) == {'percent'}
  eff = m.effective_params(v['params'], extra)
  for p, w in binary_kernels(v['params']).items():
    w = np.asarray(w)
    np.testing.assert_array_equal(np.asarray(transforms.get_path(eff, p)),
                                  np.sign(w - w.mean(axis=(0, 1, 2), keepdims=True)))
  g = np.random.RandomState(7).randn(*v['params']['conv3']['kernel'].shape).astype(np.float32)
  grad = jax.grad(lambda prm: jnp.sum(m.effective_params(prm, extra)['conv3']['kernel'] * g))(
      v['params'])['conv3']['kernel']
  # d = w - mean, s = sqrt(sum d^2 / (N - 1) + eps), w2 = d / s:
  # dL/dd_j = g_j / s - (sum_i g_i d_i) d_j / ((N - 1) s^3); dL/dw = dL/dd - mean(dL/dd).
  w = np.asarray(v['params']['conv3']['kernel'], np.float64).reshape(-1, g.shape[-1])
  gg = g.astype(np.float64).reshape(w.shape)
  n = w.shape[0]
  d = w - w.mean(0)
  sd = np.sqrt((d ** 2).sum(0) / (n - 1) + 1e-5)
  dd = gg / sd - (gg * d).sum(0) * d / ((n - 1) * sd ** 3)
  np.testing.assert_allclose(np.asarray(grad).reshape(w.shape), dd - dd.mean(0), rtol=1e-3,
                             atol=1e-4)
  new, _ = m.post_step(v['params'], {'percent': jnp.float32(10.0)}, 0)
  w = np.asarray(v['params']['conv3']['kernel'])
  np.testing.assert_allclose(np.asarray(new['conv3']['kernel']), np_project(w, 10.0), rtol=1e-5,
                             atol=1e-6)


def test_bad_method_config():
  with pytest.raises(train.UserError, match='sign_ste'):
    make(weight_binarizer='xnor')
  with pytest.raises(train.UserError, match='official'):
    make(decay_rule='bn_only')
  with pytest.raises(train.UserError, match=r'\[0, 50\]'):
    make(percent_max=70.0)
  with pytest.raises(train.UserError, match='eval_projections'):
    make(eval_projections=-3)
