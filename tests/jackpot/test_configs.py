"""The search configs and the dense-pretrain configs build the trees the official code prunes
(zyxxmu/lottery-jackpots ``models/``): conv-weight counts of VGG-19 (20.02M), the wide ResNet-32
(1.844M) and ResNet-50 (23.45M, classifier excluded), no conv bias in VGG-19, a 1x1-conv
classifier with bias, and the yaml hyperparameters."""
import math

import jax
import jax.numpy as jnp
import pytest
from flax import traverse_util

from common import models, train
from common.configs import jackpot_dense
from jackpot import train as jtrain
from jackpot.configs import cifar, digits, imagenet


def conv_weights(c, hw, k):
  m = jtrain.Jackpot(c)
  m.setup(train.RunInfo(num_classes=k, image_shape=(hw, hw, 3)))
  net = m.build_model()
  shapes = jax.eval_shape(lambda: net.init(jax.random.PRNGKey(0), jnp.zeros((1, hw, hw, 3)),
                                           train=False))['params']
  flat = traverse_util.flatten_dict(shapes)
  body = [p for p in m.layers if p not in m.classifier]
  return m, flat, sum(flat[p].size for p in body)


@pytest.mark.parametrize('arg,n', [('vgg19,cifar10,0.9,30', 20_018_880),
                                   ('resnet32_wide,cifar100,0.95,160', 1_844_064)])
def test_cifar_configs_official_layout(arg, n):
  c = cifar.get_config(arg)
  k = 100 if 'cifar100' in arg else 10
  m, flat, total = conv_weights(c, 32, k)
  assert total == n
  assert m.classifier == [('fc', 'kernel')]
  assert flat[('fc', 'kernel')].shape[:2] == (1, 1) and ('fc', 'bias') in flat
  if arg.startswith('vgg19'):
    assert not [p for p in flat if p[0].startswith('conv') and p[-1] == 'bias']
  assert (c.optimizer.learning_rate, c.optimizer.weight_decay, c.dataset.batch_size) == (
      0.1, 5e-4, 256)
  assert c.schedule.name == 'cosine' and c.method.variant == 'v2'
  assert c.num_epochs == int(arg.split(',')[-1])
  # the dense pretraining config builds the same tree
  d = jackpot_dense.get_config(','.join(arg.split(',')[:2]))
  assert dict(d.model.kwargs) == dict(c.model.kwargs)


def test_imagenet_config_and_tune_stage():
  c = imagenet.get_config('0.8,30,10')
  m, flat, total = conv_weights(c, 224, 1000)
  assert total == 23_454_912 and m.classifier == [('fc', 'kernel')]
  assert (c.optimizer.learning_rate, c.optimizer.weight_decay) == (0.1, 1e-4)
  t = jtrain.tune_config(c)
  assert (t.num_epochs, t.optimizer.learning_rate, t.optimizer.weight_decay) == (10, 0.01, 0.0)
  assert imagenet.get_config('0.9,10').method.tune.num_epochs == 0


def test_config_errors():
  with pytest.raises(ValueError, match="model must be one of"):
    cifar.get_config('vgg16,cifar10,0.9,30')
  with pytest.raises(ValueError, match='jackpot_dense model must be one of'):
    jackpot_dense.get_config('resnet56,cifar10')
  assert digits.get_config().model.name in models.MODELS


def test_digits_recipe_keeps_the_official_lr_per_example():
  """The digits search runs at batch 32; its lr is the CIFAR recipe's (0.1 at batch 256) scaled
  linearly with the batch, so each example moves the scores as far as in the official runs."""
  d, c = digits.get_config(), cifar.get_config('vgg19,cifar10,0.95,30')
  assert d.dataset.batch_size == 32 < c.dataset.batch_size
  assert math.isclose(d.optimizer.learning_rate / d.dataset.batch_size,
                      c.optimizer.learning_rate / c.dataset.batch_size)
  assert (d.optimizer.momentum, d.optimizer.weight_decay, d.schedule.name) == (
      c.optimizer.momentum, c.optimizer.weight_decay, c.schedule.name)
