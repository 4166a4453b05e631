"""MobileNet-V2 (Sandler et al. 2018), ImageNet layout and White-Box's CIFAR variant, per-layer widths.

Width config (JSON-serialisable dict, every key required)::

    {'stem': int,            # 3x3 stem conv output
     'hidden': [int] * n,    # expanded (depthwise) width of every inverted-residual block
     'out': [int] * n,       # projection output of every block
     'last': int}            # final 1x1 conv (1280)

Defaults (17 blocks, t/c/n/s = 1/16/1/1, 6/24/2/2, 6/32/3/2, 6/64/4/2, 6/96/3/1, 6/160/3/2,
6/320/1/1): stem 32, hidden ``[32, 96, 144, 144, 192, 192, 192, 384, 384, 384, 384, 576, 576, 576,
960, 960, 960]`` (= 6 x block input, block 0 has t = 1), out ``[16, 24, 24, 32, 32, 32, 64, 64, 64,
64, 96, 96, 96, 160, 160, 160, 320]``, last 1280. PSS-Net's slimmed subnets are explicit lists of
this form (hidden = ``make_divisible(6 * active input)``: chenbong/PSS-Net computes the expansion
width from the block's active input width).

``mobilenet_v2`` (ImageNet; torchvision ``mobilenetv2.py`` / lmbxmu/1xN ``models/mobilenet_v2.py``
layout): stem stride 2; block strides ``[1, 2, 1, 2, 1, 1, 2, 1, 1, 1, 1, 1, 1, 2, 1, 1, 1]``; block
0 has no expansion conv (t = 1: ``hidden[0]`` must equal ``stem``); identity residual iff stride 1
and input width == output width; ReLU6; final 1x1 conv + BN + ReLU6; global average pool; dropout
(default 0, as 1xN; torchvision uses 0.2); classifier (Linear or, with ``classifier_as_conv=True``,
the 1xN 1x1 conv with bias). Default init = torchvision (``init='kaiming_normal_fan_out'``,
``dense_init='normal_0.01'``).

``mobilenet_v2_cifar`` (zyxxmu/White-Box ``model/mobilenet_v2.py: MobileNetV2``): stem stride 1;
every block has an expansion conv (block 0 expands 32 -> 32); block strides 2 only at blocks 6
and 13 (the fine-tuned/pruned model; White-Box's class model, kuangliu's layout, uses
``strides`` with 2 at blocks 3, 6, 13 and ``act='relu'``); shortcut: identity when stride 1 and
widths equal, 1x1 conv + BN when stride 1 and widths differ, none when stride 2; ReLU6; PyTorch
default init (``init='pytorch'``: that class has no ``_initialize_weights``).

Param paths: ``conv1, bn1`` (stem), ``block{i}/{expand_conv, expand_bn, dw_conv, dw_bn,
project_conv, project_bn, shortcut_conv, shortcut_bn}``, ``conv_last, bn_last``, ``fc``.
Roles: stem, expand, depthwise, project, shortcut, pointwise (``conv_last``), classifier.

Activation: the ``act`` option ('relu6' default, 'relu', or a callable). Tap sites
(``common.models.taps``), in forward order: ``bn1_in, act1`` (stem), then per block
``block{i}/{[expand_bn_in, expand_act,] dw_bn_in, dw_act, project_bn_in, [shortcut_bn_in,] out}``
(``out`` = the projection plus the shortcut, no activation), then ``bn_last_in, act_last`` and
``features``.
"""
from __future__ import annotations

from typing import Any, Optional, Tuple

import flax.linen as nn

from common.models import layers as L
from common.models import taps as T
from common.models.registry import register
from common.models.specs import SpecBuilder

VARIANTS = ('imagenet', 'cifar')

DEFAULT_OUT = [16, 24, 24, 32, 32, 32, 64, 64, 64, 64, 96, 96, 96, 160, 160, 160, 320]
DEFAULT_HIDDEN = [32, 96, 144, 144, 192, 192, 192, 384, 384, 384, 384, 576, 576, 576, 960, 960,
                  960]
STRIDES = {'imagenet': (1, 2, 1, 2, 1, 1, 2, 1, 1, 1, 1, 1, 1, 2, 1, 1, 1),
           'cifar': (1, 1, 1, 1, 1, 1, 2, 1, 1, 1, 1, 1, 1, 2, 1, 1, 1)}
STEM_STRIDE = {'imagenet': 2, 'cifar': 1}
INIT = {'imagenet': ('kaiming_normal_fan_out', 'normal_0.01'), 'cifar': ('pytorch', None)}


def default_widths():
  """The standard width-1.0 config (same for both variants)."""
  return {'stem': 32, 'hidden': list(DEFAULT_HIDDEN), 'out': list(DEFAULT_OUT), 'last': 1280}


def block_plan(variant: str, stem: int, hidden, out, strides):
  """Per block ``(in_ch, has_expand, shortcut)`` with shortcut in {'identity', 'conv', 'none'}."""
  plan, cin = [], stem
  for i, (h, o, s) in enumerate(zip(hidden, out, strides)):
    if variant == 'imagenet':
      expand = i != 0
      shortcut = 'identity' if (s == 1 and cin == o) else 'none'
    else:
      expand = True
      shortcut = 'none' if s != 1 else ('identity' if cin == o else 'conv')
    plan.append((cin, expand, shortcut))
    cin = o
  return plan


def parse(name: str, variant: str, widths, strides=None, stem_stride=None):
  """Validates widths / strides; returns ``(stem, hidden, out, last, strides, stem_stride)``."""
  L.check_keys(name, widths, ('stem', 'hidden', 'out', 'last'))
  stem = L.check_pos_int(f'{name} widths["stem"]', widths['stem'])
  out = L.check_int_list(f'{name} widths["out"]', widths['out'])
  hidden = L.check_int_list(f'{name} widths["hidden"]', widths['hidden'], len(out))
  last = L.check_pos_int(f'{name} widths["last"]', widths['last'])
  if not out:
    raise ValueError(f'{name} needs at least one block')
  if strides is None:
    if len(out) != len(STRIDES[variant]):
      raise ValueError(f'{name} with {len(out)} blocks needs explicit strides (the default '
                       f'strides are for {len(STRIDES[variant])} blocks)')
    strides = STRIDES[variant]
  strides = tuple(strides)
  if len(strides) != len(out) or any(s not in (1, 2) for s in strides):
    raise ValueError(f'{name} strides must be {len(out)} values in (1, 2); got {list(strides)}')
  stem_stride = STEM_STRIDE[variant] if stem_stride is None else stem_stride
  if stem_stride not in (1, 2):
    raise ValueError(f'{name} stem_stride must be 1 or 2; got {stem_stride!r}')
  if variant == 'imagenet' and hidden[0] != stem:
    raise ValueError(f'{name}: block 0 has no expansion conv (t = 1), so hidden[0] must equal '
                     f'stem; got hidden[0]={hidden[0]}, stem={stem}')
  return stem, hidden, out, last, strides, stem_stride


class InvertedResidual(nn.Module):
  """``[B,H,W,C_in] -> [B,H/s,W/s,out]``: [1x1 expand] -> 3x3 depthwise -> 1x1 linear project."""
  hidden: int
  out: int
  stride: int
  expand: bool
  shortcut: str
  act: Any
  init: str
  bn_axis_name: Optional[str] = None

  @nn.compact
  def __call__(self, x, train: bool, tap: Optional[T.Tap] = None):
    act = L.act_fn(self.act)
    bn = lambda n, h: L.batch_norm(train, n, self.bn_axis_name)(T.at(tap, f'{n}_in', h))
    cin = x.shape[-1]
    y = x
    if self.expand:
      y = L.conv(self.hidden, 1, in_ch=cin, init=self.init, name='expand_conv')(y)
      y = T.at(tap, 'expand_act', act(bn('expand_bn', y)))
    y = L.conv(self.hidden, 3, in_ch=self.hidden, stride=self.stride, groups=self.hidden,
               init=self.init, name='dw_conv')(y)
    y = T.at(tap, 'dw_act', act(bn('dw_bn', y)))
    y = L.conv(self.out, 1, in_ch=self.hidden, init=self.init, name='project_conv')(y)
    y = bn('project_bn', y)
    if self.shortcut == 'identity':
      y = y + x
    elif self.shortcut == 'conv':
      y = y + bn('shortcut_bn', L.conv(self.out, 1, in_ch=cin, init=self.init,
                                       name='shortcut_conv')(x))
    return T.at(tap, 'out', y)


class MobileNetV2(nn.Module):
  """MobileNet-V2 (layout chosen by ``variant``; see the module docstring).

  ``__call__(x [B, H, W, 3], train, tap=None) -> logits [B, num_classes]``; sows pooled features
  ``[B, last]``. ``init_scheme`` is ``get_model``'s ``init`` kwarg; ``act`` and ``tap``: see the
  module docstring.
  """
  num_classes: int
  stem: int
  hidden: Tuple[int, ...]
  out: Tuple[int, ...]
  last: int
  strides: Tuple[int, ...]
  stem_stride: int
  variant: str = 'imagenet'
  act: Any = 'relu6'
  dropout: float = 0.0
  classifier_as_conv: bool = False
  init_scheme: str = 'kaiming_normal_fan_out'
  dense_init: Optional[str] = 'normal_0.01'
  bn_axis_name: Optional[str] = None

  @nn.compact
  def __call__(self, x, train: bool, tap: Optional[T.Tap] = None):
    init, dense_init = L.check_init(self.init_scheme, self.dense_init)
    act = L.act_fn(self.act)
    bn = lambda n, h: L.batch_norm(train, n, self.bn_axis_name)(T.at(tap, f'{n}_in', h))
    x = L.conv(self.stem, 3, in_ch=x.shape[-1], stride=self.stem_stride, init=init, name='conv1')(x)
    x = T.at(tap, 'act1', act(bn('bn1', x)))
    plan = block_plan(self.variant, self.stem, self.hidden, self.out, self.strides)
    for i, ((_, expand, shortcut), h, o, s) in enumerate(zip(plan, self.hidden, self.out,
                                                              self.strides)):
      x = InvertedResidual(h, o, s, expand, shortcut, self.act, init, self.bn_axis_name,
                           name=f'block{i}')(x, train, T.within(tap, f'block{i}'))
    x = L.conv(self.last, 1, in_ch=x.shape[-1], init=init, name='conv_last')(x)
    x = T.at(tap, 'act_last', act(bn('bn_last', x)))
    feats = T.at(tap, 'features', L.global_avg_pool(x))
    self.sow('intermediates', 'features', feats)
    if self.dropout:
      feats = nn.Dropout(self.dropout, deterministic=not train)(feats)
    return L.classifier(feats, self.num_classes, as_conv=self.classifier_as_conv, init=dense_init)


def layer_specs_of(name, variant, widths, input_hw, num_classes, *, strides=None, stem_stride=None,
                   act: Any = 'relu6', dropout: float = 0.0, classifier_as_conv: bool = False,
                   init: Optional[str] = None, dense_init: Optional[str] = None,
                   bn_axis_name: Optional[str] = None):
  """Specs in forward order. A projection feeds a residual sum when its block adds a shortcut or
  the next block adds it through an identity shortcut."""
  L.act_fn(act)
  stem, hidden, out, last, strides, stem_stride = parse(name, variant, widths, strides,
                                                        stem_stride)
  plan = block_plan(variant, stem, hidden, out, strides)
  b = SpecBuilder(input_hw)
  b.conv(('conv1',), 3, stem, 3, stride=stem_stride, role='stem',
         feeds_residual=plan[0][2] == 'identity', bn=('bn1',))
  for i, ((cin, expand, shortcut), h, o, s) in enumerate(zip(plan, hidden, out, strides)):
    blk = f'block{i}'
    block_in_hw = b.hw
    if expand:
      b.conv((blk, 'expand_conv'), cin, h, 1, role='expand', bn=(blk, 'expand_bn'))
    b.conv((blk, 'dw_conv'), h, h, 3, stride=s, groups=h, role='depthwise', bn=(blk, 'dw_bn'))
    next_identity = i + 1 < len(plan) and plan[i + 1][2] == 'identity'
    b.conv((blk, 'project_conv'), h, o, 1, role='project',
           feeds_residual=shortcut != 'none' or next_identity, bn=(blk, 'project_bn'))
    if shortcut == 'conv':
      b.conv((blk, 'shortcut_conv'), cin, o, 1, role='shortcut', feeds_residual=True,
             bn=(blk, 'shortcut_bn'), in_hw=block_in_hw)
  b.conv(('conv_last',), out[-1], last, 1, role='pointwise', bn=('bn_last',))
  b.classifier(last, num_classes, classifier_as_conv)
  return b.specs


def _register(name: str, variant: str):
  default_init, default_dense = INIT[variant]

  def build(num_classes, widths, strides=None, stem_stride=None, init=default_init,
            dense_init=default_dense, act='relu6', dropout=0.0, **kwargs):
    stem, hidden, out, last, st, ss = parse(name, variant, widths, strides, stem_stride)
    L.check_init(init, dense_init)
    L.act_fn(act)
    if not 0.0 <= float(dropout) < 1.0:
      raise ValueError(f'dropout must be in [0, 1); got {dropout!r}')
    return MobileNetV2(num_classes=num_classes, stem=stem, hidden=hidden, out=out, last=last,
                       strides=st, stem_stride=ss, variant=variant, act=act,
                       dropout=float(dropout), init_scheme=init, dense_init=dense_init, **kwargs)

  def specs(widths, input_hw, num_classes, **kwargs):
    return layer_specs_of(name, variant, widths, input_hw, num_classes, **kwargs)

  register(name, default_widths=default_widths, specs=specs)(build)


_register('mobilenet_v2', 'imagenet')
_register('mobilenet_v2_cifar', 'cifar')
