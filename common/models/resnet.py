"""ImageNet ResNet-18/34/50 (torchvision v1.5: the stride sits on the 3x3 conv) with per-layer widths.

Layout (torchvision ``resnet.py``; lmbxmu/DCFF ``models/imagenet/resnet.py``, lmbxmu/1xN
``models/``, zyxxmu/White-Box ``model/``, zyxxmu/lottery-jackpots ``models/``): 7x7/2 stem conv +
BN + act (ReLU),
3x3/2 max-pool (padding 1), four stages (first block of stages 2-4 has stride 2), global average
pool, classifier (Linear, or the 1xN / Jackpot 1x1 conv with bias via ``classifier_as_conv``).
A block gets a projection shortcut ``downsample_conv`` (1x1, stride s) + ``downsample_bn`` when
its stride is 2 or its input width differs from its output width, else the identity.

Width configs (JSON-serialisable dicts, every key required):

* ``resnet18`` / ``resnet34`` (basic blocks ``conv1`` 3x3 (stride) -> ``conv2`` 3x3)::

      {'stem': 64, 'stages': [64, 128, 256, 512], 'inner': [[64] * n1, ..., [512] * n4]}

  ``stages``: block output width (conv2 and downsample) per stage; ``inner``: conv1 width per
  block (n = 2, 2, 2, 2 / 3, 4, 6, 3).
* ``resnet50`` (bottlenecks ``conv1`` 1x1 -> ``conv2`` 3x3 (stride) -> ``conv3`` 1x1)::

      {'stem': 64, 'stages': [256, 512, 1024, 2048],
       'conv1': [[64] * 3, [128] * 4, [256] * 6, [512] * 3],   # per-block conv1 widths
       'conv2': [[64] * 3, [128] * 4, [256] * 6, [512] * 3]}   # per-block conv2 widths

  ``stages``: conv3 width of every block of the stage; the downsample conv follows it (DCFF's
  ``cprate`` has one rate per stage for every conv3 of the stage and its downsample conv:
  lmbxmu/DCFF ``models/imagenet/resnet.py``).

Default init: torchvision (``init='kaiming_normal_fan_out'``, BN (1, 0), Linear PyTorch default), as
DCFF's ResNet-50 trains from scratch. Param paths ``conv1, bn1, layer{s}_{b}/{conv1, bn1, conv2,
bn2[, conv3, bn3][, downsample_conv, downsample_bn]}, fc`` (s from 1, b from 0).

Activation: the ``act`` option ('relu' default, 'relu6', or a callable). Tap sites
(``common.models.taps``), in forward order: ``bn1_in, act1`` (stem, before the max-pool), then per
block ``layer{s}_{b}/{bn1_in, act1, bn2_in, ...}``: basic ``bn1_in, act1, bn2_in``, bottleneck
``bn1_in, act1, bn2_in, act2, bn3_in``; then ``downsample_bn_in`` when the block has a projection
shortcut; then the activation of the residual sum (``act2`` basic, ``act3`` bottleneck) and
``out``; finally ``features``.
"""
from __future__ import annotations

from typing import Any, Optional, Tuple

import flax.linen as nn

from common.models import layers as L
from common.models import taps as T
from common.models.registry import register
from common.models.specs import SpecBuilder

BLOCKS = {'resnet18': ('basic', (2, 2, 2, 2)), 'resnet34': ('basic', (3, 4, 6, 3)),
          'resnet50': ('bottleneck', (3, 4, 6, 3))}
PLANES = (64, 128, 256, 512)


def default_widths(name: str):
  """torchvision widths of ``name``."""
  kind, ns = BLOCKS[name]
  if kind == 'basic':
    return {'stem': 64, 'stages': list(PLANES), 'inner': [[p] * n for p, n in zip(PLANES, ns)]}
  return {'stem': 64, 'stages': [4 * p for p in PLANES],
          'conv1': [[p] * n for p, n in zip(PLANES, ns)],
          'conv2': [[p] * n for p, n in zip(PLANES, ns)]}


def _nested(name, key, value, ns):
  if not isinstance(value, (list, tuple)) or len(value) != len(ns):
    raise ValueError(f'{name} widths[{key!r}] must be {len(ns)} per-stage lists; got {value!r}')
  return tuple(L.check_int_list(f'{name} widths[{key!r}][{s}]', v, n)
               for s, (v, n) in enumerate(zip(value, ns)))


def parse(name: str, widths):
  """Validates widths; returns ``(stem, stages, per-block widths)`` where per-block widths is
  ``inner`` (basic) or ``(conv1, conv2)`` zipped per block (bottleneck), as nested tuples."""
  kind, ns = BLOCKS[name]
  keys = ('stem', 'stages', 'inner') if kind == 'basic' else ('stem', 'stages', 'conv1', 'conv2')
  L.check_keys(name, widths, keys)
  stem = L.check_pos_int(f'{name} widths["stem"]', widths['stem'])
  stages = L.check_int_list(f'{name} widths["stages"]', widths['stages'], len(ns))
  if kind == 'basic':
    return stem, stages, _nested(name, 'inner', widths['inner'], ns)
  c1 = _nested(name, 'conv1', widths['conv1'], ns)
  c2 = _nested(name, 'conv2', widths['conv2'], ns)
  return stem, stages, tuple(tuple(zip(a, b)) for a, b in zip(c1, c2))


class Block(nn.Module):
  """Basic (``mids = (w,)``) or bottleneck (``mids = (w1, w2)``) block, v1.5 stride placement;
  tap sites as listed in the module docstring (relative to the block)."""
  mids: Tuple[int, ...]
  out: int
  stride: int
  init: str
  bn_axis_name: Optional[str] = None
  act: Any = 'relu'

  @nn.compact
  def __call__(self, x, train: bool, tap: Optional[T.Tap] = None):
    act = L.act_fn(self.act)
    bn = lambda n, h: L.batch_norm(train, n, self.bn_axis_name)(T.at(tap, f'{n}_in', h))
    cin = x.shape[-1]
    if len(self.mids) == 1:
      y = L.conv(self.mids[0], 3, in_ch=cin, stride=self.stride, init=self.init, name='conv1')(x)
      y = T.at(tap, 'act1', act(bn('bn1', y)))
      y = bn('bn2', L.conv(self.out, 3, in_ch=self.mids[0], init=self.init, name='conv2')(y))
      last = 'act2'
    else:
      w1, w2 = self.mids
      y = T.at(tap, 'act1', act(bn('bn1', L.conv(w1, 1, in_ch=cin, init=self.init,
                                                     name='conv1')(x))))
      y = L.conv(w2, 3, in_ch=w1, stride=self.stride, init=self.init, name='conv2')(y)
      y = T.at(tap, 'act2', act(bn('bn2', y)))
      y = bn('bn3', L.conv(self.out, 1, in_ch=w2, init=self.init, name='conv3')(y))
      last = 'act3'
    if self.stride != 1 or cin != self.out:
      x = L.conv(self.out, 1, in_ch=cin, stride=self.stride, init=self.init,
                 name='downsample_conv')(x)
      x = bn('downsample_bn', x)
    return T.at(tap, 'out', T.at(tap, last, act(y + x)))


class ResNet(nn.Module):
  """ImageNet ResNet: ``__call__(x [B, H, W, 3], train, tap=None) -> logits [B, num_classes]``;
  sows pooled features ``[B, stages[-1]]``. ``blocks[s][b]`` is a block's mid widths;
  ``init_scheme`` = ``init`` kwarg; ``act`` and ``tap``: see the module docstring."""
  num_classes: int
  stem: int
  stages: Tuple[int, ...]
  blocks: Tuple[Tuple[Tuple[int, ...], ...], ...]
  classifier_as_conv: bool = False
  init_scheme: str = 'kaiming_normal_fan_out'
  dense_init: Optional[str] = None
  bn_axis_name: Optional[str] = None
  act: Any = 'relu'

  @nn.compact
  def __call__(self, x, train: bool, tap: Optional[T.Tap] = None):
    init, dense_init = L.check_init(self.init_scheme, self.dense_init)
    act = L.act_fn(self.act)
    x = L.conv(self.stem, 7, in_ch=x.shape[-1], stride=2, init=init, name='conv1')(x)
    x = L.batch_norm(train, 'bn1', self.bn_axis_name)(T.at(tap, 'bn1_in', x))
    x = T.at(tap, 'act1', act(x))
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    for s, (out, blocks) in enumerate(zip(self.stages, self.blocks)):
      for b, mids in enumerate(blocks):
        stride = 2 if (s > 0 and b == 0) else 1
        name = f'layer{s + 1}_{b}'
        x = Block(tuple(mids), out, stride, init, self.bn_axis_name, self.act,
                  name=name)(x, train, T.within(tap, name))
    feats = T.at(tap, 'features', L.global_avg_pool(x))
    self.sow('intermediates', 'features', feats)
    return L.classifier(feats, self.num_classes, as_conv=self.classifier_as_conv, init=dense_init)


def _as_blocks(name, per_block):
  kind, _ = BLOCKS[name]
  if kind == 'basic':
    return tuple(tuple((w,) for w in stage) for stage in per_block)
  return per_block


def layer_specs_of(name, widths, input_hw, num_classes, *, classifier_as_conv: bool = False,
                   init: str = 'kaiming_normal_fan_out', dense_init: Optional[str] = None,
                   bn_axis_name: Optional[str] = None, act: Any = 'relu'):
  """Specs in forward order; block outputs and downsample convs feed the residual sum, and so
  does the stem when the first block has no downsample."""
  L.check_init(init, dense_init)
  L.act_fn(act)
  stem, stages, per_block = parse(name, widths)
  blocks = _as_blocks(name, per_block)
  b = SpecBuilder(input_hw)
  first_identity = stages[0] == stem   # layer1_0 has stride 1
  b.conv(('conv1',), 3, stem, 7, stride=2, role='stem', feeds_residual=first_identity,
         bn=('bn1',))
  b.pool(3, 2, 1)
  cin = stem
  for s, (out, stage) in enumerate(zip(stages, blocks)):
    for i, mids in enumerate(stage):
      stride = 2 if (s > 0 and i == 0) else 1
      blk = f'layer{s + 1}_{i}'
      in_hw = b.hw
      if len(mids) == 1:
        b.conv((blk, 'conv1'), cin, mids[0], 3, stride=stride, role='inner', bn=(blk, 'bn1'))
        b.conv((blk, 'conv2'), mids[0], out, 3, role='block_out', feeds_residual=True,
               bn=(blk, 'bn2'))
      else:
        b.conv((blk, 'conv1'), cin, mids[0], 1, role='inner', bn=(blk, 'bn1'))
        b.conv((blk, 'conv2'), mids[0], mids[1], 3, stride=stride, role='inner', bn=(blk, 'bn2'))
        b.conv((blk, 'conv3'), mids[1], out, 1, role='block_out', feeds_residual=True,
               bn=(blk, 'bn3'))
      if stride != 1 or cin != out:
        b.conv((blk, 'downsample_conv'), cin, out, 1, stride=stride, role='shortcut',
               feeds_residual=True, bn=(blk, 'downsample_bn'), in_hw=in_hw)
      cin = out
  b.classifier(cin, num_classes, classifier_as_conv)
  return b.specs


def _register(name: str):
  def build(num_classes, widths, init='kaiming_normal_fan_out', **kwargs):
    stem, stages, per_block = parse(name, widths)
    L.check_init(init, kwargs.get('dense_init'))
    L.act_fn(kwargs.get('act', 'relu'))
    return ResNet(num_classes=num_classes, stem=stem, stages=stages,
                  blocks=_as_blocks(name, per_block), init_scheme=init, **kwargs)

  def specs(widths, input_hw, num_classes, **kwargs):
    return layer_specs_of(name, widths, input_hw, num_classes, **kwargs)

  register(name, default_widths=lambda: default_widths(name), specs=specs)(build)


for _name in BLOCKS:
  _register(_name)
