"""siman.export_binary: the bit-packed SiMaN networks compute what the simulated ones compute."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import siman
import xla_ext
from common import binary_export, models, train
from siman import export_binary, quick
from siman import train as siman_train

# Every ISA is tested against NumPy in tests/xla_ext/test_binconv.py; here the best one and the
# pure-JAX fallback.
PATHS = ([dict(backend='ffi', isa='auto')] if xla_ext.available() else []) + [dict(backend='jax')]


def _random_run(name, widths, shape, seed=0):
  """A freshly initialised network with random BatchNorm statistics and PReLU slopes, and the
  codes of its initial weights (what SiMaN's eval forward binarizes with)."""
  rng = np.random.default_rng(seed)
  m = models.get_model(name, 10, widths=widths)
  x = jnp.asarray(rng.standard_normal(shape), jnp.float32)
  v = m.init({'params': jax.random.PRNGKey(seed)}, x, train=False)
  bs = jax.tree.map(lambda a: a + jnp.asarray(rng.uniform(0.2, 1.0, a.shape), jnp.float32),
                    v['batch_stats'])
  params = jax.tree.map(lambda a: a + jnp.asarray(0.1 * rng.standard_normal(a.shape), a.dtype),
                        v['params'])
  bs = dict(bs, **{siman_train.CODES: siman.binary_codes(params, 'median')})
  return m, {'params': params, 'batch_stats': bs}, x


@pytest.mark.parametrize('name,widths,shape', [
    ('siman_resnet20', {'stem': 8, 'stages': [8, 16, 32]}, (3, 32, 32, 3)),    # Bi-Real, PReLU
    # standard blocks with the binarized 1x1 stride-2 shortcut
    ('siman_resnet18_cifar', {'stem': 8, 'stages': [8, 16, 32, 40]}, (2, 32, 32, 3)),
    ('siman_vgg_small', [8, 8, 16, 16, 32, 40], (2, 32, 32, 3)),
    ('siman_resnet18', {'stem': 8, 'stages': [8, 16, 24, 32]}, (1, 32, 32, 3)),
])
def test_export_equals_simulated(name, widths, shape):
  m, v, x = _random_run(name, widths, shape)
  bs = {k: a for k, a in v['batch_stats'].items() if k != siman_train.CODES}
  eff = siman.binarize_params(v['params'], v['batch_stats'][siman_train.CODES])
  want = np.asarray(m.apply({'params': eff, 'batch_stats': bs}, x, train=False))
  for path in PATHS:
    got = np.asarray(export_binary(m, v, **path)(x))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max(),
                               err_msg=str(path))


@pytest.mark.parametrize('shape,offset', [((2, 14, 14, 64), 0.0), ((3, 7, 7, 40), 3.0),
                                          ((1, 5, 5, 33), -0.7)])
def test_centred_input_packs_the_bits_of_the_binarizer(shape, offset):
  """``sign((a - mean) / std)`` (SiMaN's binarizer, every sample its own mean and scale) and the
  export's ``a - mean`` pack to the same words, bit for bit; and the threshold is the sample's
  mean, not 0 (a plain sign would differ)."""
  from siman.export_binary import centred_per_sample   # the package exports the function's name
  from xla_ext import binconv
  rng = np.random.default_rng(len(shape))
  scale = rng.uniform(0.01, 20.0, (shape[0],) + (1,) * (len(shape) - 1))
  a = jnp.asarray(offset + scale * rng.standard_normal(shape), jnp.float32)
  want = np.asarray(binconv.pack_bits(siman.siman_activation(a, False)))
  np.testing.assert_array_equal(np.asarray(binconv.pack_bits(centred_per_sample(a))),
                                want)
  if offset:
    assert (np.asarray(binconv.pack_bits(a)) != want).any()


def test_export_rejects_bad_input():
  m, v, _ = _random_run('siman_resnet20', {'stem': 8, 'stages': [8, 16, 32]}, (1, 32, 32, 3))
  with pytest.raises(ValueError, match="weight_binarizer must be one of .*; got 'none'"):
    export_binary(m, v, weight_binarizer='none')
  bs = {k: a for k, a in v['batch_stats'].items() if k != siman_train.CODES}
  with pytest.raises(ValueError, match="no 'binary_codes' entry"):
    export_binary(m, {'params': v['params'], 'batch_stats': bs})
  with pytest.raises(ValueError, match='is not binarized'):   # latent weights, no binarizer
    binary_export.export(m, {'params': v['params'], 'batch_stats': bs})


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  """The quick experiment's SiMaN arm at smoke size, trained on digits."""
  wd = str(tmp_path_factory.mktemp('siman_export'))
  quick.run_arm(wd, quick.M_SIMAN, 0, quick.SMOKE_EPOCHS)
  c = quick.arm_config(quick.M_SIMAN, 0, quick.SMOKE_EPOCHS)
  return siman_train.SiMaN(c), c, train.load_variables(wd, which='last')


def test_trained_digits_model_same_predictions_on_test_split(trained):
  """Every test image: the packed model predicts the class the simulated eval forward (stored
  codes, per-sample centred activations) predicts, and its logits agree to float32 rounding."""
  method, c, v = trained
  ds = train.load_dataset(c, 'test')
  method.setup(train.RunInfo(num_classes=ds.num_classes, image_shape=ds.image_shape))
  model = method.build_model()
  simulated = jax.jit(lambda b: method.forward(model, v['params'], v['batch_stats'], {}, b,
                                               False, None)[0])
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
  assert mem['total_bytes'] * 2 < mem['simulated_total_bytes']
