"""``common`` holds no paper: importing ``common.models`` / ``common.train`` imports no paper
package and registers no paper's network; the ReCU and SiMaN networks come from their packages
and are built from the one set of binary blocks in ``common.models.bnn_layers``."""
import json
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

from common.models import bnn_layers as BL

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NOT_PAPERS = {'common', 'tests', 'xla_ext'}
PAPERS = sorted(d for d in os.listdir(ROOT) if d not in NOT_PAPERS
                and os.path.isfile(os.path.join(ROOT, d, '__init__.py')))


def _run(code: str):
  out = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True,
                       timeout=300, env=dict(os.environ, PYTHONPATH=ROOT))
  assert out.returncode == 0, out.stderr[-3000:]
  return json.loads(out.stdout.strip().splitlines()[-1])


def test_common_imports_no_paper_package():
  assert {'recu', 'siman'} <= set(PAPERS)          # the check below is not vacuous
  got = _run('import json, sys\n'
             'import common.models, common.train\n'
             'from common import models\n'
             'print(json.dumps({"modules": sorted(m for m in sys.modules '
             f'if m.split(".")[0] in {PAPERS!r}), '
             '"builders": sorted({e.builder.__module__ for e in models.MODELS.values()})}))')
  assert got['modules'] == []
  assert got['builders'] and all(m.startswith('common.models.') for m in got['builders'])


def test_papers_register_their_networks_on_import():
  got = _run('import json\n'
             'from common import models\n'
             'before = set(models.MODELS)\n'
             'import recu, siman\n'
             'print(json.dumps({n: models.MODELS[n].builder.__module__ '
             'for n in set(models.MODELS) - before}))')
  assert got and all(n.startswith(('recu_', 'siman_')) for n in got)
  assert {m for n, m in got.items() if n.startswith('recu_')} == {'recu.models'}
  assert {m for n, m in got.items() if n.startswith('siman_')} == {'siman.models'}
  assert not [f for f in os.listdir(os.path.join(ROOT, 'common', 'models'))
              if f.startswith(('bnn_recu', 'bnn_siman'))]


def _block_types(name, widths):
  import recu  # noqa: F401
  import siman  # noqa: F401
  from common import models
  m = models.get_model(name, 10, widths=widths)
  seen = set()

  def spy(next_fun, args, kwargs, context):
    seen.add(type(context.module))
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(spy):
    jax.eval_shape(lambda: m.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)), train=False))
  return seen


@pytest.mark.parametrize('name,widths,block', [
    ('recu_resnet20', {'stem': 4, 'stages': [4, 8, 16]}, BL.BiRealBlock),
    ('siman_resnet20', {'stem': 4, 'stages': [4, 8, 16]}, BL.BiRealBlock),
    ('recu_resnet18_cifar', {'stem': 4, 'stages': [4, 8, 16, 32]}, BL.StandardBlock),
    ('siman_resnet18_cifar', {'stem': 4, 'stages': [4, 8, 16, 32]}, BL.StandardBlock),
    ('recu_vgg_small', [4, 4, 8, 8, 8, 8], BL.VGGSmall),
    ('siman_vgg_small', [4, 4, 8, 8, 8, 8], BL.VGGSmall),
])
def test_both_papers_build_from_the_shared_blocks(name, widths, block):
  seen = _block_types(name, widths)
  assert block in seen and BL.BinaryConv in seen
  # Every binary conv of the network is the one shared BinaryConv class.
  assert not [t for t in seen if 'BinaryConv' in t.__name__ and t is not BL.BinaryConv]


def test_bad_block_options_name_the_value():
  x = jnp.zeros((1, 8, 8, 4))
  blk = BL.BiRealBlock(8, 2, 'avgpool', None, None, nn.initializers.lecun_normal())
  with pytest.raises(ValueError, match="'avgpool'"):
    blk.init(jax.random.PRNGKey(0), x, train=False)
  with pytest.raises(ValueError, match='nonlinearity'):
    BL.nonlinearity('tanh', 'n')
  with pytest.raises(ValueError, match='act_binarizer'):
    BL.act_binarizer_fn('xnor', {'plain': None})


def test_prelu_matches_torch_and_keeps_its_param_name():
  x = jnp.asarray([[-2.0, -0.5, 0.0, 3.0]])
  for name in ('weight', 'negative_slope'):
    p = BL.PReLU(param_name=name)
    v = p.init(jax.random.PRNGKey(0), x)
    assert list(v['params']) == [name]
    assert jnp.allclose(p.apply(v, x), jnp.asarray([[-0.5, -0.125, 0.0, 3.0]]))
