"""recu.export_binary: the bit-packed ReCU networks compute what the simulated ones compute."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import xla_ext
from common import models, train
from recu import export_binary, quick
from recu import train as recu_train

# Every ISA is tested against NumPy in tests/xla_ext/test_binconv.py; here the best one and the
# pure-JAX fallback.
PATHS = ([dict(backend='ffi', isa='auto')] if xla_ext.available() else []) + [dict(backend='jax')]


def _random_run(name, widths, shape, seed=0):
  """A freshly initialised network with random BatchNorm statistics (so that the fused epilogue
  is not the identity)."""
  rng = np.random.default_rng(seed)
  m = models.get_model(name, 10, widths=widths)
  x = jnp.asarray(rng.standard_normal(shape), jnp.float32)
  v = m.init({'params': jax.random.PRNGKey(seed)}, x, train=False)
  bs = jax.tree.map(lambda a: a + jnp.asarray(rng.uniform(0.2, 1.0, a.shape), jnp.float32),
                    v['batch_stats'])
  params = jax.tree.map(lambda a: a + jnp.asarray(0.1 * rng.standard_normal(a.shape), a.dtype),
                        v['params'])   # gamma 1e-8 (ImageNet) would hide the binary branches
  return m, {'params': params, 'batch_stats': bs}, x


@pytest.mark.parametrize('name,widths,shape', [
    ('recu_resnet20', {'stem': 8, 'stages': [8, 16, 32]}, (3, 32, 32, 3)),          # Bi-Real
    ('recu_resnet18_cifar', {'stem': 8, 'stages': [8, 16, 32, 64]}, (2, 32, 32, 3)),  # standard
    ('recu_vgg_small', [8, 8, 16, 16, 32, 40], (2, 32, 32, 3)),                     # pool, BN
    ('recu_resnet18', {'stem': 8, 'stages': [8, 16, 24, 32]}, (1, 32, 32, 3)),       # FP downsample
])
def test_export_equals_simulated(name, widths, shape):
  m, v, x = _random_run(name, widths, shape)
  eff = recu_train.binarize_params(v['params'], 0.9)
  want = np.asarray(m.apply({'params': eff, 'batch_stats': v['batch_stats']}, x, train=False))
  for path in PATHS:
    got = np.asarray(export_binary(m, v, tau=0.9, **path)(x))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max(),
                               err_msg=str(path))


def test_export_rejects_bad_input():
  m, v, _ = _random_run('recu_resnet20', {'stem': 8, 'stages': [8, 16, 32]}, (1, 32, 32, 3))
  with pytest.raises(ValueError, match="weight_binarizer must be 'recu' or 'sign_ste'.*'none'"):
    export_binary(m, v, weight_binarizer='none')
  fp = models.get_model('recu_resnet20', 10, widths={'stem': 8, 'stages': [8, 16, 32]},
                        binary=False)
  vf = fp.init({'params': jax.random.PRNGKey(0)}, jnp.zeros((1, 32, 32, 3)), train=False)
  with pytest.raises(ValueError, match='no binary layer'):
    export_binary(fp, vf)


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  """The quick experiment's ReCU arm at smoke size, trained on digits."""
  wd = str(tmp_path_factory.mktemp('recu_export'))
  quick.run_arm(wd, quick.M_RECU, 0, quick.SMOKE_EPOCHS)
  c = quick.digits_config.get_config()
  method = recu_train.ReCU(c)
  return method, c, train.load_variables(wd, which='last')


def test_trained_digits_model_same_predictions_on_test_split(trained):
  """Every test image: the packed model predicts the class the simulated eval forward predicts,
  and its logits agree to float32 rounding."""
  method, c, v = trained
  ds = train.load_dataset(c, 'test')
  method.setup(train.RunInfo(num_classes=ds.num_classes, image_shape=ds.image_shape))
  model = method.build_model()
  tau = jnp.float32(1.0)   # the forward does not depend on tau (sign(clip(w1)) = sign(w1))
  simulated = jax.jit(lambda b: method.forward(model, v['params'], v['batch_stats'],
                                               {'tau': tau}, b, False, None)[0])
  exported = export_binary(model, v)
  n = 0
  for batch in ds.batches(128, epoch=0, train=False, drop_remainder=False):
    want = np.asarray(simulated({'image': jnp.asarray(batch['image'])}))
    got = np.asarray(exported(jnp.asarray(batch['image'])))
    np.testing.assert_array_equal(got.argmax(-1), want.argmax(-1))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
    n += len(got)
  assert n == ds.num_examples == 360
  mem = exported.memory()
  assert mem['total_bytes'] * 4 < mem['simulated_total_bytes']
