"""FFSD's networks: shapes, gradient isolation (each network only ever receives the gradient of its
own loss; the leader sends none), vmapped students == one by one, decoder == PyTorch."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from common import models
from ffsd import ffsd as ffsd_lib
from ffsd import modules, networks

WIDTHS = {'stem': 2, 'stages': [2, 4, 8], 'inner': [[2], [4], [8]]}
LAMS = {'lam_div': 0.5, 'lam_fus': 2.0, 'lam_sd': 3.0}


@pytest.fixture(scope='module')
def system():
  model = models.get_model('resnet8', 5, widths=WIDTHS, shortcut='projection',
                           init='kaiming_normal_fan_out')
  nets = networks.build(model, 'resnet8', (8, 8, 3), num_students=2, num_classes=5)
  x = jnp.asarray(np.random.default_rng(0).normal(size=(6, 8, 8, 3)), jnp.float32)
  y = jnp.asarray([0, 1, 2, 3, 4, 0])
  v = nets.init(jax.random.PRNGKey(0), x)
  return nets, v, x, y


def test_feature_sites_and_shapes(system):
  nets, v, x, _ = system
  assert nets.sites == ('layer1_0/out', 'layer2_0/out', 'layer3_0/out')
  assert nets.feature_shapes == ((8, 8, 2), (4, 4, 4), (2, 2, 8))
  out, _ = nets.train_outputs(v['params'], v['batch_stats'], x)
  assert out['fusion_in'].shape == (6, 2, 2, 16)            # m C channels
  assert out['fused'].shape == (6, 2, 2, 8) and float(jnp.min(out['fused'])) >= 0
  assert out['f_logits'].shape == out['l_logits'].shape == (6, 5)
  assert out['trans'].shape == (6, 2, 2, 16)
  assert [t.shape for t in out['sd_decoded']] == [(2, 6, 8, 8, 2), (2, 6, 4, 4, 4)]
  assert [t.shape for t in out['sd_student_targets']] == [(1, 6, 8, 8, 2), (1, 6, 4, 4, 4)]
  # Fusion module: depthwise 3x3 over m C channels (m C * 9 weights), 1x1 m C -> C.
  fp = v['params']['fusion']
  assert fp['conv1']['kernel'].size == 16 * 9 and fp['conv1_1']['kernel'].size == 16 * 8
  # The deployable leader is exactly one student.
  count = lambda t: sum(a.size for a in jax.tree.leaves(t))
  assert count(v['params']['leader']) * 2 == count(v['params']['students'])


# GoogLeNet's taps and decoder widths are checked at full width by
# tests/ffsd/test_quick.py::test_cifar100_rows_build_with_the_official_feature_taps; its whole
# system's gradient compiles for minutes on a loaded 2-core CPU, so only DenseNet trains here.
@pytest.mark.parametrize('name,widths,sites,chans', [
    ('densenet40', {'stem': 4, 'growth': [[2]] * 3}, ('dense1/out', 'dense2/out', 'act_last'),
     (6, 8, 10))])
def test_densenet_system_trains_on_its_official_taps(name, widths, sites, chans):
  model = models.get_model(name, 5, widths=widths)
  # The decoders' widths are the shallower taps' (the code's DIYSelfDistillationModel lists).
  nets = networks.build(model, name, (8, 8, 3), num_students=2, num_classes=5,
                        decoder_channels=(chans[1], chans[0]))
  assert nets.sites == sites
  assert nets.feature_shapes == ((8, 8, chans[0]), (4, 4, chans[1]), (2, 2, chans[2]))
  x = jnp.asarray(np.random.default_rng(1).normal(size=(4, 8, 8, 3)), jnp.float32)
  y = jnp.asarray([0, 1, 2, 3])
  v = nets.init(jax.random.PRNGKey(0), x)

  def loss(p):
    out, _ = nets.train_outputs(p, v['batch_stats'], x)
    return ffsd_lib.total_loss(out, y, LAMS)[0], out
  (val, out), g = jax.jit(jax.value_and_grad(loss, has_aux=True))(v['params'])
  assert np.isfinite(float(val))
  assert [t.shape for t in out['sd_decoded']] == [(2, 4, 8, 8, chans[0]), (2, 4, 4, 4, chans[1])]
  assert out['fusion_in'].shape == (4, 2, 2, 2 * chans[2])
  for net in ('students', 'leader', 'fusion', 'trans_fusion', 'sd'):
    assert any(float(jnp.abs(a).max()) > 0 for a in jax.tree.leaves(g[net])), net


def test_decoder_shapes_cifar_and_imagenet():
  d = modules.SelfDistillationDecoder(modules.halving_channels(64, 2))
  x = jnp.zeros((2, 8, 8, 64))
  outs = d.apply(d.init(jax.random.PRNGKey(0), x, train=False), x, train=False)
  assert [o.shape for o in outs] == [(2, 32, 32, 16), (2, 16, 16, 32)]
  d = modules.SelfDistillationDecoder(modules.halving_channels(512, 3))
  shapes = jax.eval_shape(lambda z: d.apply(d.init(jax.random.PRNGKey(0), z, train=False), z,
                                            train=False), jax.ShapeDtypeStruct((1, 7, 7, 512),
                                                                               jnp.float32))
  assert [o.shape for o in shapes] == [(1, 56, 56, 64), (1, 28, 28, 128), (1, 14, 14, 256)]


def test_decoder_block_equals_torch_conv_transpose():
  torch = pytest.importorskip('torch')
  rng = np.random.default_rng(0)
  x = rng.normal(size=(2, 4, 4, 6)).astype(np.float32)
  w = rng.normal(size=(6, 3, 3, 3)).astype(np.float32)     # torch [C_in, C_out, kh, kw]
  ref = torch.nn.functional.conv_transpose2d(torch.from_numpy(x).permute(0, 3, 1, 2),
                                             torch.from_numpy(w), stride=2, padding=1,
                                             output_padding=1).permute(0, 2, 3, 1).numpy()
  # The decoder block's transposed conv, alone (BN in eval mode at init is the identity up to
  # eps, ReLU then clips; compare before them by reading the conv's output through a tap-free
  # re-apply of the same nn.ConvTranspose settings).
  dec = modules.SelfDistillationDecoder((3,))
  v = dec.init(jax.random.PRNGKey(0), jnp.asarray(x), train=False)
  # lax.conv_transpose without transpose_kernel correlates: the torch kernel, flipped, as HWIO.
  k = jnp.asarray(np.flip(w.transpose(2, 3, 0, 1), (0, 1)))
  assert v['params']['layer0_convtranspose']['kernel'].shape == k.shape
  v['params']['layer0_convtranspose']['kernel'] = k
  got = dec.apply(v, jnp.asarray(x), train=False)[0]
  ref = np.maximum(ref / np.sqrt(1 + 1e-5), 0)                # eval BN at init, then ReLU
  np.testing.assert_allclose(np.asarray(got), ref, rtol=1e-4, atol=1e-5)
  assert got.shape == (2, 8, 8, 3)


def _losses(nets, params, bs, x, y):
  """Every network's own loss as one vector: students 0..m-1, fusion, leader, decoders."""
  out, _ = nets.train_outputs(params, bs, x)
  s_tot, _ = ffsd_lib.student_losses(out['s_logits'], out['s_feats'], y, 2.0, LAMS['lam_div'],
                                     out['sd_student_targets'])
  f_tot = ffsd_lib.fusion_loss(out['f_logits'], out['s_logits'], y, 2.0)
  l_tot, _ = ffsd_lib.leader_loss(out['l_logits'], out['l_feats'], out['trans'], out['f_logits'],
                                  out['fused'], out['fusion_in'], out['sd_leader_targets'], y,
                                  2.0, LAMS['lam_fus'])
  d_tot, _ = ffsd_lib.decoder_losses(out['sd_decoded'], out['s_feats'], out['l_feats'],
                                     LAMS['lam_sd'])
  return jnp.concatenate([s_tot, f_tot[None], l_tot[None], d_tot])


def _owner_mask(params, owner):
  """Bool tree: True on the leaves (student / decoder slices) that loss ``owner`` may touch."""
  kind, idx = owner
  def f(path, leaf):
    top = path[0].key
    mask = np.zeros(leaf.shape, bool)
    if kind == top and idx is None:
      mask[...] = True
    elif kind == top:
      mask[idx] = True
    elif kind == 'leader' and top == 'trans_fusion':
      mask[...] = True
    return mask
  return jax.tree_util.tree_map_with_path(f, params)


def test_each_network_receives_only_its_own_gradient(system):
  nets, v, x, y = system
  jac = jax.jit(jax.jacrev(lambda p: _losses(nets, p, v['batch_stats'], x, y)))(v['params'])
  owners = [('students', 0), ('students', 1), ('fusion', None), ('leader', None), ('sd', 0),
            ('sd', 1)]
  for row, owner in enumerate(owners):
    g = jax.tree.map(lambda a: np.asarray(a[row]), jac)
    mask = _owner_mask(v['params'], owner)
    outside = [float(np.max(np.abs(a[~m]), initial=0.0))
               for a, m in zip(jax.tree.leaves(g), jax.tree.leaves(mask))]
    inside = [float(np.max(np.abs(a[m]), initial=0.0))
              for a, m in zip(jax.tree.leaves(g), jax.tree.leaves(mask))]
    assert max(outside) == 0.0, owner          # exactly zero: detached where the code detaches
    assert max(inside) > 0.0, owner
  # The leader sends no gradient to anyone: every other loss is constant in its parameters.
  for row in (0, 1, 2, 4):
    assert all(np.all(np.asarray(a[row]) == 0) for a in jax.tree.leaves(jac['leader']))
  # One backward of the sum gives every network its own loss's gradient.
  def total(p):
    out, _ = nets.train_outputs(p, v['batch_stats'], x)
    return ffsd_lib.total_loss(out, y, LAMS)[0]
  g_sum = jax.jit(jax.grad(total))(v['params'])
  own = jax.tree.map(lambda a: np.asarray(a).sum(0), jac)
  for a, b in zip(jax.tree.leaves(g_sum), jax.tree.leaves(own)):
    np.testing.assert_allclose(np.asarray(a), b, rtol=1e-4, atol=1e-6)


def test_vmapped_students_equal_one_by_one(system):
  nets, v, x, _ = system
  p, s = v['params']['students'], v['batch_stats']['students']
  for train in (True, False):
    logits, feats, bs = nets.students_forward(p, s, x, train)
    for i in range(2):
      pi, si = jax.tree.map(lambda a: a[i], (p, s))
      li, fi, bi = nets.backbone_forward(pi, si, x, train)
      np.testing.assert_allclose(logits[i], li, rtol=1e-5, atol=1e-6)
      for a, b in zip(feats, fi):
        np.testing.assert_allclose(a[i], b, rtol=1e-5, atol=1e-6)
      for a, b in zip(jax.tree.leaves(bs), jax.tree.leaves(bi)):
        np.testing.assert_allclose(a[i], b, rtol=1e-5, atol=1e-6)
  # Students start from different initialisations (one key each).
  k = p['conv1']['kernel']
  assert not np.allclose(k[0], k[1])


def test_bad_inputs_are_named():
  model = models.get_model('resnet8', 5, widths=WIDTHS, shortcut='projection')
  with pytest.raises(ValueError, match='num_students'):
    networks.build(model, 'resnet8', (8, 8, 3), num_students=1, num_classes=5)
  with pytest.raises(ValueError, match='variant'):
    networks.build(model, 'resnet8', (8, 8, 3), num_students=2, num_classes=5, variant='one')
  with pytest.raises(ValueError, match='feature taps'):
    networks.feature_sites('vgg16', ['act1', 'act2'])
