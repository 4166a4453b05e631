"""Network-level DCFF: full filter banks, per-epoch state, fused params and the compact export
(lmbxmu/DCFF ``main_cifar.py`` per-epoch update, ``test_compact_model.py`` export). References: NumPy fusion sums and W[..., sel] slicing in the test."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from dcff import evaluate, network

CASES = {
    # VGG (conv biases), the README VGG-16 rates on the tiny VGG layout.
    'vgg': ('vgg_tiny', '[0.5]*2+[0.4]*2+[0.35]*2', (16, 16)),
    # ResNet-56 with stage rates != 0: option-A zero-padding at every stage change.
    'resnet56': ('resnet56', '[0.5]*9+[0.3]*9+[0.6]*9+[0.5,0.25,0.5]', (8, 8)),
    # ResNet-50 bottlenecks with unfused compact downsample convs (README cos 75.1% rates).
    'resnet50': ('resnet50', '[0.0]+([0.43]*7+[0.73]*9)*2+[0.45]*3+[0.0]', (32, 32)),
}


def flat(t):
  return traverse_util.flatten_dict(dict(t))


def randomize_bn(variables, seed):
  """Non-trivial BN affine params and running statistics so that export checks BN too."""
  rng = np.random.default_rng(seed)
  p, bs = flat(variables['params']), flat(variables['batch_stats'])
  for k in p:
    if k[-1] == 'scale':
      p[k] = jnp.asarray(rng.uniform(0.5, 1.5, p[k].shape), jnp.float32)
    elif k[-1] == 'bias' and 'bn' in k[-2]:
      p[k] = jnp.asarray(rng.normal(0, 0.1, p[k].shape), jnp.float32)
  for k in bs:
    bs[k] = jnp.asarray(rng.uniform(0.5, 1.5, bs[k].shape) if k[-1] == 'var'
                        else rng.normal(0, 0.1, bs[k].shape), jnp.float32)
  return {'params': traverse_util.unflatten_dict(p), 'batch_stats': traverse_util.unflatten_dict(bs)}


def random_variables(plan, hw, seed):
  """He-scaled random params of the right (full-bank) shapes without compiling an init: the XLA
  CPU compile of every initialiser is what makes a ResNet-50 init slow, and export exactness
  does not depend on how the weights were drawn (init is tested on VGG-tiny and per bank)."""
  shapes = jax.eval_shape(lambda k: network.init_params(plan, k, hw + (3,)), jax.random.PRNGKey(0))
  rng = np.random.default_rng(seed)

  def draw(s):
    fan_in = int(np.prod(s.shape[:-1])) if len(s.shape) > 1 else 1
    return jnp.asarray(rng.normal(0, np.sqrt(2.0 / fan_in), s.shape), jnp.float32)
  return jax.tree.map(draw, shapes)


@pytest.fixture(scope='module', params=list(CASES))
def case(request):
  name, rates, hw = CASES[request.param]
  nc = 10
  plan = network.make_plan(name, rates, nc, hw)
  v = randomize_bn(random_variables(plan, hw, 0), 1)
  s0, stats0 = network.update_fusion_state(v['params'], network.init_fusion_state(plan), plan,
                                           0, 300)
  s1, stats1 = network.update_fusion_state(v['params'], s0, plan, 1, 300)
  x = jax.random.normal(jax.random.PRNGKey(2), (2,) + hw + (3,))
  model = plan.build()
  fwd = jax.jit(lambda p, bs, st, x: model.apply(
      {'params': network.fused_params(p, st, plan), 'batch_stats': bs}, x, train=False))
  return dict(key=request.param, plan=plan, v=v, s0=s0, s1=s1, stats0=stats0, stats1=stats1, x=x,
              model=model, fwd=fwd)


def test_init_params_full_banks():
  plan = network.make_plan('vgg_tiny', '[0.5]*6', 10, (16, 16))
  v = network.init_params(plan, jax.random.PRNGKey(0), (16, 16, 3))
  p = flat(v['params'])
  for layer in plan.layers:
    k = p[layer.path + ('kernel',)]
    assert k.shape[-1] == layer.c == 2 * layer.m
    assert p[layer.path + ('bias',)].shape == (layer.c,)
  # Compact parts: BN and the classifier have the compact widths.
  assert p[('bn5', 'scale')].shape == (32,) and p[('fc', 'kernel')].shape == (32, 10)
  assert p[('conv1', 'kernel')].shape == (3, 3, 8, 16)  # input = previous compact width
  # PyTorch default (VGG): kaiming_uniform(a=sqrt 5) = U(+-1/sqrt(fan_in)), bias likewise.
  k, b = np.asarray(p[('conv5', 'kernel')]), np.asarray(p[('conv5', 'bias')])
  bound = 1 / np.sqrt(9 * 32)
  assert np.abs(k).max() <= bound and np.abs(b).max() <= bound
  assert k.var() == pytest.approx(bound ** 2 / 3, rel=0.1)


@pytest.mark.parametrize('scheme,shape,var', [
    ('kaiming_normal_fan_in', (3, 3, 24, 64), 2.0 / (9 * 24)),       # ResNet-CIFAR
    ('kaiming_normal_fan_out', (1, 1, 281, 2048), 2.0 / 2048)])      # ResNet-50 conv3, full C
def test_init_bank_fans_of_full_shape(scheme, shape, var):
  bank = network.init_bank(scheme, jax.random.PRNGKey(3), shape, bias=False)
  assert set(bank) == {'kernel'} and bank['kernel'].shape == shape
  again = network.init_bank(scheme, jax.random.PRNGKey(3), shape, bias=False)
  np.testing.assert_array_equal(again['kernel'], bank['kernel'])  # same seed, same numbers
  assert float(jnp.var(bank['kernel'])) == pytest.approx(var, rel=0.05)


def test_state_bookkeeping(case):
  plan, s0, s1 = case['plan'], case['s0'], case['s1']
  assert case['stats0']['temperature'] == pytest.approx(1.0)
  assert case['stats0']['layers_scores_replaced'] == len(plan.layers)
  # Epoch 1 (T = 4622): every score vector is non-finite and is discarded (in float32 ``exp(-D T)`` underflows from epoch 1, every later score vector is NaN and the epoch-0 scores are kept).
  assert case['stats1']['layers_scores_replaced'] == 0
  assert case['stats1']['filters_selection_changed'] == 0
  for layer in plan.layers:
    a, b = flat(s0['selected'])[layer.path], flat(s1['selected'])[layer.path]
    np.testing.assert_array_equal(a, b)
    assert len(set(np.asarray(a).tolist())) == layer.m
    p1 = np.asarray(flat(s1['p_sel'])[layer.path])
    np.testing.assert_array_equal(p1, np.eye(layer.c, dtype=np.float32)[np.asarray(a)])


def test_fused_params_match_numpy(case):
  plan, v, s0 = case['plan'], case['v'], case['s0']
  fp = flat(jax.jit(lambda p, s: network.fused_params(p, s, plan))(v['params'], s0))
  p = flat(v['params'])
  for layer in plan.layers[:4]:
    w = np.asarray(p[layer.path + ('kernel',)], np.float64)
    ps = np.asarray(flat(s0['p_sel'])[layer.path], np.float64)
    ref = np.stack([sum(ps[i, g] * w[..., g] for g in range(layer.c)) for i in range(layer.m)], -1)
    np.testing.assert_allclose(fp[layer.path + ('kernel',)], ref, atol=1e-5)
  for k in p:  # BN, FC and downsample convs pass through
    if k[:-1] not in {l.path for l in plan.layers}:
      np.testing.assert_array_equal(fp[k], p[k])


def test_export_is_exact(case, tmp_path):
  plan, v, x, fwd = case['plan'], case['v'], case['x'], case['fwd']
  for st in (case['s0'], case['s1']):  # soft (epoch 0) and one-hot (epoch >= 1) fusion
    d = evaluate.save_compact(str(tmp_path), plan, v['params'], v['batch_stats'], st,
                              dataset='test', image_shape=x.shape[1:])
    model, variables, meta = evaluate.load_compact(str(tmp_path))
    assert meta['widths'] == plan.widths and d.endswith('compact')
    y_compact = jax.jit(lambda v_, x_: model.apply(v_, x_, train=False))(variables, x)
    y_fused = fwd(v['params'], v['batch_stats'], st, x)
    # float32 summation order differs between the two programs; outputs are O(1e4) here.
    scale = float(jnp.max(jnp.abs(y_fused)))
    assert scale > 1e-3  # not a degenerate all-zero network
    np.testing.assert_allclose(y_compact, y_fused, atol=1e-5 * scale, rtol=0)


def test_export_one_hot_is_slicing(case):
  plan, v, s1 = case['plan'], case['v'], case['s1']
  _, cp = network.export_compact(v['params'], s1, plan)
  cp, p = flat(cp), flat(v['params'])
  for layer in plan.layers:
    sel = np.asarray(flat(s1['selected'])[layer.path])
    np.testing.assert_array_equal(cp[layer.path + ('kernel',)],
                                  np.asarray(p[layer.path + ('kernel',)])[..., sel])
    if layer.bias:
      np.testing.assert_array_equal(cp[layer.path + ('bias',)],
                                    np.asarray(p[layer.path + ('bias',)])[sel])


def test_export_requires_scoring(case):
  with pytest.raises(ValueError, match='never scored'):
    network.export_compact(case['v']['params'], network.init_fusion_state(case['plan']),
                           case['plan'])


def test_load_compact_missing(tmp_path):
  with pytest.raises(FileNotFoundError, match='no exported compact model'):
    evaluate.load_compact(str(tmp_path))
