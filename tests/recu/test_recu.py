"""ReCU unit tests against closed forms / NumPy references of z-hXu/ReCU
``modules/binarized_modules.py: BinarizeConv2d.forward`` and the ``main.py`` tau update."""
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from common import binarize
from common.models import bnn_layers
from common import models
from common import train
from recu import recu
from recu import train as recu_train

S = 2.0 * math.sqrt(2.0)


def np_standardize(w):
  """NumPy reference of the standardisation ``(w - mean_c) / sqrt(var_c + 1e-5) * 2 sqrt 2`` on an
  HWIO / [in, out] kernel (float64)."""
  w = np.asarray(w, np.float64)
  axes = tuple(range(w.ndim - 1))
  d = w - w.mean(axis=axes, keepdims=True)
  var = (d ** 2).sum(axis=axes, keepdims=True) / (np.prod([w.shape[a] for a in axes]) - 1)
  return d / np.sqrt(var + 1e-5) * S, d, np.sqrt(var + 1e-5)


def np_grad(w, c, tau):
  """Closed-form dL/dw of L = sum(c * b_w): J_std^T (c * 1[|w1| <= Q]) (clamp gradient, then
  identity STE).

  For y = s d / sigma (d = x - mean x, sigma^2 = sum d^2 / (N-1) + eps) per channel:
  g_x = s/sigma (g - mean g) - s d (d . g) / ((N - 1) sigma^3).
  """
  w1, d, sigma = np_standardize(w)
  q = -np.abs(w1).mean() * np.log(2 - 2 * tau) if tau < 1 else np.inf
  g = np.asarray(c, np.float64) * (np.abs(w1) <= q)
  axes = tuple(range(w.ndim - 1))
  n = np.prod([w.shape[a] for a in axes])
  gm = g.mean(axis=axes, keepdims=True)
  dg = (d * g).sum(axis=axes, keepdims=True)
  return S / sigma * (g - gm) - S * d * dg / ((n - 1) * sigma ** 3), np.abs(w1) > q


# --- tau schedule ------------------------------------------------------------------------------

def test_tau_schedule_values():
  assert recu.tau_schedule(0, 600) == pytest.approx(0.85, abs=1e-5)
  assert recu.tau_schedule(150, 600) == pytest.approx(0.87314, abs=1e-5)
  assert recu.tau_schedule(300, 600) == pytest.approx(0.90286, abs=1e-5)
  assert recu.tau_schedule(599, 600) == pytest.approx(0.98963, abs=1e-5)
  assert recu.tau_schedule(199, 200) == pytest.approx(0.98890, abs=1e-5)
  assert recu.tau_schedule(600, 600) == pytest.approx(0.99, abs=1e-12)
  taus = [recu.tau_schedule(e, 600) for e in range(600)]
  assert all(b > a for a, b in zip(taus, taus[1:]))


@pytest.mark.parametrize('args', [(0, 0), (-1, 10), (11, 10), (0, 10, 0.9, 0.8), (0, 10, 0.4, 0.9),
                                  (0, 10, 0.85, 1.2)])
def test_tau_schedule_bad_input(args):
  with pytest.raises(ValueError):
    recu.tau_schedule(*args)


# --- hand-made layer: Q and the clamped share --------------------------------------------------

def test_q_on_hand_made_layer():
  w = np.array([[0.3, -1.0, 2.0], [0.1, 0.2, -0.5], [-0.4, 0.9, 0.0], [4.0, 0.0, 0.1],
                [0.0, 0.3, -0.2]], np.float32)      # [in=5, out=3]
  w1, _, _ = np_standardize(w)
  for tau in (0.85, 0.9, 0.99):
    q_ref = -np.abs(w1).mean() * np.log(2 - 2 * tau)
    q = float(recu.clamp_threshold(recu.standardize(jnp.asarray(w)), tau))
    assert q == pytest.approx(q_ref, rel=1e-5)
    assert float(recu.dead_fraction(jnp.asarray(w), tau)) == pytest.approx(
        np.mean(np.abs(w1) > q_ref))
    np.testing.assert_allclose(np.asarray(recu.recu_clamp(jnp.asarray(w), tau)),
                               np.clip(w1, -q_ref, q_ref), rtol=1e-5, atol=1e-5)
  # Laplace quantiles: -ln(2 - 2 tau) = 1.2040 / 1.6094 / 3.9120 at tau = .85 / .90 / .99.
  for tau, v in ((0.85, 1.2040), (0.9, 1.6094), (0.99, 3.9120)):
    assert -math.log(2 - 2 * tau) == pytest.approx(v, abs=1e-4)
  assert float(recu.clamp_threshold(recu.standardize(jnp.asarray(w)), 1.0)) == np.inf


@pytest.mark.parametrize('tau,gauss', [(0.85, 0.3367), (0.9, 0.1991), (0.99, 0.0018)])
def test_clamped_fraction_laplace_and_gaussian(tau, gauss):
  rng = np.random.default_rng(0)
  lap = rng.laplace(0.0, 0.7, size=(1000, 1000)).astype(np.float32)
  assert float(recu.dead_fraction(jnp.asarray(lap), tau)) == pytest.approx(2 * (1 - tau), abs=0.002)
  gau = rng.normal(0.0, 0.3, size=(1000, 1000)).astype(np.float32)
  assert float(recu.dead_fraction(jnp.asarray(gau), tau)) == pytest.approx(gauss, abs=0.003)


# --- forward, gradient, standardisation --------------------------------------------------------

@pytest.fixture(scope='module')
def kernel():
  return np.random.default_rng(1).normal(0.1, 0.5, size=(3, 3, 4, 6)).astype(np.float32)


@pytest.mark.parametrize('tau', [0.85, 0.9, 0.95, 0.99, 1.0])
def test_forward_is_sign_of_centered_weight(kernel, tau):
  b = np.asarray(recu.binarize_weight(jnp.asarray(kernel), tau))
  ref = np.sign(kernel - kernel.mean(axis=(0, 1, 2), keepdims=True))
  np.testing.assert_array_equal(b, ref)
  assert set(np.unique(b)) <= {-1.0, 1.0}


@pytest.mark.parametrize('tau', [0.85, 0.9, 0.99, 1.0])
def test_gradient_closed_form(kernel, tau):
  c = np.random.default_rng(2).normal(size=kernel.shape).astype(np.float32)
  g = jax.grad(lambda w: jnp.sum(jnp.asarray(c) * recu.binarize_weight(w, tau)))(
      jnp.asarray(kernel))
  g_ref, clamped = np_grad(kernel, c, tau)
  np.testing.assert_allclose(np.asarray(g), g_ref, rtol=1e-4, atol=1e-5)
  if tau <= 0.9:
    assert clamped.any()   # the check covers the zeroed entries, not only the identity part
  elif tau == 1.0:
    assert not clamped.any()   # tau = 1 -> Q = inf, mask all ones


def test_gradient_zero_on_clamped_entry_direct_term(kernel):
  tau = 0.85
  _, clamped = np_grad(kernel, np.ones_like(kernel), tau)
  w1, _, _ = np_standardize(kernel)
  idx_c = np.unravel_index(np.argmax(np.where(clamped, np.abs(w1), -1)), kernel.shape)
  idx_u = np.unravel_index(np.argmin(np.where(clamped, np.inf, np.abs(w1))), kernel.shape)
  grads = []
  for idx in (idx_c, idx_u):
    c = np.zeros_like(kernel)
    c[idx] = 1.0
    g = jax.grad(lambda w: jnp.sum(jnp.asarray(c) * recu.binarize_weight(w, tau)))(
        jnp.asarray(kernel))
    grads.append(np.asarray(g))
  assert clamped[idx_c] and not clamped[idx_u]
  assert np.all(grads[0] == 0.0)   # one-hot on a clamped entry: no path reaches w at all
  assert abs(grads[1][idx_u]) > 1.0


def test_standardization_stats(kernel):
  w1 = np.asarray(recu.standardize(jnp.asarray(kernel)), np.float64)
  np.testing.assert_allclose(w1.mean(axis=(0, 1, 2)), 0.0, atol=1e-6)
  sigma = kernel.astype(np.float64).std(axis=(0, 1, 2), ddof=1)
  np.testing.assert_allclose(w1.std(axis=(0, 1, 2), ddof=1),
                             S * sigma / np.sqrt(sigma ** 2 + 1e-5), rtol=1e-5)


# --- the activation binarizer ------------------------------------------------------------------

def test_recu_activation_scales_gradient_window_only_in_training():
  a = jnp.asarray(np.random.RandomState(2).randn(2, 3, 3, 2) * 3.0, jnp.float32)
  np.testing.assert_array_equal(recu.recu_activation(a, True), recu.recu_activation(a, False))
  g_eval = jax.grad(lambda x: jnp.sum(recu.recu_activation(x, False)))(a)
  np.testing.assert_allclose(g_eval, np.maximum(0, 2 - 2 * np.abs(np.asarray(a))), rtol=1e-6)



# --- diagnostics -------------------------------------------------------------------------------

def test_weight_entropy_and_quantization_error():
  w = np.array([[3.0, 1.0], [-1.0, 2.0], [-1.0, -1.0], [-1.0, -2.0]], np.float32)  # [4, 2]
  # channel 0 centred: (+,-,-,-); channel 1 centred: mean 0 -> (+,+,-,-): p = 3/8 overall.
  p = 3 / 8
  assert float(recu.weight_entropy(jnp.asarray(w))) == pytest.approx(
      -(p * math.log2(p) + (1 - p) * math.log2(1 - p)), abs=1e-6)
  w1, _, _ = np_standardize(w)
  q = -np.abs(w1).mean() * np.log(2 - 2 * 0.85)
  w2 = np.clip(w1, -q, q)
  s = np.abs(w2).mean()
  ref = np.mean((w2 - s * np.sign(w2)) ** 2) / np.mean(w2 ** 2)
  assert float(recu.quantization_error(jnp.asarray(w), 0.85)) == pytest.approx(ref, rel=1e-5)


def test_kd_loss_numpy():
  rng = np.random.default_rng(3)
  s, t = rng.normal(size=(4, 5)), rng.normal(size=(4, 5))
  pt = np.exp(t) / np.exp(t).sum(-1, keepdims=True)
  ls = s - np.log(np.exp(s).sum(-1, keepdims=True))
  ref = np.mean(-(pt * ls).sum(-1))
  assert float(recu_train.kd_loss(jnp.asarray(s), jnp.asarray(t))) == pytest.approx(ref, rel=1e-5)


# --- models: parameter count, shortcut, BN init, binary vs FP layers ---------------------------

def _shapes(name, widths, hw=32, **kw):
  m = models.get_model(name, 10, widths=widths, **kw)
  return m, jax.eval_shape(lambda: m.init(jax.random.PRNGKey(0), jnp.zeros((1, hw, hw, 3)),
                                          train=False))


def test_resnet20_param_count():
  _, v = _shapes('recu_resnet20', None)
  n = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(v['params']))
  convs = 3 * 9 * 16 + 6 * 9 * 16 * 16 + 9 * 16 * 32 + 5 * 9 * 32 * 32 + 9 * 32 * 64 + \
      5 * 9 * 64 * 64
  bn = 2 * 16 + 6 * 2 * (16 + 32 + 64)
  alpha = 6 * (16 + 32 + 64)
  head = 2 * 64 + 64 * 10 + 10
  assert n == convs + bn + alpha + head   # the avgpool + zero-pad shortcut has no parameters
  assert len(binarize.binary_kernel_paths(v['params'])) == 18


def test_avgpool_pad_shortcut_numpy():
  from recu import models as recu_models
  x = np.random.default_rng(4).normal(size=(2, 4, 4, 4)).astype(np.float32)
  y = np.asarray(recu_models.avgpool_pad_shortcut(jnp.asarray(x), 8, 2))   # 8 // 4 = 2 zeros a side
  ref = x.reshape(2, 2, 2, 2, 2, 4).mean(axis=(2, 4))
  ref = np.concatenate([np.zeros((2, 2, 2, 2)), ref, np.zeros((2, 2, 2, 2))], axis=-1)
  np.testing.assert_allclose(y, ref, rtol=1e-6, atol=1e-6)
  with pytest.raises(ValueError, match='planes'):
    recu_models.avgpool_pad_shortcut(jnp.asarray(x), 5, 2)


def test_imagenet_bn_gamma_init():
  m = models.get_model('recu_resnet18', 10, widths={'stem': 4, 'stages': [4, 8, 16, 32]})
  v = jax.jit(lambda x: m.init(jax.random.PRNGKey(0), x, train=False))(jnp.zeros((1, 32, 32, 3)))
  scales = {'/'.join(k.key for k in p): x for p, x in
            jax.tree_util.tree_leaves_with_path(v['params']) if p[-1].key == 'scale'}
  assert len(scales) == 1 + 2 * 8 + 3 + 1   # stem, 2 per block, 3 downsample BNs, BN1d
  for k, x in scales.items():
    want = 1.0 if k == 'bn2/scale' else 1e-8   # BatchNorm1d keeps the default gamma
    np.testing.assert_allclose(np.asarray(x), want)


@pytest.fixture(scope='module')
def r18_params():
  _, v = _shapes('recu_resnet18', {'stem': 4, 'stages': [4, 8, 16, 32]}, hw=64)
  return v['params']


def test_decay_mask_imagenet_exact_set(r18_params):
  mask = recu_train.decay_mask_conv_fc(r18_params)
  got = {'/'.join(k.key for k in p) for p, on in jax.tree_util.tree_leaves_with_path(mask) if on}
  want = {'conv1/kernel', 'fc/kernel', 'fc/bias'}
  for s, n in enumerate((2, 2, 2, 2)):
    for b in range(n):
      for c in ('conv1', 'conv2'):
        want |= {f'layer{s + 1}_{b}/{c}/kernel', f'layer{s + 1}_{b}/{c}/alpha'}
  assert got == want
  alls = {'/'.join(k.key for k in p) for p, _ in jax.tree_util.tree_leaves_with_path(mask)}
  assert {'layer2_0/downsample_0/kernel', 'layer2_0/downsample_1/scale', 'bn2/scale',
          'bn1/bias', 'layer1_0/bn1/scale'} <= alls - got


def test_decay_mask_cifar_all(tmp_path):
  from recu.configs import digits
  c = digits.get_config()
  assert recu_train.ReCU(c).decay_mask({'a': jnp.zeros(2)}) is None   # None = every leaf decays
  c.method.decay_rule = 'bogus'
  with pytest.raises(ValueError, match='decay_rule'):
    recu_train.ReCU(c)


class _Recorder:
  def __init__(self):
    self.binary_inputs, self.fp_kernels = [], []


def test_binary_layers_see_only_pm1_and_fp_stem_classifier():
  """Every BinaryConv multiplies {-1,+1} activations by {-1,+1} weights; the stem conv and the
  classifier run on the unbinarized float parameters."""
  m = models.get_model('recu_resnet20', 10, widths={'stem': 4, 'stages': [4, 8, 16]})
  x = jnp.asarray(np.random.default_rng(5).normal(size=(2, 32, 32, 3)), jnp.float32)
  v = jax.jit(lambda x: m.init(jax.random.PRNGKey(0), x, train=False))(x)
  eff = recu_train.binarize_params(v['params'], jnp.float32(0.9))
  seen = []

  def conv_spy(next_fun, args, kwargs, context):
    mod = context.module
    if isinstance(mod, bnn_layers.BinaryConv) and context.method_name == '__call__':
      assert mod.act_binarizer is not None and mod.alpha is not None
      seen.append(('binary', np.asarray(mod.act_binarizer(args[0], True)),
                   np.asarray(mod.get_variable('params', 'kernel'))))
    elif isinstance(mod, (nn.Conv, nn.Dense)) and context.method_name == '__call__':
      seen.append(('fp', mod.name, np.asarray(mod.get_variable('params', 'kernel'))))
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(conv_spy):
    m.apply({'params': eff, 'batch_stats': v['batch_stats']}, x, train=True,
            mutable=['batch_stats'])
  binary = [s for s in seen if s[0] == 'binary']
  fp = [s for s in seen if s[0] == 'fp']
  assert len(binary) == 18
  for _, a, k in binary:
    assert set(np.unique(a)) <= {-1.0, 1.0}
    assert set(np.unique(k)) <= {-1.0, 1.0}
  assert sorted(n for _, n, _ in fp) == ['conv1', 'linear']
  for _, n, k in fp:
    np.testing.assert_array_equal(k, np.asarray(v['params'][n]['kernel']))
    assert len(np.unique(k)) > 2


def test_binary_false_is_full_precision():
  _, v = _shapes('recu_resnet20', {'stem': 4, 'stages': [4, 8, 16]}, binary=False)
  assert binarize.binary_kernel_paths(v['params']) == []


def test_every_zoo_model_builds_and_runs():
  for name, w, hw in [('recu_resnet18_cifar', {'stem': 4, 'stages': [4, 8, 16, 32]}, 32),
                      ('recu_vgg_small', [8, 8, 16, 16, 32, 32], 32),
                      ('recu_resnet34', {'stem': 4, 'stages': [4, 8, 16, 32]}, 64),
                      ('recu_resnet34_two_stage', {'stem': 4, 'stages': [4, 8, 16, 32]}, 64)]:
    m, v = _shapes(name, w, hw=hw)
    n_bin = len(binarize.binary_kernel_paths(v['params']))
    assert n_bin == {'recu_resnet18_cifar': 16, 'recu_vgg_small': 5, 'recu_resnet34': 32,
                     'recu_resnet34_two_stage': 32}[name]
    out = jax.eval_shape(lambda: m.apply(jax.tree.map(jnp.zeros_like, v),
                                         jnp.zeros((2, hw, hw, 3)), train=False))
    assert out.shape == (2, 10)
  with pytest.raises(ValueError, match='act_binarizer'):
    models.get_model('recu_resnet20', 10, act_binarizer='tanh').init(
        jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)), train=False)


def test_method_tau_hooks():
  from recu.configs import digits
  c = digits.get_config()
  meth = recu_train.ReCU(c)
  assert float(meth.init_extra({}, {}, None)['tau']) == 1.0

  class St:
    def __init__(self, extra):
      self.extra = extra

    def replace(self, extra):
      return St(extra)

  st = meth.epoch_start(St({'tau': jnp.float32(1.0)}), 15)
  assert float(st.extra['tau']) == pytest.approx(recu.tau_schedule(15, c.num_epochs), abs=1e-6)
  assert st.extra['tau'].shape == () and st.extra['tau'].dtype == jnp.float32


# --- two-stage: strict=False loading and the KD path -------------------------------------------

def test_overlay_is_strict_false():
  base = {'a': {'kernel': jnp.zeros((2, 3))}, 'b': {'bias': jnp.zeros(3)}, 'c': jnp.zeros(1)}
  loaded = {'a': {'kernel': jnp.ones((2, 3))}, 'b': {'bias': jnp.ones(4)}, 'x': jnp.ones(2)}
  out = recu_train._overlay(base, loaded)
  np.testing.assert_array_equal(out['a']['kernel'], 1.0)   # same path and shape: loaded
  np.testing.assert_array_equal(out['b']['bias'], 0.0)     # shape mismatch: kept
  np.testing.assert_array_equal(out['c'], 0.0)             # missing in the checkpoint: kept
  assert 'x' not in out                                    # unexpected keys: ignored


def test_kd_forward_and_loss_use_the_frozen_teacher():
  from recu.configs import digits
  c = digits.get_config()
  c.model.widths = {'stem': 4, 'stages': [4, 8, 16]}
  meth = recu_train.ReCU(c)
  meth.setup(train.RunInfo(num_classes=10, image_shape=(32, 32, 3)))
  student = meth.build_model()
  teacher = models.get_model('recu_resnet20', 10, widths={'stem': 4, 'stages': [4, 8, 16]}, binary=False)
  meth._teacher = teacher
  x = jnp.asarray(np.random.default_rng(6).normal(size=(2, 32, 32, 3)), jnp.float32)
  sv = jax.jit(lambda x: student.init(jax.random.PRNGKey(0), x, train=False))(x)
  tv = jax.jit(lambda x: teacher.init(jax.random.PRNGKey(1), x, train=False))(x)
  extra = {'tau': jnp.float32(0.9), 'teacher': tv}

  @jax.jit
  def run(params):
    logits, _, aux = meth.forward(student, params, sv['batch_stats'], extra, {'image': x}, True, jax.random.PRNGKey(2))
    return logits, aux, meth.loss(logits, jnp.zeros(2, jnp.int32), aux, params, extra)[0]

  logits, aux, loss = run(sv['params'])
  t_ref = teacher.apply(tv, x, train=False)
  np.testing.assert_allclose(np.asarray(aux['teacher_logits']), np.asarray(t_ref), rtol=1e-5,
                             atol=1e-5)
  s, t = np.asarray(logits, np.float64), np.asarray(t_ref, np.float64)
  pt = np.exp(t - t.max(-1, keepdims=True))
  pt /= pt.sum(-1, keepdims=True)
  ls = s - s.max(-1, keepdims=True)
  ls -= np.log(np.exp(ls).sum(-1, keepdims=True))
  assert float(loss) == pytest.approx(np.mean(-(pt * ls).sum(-1)), rel=1e-4)


def test_bad_method_options_are_refused_by_name():
  """method.weight_binarizer / decay_rule outside their sets: a UserError naming key and value."""
  import ml_collections
  from common import train as engine
  from recu import train as recu_train
  for key, bad in (('weight_binarizer', 'xnor'), ('decay_rule', 'some')):
    cfg = ml_collections.ConfigDict({'method': {key: bad}})
    with pytest.raises(engine.UserError, match=f"method.{key} must be one of .*got '{bad}'"):
      recu_train.ReCU(cfg)
