"""FFSD's training-only networks as linen modules, NHWC (SJLeo/FFSD ``models/``).

* :class:`FusionModule` (``models/fusion_module.py: FusionModule``): the channel-concatenation of
  the ``m`` common students' last feature maps ``[B, s, s, m C]`` -> depthwise 3x3 conv -> BN ->
  ReLU -> 1x1 conv to ``C`` -> BN -> ReLU (the *fused feature map*, the ``relu1_1`` hook) ->
  average pool -> linear classifier.
* :class:`TransFusion` (``models/fusion_module.py: TransFusionModule``): the leader's extra head
  ``[B, s, s, C] -> [B, s, s, m C]``: depthwise 3x3 -> BN -> ReLU -> 1x1 conv to ``m C`` -> BN ->
  ReLU. Trained with the leader, dropped at deployment.
* :class:`SelfDistillationDecoder` (``models/self_distillation.py: SelfDistillationModel`` and
  ``DIYSelfDistillationModel``): stacked ``ConvTranspose2d(k 3, stride 2, padding 1,
  output_padding 1)`` -> BN -> ReLU blocks, each doubling ``H, W``; returns every block's output,
  shallowest first (the official list is reversed so that output ``k`` aligns with tap ``k``).

Initialisation follows the official modules: conv kernels ``N(0, 2 / (k k C_out))`` (the
``FusionModule`` loop; ``kaiming_normal_fan_out``), BN (1, 0), the classifier PyTorch's ``Linear``
default. The transposed convs keep PyTorch's default, kaiming-uniform(a = sqrt 5) over
``fan_in = C_out k k`` (``ConvTranspose2d`` weights are ``[C_in, C_out, k, k]`` and PyTorch takes
``fan_in`` from dim 1). The ``TransFusionModule`` is a child of the leader, whose
``reset_parameters`` loop gives its convs the same ``N(0, 2 / (k k C_out))``.
"""
from __future__ import annotations

from typing import Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from common.models import layers as L

FUSION_INIT = 'kaiming_normal_fan_out'


class FusionModule(nn.Module):
  """``[B, s, s, m C] -> (logits [B, K], fused [B, s, s, C])``; ``channels`` = C."""
  channels: int
  num_classes: int
  bn_axis_name: Optional[str] = None

  @nn.compact
  def __call__(self, x, train: bool):
    mc = x.shape[-1]
    y = L.conv(mc, 3, in_ch=mc, groups=mc, init=FUSION_INIT, name='conv1')(x)
    y = nn.relu(L.batch_norm(train, 'bn1', self.bn_axis_name)(y))
    y = L.conv(self.channels, 1, in_ch=mc, init=FUSION_INIT, name='conv1_1')(y)
    fused = nn.relu(L.batch_norm(train, 'bn1_1', self.bn_axis_name)(y))
    logits = L.dense(self.num_classes, in_ch=self.channels, init='pytorch',
                     name='fc2')(L.global_avg_pool(fused))
    return logits, fused


class TransFusion(nn.Module):
  """The leader's trans-fusion head ``[B, s, s, C] -> [B, s, s, m C]``; ``out_channels`` = m C."""
  out_channels: int
  bn_axis_name: Optional[str] = None

  @nn.compact
  def __call__(self, x, train: bool):
    c = x.shape[-1]
    y = L.conv(c, 3, in_ch=c, groups=c, init=FUSION_INIT, name='conv1')(x)
    y = nn.relu(L.batch_norm(train, 'bn1', self.bn_axis_name)(y))
    y = L.conv(self.out_channels, 1, in_ch=c, init=FUSION_INIT, name='conv1_1')(y)
    return nn.relu(L.batch_norm(train, 'bn1_1', self.bn_axis_name)(y))


def _transpose_init(out_ch: int, k: int = 3):
  bound = 1.0 / jnp.sqrt(out_ch * k * k)   # kaiming_uniform(a=sqrt 5) with PyTorch's fan_in

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)
  return init


class SelfDistillationDecoder(nn.Module):
  """Deep-to-shallow decoder ``[B, s, s, C_0] -> [[B, 2^n s, 2^n s, C_n], ..., [B, 2s, 2s, C_1]]``.

  ``channels`` = ``(C_1, ..., C_n)``, the output widths of the ``n`` blocks (the official
  ``SelfDistillationModel(C, n)`` halves: ``C/2, C/4, ...``; ``DIYSelfDistillationModel`` takes
  them explicitly: DenseNet 312, 168; GoogLeNet 832, 480). Block ``i`` is
  ``ConvTranspose(3, stride 2)`` with PyTorch's ``padding=1, output_padding=1``: on the
  stride-dilated input that is padding ``(k - 1 - p, k - 1 - p + op) = (1, 2)``, so ``H -> 2 H``.
  Outputs are returned shallowest (largest) first.
  """
  channels: Sequence[int]
  bn_axis_name: Optional[str] = None

  @nn.compact
  def __call__(self, x, train: bool):
    outs = []
    for i, c in enumerate(self.channels):
      x = nn.ConvTranspose(int(c), (3, 3), strides=(2, 2), padding=((1, 2), (1, 2)),
                           use_bias=False, kernel_init=_transpose_init(int(c)),
                           name=f'layer{i}_convtranspose')(x)
      x = nn.relu(L.batch_norm(train, f'layer{i}_norm', self.bn_axis_name)(x))
      outs.append(x)
    return outs[::-1]


def halving_channels(c: int, n: int):
  """``SelfDistillationModel``'s widths ``(int(C/2), int(C/4), ...)``, ``n`` of them."""
  out = []
  for _ in range(n):
    c = int(c / 2)
    out.append(c)
  return tuple(out)
