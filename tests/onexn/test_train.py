"""onexn.train hooks: masks fixed during fine-tuning, masked weights inert, frozen biases
(lmbxmu/1xN ``imagenet.py``: ``bias.requires_grad = False``, forward on ``W * mask``), and pretrained-weight loading."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from common import pretrained
from common import schedules
from common import train
from onexn import train as onexn_train
from onexn.configs import digits

WIDTHS = {'stem': 8, 'hidden': [8, 16, 16], 'out': [8, 16, 16], 'last': 16}


def tiny_config(**method):
  c = digits.get_config('n=4,p=0.5,rearrange=1')
  c.model.widths = WIDTHS
  c.model.kwargs = {'strides': (1, 2, 1), 'stem_stride': 2}
  c.model.kwargs.classifier_as_conv = True     # official 1x1-conv classifier with a bias
  for k, v in method.items():
    c.method[k] = v
  return c


@pytest.fixture(scope='module')
def setup():
  c = tiny_config()
  method = onexn_train.OneByN(c)
  method.setup(train.RunInfo(num_classes=10, image_shape=(32, 32, 3)))
  model = method.build_model()
  x = jax.random.normal(jax.random.PRNGKey(0), (8, 32, 32, 3))
  y = jnp.arange(8) % 10
  v = jax.jit(lambda k, x: model.init(k, x, train=False))(jax.random.PRNGKey(1), x)
  # a non-zero classifier bias, so that "frozen" is observable
  params = jax.tree_util.tree_map_with_path(
      lambda kp, a: a + 0.3 if kp[-1].key == 'bias' else a, v['params'])
  extra = method.init_extra(params, v['batch_stats'], jax.random.PRNGKey(2))
  sched = schedules.make_schedule(c.schedule, 0.1, 2, 1)
  tx = schedules.make_optimizer(c.optimizer, sched, method.decay_mask(params),
                                method.trainable_mask(params))
  step = jax.jit(train.make_train_step(method, model, tx, axis_name=None))
  state = train.TrainState(step=jnp.zeros((), jnp.int32), params=params,
                           batch_stats=v['batch_stats'], opt_state=tx.init(params), extra=extra,
                           rng=jax.random.PRNGKey(3))
  new_state, _ = step(state, {'image': x, 'label': y})
  return method, model, state, new_state, x, y


def test_masks_fixed_and_masked_weights_inert(setup):
  method, model, state, new_state, x, y = setup
  # masks never change
  for a, b in zip(jax.tree.leaves(state.extra), jax.tree.leaves(new_state.extra)):
    np.testing.assert_array_equal(a, b)
  # the step did train the kept weights
  m = state.extra['masks']
  k0 = state.params['block1']['expand_conv']['kernel']
  k1 = new_state.params['block1']['expand_conv']['kernel']
  mk = np.asarray(m['block1']['expand_conv']['kernel'])
  assert not np.allclose(np.asarray(k0)[mk], np.asarray(k1)[mk])
  # masked weights get no loss gradient ...
  def loss(params):
    logits, _, _ = method.forward(model, params, state.batch_stats, state.extra, {'image': x}, True,
                                  jax.random.PRNGKey(0))
    return train.cross_entropy(logits, y)
  g = jax.grad(loss)(state.params)
  for path, mask in jax.tree_util.tree_flatten_with_path(m)[0]:
    grad = g
    for kp in path:
      grad = grad[kp.key]
    assert float(jnp.abs(jnp.where(mask, 0.0, grad)).max()) == 0.0
  # ... and do not affect the output: rewrite them arbitrarily, same logits
  flat_m = dict(jax.tree_util.tree_flatten_with_path(m)[0])
  perturbed = jax.tree_util.tree_map_with_path(
      lambda kp, w: jnp.where(flat_m[kp], w, 123.0) if kp in flat_m else w, state.params)
  out = lambda p: method.forward(model, p, state.batch_stats, state.extra, {'image': x}, False,
                                 jax.random.PRNGKey(0))[0]
  np.testing.assert_allclose(out(perturbed), out(state.params), atol=1e-6)


def test_masked_layer_biases_frozen(setup):
  method, model, state, new_state, x, y = setup
  fc0, fc1 = state.params['fc'], new_state.params['fc']
  np.testing.assert_array_equal(fc0['bias'], fc1['bias'])        # official: requires_grad False
  assert not np.allclose(fc0['kernel'], fc1['kernel'])
  bn0, bn1 = state.params['bn1'], new_state.params['bn1']       # BN still trained (and decayed)
  assert not np.allclose(bn0['scale'], bn1['scale'])
  tm = method.trainable_mask(state.params)
  assert tm['fc']['bias'] is False and tm['fc']['kernel'] is True


def test_load_pretrained(tmp_path, setup):
  method, model, state, *_ = setup
  path = str(tmp_path / 'converted.npz')
  pretrained.save_variables_npz(path, {'params': state.params, 'batch_stats': state.batch_stats})
  v = pretrained.load_pretrained(path)
  for a, b in zip(jax.tree.leaves(v['params']), jax.tree.leaves(state.params)):
    np.testing.assert_array_equal(a, b)
  with pytest.raises(train.UserError, match='pretrained model'):
    pretrained.load_pretrained('')
  with pytest.raises(train.UserError, match='does not exist'):
    pretrained.load_pretrained(str(tmp_path / 'missing.npz'))
  # a checkpoint of another model is refused before masks are computed
  other = dict(state.params)
  other['fc'] = {'kernel': jnp.zeros((1, 1, 16, 3)), 'bias': jnp.zeros(3)}
  bad = str(tmp_path / 'other.npz')
  pretrained.save_variables_npz(bad, {'params': other, 'batch_stats': state.batch_stats})
  c = tiny_config()
  c.init_checkpoint = bad
  m = onexn_train.OneByN(c)
  m.setup(train.RunInfo(num_classes=10, image_shape=(32, 32, 3)))
  with pytest.raises(train.UserError, match='fc/kernel'):
    m.init_variables(model, jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))
