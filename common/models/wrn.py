"""Wide ResNets for CIFAR (Zagoruyko & Komodakis 2016) as the FFSD code trains them.

Layout (SJLeo/FFSD ``models/wideresnet_cifar.py``: ``Wide_ResNet``, ``wide_basic``): 3x3 stem conv
16 (with bias, no BN); 3 stages of ``n = (depth - 4) / 6`` pre-activation blocks
``conv2(relu(bn2(conv1(relu(bn1(x)))))) + shortcut(x)`` with widths ``16k, 32k, 64k``; the stride
(2 in stages 2 and 3) is on **conv2**; the shortcut is a 1x1 conv with bias where the stride or the
width changes, else the identity; then BN + ReLU, global average pool, linear. Every conv has a
bias. Dropout is 0 in every FFSD model (``wrn_16_2``, ``wrn_40_2``), so it is left out.

Quirk kept: the final BatchNorm is built with ``momentum=0.9`` in PyTorch (running = 0.1 old +
0.9 batch), i.e. Flax momentum 0.1; every other BN has PyTorch's 0.1 (Flax 0.9).

Init (``reset_parameters``): conv kernels N(0, 2 / (k k C_out)), BN (1, 0); conv biases and the
Linear keep PyTorch's defaults (U(+-1/sqrt(fan_in))). The convs take the zoo's CPU convolution
kernels like every ``common.models.layers.conv`` (``COMPRESS_JAX_CPU_CONV``).

Width config: ``{'stem': int, 'stages': [int, int, int]}`` (defaults 16 and ``[16k, 32k, 64k]``).
Registered names: ``wrn_16_2``, ``wrn_40_2`` (and ``wrn_16_1``, ``wrn_40_1`` for tiny runs).
Param paths: ``conv1, layer{s}_{b}/{bn1, conv1, bn2, conv2[, shortcut_conv]}, bn_last, fc``.
Tap sites, in forward order: per block ``layer{s}_{b}/{bn1_in, act1, bn2_in, act2, out}`` (``out``
= the residual sum: the block output the code's ``layer1`` / ``layer2`` hooks see), then
``bn_last_in, act_last`` (the code's ``relu1`` hook: FFSD's last feature) and ``features``.
"""
from __future__ import annotations

from typing import Optional, Tuple

import flax.linen as nn

from common.models import layers as L
from common.models import taps as T
from common.models.registry import register
from common.models.specs import LayerSpec, SpecBuilder

FINAL_BN_MOMENTUM = 0.1   # torch BatchNorm2d(momentum=0.9) in Wide_ResNet.__init__


def _conv(features: int, kernel: int, in_ch: int, stride: int, name: str) -> nn.Conv:
  p = kernel // 2
  return nn.Conv(features, (kernel, kernel), strides=(stride, stride), padding=((p, p), (p, p)),
                 use_bias=True, kernel_init=L.kernel_init('kaiming_normal_fan_out'),
                 bias_init=L.bias_init('pytorch', in_ch * kernel * kernel),
                 conv_general_dilated=L.cpu_conv_fn(), name=name)


class WideBasic(nn.Module):
  """Pre-activation wide block ``[B, H, W, C_in] -> [B, H/s, W/s, planes]``."""
  planes: int
  stride: int
  bn_axis_name: Optional[str] = None

  @nn.compact
  def __call__(self, x, train: bool, tap: Optional[T.Tap] = None):
    in_ch = x.shape[-1]
    y = L.batch_norm(train, 'bn1', self.bn_axis_name)(T.at(tap, 'bn1_in', x))
    y = T.at(tap, 'act1', nn.relu(y))
    y = _conv(self.planes, 3, in_ch, 1, 'conv1')(y)
    y = L.batch_norm(train, 'bn2', self.bn_axis_name)(T.at(tap, 'bn2_in', y))
    y = T.at(tap, 'act2', nn.relu(y))
    y = _conv(self.planes, 3, self.planes, self.stride, 'conv2')(y)
    sc = x
    if self.stride != 1 or in_ch != self.planes:
      sc = _conv(self.planes, 1, in_ch, self.stride, 'shortcut_conv')(x)
    return T.at(tap, 'out', y + sc)


class WideResNet(nn.Module):
  """``__call__(x [B, 32, 32, 3], train, tap=None) -> logits [B, num_classes]``."""
  num_classes: int
  stem: int
  stages: Tuple[int, ...]
  blocks: int
  bn_axis_name: Optional[str] = None

  @nn.compact
  def __call__(self, x, train: bool, tap: Optional[T.Tap] = None):
    x = _conv(self.stem, 3, x.shape[-1], 1, 'conv1')(x)
    for s, planes in enumerate(self.stages):
      for b in range(self.blocks):
        stride = 2 if (s > 0 and b == 0) else 1
        name = f'layer{s + 1}_{b}'
        x = WideBasic(planes, stride, self.bn_axis_name, name=name)(x, train, T.within(tap, name))
    x = nn.BatchNorm(use_running_average=not train, momentum=FINAL_BN_MOMENTUM,
                     epsilon=L.BN_EPS, axis_name=self.bn_axis_name,
                     name='bn_last')(T.at(tap, 'bn_last_in', x))
    x = T.at(tap, 'act_last', nn.relu(x))
    feats = T.at(tap, 'features', L.global_avg_pool(x))
    self.sow('intermediates', 'features', feats)
    return L.dense(self.num_classes, in_ch=feats.shape[-1], init='pytorch', name='fc')(feats)


def _parse(name: str, widths):
  L.check_keys(name, widths, ('stem', 'stages'))
  stem = L.check_pos_int(f'{name} widths["stem"]', widths['stem'])
  stages = L.check_int_list(f'{name} widths["stages"]', widths['stages'], 3)
  return stem, stages


def _bn_spec(path, ch, hw, role):
  return LayerSpec(tuple(path), 'bn', ch, ch, (1, 1), 1, 1, True, hw, hw, None, False, False,
                   role)


def layer_specs_of(name: str, depth: int, widths, input_hw, num_classes, bn_axis_name=None):
  """Specs in forward order (pre-activation BNs before their convs)."""
  stem, stages = _parse(name, widths)
  n = (depth - 4) // 6
  b = SpecBuilder(input_hw)
  b.conv(('conv1',), 3, stem, 3, bias=True, role='stem', feeds_residual=True)
  in_ch = stem
  for s, planes in enumerate(stages):
    for i in range(n):
      stride = 2 if (s > 0 and i == 0) else 1
      blk = f'layer{s + 1}_{i}'
      in_hw = b.hw
      b.specs.append(_bn_spec((blk, 'bn1'), in_ch, in_hw, 'inner'))
      b.conv((blk, 'conv1'), in_ch, planes, 3, bias=True, role='inner')
      b.specs.append(_bn_spec((blk, 'bn2'), planes, b.hw, 'inner'))
      b.conv((blk, 'conv2'), planes, planes, 3, stride=stride, bias=True, role='block_out',
             feeds_residual=True)
      if stride != 1 or in_ch != planes:
        b.conv((blk, 'shortcut_conv'), in_ch, planes, 1, stride=stride, bias=True,
               role='shortcut', feeds_residual=True, in_hw=in_hw)
      in_ch = planes
  b.specs.append(_bn_spec(('bn_last',), in_ch, b.hw, 'block_out'))
  b.classifier(in_ch, num_classes, False)
  return b.specs


def _register(name: str, depth: int, k: int):
  if (depth - 4) % 6:
    raise ValueError(f'WRN depth must be 6n+4; got {depth}')

  def build(num_classes, widths, **kwargs):
    stem, stages = _parse(name, widths)
    return WideResNet(num_classes=num_classes, stem=stem, stages=stages,
                      blocks=(depth - 4) // 6, **kwargs)

  def specs(widths, input_hw, num_classes, **kwargs):
    return layer_specs_of(name, depth, widths, input_hw, num_classes, **kwargs)

  register(name, default_widths=lambda: {'stem': 16, 'stages': [16 * k, 32 * k, 64 * k]},
           specs=specs)(build)


for _d, _k in ((16, 1), (16, 2), (40, 1), (40, 2)):
  _register(f'wrn_{_d}_{_k}', _d, _k)
