"""common.pretrained / common.convert: PyTorch weights read without torch, equal logits.

The committed fixtures (``tests/common/fixtures/make_torch_fixture.py``, torch 2.13.0+cpu) hold a
narrow ResNet-18-layout ``.pth`` (nested ``state_dict``, ``module.`` prefixes) and a narrow
MobileNet-V2-layout ``.safetensors`` with the logits PyTorch computed in eval mode; they are read
here without torch and run through our zoo models in eval mode (``train=False``). Where torch is
importable, full-width torchvision-layout ResNet-18 and MobileNet-V2 with random weights (random
BN statistics too) are saved, converted and compared as well.

Measured max |logits_ours - logits_torch| (``python -m pytest tests/common/test_pretrained.py -q
-rA -k "fixture_logits or full_width"`` prints them; 2-core CPU, jax 0.10.2, torch 2.13.0+cpu):
narrow ResNet-18 1.43e-06 (|logits| <= 4.3), narrow MobileNet-V2 8.94e-08 (|logits| <= 0.42),
full-width ResNet-18 1.91e-06 (|logits| <= 4.2), full-width MobileNet-V2 2.09e-07
(|logits| <= 0.55), at 2 x 3 x 37 x 37 (fixtures) and 2 x 3 x 65 x 65 (full width) inputs; the
tests assert <= 1e-4.
"""
import importlib.util
import json
import os
import pickle
import struct
import subprocess
import sys
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import flax.linen as nn

from common import convert, models, pretrained, train

HERE = os.path.dirname(os.path.abspath(__file__))
FIX = os.path.join(HERE, 'fixtures')
R18_NARROW = {'stem': 8, 'stages': [8, 16, 24, 32], 'inner': [[8, 8], [16, 16], [24, 24], [32, 32]]}
MBV2_NARROW = {'stem': 8, 'hidden': [8, 48, 72, 72, 96], 'out': [8, 12, 12, 16, 16], 'last': 32}
MBV2_KWARGS = {'strides': (1, 2, 1, 2, 1)}
TOL = 1e-4


def _eval_logits(name, variables, images_nchw, widths=None, **kwargs):
  model = models.get_model(name, int(variables['params']['fc']['bias'].shape[0]), widths, **kwargs)
  x = jnp.asarray(np.asarray(images_nchw).transpose(0, 2, 3, 1))
  return np.asarray(jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x))


# ---------------------------------------------------------------------------------------------
# Committed fixtures (no torch)


def test_fixtures_read_without_torch():
  """The readers never import torch: a child process where ``import torch`` fails reads both."""
  code = ("import sys; sys.modules['torch'] = None\n"
          "from common import pretrained\n"
          f"a = pretrained.read_state_dict({os.path.join(FIX, 'resnet18_narrow.pth')!r})\n"
          "b = pretrained.read_state_dict("
          f"{os.path.join(FIX, 'mobilenet_v2_narrow.safetensors')!r})\n"
          "print(len(a), len(b), a['conv1.weight'].shape, b['features.0.0.weight'].shape)\n")
  root = os.path.dirname(os.path.dirname(HERE))
  out = subprocess.run([sys.executable, '-c', code], cwd=root, capture_output=True, text=True,
                       timeout=120, env={**os.environ, 'JAX_PLATFORMS': 'cpu'})
  assert out.returncode == 0, out.stderr
  assert out.stdout.split() == ['122', '98', '(8,', '3,', '7,', '7)', '(8,', '3,', '3,', '3)']


@pytest.mark.parametrize('name,path,widths,kwargs', [
    ('resnet18', 'resnet18_narrow.pth', R18_NARROW, {}),
    ('mobilenet_v2', 'mobilenet_v2_narrow.safetensors', MBV2_NARROW, MBV2_KWARGS),
])
def test_fixture_logits_match_torch(name, path, widths, kwargs):
  ref = np.load(os.path.join(FIX, 'torch_logits.npz'))
  sd = pretrained.read_state_dict(os.path.join(FIX, path))
  variables, report = pretrained.convert_state_dict(sd, name, widths=widths, model_kwargs=kwargs)
  assert not report['missing'] and not report['mismatched'] and not report['unexpected']
  assert report['dropped'] and all(k.endswith('num_batches_tracked') for k in report['dropped'])
  # BN running statistics land in batch_stats, unchanged (torch's unbiased variance included)
  bn = 'bn1' if name == 'resnet18' else 'features.0.1'
  np.testing.assert_array_equal(variables['batch_stats']['bn1']['var'], sd[f'{bn}.running_var'])
  got = _eval_logits(name, variables, ref['images'], widths, **kwargs)
  want = ref[f'{name}_logits']
  diff = float(np.abs(got - want).max())
  print(f'{name} narrow fixture: max abs diff {diff:.2e} (|logits| max {np.abs(want).max():.3f})')
  assert diff <= TOL
  # the comparison is sensitive: a wrong BN mapping (running stats dropped) changes the logits
  broken = jax.tree.map(lambda a: a, variables)
  broken['batch_stats'] = jax.tree.map(jnp.zeros_like, variables['batch_stats'])
  broken['batch_stats'] = jax.tree_util.tree_map_with_path(
      lambda kp, a: a + 1.0 if kp[-1].key == 'var' else a, broken['batch_stats'])
  assert np.abs(_eval_logits(name, broken, ref['images'], widths, **kwargs) - want).max() > 1e-2


# ---------------------------------------------------------------------------------------------
# Full-width torchvision layouts (torch needed to write them)


@pytest.fixture(scope='module')
def torch_models():
  try:
    import torch  # noqa: F401
  except ImportError as e:
    pytest.skip(f'torch is not importable ({e}); the committed narrow fixtures cover the readers')
  spec = importlib.util.spec_from_file_location('make_torch_fixture',
                                                os.path.join(FIX, 'make_torch_fixture.py'))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


@pytest.mark.parametrize('name', ['resnet18', 'mobilenet_v2'])
def test_full_width_torchvision_logits_match(name, torch_models, tmp_path):
  import torch
  t = torch_models
  g = torch.Generator().manual_seed(1)
  torch.manual_seed(1)
  net = t.resnet('resnet18', 1000) if name == 'resnet18' else t.MobileNetV2(1000)
  net = t.randomize_bn(net, g).eval()
  images = torch.from_numpy(np.random.RandomState(1).randn(2, 3, 65, 65).astype(np.float32))
  with torch.no_grad():
    want = net(images).numpy()
  path = str(tmp_path / f'{name}.pth')
  torch.save(net.state_dict(), path)
  variables, report = pretrained.convert_state_dict(pretrained.read_state_dict(path), name)
  assert not report['unexpected']
  got = _eval_logits(name, variables, images.numpy())
  diff = float(np.abs(got - want).max())
  print(f'{name} full width: max abs diff {diff:.2e} (|logits| max {np.abs(want).max():.3f})')
  assert diff <= TOL


@pytest.mark.parametrize('name', ['resnet34', 'resnet50'])
def test_full_width_torchvision_keys_match(name, torch_models, tmp_path):
  """Every torchvision key maps (no forward: the ResNet-18 forward covers the rules)."""
  import torch
  path = str(tmp_path / f'{name}.pth')
  torch.save(torch_models.resnet(name, 1000).state_dict(), path)
  sd = pretrained.read_state_dict(path)
  variables, report = pretrained.convert_state_dict(sd, name)
  assert not report['unexpected'] and len(report['matched']) == len(sd) - len(report['dropped'])
  k = variables['params']['layer2_0']['conv2']['kernel']
  np.testing.assert_array_equal(k, sd['layer2.0.conv2.weight'].transpose(2, 3, 1, 0))


# ---------------------------------------------------------------------------------------------
# Layout rules and errors


def test_layout_rules():
  w = np.arange(2 * 3 * 5 * 7, dtype=np.float32).reshape(2, 3, 5, 7)       # OIHW
  np.testing.assert_array_equal(pretrained.to_flax_leaf('kernel', w, (5, 7, 3, 2)),
                                w.transpose(2, 3, 1, 0))
  lin = np.arange(6, dtype=np.float32).reshape(2, 3)                        # [out, in]
  np.testing.assert_array_equal(pretrained.to_flax_leaf('kernel', lin, (3, 2)), lin.T)
  # a Linear into the 1xN 1x1-conv classifier, and a 1x1-conv classifier into a Dense
  np.testing.assert_array_equal(pretrained.to_flax_leaf('kernel', lin, (1, 1, 3, 2)),
                                lin.T[None, None])
  np.testing.assert_array_equal(
      pretrained.to_flax_leaf('kernel', lin[:, :, None, None], (3, 2)), lin.T)


def test_classifier_as_conv_and_num_classes_inferred():
  sd = pretrained.read_state_dict(os.path.join(FIX, 'resnet18_narrow.pth'))
  v, _ = pretrained.convert_state_dict(sd, 'resnet18', widths=R18_NARROW,
                                       model_kwargs={'classifier_as_conv': True})
  assert v['params']['fc']['kernel'].shape == (1, 1, 32, 10)
  np.testing.assert_array_equal(v['params']['fc']['kernel'][0, 0], sd['fc.weight'].T)


def test_missing_mis_shaped_and_unexpected_keys():
  sd = dict(pretrained.read_state_dict(os.path.join(FIX, 'resnet18_narrow.pth')))
  sd['extra.weight'] = np.zeros(3, np.float32)
  _, report = pretrained.convert_state_dict(sd, 'resnet18', widths=R18_NARROW)
  assert report['unexpected'] == ['extra.weight']
  del sd['layer3.1.bn2.running_var']
  sd['layer2.0.conv1.weight'] = np.zeros((16, 8, 5, 5), np.float32)
  with pytest.raises(pretrained.ConversionError) as e:
    pretrained.convert_state_dict(sd, 'resnet18', widths=R18_NARROW)
  assert 'layer3.1.bn2.running_var' in str(e.value) and 'layer2.0.conv1.weight' in str(e.value)
  assert e.value.report['missing'] == ['layer3.1.bn2.running_var']
  # default (torchvision) widths do not fit the narrow checkpoint
  with pytest.raises(pretrained.ConversionError, match='mis-shaped'):
    pretrained.convert_state_dict(sd, 'resnet18')
  with pytest.raises(ValueError, match='no PyTorch name map'):
    pretrained.convert_state_dict(sd, 'vgg16')


def test_state_dict_nesting_and_prefix():
  a = np.ones(2, np.float32)
  assert pretrained.find_state_dict({'model': {'module.x.weight': a}, 'epoch': 3}).keys() == {
      'x.weight'}
  assert pretrained.find_state_dict({'x.weight': a}).keys() == {'x.weight'}
  with pytest.raises(ValueError, match="keys: \\['epoch', 'optimizer'\\]"):
    pretrained.find_state_dict({'epoch': 3, 'optimizer': {}})


def _torch_zip(path, pkl: bytes, storages=None):
  with zipfile.ZipFile(path, 'w') as z:
    z.writestr('archive/data.pkl', pkl)
    for k, v in (storages or {}).items():
      z.writestr(f'archive/data/{k}', v)


def test_torch_reader_rejects_other_globals(tmp_path):
  class Evil:
    def __reduce__(self):
      return (os.system, ('echo pwned',))
  path = str(tmp_path / 'evil.pth')
  _torch_zip(path, pickle.dumps({'state_dict': Evil()}, protocol=2))
  with pytest.raises(ValueError, match='not allowed'):
    pretrained.read_state_dict(path)
  legacy = tmp_path / 'legacy.pth'
  legacy.write_bytes(pickle.dumps({'a': 1}))
  with pytest.raises(ValueError, match='not a torch zip checkpoint'):
    pretrained.read_state_dict(str(legacy))
  with pytest.raises(ValueError, match='does not exist'):
    pretrained.read_state_dict(str(tmp_path / 'nope.pth'))


def test_safetensors_reader(tmp_path):
  x = np.arange(6, dtype=np.float32).reshape(2, 3)
  y = np.array([1.5, -2.0], np.float16)
  header = {'x': {'dtype': 'F32', 'shape': [2, 3], 'data_offsets': [0, 24]},
            'y': {'dtype': 'F16', 'shape': [2], 'data_offsets': [24, 28]},
            '__metadata__': {'format': 'pt'}}
  h = json.dumps(header).encode()
  path = tmp_path / 'a.safetensors'
  path.write_bytes(struct.pack('<Q', len(h)) + h + x.tobytes() + y.tobytes())
  sd = pretrained.read_safetensors(str(path))
  np.testing.assert_array_equal(sd['x'], x)
  np.testing.assert_array_equal(sd['y'], y)
  header['x']['data_offsets'] = [0, 20]
  h = json.dumps(header).encode()
  path.write_bytes(struct.pack('<Q', len(h)) + h + x.tobytes() + y.tobytes())
  with pytest.raises(ValueError, match="tensor 'x' offsets"):
    pretrained.read_safetensors(str(path))
  path.write_bytes(struct.pack('<Q', 1000) + b'{}')
  with pytest.raises(ValueError, match='exceeds the file size'):
    pretrained.read_safetensors(str(path))


def test_load_pretrained_refuses_unconverted(tmp_path):
  with pytest.raises(train.UserError, match='python -m common.convert'):
    pretrained.load_pretrained(os.path.join(FIX, 'resnet18_narrow.pth'))


# ---------------------------------------------------------------------------------------------
# CLI


def test_convert_cli(tmp_path, capsys):
  out = str(tmp_path / 'r18.npz')
  rc = convert.main(['--checkpoint', os.path.join(FIX, 'resnet18_narrow.pth'), '--model',
                     'resnet18', '--out', out, '--widths', json.dumps(R18_NARROW)])
  printed = capsys.readouterr().out
  assert rc == 0, printed
  assert 'matched: 102' in printed and 'missing: 0' in printed and 'unexpected: 0' in printed
  v = pretrained.load_pretrained(out)
  sd = pretrained.read_state_dict(os.path.join(FIX, 'resnet18_narrow.pth'))
  np.testing.assert_array_equal(v['params']['fc']['kernel'], sd['fc.weight'].T)
  np.testing.assert_array_equal(v['batch_stats']['layer4_1']['bn2']['mean'],
                                sd['layer4.1.bn2.running_mean'])


@pytest.mark.parametrize('args,msg', [
    (['--model', 'resnet99'], "no PyTorch name map for model 'resnet99'"),
    (['--checkpoint', '/nonexistent.pth'], 'does not exist'),
    ([], 'mis-shaped keys'),                      # default widths vs the narrow checkpoint
    (['--widths', '{bad'], '--widths must be JSON'),
])
def test_convert_cli_errors(tmp_path, capsys, args, msg):
  base = {'--checkpoint': os.path.join(FIX, 'resnet18_narrow.pth'), '--model': 'resnet18',
          '--out': str(tmp_path / 'x.npz')}
  for k, v in zip(args[::2], args[1::2]):
    base[k] = v
  rc = convert.main([a for kv in base.items() for a in kv])
  err = capsys.readouterr().err.strip().splitlines()
  assert rc == 2 and len(err) == 1 and err[0].startswith('error: ') and msg in err[0], err
  assert not os.path.exists(tmp_path / 'x.npz')


# ---------------------------------------------------------------------------------------------
# BN recalibration


class TwoBN(nn.Module):
  """conv -> BN -> relu -> conv -> BN: the second BN's input depends on the first's batch stats."""

  @nn.compact
  def __call__(self, x, train: bool):
    x = nn.Conv(6, (3, 3), name='conv_a')(x)
    x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9, name='bn_a')(x))
    x = nn.Conv(5, (3, 3), strides=2, name='conv_b')(x)
    return nn.BatchNorm(use_running_average=not train, momentum=0.9, name='bn_b')(x)


def test_recalibrate_equals_exact_average_of_batch_moments():
  model = TwoBN()
  batches = jax.random.normal(jax.random.PRNGKey(0), (5, 4, 9, 9, 3)) * 2.0 + 0.7
  v = model.init(jax.random.PRNGKey(1), batches[0], train=False)
  # start from statistics far from the data's, so an unchanged tree would fail
  stale = jax.tree.map(lambda a: a + 3.0, v['batch_stats'])

  def forward(params, batch_stats, x):
    return model.apply({'params': params, 'batch_stats': batch_stats}, x, train=True,
                       mutable=['batch_stats'])[1]['batch_stats']

  got = jax.jit(lambda p, s, b: pretrained.recalibrate_batch_stats(forward, p, s, b, momentum=0.9)
                )(v['params'], stale, batches)
  # reference: the BN inputs (conv outputs) of each train-mode forward, moments in float64
  ref = {'bn_a': {'mean': 0.0, 'var': 0.0}, 'bn_b': {'mean': 0.0, 'var': 0.0}}
  for x in batches:
    _, inter = model.apply({'params': v['params'], 'batch_stats': stale}, x, train=True,
                           mutable=['batch_stats', 'intermediates'],
                           capture_intermediates=lambda mdl, _: mdl.name in ('conv_a', 'conv_b'))
    for bn, conv in (('bn_a', 'conv_a'), ('bn_b', 'conv_b')):
      h = np.asarray(inter['intermediates'][conv]['__call__'][0], np.float64)
      ref[bn]['mean'] += h.mean(axis=(0, 1, 2)) / len(batches)
      ref[bn]['var'] += h.var(axis=(0, 1, 2)) / len(batches)
  for bn in ref:
    for k in ('mean', 'var'):
      np.testing.assert_allclose(got[bn][k], ref[bn][k], rtol=2e-6, atol=1e-6)
  # the iterable version gives the same numbers
  it = pretrained.recalibrate_batch_stats_iter(forward, v['params'], stale, list(batches),
                                               momentum=0.9)
  for a, b in zip(jax.tree.leaves(it), jax.tree.leaves(got)):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
  with pytest.raises(ValueError, match='no batches'):
    pretrained.recalibrate_batch_stats_iter(forward, v['params'], stale, [])
  with pytest.raises(ValueError, match='momentum'):
    pretrained.recalibrate_batch_stats(forward, v['params'], stale, batches, momentum=1.0)


def test_convert_module_entry_point(tmp_path):
  """``python -m common.convert`` as a user runs it: exit 2, one error line, no traceback."""
  root = os.path.dirname(os.path.dirname(HERE))
  bad = tmp_path / 'notes.txt'
  bad.write_text('not a checkpoint')
  out = subprocess.run([sys.executable, '-m', 'common.convert', f'--checkpoint={bad}',
                        '--model=resnet18', f'--out={tmp_path / "x.npz"}'], cwd=root,
                       capture_output=True, text=True, timeout=120,
                       env={**os.environ, 'JAX_PLATFORMS': 'cpu'})
  err = out.stderr.strip().splitlines()
  assert out.returncode == 2 and len(err) == 1 and 'Traceback' not in out.stderr, out.stderr
  assert err[0].startswith('error: ') and 'unknown format' in err[0], err
