"""CIFAR GoogLeNet (Szegedy et al. 2015, Table 1, the 32x32 variant of kuangliu/pytorch-cifar) as
the FFSD code trains it.

Layout (SJLeo/FFSD ``models/googlenet_cifar.py``: ``GoogLeNet``, ``Inception``): a 3x3 stem conv
``3 -> 192`` + BN + ReLU; inceptions ``a3, b3``, a 3x3/2 max-pool (padding 1), ``a4 .. e4``, the
same max-pool, ``a5, b5``; global average pool (the code's ``AvgPool2d(8, stride=1)`` at 32x32
input), linear. An inception concatenates, in this order, four branches, every conv followed by
BN + ReLU: ``1x1``; ``1x1 -> 3x3``; ``1x1 -> 3x3 -> 3x3`` (the "5x5" branch, two stacked 3x3s);
``3x3/1 max-pool (padding 1) -> 1x1``. Every conv has a bias. Output widths 480 (after b3), 832
(after e4), 1024 (after b5).

Init (``reset_parameters``): conv kernels N(0, 2 / (k k C_out)), BN (1, 0); conv biases and the
Linear keep PyTorch's defaults U(+-1/sqrt(fan_in)).

Width config: ``{'stem': int, 'blocks': [[n1x1, n3x3red, n3x3, n5x5red1, n5x5red2, n5x5, pool]] *
9}``, the branch widths of ``a3, b3, a4, b4, c4, d4, e4, a5, b5`` (the code's ``filters`` and
``layer_cfg``; default the code's, with ``n5x5red2 = n5x5``).

Registered name: ``googlenet``.
Param paths: ``pre_conv, pre_bn, inception_{x}/{b1_conv, b1_bn, b2_conv1, b2_bn1, b2_conv2, b2_bn2,
b3_conv1, b3_bn1, b3_conv2, b3_bn2, b3_conv3, b3_bn3, b4_conv, b4_bn}, fc``.
Tap sites, in forward order: ``pre_bn_in, pre_act``; per inception ``inception_{x}/<bn>_in,
<act>`` for each BN in branch order (``b1_bn -> b1_act``, ``b2_bn1 -> b2_act1``, ...) and
``inception_{x}/out`` (the concatenation: the code's ``inception_b3`` / ``inception_e4`` /
``inception_b5`` forward hooks, FFSD's features); then ``features``.
"""
from __future__ import annotations

from typing import Optional, Tuple

import flax.linen as nn
import jax.numpy as jnp

from common.models import layers as L
from common.models import taps as T
from common.models.registry import register
from common.models.specs import SpecBuilder

INIT = 'kaiming_normal_fan_out'   # reset_parameters: normal_(0, sqrt(2 / (k k C_out)))
NAMES = ('a3', 'b3', 'a4', 'b4', 'c4', 'd4', 'e4', 'a5', 'b5')
POOL_AFTER = ('b3', 'e4')          # maxpool1, maxpool2
# SJLeo/FFSD GoogLeNet.__init__: filters [n1x1, n3x3, n5x5, pool] and the default reductions
# (n3x3red, n5x5red1); n5x5red2 = n5x5 when layer_cfg is None.
_FILTERS = ((64, 128, 32, 32), (128, 192, 96, 64), (192, 208, 48, 64), (160, 224, 64, 64),
            (128, 256, 64, 64), (112, 288, 64, 64), (256, 320, 128, 128), (256, 320, 128, 128),
            (384, 384, 128, 128))
_REDUCE = ((96, 16), (128, 32), (96, 16), (112, 24), (128, 24), (144, 32), (160, 32), (160, 32),
           (192, 48))


def default_widths():
  """The code's branch widths, ``{'stem': 192, 'blocks': [[n1x1, n3x3red, n3x3, n5x5red1,
  n5x5red2, n5x5, pool]] * 9}``."""
  return {'stem': 192,
          'blocks': [[f[0], r[0], f[1], r[1], f[2], f[2], f[3]] for f, r in zip(_FILTERS, _REDUCE)]}


def _conv(features: int, kernel: int, in_ch: int, name: str) -> nn.Conv:
  """A biased conv with the code's init: kernel N(0, 2 / (k k C_out)), bias PyTorch's default."""
  p = kernel // 2
  return nn.Conv(features, (kernel, kernel), padding=((p, p), (p, p)), use_bias=True,
                 kernel_init=L.kernel_init(INIT),
                 bias_init=L.bias_init('pytorch', in_ch * kernel * kernel),
                 conv_general_dilated=L.cpu_conv_fn(), name=name)


def _max_pool3(x, stride: int):
  """PyTorch ``MaxPool2d(3, stride, padding=1)``: the padding never wins (-inf)."""
  return nn.max_pool(x, (3, 3), strides=(stride, stride), padding=((1, 1), (1, 1)))


class Inception(nn.Module):
  """``[B, H, W, C] -> [B, H, W, n1x1 + n3x3 + n5x5 + pool]`` (branch order of the code)."""
  widths: Tuple[int, ...]     # n1x1, n3x3red, n3x3, n5x5red1, n5x5red2, n5x5, pool
  bn_axis_name: Optional[str] = None

  @nn.compact
  def __call__(self, x, train: bool, tap: Optional[T.Tap] = None):
    n1, r3, n3, r5a, r5b, n5, npool = self.widths

    def cbr(h, features, kernel, conv_name, bn_name):
      h = _conv(features, kernel, h.shape[-1], conv_name)(h)
      h = L.batch_norm(train, bn_name, self.bn_axis_name)(T.at(tap, f'{bn_name}_in', h))
      return T.at(tap, T.act_site(bn_name), nn.relu(h))

    y1 = cbr(x, n1, 1, 'b1_conv', 'b1_bn')
    y2 = cbr(cbr(x, r3, 1, 'b2_conv1', 'b2_bn1'), n3, 3, 'b2_conv2', 'b2_bn2')
    y3 = cbr(x, r5a, 1, 'b3_conv1', 'b3_bn1')
    y3 = cbr(cbr(y3, r5b, 3, 'b3_conv2', 'b3_bn2'), n5, 3, 'b3_conv3', 'b3_bn3')
    y4 = cbr(_max_pool3(x, 1), npool, 1, 'b4_conv', 'b4_bn')
    return T.at(tap, 'out', jnp.concatenate([y1, y2, y3, y4], axis=-1))


class GoogLeNet(nn.Module):
  """``__call__(x [B, H, W, 3], train, tap=None) -> logits [B, num_classes]``."""
  num_classes: int
  stem: int
  blocks: Tuple[Tuple[int, ...], ...]
  bn_axis_name: Optional[str] = None

  @nn.compact
  def __call__(self, x, train: bool, tap: Optional[T.Tap] = None):
    x = _conv(self.stem, 3, x.shape[-1], 'pre_conv')(x)
    x = L.batch_norm(train, 'pre_bn', self.bn_axis_name)(T.at(tap, 'pre_bn_in', x))
    x = T.at(tap, 'pre_act', nn.relu(x))
    for n, w in zip(NAMES, self.blocks):
      name = f'inception_{n}'
      x = Inception(w, self.bn_axis_name, name=name)(x, train, T.within(tap, name))
      if n in POOL_AFTER:
        x = _max_pool3(x, 2)
    feats = T.at(tap, 'features', L.global_avg_pool(x))
    self.sow('intermediates', 'features', feats)
    return L.dense(self.num_classes, in_ch=feats.shape[-1], init='pytorch', name='fc')(feats)


def parse_widths(name: str, widths) -> Tuple[int, Tuple[Tuple[int, ...], ...]]:
  """``(stem, the 9 inceptions' 7 branch widths)`` of a width config, validated."""
  L.check_keys(name, widths, ('stem', 'blocks'))
  stem = L.check_pos_int(f'{name} widths["stem"]', widths['stem'])
  blocks = widths['blocks']
  if not isinstance(blocks, (list, tuple)) or len(blocks) != len(NAMES):
    raise ValueError(f'{name} widths["blocks"] must list {len(NAMES)} inceptions '
                     f'({", ".join(NAMES)}) of 7 widths each; got {blocks!r}')
  return stem, tuple(L.check_int_list(f'{name} widths["blocks"][{i}] (inception_{n})', b, 7)
                     for i, (n, b) in enumerate(zip(NAMES, blocks)))


def layer_specs_of(name: str, widths, input_hw, num_classes, bn_axis_name=None):
  """Specs in forward order (branch by branch, as the code's ``Inception.forward``)."""
  stem, blocks = parse_widths(name, widths)
  b = SpecBuilder(input_hw)
  b.conv(('pre_conv',), 3, stem, 3, bias=True, role='stem', bn=('pre_bn',))
  ch = stem
  for n, (n1, r3, n3, r5a, r5b, n5, npool) in zip(NAMES, blocks):
    p = f'inception_{n}'
    for layers in (((n1, 1, 'b1_conv', 'b1_bn'),),
                   ((r3, 1, 'b2_conv1', 'b2_bn1'), (n3, 3, 'b2_conv2', 'b2_bn2')),
                   ((r5a, 1, 'b3_conv1', 'b3_bn1'), (r5b, 3, 'b3_conv2', 'b3_bn2'),
                    (n5, 3, 'b3_conv3', 'b3_bn3')),
                   ((npool, 1, 'b4_conv', 'b4_bn'),)):
      c_in = ch
      for out, k, conv_name, bn_name in layers:
        b.conv((p, conv_name), c_in, out, k, bias=True, role='inner', bn=(p, bn_name))
        c_in = out
    ch = n1 + n3 + n5 + npool
    if n in POOL_AFTER:
      b.pool(3, 2, 1)
  b.classifier(ch, num_classes, False)
  return b.specs


def _build(num_classes, widths, **kwargs):
  stem, blocks = parse_widths('googlenet', widths)
  return GoogLeNet(num_classes=num_classes, stem=stem, blocks=blocks, **kwargs)


register('googlenet', default_widths=default_widths,
         specs=lambda widths, input_hw, num_classes, **kw: layer_specs_of(
             'googlenet', widths, input_hw, num_classes, **kw))(_build)
