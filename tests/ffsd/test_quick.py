"""End to end: the smoke quick experiment through the engine (one FFSD run), the exported leader,
results.json, the CLI's one-line errors, the configs."""
import glob
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from common import train
from ffsd import quick
from ffsd.train import FFSD

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope='module')
def smoke(tmp_path_factory):
  wd = str(tmp_path_factory.mktemp('ffsd_quick'))
  return wd, quick.run(wd, smoke=True)


def test_smoke_quick_experiment(smoke):
  wd, out = smoke
  assert all(out['checks'].values()), out['checks']
  (row,) = out['rows']
  assert row['arm'] == 'FFSD' and row['split'] == 'low'
  for net in ('leader', 'student0', 'student1', 'fusion', 'ensemble'):
    assert 0.0 <= row[f'{net}_last'] <= 1.0
  assert all(os.path.exists(p) for p in out['plots'])
  res = json.load(open(os.path.join(wd, 'low_ffsd_seed0', 'results.json')))
  assert res['top1_last'] == res['top1_last_leader']
  # The deployed network is one backbone: the engine's params count is the leader's.
  v = train.load_variables(os.path.join(wd, 'low_ffsd_seed0', 'leader'))
  assert res['params'] == sum(np.size(a) for a in jax.tree.leaves(v['params']))


def test_exported_leader_equals_the_leader_inside_the_system(smoke):
  wd, _ = smoke
  run_dir = os.path.join(wd, 'low_ffsd_seed0')
  c = quick.arm_config('FFSD', 'low', 0, quick.SMOKE_EPOCHS, smoke=True)
  meth = FFSD(c)
  meth.setup(train.RunInfo(num_classes=10, image_shape=(32, 32, 3)))
  model = meth.build_model()
  state = train.load_state(run_dir, 'last')
  exported = train.load_variables(os.path.join(run_dir, 'leader'))
  x = jnp.asarray(np.random.default_rng(0).normal(size=(8, 32, 32, 3)), jnp.float32)
  inside = meth.nets.eval_logits(state['params'], state['batch_stats'], x)
  alone = model.apply(exported, x, train=False)
  np.testing.assert_allclose(np.asarray(inside['leader']), np.asarray(alone), rtol=1e-6,
                             atol=1e-6)
  # ... and it is not a student.
  assert not np.allclose(np.asarray(inside['student0']), np.asarray(alone))


def test_cli_bad_value_is_one_error_line(tmp_path):
  r = subprocess.run([sys.executable, '-m', 'ffsd.train', '--config=ffsd/configs/digits.py',
                      f'--workdir={tmp_path}', '--config.method.variant=leader_only'],
                     cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert r.returncode == 2
  lines = [l for l in r.stderr.strip().splitlines() if l.startswith('error:')]
  assert lines and "method.variant must be one of ['ffsd', 'dml']" in lines[-1]


@pytest.mark.parametrize('path', sorted(glob.glob(os.path.join(ROOT, 'ffsd', 'configs', '*.py'))))
def test_configs_load_and_name_their_command(path):
  name = os.path.basename(path)
  if name in ('__init__.py', 'recipes.py'):
    return
  import importlib.util
  spec = importlib.util.spec_from_file_location('cfg', path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  c = mod.get_config()
  assert 'python -m ffsd.train' in mod.__doc__
  FFSD(c)      # the method accepts it
  if name != 'digits.py':
    assert 'top-1' in mod.__doc__


def test_imagenet_resnet18_features_and_decoder():
  from common import models
  from ffsd import networks
  nets = networks.build(models.get_model('resnet18', 1000), 'resnet18', (224, 224, 3), 2, 1000)
  assert nets.feature_shapes == ((56, 56, 64), (28, 28, 128), (14, 14, 256), (7, 7, 512))
  assert nets.decoder.channels == (256, 128, 64)


@pytest.mark.parametrize('arg,shapes', [
    ('resnet32', ((32, 32, 16), (16, 16, 32), (8, 8, 64))),
    ('wrn_16_2', ((32, 32, 32), (16, 16, 64), (8, 8, 128))),
    # SJLeo/FFSD: DIYSelfDistillationModel([456, 312, 168]) / ([1024, 832, 480]).
    ('densenet40', ((32, 32, 168), (16, 16, 312), (8, 8, 456))),
    ('googlenet', ((32, 32, 480), (16, 16, 832), (8, 8, 1024)))])
def test_cifar100_rows_build_with_the_official_feature_taps(arg, shapes):
  import importlib.util
  from common import models
  from ffsd import networks
  spec = importlib.util.spec_from_file_location('c100', os.path.join(ROOT, 'ffsd', 'configs',
                                                                      'cifar100.py'))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  c = mod.get_config(arg)
  model = models.get_model(c.model.name, 100, **c.model.kwargs.to_dict())
  nets = networks.build(model, c.model.name, (32, 32, 3), 2, 100,
                        decoder_channels=tuple(c.method.decoder_channels) or None)
  assert nets.feature_shapes == shapes
  # Every decoder block reconstructs the width of the tap it is compared with.
  assert nets.decoder.channels == (shapes[1][-1], shapes[0][-1])
  with pytest.raises(ValueError, match=r"unknown CIFAR-100 FFSD backbone 'vgg16'; allowed: .*"
                     r"'densenet40', 'googlenet'"):
    mod.get_config('vgg16')
