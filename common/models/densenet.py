"""CIFAR DenseNet-40 (Huang et al. 2017, Sec. 3, "DenseNet" without bottleneck or compression) as
the FFSD code trains it.

Layout (SJLeo/FFSD ``models/densenet_cifar.py``: ``DenseNet``, ``DenseBasicBlock``,
``Transition``): 3x3 stem conv ``3 -> 2k`` (no bias, no BN); three dense blocks of
``n = (depth - 4) / 3`` layers ``x -> concat(x, conv3x3(relu(bn(x))))`` (each adds its growth
``k`` channels); between them a transition ``avg_pool2(conv1x1(relu(bn(x))))`` that keeps the
width (``compressionRate = 1``); then BN + ReLU, global average pool (the code's
``AvgPool2d(8)`` at 32x32 input), linear. No conv has a bias; dropout is 0 in the FFSD model, so it
is left out. DenseNet-40 with k = 12: widths 24 -> 168 -> 312 -> 456.

Init (``reset_parameters``): conv kernels N(0, 2 / (k k C_out)), BN (1, 0); the Linear keeps
PyTorch's default U(+-1/sqrt(fan_in)).

Width config: ``{'stem': int, 'growth': [[int] * n] * 3}``: the stem width and the growth of every
layer of every dense block (default ``24`` and twelve 12s per block). A transition's width is its
input's.

Registered name: ``densenet40`` (depth 40, k = 12).
Param paths: ``conv1, dense{d}/layer{i}/{bn1, conv1}, trans{t}/{bn1, conv1}, bn_last, fc``.
Tap sites, in forward order: per dense layer ``dense{d}/layer{i}/{bn1_in, act1, out}`` (``out``
the concatenation), ``dense{d}/out`` (the dense block's output: the code's ``dense1`` / ``dense2``
forward hooks), per transition ``trans{t}/{bn1_in, act1, out}`` (``out`` after the pool), then
``bn_last_in, act_last`` (the code's ``relu`` hook: FFSD's last feature) and ``features``.
"""
from __future__ import annotations

from typing import Optional, Tuple

import flax.linen as nn
import jax.numpy as jnp

from common.models import layers as L
from common.models import taps as T
from common.models.registry import register
from common.models.specs import LayerSpec, SpecBuilder

INIT = 'kaiming_normal_fan_out'   # reset_parameters: normal_(0, sqrt(2 / (k k C_out)))


def _conv(features: int, kernel: int, in_ch: int, name: str) -> nn.Conv:
  return L.conv(features, kernel, in_ch=in_ch, bias=False, init=INIT, name=name)


class DenseLayer(nn.Module):
  """``[B, H, W, C] -> [B, H, W, C + growth]``: ``concat(x, conv3x3(relu(bn1(x))))``."""
  growth: int
  bn_axis_name: Optional[str] = None

  @nn.compact
  def __call__(self, x, train: bool, tap: Optional[T.Tap] = None):
    y = L.batch_norm(train, 'bn1', self.bn_axis_name)(T.at(tap, 'bn1_in', x))
    y = T.at(tap, 'act1', nn.relu(y))
    y = _conv(self.growth, 3, x.shape[-1], 'conv1')(y)
    return T.at(tap, 'out', jnp.concatenate([x, y], axis=-1))


class DenseBlock(nn.Module):
  """``[B, H, W, C] -> [B, H, W, C + sum(growth)]``: the dense layers in sequence."""
  growth: Tuple[int, ...]
  bn_axis_name: Optional[str] = None

  @nn.compact
  def __call__(self, x, train: bool, tap: Optional[T.Tap] = None):
    for i, g in enumerate(self.growth):
      x = DenseLayer(g, self.bn_axis_name, name=f'layer{i}')(x, train, T.within(tap, f'layer{i}'))
    return T.at(tap, 'out', x)


class Transition(nn.Module):
  """``[B, H, W, C] -> [B, H/2, W/2, C]``: ``avg_pool2(conv1x1(relu(bn1(x))))``."""
  bn_axis_name: Optional[str] = None

  @nn.compact
  def __call__(self, x, train: bool, tap: Optional[T.Tap] = None):
    c = x.shape[-1]
    y = L.batch_norm(train, 'bn1', self.bn_axis_name)(T.at(tap, 'bn1_in', x))
    y = T.at(tap, 'act1', nn.relu(y))
    y = _conv(c, 1, c, 'conv1')(y)
    return T.at(tap, 'out', nn.avg_pool(y, (2, 2), strides=(2, 2)))


class DenseNet(nn.Module):
  """``__call__(x [B, H, W, 3], train, tap=None) -> logits [B, num_classes]`` (H, W divisible
  by 4)."""
  num_classes: int
  stem: int
  growth: Tuple[Tuple[int, ...], ...]
  bn_axis_name: Optional[str] = None

  @nn.compact
  def __call__(self, x, train: bool, tap: Optional[T.Tap] = None):
    x = _conv(self.stem, 3, x.shape[-1], 'conv1')(x)
    for d, g in enumerate(self.growth):
      name = f'dense{d + 1}'
      x = DenseBlock(g, self.bn_axis_name, name=name)(x, train, T.within(tap, name))
      if d + 1 < len(self.growth):
        name = f'trans{d + 1}'
        x = Transition(self.bn_axis_name, name=name)(x, train, T.within(tap, name))
    x = L.batch_norm(train, 'bn_last', self.bn_axis_name)(T.at(tap, 'bn_last_in', x))
    x = T.at(tap, 'act_last', nn.relu(x))
    feats = T.at(tap, 'features', L.global_avg_pool(x))
    self.sow('intermediates', 'features', feats)
    return L.dense(self.num_classes, in_ch=feats.shape[-1], init='pytorch', name='fc')(feats)


def parse_widths(name: str, widths) -> Tuple[int, Tuple[Tuple[int, ...], ...]]:
  """``(stem, growth per block)`` of a width config (module docstring), validated."""
  L.check_keys(name, widths, ('stem', 'growth'))
  stem = L.check_pos_int(f'{name} widths["stem"]', widths['stem'])
  g = widths['growth']
  if not isinstance(g, (list, tuple)) or len(g) != 3:
    raise ValueError(f'{name} widths["growth"] must be a list of 3 dense blocks (lists of '
                     f'positive ints); got {g!r}')
  return stem, tuple(L.check_int_list(f'{name} widths["growth"][{d}]', b) for d, b in
                     enumerate(g))


def _bn_spec(path, ch, hw, role):
  return LayerSpec(tuple(path), 'bn', ch, ch, (1, 1), 1, 1, True, hw, hw, None, False, False,
                   role)


def layer_specs_of(name: str, widths, input_hw, num_classes, bn_axis_name=None):
  """Specs in forward order (every pre-activation BN before its conv)."""
  stem, growth = parse_widths(name, widths)
  b = SpecBuilder(input_hw)
  b.conv(('conv1',), 3, stem, 3, role='stem')
  ch = stem
  for d, g in enumerate(growth):
    for i, k in enumerate(g):
      p = (f'dense{d + 1}', f'layer{i}')
      b.specs.append(_bn_spec(p + ('bn1',), ch, b.hw, 'inner'))
      b.conv(p + ('conv1',), ch, k, 3, role='inner')
      ch += k
    if d + 1 < len(growth):
      p = (f'trans{d + 1}',)
      b.specs.append(_bn_spec(p + ('bn1',), ch, b.hw, 'block_out'))
      b.conv(p + ('conv1',), ch, ch, 1, role='block_out')
      b.pool(2, 2)
  b.specs.append(_bn_spec(('bn_last',), ch, b.hw, 'block_out'))
  b.classifier(ch, num_classes, False)
  return b.specs


def _register(name: str, depth: int, k: int):
  n = (depth - 4) // 3

  def build(num_classes, widths, **kwargs):
    stem, growth = parse_widths(name, widths)
    return DenseNet(num_classes=num_classes, stem=stem, growth=growth, **kwargs)

  def specs(widths, input_hw, num_classes, **kwargs):
    return layer_specs_of(name, widths, input_hw, num_classes, **kwargs)

  register(name, default_widths=lambda: {'stem': 2 * k, 'growth': [[k] * n for _ in range(3)]},
           specs=specs)(build)


_register('densenet40', 40, 12)
