"""Every experiment config in the repository loads, names a known model and data set, and its
model builds at paper scale (by shape, via jax.eval_shape: no FLOPs are spent)."""
import glob
import importlib.util
import os
import re

import jax
import jax.numpy as jnp
import pytest

from common import flops, models

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FILES = sorted(f for f in glob.glob(os.path.join(ROOT, '*', 'configs', '*.py'))
               if not os.path.basename(f).startswith('_'))


def load(path):
  spec = importlib.util.spec_from_file_location('cfg_' + os.path.basename(path)[:-3], path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


@pytest.mark.parametrize('path', FILES, ids=[os.path.relpath(f, ROOT) for f in FILES])
def test_config_loads(path):
  mod = load(path)
  if not hasattr(mod, 'get_config'):
    pytest.skip('helper module without get_config')
  c = mod.get_config()
  for field in ('seed', 'num_epochs', 'dataset', 'model', 'optimizer', 'schedule'):
    assert field in c, f'{path} lacks {field}'
  assert c.num_epochs > 0
  assert c.dataset.name in flops.DATASETS, c.dataset.name
  assert c.model.name in models.MODELS, c.model.name
  assert mod.__doc__ or mod.get_config.__doc__, 'a config documents its command'


@pytest.mark.parametrize('arg,dataset', [('resnet56', 'cifar10'), ('vgg16', 'cifar10'),
                                         ('resnet110', 'cifar100')])
def test_cifar_dense_builds_at_paper_scale(arg, dataset):
  c = load(os.path.join(ROOT, 'common', 'configs', 'cifar_dense.py')).get_config(f'{arg},{dataset}')
  m = models.get_model(c.model.name, flops.DATASETS[dataset][1])
  shapes = jax.eval_shape(lambda: m.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)),
                                         train=False))
  n = sum(x.size for x in jax.tree.leaves(shapes['params']))
  _, p, _ = flops.count(c.model.name, num_classes=flops.DATASETS[dataset][1])
  assert n == p  # params of the built model == the analytic count


@pytest.mark.parametrize('arg', ['mobilenet_v2', 'mobilenet_v1', 'resnet50'])
def test_imagenet_dense_builds_at_paper_scale(arg):
  c = load(os.path.join(ROOT, 'common', 'configs', 'imagenet_dense.py')).get_config(arg)
  m = models.get_model(c.model.name, 1000)
  shapes = jax.eval_shape(lambda: m.init(jax.random.PRNGKey(0), jnp.zeros((1, 224, 224, 3)),
                                         train=False))
  n = sum(x.size for x in jax.tree.leaves(shapes['params']))
  _, p, _ = flops.count(c.model.name, input_hw=(224, 224), num_classes=1000)
  assert n == p


def readme_cells():
  """The (model, pattern label, ARGS, expected) rows of the published-cell table in onexn/README.md."""
  with open(os.path.join(ROOT, 'onexn', 'README.md')) as f:
    text = f.read()
  rows = re.findall(r'^\| (\w+) \| ([^|]+?) \| `([^`]+)` \| ([^|]+?) \|$', text, re.M)
  return [r for r in rows if r[0] in ('mobilenet_v1', 'mobilenet_v2', 'resnet50')]


def test_onexn_readme_lists_every_published_cell_once():
  rows = readme_cells()
  assert len(rows) == 36  # 3 models x (weight, filter, 1xN for N in 2..32 with and without rearrangement)
  assert len({r[2] for r in rows}) == 36


@pytest.mark.parametrize('model,label,args,expected', readme_cells(), ids=lambda v: str(v))
def test_onexn_readme_cell_builds_what_it_names(model, label, args, expected):
  mod = load(os.path.join(ROOT, 'onexn', 'configs', 'imagenet.py'))
  c = mod.get_config(args)
  assert c.model.name == model and c.dataset.name == 'imagenet2012'
  assert c.method.sparsity == 0.5
  if label in ('weight', 'filter'):
    assert c.method.pattern == label
  else:
    n = int(re.match(r'1x(\d+)', label).group(1))
    assert (c.method.pattern, c.method.block_size_n) == ('block', n)
    assert c.method.rearrange == label.endswith('rearr.')
    # straddling blocks only where some MobileNet-V2 width is not a multiple of N
    assert c.method.straddle_blocks == (model == 'mobilenet_v2' and n >= 16)
  assert expected == 'not published' or 60 < float(expected) < 80
