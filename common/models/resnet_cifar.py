"""CIFAR ResNets (He et al. 2016, Sec. 4.2) with option-A shortcuts and per-layer widths.

Layout (akamaster/pytorch_resnet_cifar10 ``resnet.py``, lmbxmu/DCFF ``models/cifar/resnet.py``,
zyxxmu/White-Box ``model/``, zyxxmu/lottery-jackpots ``models/``): 3x3 stem conv + BN + act; S
stages of basic blocks ``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``, the first block of
every stage after the first has stride 2 (on conv1); global average pool; linear classifier. Depth =
2 + 2 * #blocks.

Option-A shortcut (parameter-free), used whenever the stride is 2 or the widths differ:
subsample ``x[:, ::2, ::2]`` (stride 2 only) and zero-pad channels with
``left = (C_out - C_in) // 2`` zeros in front and ``C_out - C_in - left`` behind (DCFF's general
form of akamaster's ``planes // 4`` padding). A block output narrower than its input is rejected.

Projection (option-B) shortcut, ``shortcut='projection'``: a 1x1 conv (stride s) + BN named
``downsample_conv`` / ``downsample_bn`` wherever the stride is 2 or the widths differ, as the
ImageNet ResNet's (He et al. 2016, eq. 2; kuangliu/pytorch-cifar ``models/resnet.py``, the CIFAR
ResNets of SJLeo/FFSD ``models/resnet.py`` and of the FDDA/ZeroQ CIFAR models). Option A stays the
default.

Width config (JSON-serialisable dict, every key required)::

    {'stem': int,                      # stem conv output
     'stages': [int] * S,              # block output (conv2) width of every block of stage s
     'inner': [[int] * n_s] * S}       # conv1 (inner) width of every block, per stage

DCFF prunes all three (stem uses the stage-1 rate), White-Box only ``inner``, Lottery Jackpot uses
the wide ResNet-32 ``stem 32, stages [32, 64, 128]``. The number of blocks per stage comes from
``inner`` and must match the registered depth (``resnet56``: 9 per stage).

Registered names: ``resnet8/14/20/32/44/56/110`` (16/32/64) and ``resnet32_wide`` (32/64/128).
Param paths: ``conv1, bn1, layer{s}_{b}/{conv1,bn1,conv2,bn2}, fc`` (s from 1, b from 0).

Activation: the ``act`` option ('relu', the default as in every CIFAR ResNet repository, 'relu6',
or a callable). Tap sites (``common.models.taps``), in forward order: ``bn1_in, act1``, then per
block ``layer{s}_{b}/{bn1_in, act1, bn2_in, [downsample_bn_in,] act2, out}`` (``act2`` = act of the residual sum =
the block output), then ``features``.

Default init ``'kaiming_normal_fan_in'`` (akamaster ``_weights_init``: conv and Linear weights
kaiming-normal fan_in, Linear bias PyTorch default; BN (1, 0)) as DCFF and White-Box train it.
"""
from __future__ import annotations

from typing import Any, Optional, Tuple

import flax.linen as nn
import jax.numpy as jnp

from common.models import layers as L
from common.models import taps as T
from common.models.registry import register
from common.models.specs import SpecBuilder

DEPTHS = (8, 14, 20, 32, 44, 56, 110)


def option_a_shortcut(x, out_ch: int, stride: int):
  """Option-A shortcut ``[B, H, W, C_in] -> [B, H/stride, W/stride, C_out]`` (zero-pad channels).

  ``left = (C_out - C_in) // 2`` zero channels in front, the rest behind (lmbxmu/DCFF
  ``models/cifar/resnet.py``: ``BasicBlock``'s shortcut, akamaster's ``planes // 4`` generalised).
  """
  in_ch = x.shape[-1]
  if out_ch < in_ch:
    raise ValueError(f'option-A shortcut cannot shrink channels: C_in={in_ch} > C_out={out_ch}')
  if stride == 2:
    x = x[:, ::2, ::2, :]
  elif stride != 1:
    raise ValueError(f'option-A shortcut supports stride 1 or 2; got {stride}')
  if out_ch != in_ch:
    left = (out_ch - in_ch) // 2
    x = jnp.pad(x, ((0, 0), (0, 0), (0, 0), (left, out_ch - in_ch - left)))
  return x


SHORTCUTS = ('A', 'projection')


class BasicBlockA(nn.Module):
  """Basic block: ``[B,H,W,C_in] -> [B,H/s,W/s,out]``, option-A or projection shortcut.

  Tap sites (relative to the block): ``bn1_in``, ``act1``, ``bn2_in``, ``downsample_bn_in`` (the
  projection's BN input, only when the block has one), ``act2`` (the activation of the residual
  sum), ``out``.
  """
  inner: int
  out: int
  stride: int
  init: str
  bn_axis_name: Optional[str] = None
  act: Any = 'relu'
  shortcut: str = 'A'

  @nn.compact
  def __call__(self, x, train: bool, tap: Optional[T.Tap] = None):
    act = L.act_fn(self.act)
    in_ch = x.shape[-1]
    y = L.conv(self.inner, 3, in_ch=in_ch, stride=self.stride, init=self.init, name='conv1')(x)
    y = T.at(tap, 'bn1_in', y)
    y = T.at(tap, 'act1', act(L.batch_norm(train, 'bn1', self.bn_axis_name)(y)))
    y = L.conv(self.out, 3, in_ch=self.inner, init=self.init, name='conv2')(y)
    y = L.batch_norm(train, 'bn2', self.bn_axis_name)(T.at(tap, 'bn2_in', y))
    if self.shortcut == 'projection' and (self.stride != 1 or in_ch != self.out):
      sc = L.conv(self.out, 1, in_ch=in_ch, stride=self.stride, init=self.init,
                  name='downsample_conv')(x)
      sc = L.batch_norm(train, 'downsample_bn', self.bn_axis_name)(
          T.at(tap, 'downsample_bn_in', sc))
    else:
      sc = option_a_shortcut(x, self.out, self.stride)
    y = T.at(tap, 'act2', act(y + sc))
    return T.at(tap, 'out', y)


class ResNetCifar(nn.Module):
  """CIFAR ResNet (widths in the module docstring's format, as fields).

  ``get_model``'s ``init=`` kwarg is the field ``init_scheme`` (``init`` is ``Module.init``);
  ``act`` is 'relu' (default), 'relu6' or any callable; ``shortcut`` 'A' (default) or
  'projection'.
  ``__call__(x [B, H, W, 3], train, tap=None) -> logits [B, num_classes]``; sows the pooled features
  ``[B, stages[-1]]`` as ``intermediates/features``; ``tap``: see the module docstring.
  """
  num_classes: int
  stem: int
  stages: Tuple[int, ...]
  inner: Tuple[Tuple[int, ...], ...]
  init_scheme: str = 'kaiming_normal_fan_in'
  dense_init: Optional[str] = None
  classifier_as_conv: bool = False
  bn_axis_name: Optional[str] = None
  act: Any = 'relu'
  shortcut: str = 'A'

  @nn.compact
  def __call__(self, x, train: bool, tap: Optional[T.Tap] = None):
    init, dense_init = L.check_init(self.init_scheme, self.dense_init)
    act = L.act_fn(self.act)
    x = L.conv(self.stem, 3, in_ch=x.shape[-1], init=init, name='conv1')(x)
    x = L.batch_norm(train, 'bn1', self.bn_axis_name)(T.at(tap, 'bn1_in', x))
    x = T.at(tap, 'act1', act(x))
    for s, (out, inners) in enumerate(zip(self.stages, self.inner)):
      for b, inner in enumerate(inners):
        stride = 2 if (s > 0 and b == 0) else 1
        name = f'layer{s + 1}_{b}'
        x = BasicBlockA(inner, out, stride, init, self.bn_axis_name, self.act, self.shortcut,
                        name=name)(x, train, T.within(tap, name))
    feats = T.at(tap, 'features', L.global_avg_pool(x))
    self.sow('intermediates', 'features', feats)
    return L.classifier(feats, self.num_classes, as_conv=self.classifier_as_conv, init=dense_init)


def check_shortcut(name: str, shortcut: str) -> str:
  if shortcut not in SHORTCUTS:
    raise ValueError(f'{name}: unknown shortcut {shortcut!r}; allowed: {list(SHORTCUTS)}')
  return shortcut


def parse_widths(name: str, depth: Optional[int], widths, shortcut: str = 'A'):
  """Validates a width dict; returns ``(stem, stages, inner)`` as ints / tuples.

  Raises ValueError naming the bad entry (wrong keys, non-positive widths, block counts that do not
  give ``depth``, a block output narrower than its input, which option A cannot shortcut).
  """
  check_shortcut(name, shortcut)
  L.check_keys(name, widths, ('stem', 'stages', 'inner'))
  stem = L.check_pos_int(f'{name} widths["stem"]', widths['stem'])
  stages = L.check_int_list(f'{name} widths["stages"]', widths['stages'])
  inner_raw = widths['inner']
  if not isinstance(inner_raw, (list, tuple)) or len(inner_raw) != len(stages):
    raise ValueError(f'{name} widths["inner"] must be a list of {len(stages)} per-stage lists; '
                     f'got {inner_raw!r}')
  inner = tuple(L.check_int_list(f'{name} widths["inner"][{s}]', v)
                for s, v in enumerate(inner_raw))
  if any(len(v) == 0 for v in inner):
    raise ValueError(f'{name}: every stage needs at least one block; got inner={inner_raw!r}')
  nblocks = sum(len(v) for v in inner)
  if depth is not None and 2 + 2 * nblocks != depth:
    n = (depth - 2) // 6
    raise ValueError(f'{name} has depth {depth} = 2 + 2*#blocks, i.e. {(depth - 2) // 2} blocks '
                     f'({n} per stage for 3 stages); widths["inner"] gives {nblocks}')
  prev = stem
  for s, out in enumerate(stages):
    if out < prev and shortcut == 'A':
      raise ValueError(f'{name}: stage {s} width {out} < its input width {prev}; option-A '
                       f'shortcuts can only zero-pad channels')
    prev = out
  return stem, stages, inner


def uniform_widths(depth: int, stages=(16, 32, 64), stem: Optional[int] = None):
  """Width dict of an unpruned ResNet-``depth``: inner widths = stage widths, stem = stages[0]."""
  if depth not in DEPTHS and ((depth - 2) % 6 or depth < 8):
    raise ValueError(f'depth must be 6n+2 (n >= 1); got {depth}')
  n = (depth - 2) // (2 * len(stages))
  if 2 + 2 * n * len(stages) != depth:
    raise ValueError(f'depth {depth} does not split into {len(stages)} equal stages')
  return {'stem': int(stages[0] if stem is None else stem), 'stages': [int(c) for c in stages],
          'inner': [[int(c)] * n for c in stages]}


def layer_specs_of(name: str, depth: Optional[int], widths, input_hw, num_classes,
                   init: str = 'kaiming_normal_fan_in', dense_init: Optional[str] = None,
                   classifier_as_conv: bool = False, bn_axis_name: Optional[str] = None,
                   act: Any = 'relu', shortcut: str = 'A'):
  """Specs in forward order; the stem, every conv2 and every projection conv feed the residual
  stream."""
  L.check_init(init, dense_init)
  L.act_fn(act)
  stem, stages, inner = parse_widths(name, depth, widths, shortcut)
  b = SpecBuilder(input_hw)
  in_ch = stem
  b.conv(('conv1',), 3, stem, 3, role='stem', feeds_residual=True, bn=('bn1',))
  for s, (out, inners) in enumerate(zip(stages, inner)):
    for i, w in enumerate(inners):
      stride = 2 if (s > 0 and i == 0) else 1
      blk = f'layer{s + 1}_{i}'
      in_hw = b.hw
      b.conv((blk, 'conv1'), in_ch, w, 3, stride=stride, role='inner', bn=(blk, 'bn1'))
      b.conv((blk, 'conv2'), w, out, 3, role='block_out', feeds_residual=True, bn=(blk, 'bn2'))
      if shortcut == 'projection' and (stride != 1 or in_ch != out):
        b.conv((blk, 'downsample_conv'), in_ch, out, 1, stride=stride, role='shortcut',
               feeds_residual=True, bn=(blk, 'downsample_bn'), in_hw=in_hw)
      in_ch = out
  b.classifier(in_ch, num_classes, classifier_as_conv)
  return b.specs


def _register(name: str, depth: int, stages):
  def build(num_classes, widths, init='kaiming_normal_fan_in', **kwargs):
    stem, st, inner = parse_widths(name, depth, widths, kwargs.get('shortcut', 'A'))
    L.check_init(init, kwargs.get('dense_init'))
    L.act_fn(kwargs.get('act', 'relu'))
    return ResNetCifar(num_classes=num_classes, stem=stem, stages=st, inner=inner,
                       init_scheme=init, **kwargs)

  def specs(widths, input_hw, num_classes, **kwargs):
    return layer_specs_of(name, depth, widths, input_hw, num_classes, **kwargs)

  register(name, default_widths=lambda: uniform_widths(depth, stages), specs=specs)(build)


for _d in DEPTHS:
  _register(f'resnet{_d}', _d, (16, 32, 64))
# Lottery Jackpot's wide ResNet-32 (zyxxmu/lottery-jackpots ``models/``): stem 32, stages
# 32/64/128, 5 blocks each (not the 16/32/64 ResNet-32).
_register('resnet32_wide', 32, (32, 64, 128))
