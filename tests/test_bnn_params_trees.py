"""Pin of the ReCU and SiMaN networks' variable trees: every path and shape of ``params`` and
``batch_stats`` of every registered ``recu_*`` / ``siman_*`` model (default widths and options,
plus the full-precision ReCU control), and the per-leaf sums of the initial values of the two
quick-experiment networks (same seed => same initial weights).

The parameter paths are load-bearing: the weight-decay groups of both papers are name rules on
them (z-hXu/ReCU ``imagenet/main.py``, lmbxmu/SiMaN ``cifar/main.py``: the ``conv`` / ``fc`` /
``layer`` name tests), and checkpoints are keyed by them. The fixture
``tests/fixtures/bnn_params_trees.json`` was recorded from the networks before they moved into
the ``recu`` / ``siman`` packages; ``python -m tests.test_bnn_params_trees --write`` re-records it
(only when a tree change is intended)."""
import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

FIXTURE = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'fixtures',
                       'bnn_params_trees.json')
IMAGENET_PREFIXES = ('recu_resnet18', 'recu_resnet34', 'siman_resnet18', 'siman_resnet34')
# (model, widths, kwargs) of the initial values pinned by their sums: the quick experiments' nets.
VALUE_PINS = {
    'recu_resnet20@8,16,32': ('recu_resnet20', {'stem': 8, 'stages': [8, 16, 32]}, {}),
    'siman_vgg_small@1/8': ('siman_vgg_small', [16, 16, 32, 32, 64, 64], {}),
}
VARIANTS = {'recu_resnet20|fp': ('recu_resnet20', {'binary': False})}


def _models():
  import recu  # noqa: F401  (registers recu_*)
  import siman  # noqa: F401  (registers siman_*)
  from common import models
  return models


def _hw(name):
  return 224 if name.startswith(IMAGENET_PREFIXES) and not name.endswith('_cifar') else 32


def _flat(tree, prefix=''):
  out = {}
  for k, v in tree.items():
    p = f'{prefix}/{k}' if prefix else str(k)
    if hasattr(v, 'items'):
      out.update(_flat(v, p))
    else:
      out[p] = v
  return out


def _tree(name, widths=None, **kwargs):
  models = _models()
  m = models.get_model(name, 10, widths=widths, **kwargs)
  x = jnp.zeros((1, _hw(name), _hw(name), 3), jnp.float32)
  v = jax.eval_shape(lambda: m.init(jax.random.PRNGKey(0), x, train=False))
  return {col: {p: list(a.shape) for p, a in _flat(v.get(col, {})).items()}
          for col in ('params', 'batch_stats')}


def _names():
  models = _models()
  return sorted(n for n in models.MODELS if n.startswith(('recu_', 'siman_')))


def _value_sums(key):
  name, widths, kwargs = VALUE_PINS[key]
  m = _models().get_model(name, 10, widths=widths, **kwargs)
  v = jax.jit(lambda x: m.init(jax.random.PRNGKey(0), x, train=False))(
      jnp.zeros((1, 32, 32, 3), jnp.float32))
  return {p: [float(np.sum(np.asarray(a, np.float64))),
              float(np.sum(np.abs(np.asarray(a, np.float64))))]
          for p, a in _flat(v['params']).items()}


def record():
  """The fixture's content, computed from the registered networks."""
  trees = {n: _tree(n) for n in _names()}
  trees.update({k: _tree(n, **kw) for k, (n, kw) in VARIANTS.items()})
  return {'trees': trees, 'value_sums': {k: _value_sums(k) for k in VALUE_PINS}}


@pytest.fixture(scope='module')
def pinned():
  with open(FIXTURE) as f:
    return json.load(f)


def test_every_binary_network_is_pinned(pinned):
  assert set(_names()) == set(pinned['trees']) - set(VARIANTS)


@pytest.mark.parametrize('key', _names() + sorted(VARIANTS))
def test_variable_tree_unchanged(pinned, key):
  name, kwargs = VARIANTS.get(key, (key, {}))
  assert key in pinned['trees'], f'{key} is not pinned'
  got = _tree(name, **kwargs)
  want = pinned['trees'][key]
  for col in ('params', 'batch_stats'):
    missing = sorted(set(want[col]) - set(got[col]))
    extra = sorted(set(got[col]) - set(want[col]))
    assert not missing and not extra, (key, col, missing[:5], extra[:5])
    bad = {p: (got[col][p], s) for p, s in want[col].items() if got[col][p] != s}
    assert not bad, (key, col, bad)


@pytest.mark.parametrize('key', sorted(VALUE_PINS))
def test_initial_values_unchanged(pinned, key):
  got, want = _value_sums(key), pinned['value_sums'][key]
  assert set(got) == set(want)
  for p, (s, a) in want.items():
    np.testing.assert_allclose(got[p], [s, a], rtol=1e-6, atol=1e-6, err_msg=p)


if __name__ == '__main__':
  if sys.argv[1:] != ['--write']:
    sys.exit('usage: python -m tests.test_bnn_params_trees --write')
  os.makedirs(os.path.dirname(FIXTURE), exist_ok=True)
  with open(FIXTURE, 'w') as f:
    json.dump(record(), f, separators=(',', ':'), sort_keys=True)
  print('wrote', FIXTURE)
