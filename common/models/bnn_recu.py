"""ReCU's binary networks (spec ``binary-recu-siman.md`` §1.4), as the official z-hXu/ReCU code
builds them (newest snapshot; the first commit's CIFAR ResNet-18 had a binarized 1x1 shortcut).

Registered names (``common.models.get_model``) and their official counterparts:

* ``recu_resnet20`` (``cifar/models_cifar/resnet.py: resnet20_1w1a``): FP stem conv3x3 -> BN ->
  Hardtanh; Bi-Real block with **one shortcut per binary conv**,
  ``h = hardtanh(bn1(bconv1(x)) + sc(x)); y = hardtanh(bn2(bconv2(h)) + h)``; the downsampling
  shortcut is parameter-free: AvgPool 2x2 then ``planes // 4`` zero channels on each side; head
  global average pool -> BatchNorm1d -> FP Linear. kaiming_normal (fan_in) on every conv (binary
  ones too), Linear PyTorch default. Widths ``[16, 32, 64]``, blocks ``[3, 3, 3]``.
* ``recu_resnet18_cifar`` (``resnet2.py: resnet18_1w1a``): stem conv3x3 -> BN (**no
  activation**); *standard* block, one shortcut per block,
  ``y = hardtanh(bn2(bconv2(hardtanh(bn1(bconv1(x))))) + sc(x))``, same AvgPool + zero-pad
  shortcut; head avg_pool 4 -> BatchNorm1d -> Linear. Widths ``[64, 128, 256, 512]``, [2,2,2,2].
* ``recu_vgg_small`` (``vgg.py: vgg_small_1w1a``): FP conv0 -> BN -> Hardtanh; bconv1 -> MaxPool
  -> BN -> Hardtanh; bconv2 -> BN -> Hardtanh; bconv3 -> MaxPool -> ...; bconv5 -> MaxPool -> BN ->
  Hardtanh; flatten (C*H*W order) -> FP Linear; no BatchNorm1d; pool *before* BN. Convs
  N(0, 2/(9 C_out)), BN (1, 0), Linear N(0, 0.01) with zero bias. Widths: the 6 conv widths.
* ``recu_resnet18`` / ``recu_resnet34`` (``imagenet/models_imagenet/resnet.py``): stem 7x7/2 ->
  BN -> Hardtanh -> MaxPool 3/2; Bi-Real block; downsample = **FP** 1x1/2 conv + BN
  (``downsample_0`` / ``downsample_1``); head global avg pool (AvgPool 7 at 224) -> BatchNorm1d ->
  FC. kaiming_normal on every conv; **every BatchNorm2d gamma = 1e-8** (BN1d keeps 1; spec §4.6).
* ``recu_resnet18_two_stage`` / ``recu_resnet34_two_stage`` (``imagenet_two-stage/``,
  ReActNet-like): blocks [4,4,4,4] / [6,8,12,6] with **one** binary 3x3 conv each,
  ``out = bn(bconv(x + move0)) + res; out = nonlinear(out + move1) + move2`` (PReLU per channel,
  init 0.25; ``move*`` learnable per-channel biases, init 0); ``res`` = x or AvgPool 2/2 -> FP 1x1
  conv -> BN (``downsample_1`` / ``downsample_2``); stem conv 7x7/2 -> BN -> MaxPool (no
  activation); head avg pool -> FC (no BN1d). PyTorch default init everywhere.

Parameter paths mirror the PyTorch module names (``layer1_0/conv1`` for ``layer1.0.conv1``),
because ReCU's ImageNet weight-decay groups are defined on those names (spec §1.5;
``recu.train``).

Options of every builder: ``binary`` (default True; False builds the *same* network in full
precision: plain convs without input binarizer or alpha, the ceiling the quick experiment and
``recu.bench`` compare against), ``act`` (activation binarizer of ``common.binarize``: 'recu'
default | 'plain' | 'siman'), ``blocks`` (per-stage block counts of the ResNets).

The binary convs are :class:`common.binarize.BinaryConv` with ``alpha`` U[0, 1) (``torch.rand``)
and ``weight_binarizer=None``: ReCU's weight binarizer depends on the per-epoch tau, so the method
binarizes their kernels on the parameter tree (``recu.recu.binarize_weight``); they are the modules
holding ``kernel`` + ``alpha`` (``common.binarize.binary_kernel_paths``). The stem conv and the
classifier are full precision. These models register no ``layer_specs``.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import flax.linen as nn
import jax.numpy as jnp

from common import binarize
from common.models import layers as L
from common.models.registry import register

ACTS = ('recu', 'plain', 'siman')
_KN_FAN_IN = L.kernel_init('kaiming_normal_fan_in')     # torch.nn.init.kaiming_normal_
_KN_FAN_OUT = L.kernel_init('kaiming_normal_fan_out')   # VGG: N(0, sqrt(2 / (k*k*C_out)))
_PYTORCH = L.kernel_init('pytorch')                     # default kaiming_uniform(a=sqrt 5)


def hardtanh(x):
  """``nn.Hardtanh``: clip to [-1, 1]."""
  return jnp.clip(x, -1.0, 1.0)


def _check_act(act: str) -> str:
  if act not in ACTS:
    raise ValueError(f'unknown act {act!r}; allowed: {list(ACTS)}')
  return act


def bconv(features: int, kernel: int, stride: int, *, binary: bool, act: str,
          kernel_init: Callable, name: str) -> nn.Module:
  """A ``BinarizeConv2d`` (binary) or the same conv in full precision (no binarizer, no alpha).

  Both are :class:`common.binarize.BinaryConv` (PyTorch padding ``k // 2``, no bias), so the FP
  control has the identical layout minus alpha.
  """
  return binarize.BinaryConv(
      features, kernel, stride,
      act_binarizer=binarize.activation_binarizer(act) if binary else None,
      weight_binarizer=None, alpha='uniform' if binary else None, kernel_init=kernel_init,
      name=name)


def bn(train: bool, name: str, gamma: float = 1.0) -> nn.BatchNorm:
  """BatchNorm with PyTorch defaults (momentum 0.1, eps 1e-5) and scale init ``gamma``."""
  return nn.BatchNorm(use_running_average=not train, momentum=L.BN_MOMENTUM, epsilon=L.BN_EPS,
                      scale_init=nn.initializers.constant(gamma), name=name)


def avgpool_pad_shortcut(x, planes: int, stride: int):
  """ReCU's parameter-free shortcut: AvgPool 2x2/2, then ``planes // 4`` zero channels per side.

  ``[B, H, W, C] -> [B, H/2, W/2, planes]`` (spec §1.4; ``LambdaLayer(F.pad(x, (.., pad, pad)))``).
  The official code applies the AvgPool whenever the block changes shape; it needs
  ``planes == 2 * C`` for the padding to give ``planes`` channels, which a ValueError enforces.
  """
  c = x.shape[-1]
  pad = planes // 4
  if c + 2 * pad != planes:
    raise ValueError(f'the AvgPool + zero-pad shortcut needs planes == 2 * in_planes (planes//4 '
                     f'zeros per side); got in_planes={c}, planes={planes}')
  x = nn.avg_pool(x, (2, 2), strides=(2, 2))
  del stride   # AvgPool2d((2, 2)) is applied whatever the stride (official LambdaLayer)
  return jnp.pad(x, ((0, 0), (0, 0), (0, 0), (pad, pad)))


class BiRealBlock(nn.Module):
  """Bi-Real block, one shortcut per binary conv (ReCU ResNet-20 CIFAR, ResNet-18/34 ImageNet).

  ``h = hardtanh(bn1(conv1(x)) + sc(x)); y = hardtanh(bn2(conv2(h)) + h)``.
  ``shortcut``: 'avgpool_pad' (CIFAR) or 'fp_conv' (ImageNet ``downsample_0/1``), used when the
  shape changes. ``[B, H, W, C_in] -> [B, H/stride, W/stride, planes]``.
  """
  planes: int
  stride: int
  shortcut: str
  binary: bool
  act: str
  kernel_init: Callable
  bn_gamma: float = 1.0

  @nn.compact
  def __call__(self, x, train: bool):
    in_ch = x.shape[-1]
    h = bconv(self.planes, 3, self.stride, binary=self.binary, act=self.act,
              kernel_init=self.kernel_init, name='conv1')(x, train)
    h = bn(train, 'bn1', self.bn_gamma)(h)
    if self.stride != 1 or in_ch != self.planes:
      if self.shortcut == 'avgpool_pad':
        sc = avgpool_pad_shortcut(x, self.planes, self.stride)
      elif self.shortcut == 'fp_conv':
        sc = nn.Conv(self.planes, (1, 1), strides=(self.stride, self.stride),
                     padding=((0, 0), (0, 0)), use_bias=False, kernel_init=self.kernel_init,
                     name='downsample_0')(x)
        sc = bn(train, 'downsample_1', self.bn_gamma)(sc)
      else:
        raise ValueError(f"unknown shortcut {self.shortcut!r}; allowed: ['avgpool_pad', "
                         "'fp_conv']")
    else:
      sc = x
    h = hardtanh(h + sc)
    y = bconv(self.planes, 3, 1, binary=self.binary, act=self.act, kernel_init=self.kernel_init,
              name='conv2')(h, train)
    return hardtanh(bn(train, 'bn2', self.bn_gamma)(y) + h)


class StandardBlock(nn.Module):
  """Standard block, one shortcut per block (ReCU CIFAR ResNet-18, ``resnet2.py``).

  ``y = hardtanh(bn2(conv2(hardtanh(bn1(conv1(x))))) + sc(x))``, sc = AvgPool + zero-pad.
  """
  planes: int
  stride: int
  binary: bool
  act: str
  kernel_init: Callable

  @nn.compact
  def __call__(self, x, train: bool):
    h = bconv(self.planes, 3, self.stride, binary=self.binary, act=self.act,
              kernel_init=self.kernel_init, name='conv1')(x, train)
    h = hardtanh(bn(train, 'bn1')(h))
    y = bconv(self.planes, 3, 1, binary=self.binary, act=self.act, kernel_init=self.kernel_init,
              name='conv2')(h, train)
    y = bn(train, 'bn2')(y)
    if self.stride != 1 or x.shape[-1] != self.planes:
      sc = avgpool_pad_shortcut(x, self.planes, self.stride)
    else:
      sc = x
    return hardtanh(y + sc)


def _stages(name: str, widths, blocks, n: int):
  w = L.check_int_list(f'{name} widths', list(widths), n)
  b = L.check_int_list(f'{name} blocks', list(blocks), n)
  return w, b


def _run_stages(x, train: bool, widths, blocks, block):
  """The official ``_make_layer`` loop: stage s has ``blocks[s]`` blocks of ``widths[s]``
  channels, stride 2 at the first block of every stage after the first; ``block(planes, stride,
  name)`` builds one (names ``layer{s+1}_{b}``, the params-tree keys)."""
  for s, (planes, n) in enumerate(zip(widths, blocks)):
    for b in range(n):
      x = block(planes, 2 if (s > 0 and b == 0) else 1, f'layer{s + 1}_{b}')(x, train)
  return x


def _pooled_head(module: nn.Module, x, train: bool, num_classes: int, fc_name: str,
                 bn_name: Optional[str]):
  """Global average pool (features sown), optional BatchNorm1d, the classifier."""
  feats = L.global_avg_pool(x)
  module.sow('intermediates', 'features', feats)
  if bn_name is not None:
    feats = bn(train, bn_name)(feats)
  return L.dense(num_classes, in_ch=feats.shape[-1], init='pytorch', name=fc_name)(feats)


class ResNet20(nn.Module):
  """ReCU CIFAR ResNet-20: ``[B, 32, 32, 3] -> [B, num_classes]``; stem width = widths[0]."""
  num_classes: int
  widths: Sequence[int] = (16, 32, 64)
  blocks: Sequence[int] = (3, 3, 3)
  binary: bool = True
  act: str = 'recu'

  @nn.compact
  def __call__(self, x, train: bool):
    _check_act(self.act)
    w, nb = _stages('recu_resnet20', self.widths, self.blocks, 3)
    x = nn.Conv(w[0], (3, 3), padding=((1, 1), (1, 1)), use_bias=False, kernel_init=_KN_FAN_IN,
                name='conv1')(x)
    x = hardtanh(bn(train, 'bn1')(x))
    x = _run_stages(x, train, w, nb, lambda planes, stride, name: BiRealBlock(
        planes, stride, 'avgpool_pad', self.binary, self.act, _KN_FAN_IN, name=name))
    return _pooled_head(self, x, train, self.num_classes, 'linear', 'bn2')  # + BatchNorm1d


class ResNet18Cifar(nn.Module):
  """ReCU CIFAR ResNet-18 (``resnet2.py``): ``[B, 32, 32, 3] -> [B, num_classes]``."""
  num_classes: int
  widths: Sequence[int] = (64, 128, 256, 512)
  blocks: Sequence[int] = (2, 2, 2, 2)
  binary: bool = True
  act: str = 'recu'

  @nn.compact
  def __call__(self, x, train: bool):
    _check_act(self.act)
    w, nb = _stages('recu_resnet18_cifar', self.widths, self.blocks, 4)
    x = nn.Conv(w[0], (3, 3), padding=((1, 1), (1, 1)), use_bias=False, kernel_init=_KN_FAN_IN,
                name='conv1')(x)
    x = bn(train, 'bn1')(x)                               # no activation after the stem
    x = _run_stages(x, train, w, nb, lambda planes, stride, name: StandardBlock(
        planes, stride, self.binary, self.act, _KN_FAN_IN, name=name))
    # avg_pool2d(4) on the 4x4 map, BatchNorm1d
    return _pooled_head(self, x, train, self.num_classes, 'linear', 'bn2')


class VGGSmall(nn.Module):
  """ReCU VGG-Small: ``[B, 32, 32, 3] -> [B, num_classes]``; widths = the 6 conv widths."""
  num_classes: int
  widths: Sequence[int] = (128, 128, 256, 256, 512, 512)
  binary: bool = True
  act: str = 'recu'

  @nn.compact
  def __call__(self, x, train: bool):
    _check_act(self.act)
    w = L.check_int_list('recu_vgg_small widths', list(self.widths), 6)
    x = nn.Conv(w[0], (3, 3), padding=((1, 1), (1, 1)), use_bias=False, kernel_init=_KN_FAN_OUT,
                name='conv0')(x)
    x = hardtanh(bn(train, 'bn0')(x))
    for i in range(1, 6):
      x = bconv(w[i], 3, 1, binary=self.binary, act=self.act, kernel_init=_KN_FAN_OUT,
                name=f'conv{i}')(x, train)
      if i % 2 == 1:                                      # pooling *before* BN (conv1, 3, 5)
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
      x = hardtanh(bn(train, f'bn{i}')(x))
    # x.view(B, -1) flattens NCHW: keep the official C*H*W order of the FC input.
    feats = jnp.transpose(x, (0, 3, 1, 2)).reshape(x.shape[0], -1)
    self.sow('intermediates', 'features', feats)
    return L.dense(self.num_classes, in_ch=feats.shape[-1], init='normal_0.01', name='fc')(feats)


class ResNetImageNet(nn.Module):
  """ReCU ImageNet ResNet-18/34: ``[B, 224, 224, 3] -> [B, num_classes]``; stem width 64 =
  widths[0]. Every BatchNorm2d starts at gamma 1e-8 (shortcut-dominated start, spec §4.6)."""
  num_classes: int
  widths: Sequence[int] = (64, 128, 256, 512)
  blocks: Sequence[int] = (2, 2, 2, 2)
  binary: bool = True
  act: str = 'recu'

  @nn.compact
  def __call__(self, x, train: bool):
    _check_act(self.act)
    w, nb = _stages('recu_resnet', self.widths, self.blocks, 4)
    x = nn.Conv(w[0], (7, 7), strides=(2, 2), padding=((3, 3), (3, 3)), use_bias=False,
                kernel_init=_KN_FAN_IN, name='conv1')(x)
    x = hardtanh(bn(train, 'bn1', 1e-8)(x))
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    x = _run_stages(x, train, w, nb, lambda planes, stride, name: BiRealBlock(
        planes, stride, 'fp_conv', self.binary, self.act, _KN_FAN_IN, bn_gamma=1e-8, name=name))
    # AvgPool2d(7) on the 7x7 map; the BatchNorm1d keeps gamma = 1
    return _pooled_head(self, x, train, self.num_classes, 'fc', 'bn2')


class LearnableBias(nn.Module):
  """``LearnableBias``: per-channel bias ``[C]`` added to the input, init 0."""

  @nn.compact
  def __call__(self, x):
    return x + self.param('bias', nn.initializers.zeros, (x.shape[-1],))


class PReLU(nn.Module):
  """``nn.PReLU(C)``: one slope per channel (last axis), init 0.25; param named as PyTorch's."""

  @nn.compact
  def __call__(self, x):
    a = self.param('weight', nn.initializers.constant(0.25), (x.shape[-1],))
    return jnp.where(x >= 0, x, a * x)


class TwoStageBlock(nn.Module):
  """``imagenet_two-stage`` BasicBlock: one binary 3x3 conv (spec §1.4).

  ``out = bn(conv(x + move0)) + res; out = nonlinear(out + move1) + move2``; ``res`` = x, or
  AvgPool(2, stride) -> FP 1x1 conv -> BN when the block changes shape.
  """
  planes: int
  stride: int
  binary: bool
  act: str

  @nn.compact
  def __call__(self, x, train: bool):
    in_ch = x.shape[-1]
    out = LearnableBias(name='move0')(x)
    out = bconv(self.planes, 3, self.stride, binary=self.binary, act=self.act,
                kernel_init=_PYTORCH, name='conv')(out, train)
    out = bn(train, 'bn')(out)
    if self.stride != 1 or in_ch != self.planes:
      res = nn.avg_pool(x, (2, 2), strides=(self.stride, self.stride))
      res = L.conv(self.planes, 1, in_ch=in_ch, init='pytorch', name='downsample_1')(res)
      res = bn(train, 'downsample_2')(res)
    else:
      res = x
    out = LearnableBias(name='move1')(out + res)
    out = PReLU(name='nonlinear')(out)
    return LearnableBias(name='move2')(out)


class ResNetTwoStage(nn.Module):
  """ReCU two-stage (ReActNet-like) ResNet: ``[B, 224, 224, 3] -> [B, num_classes]``."""
  num_classes: int
  widths: Sequence[int] = (64, 128, 256, 512)
  blocks: Sequence[int] = (4, 4, 4, 4)
  binary: bool = True
  act: str = 'recu'

  @nn.compact
  def __call__(self, x, train: bool):
    _check_act(self.act)
    w, nb = _stages('recu two-stage', self.widths, self.blocks, 4)
    x = L.conv(w[0], 7, in_ch=x.shape[-1], stride=2, init='pytorch', name='conv')(x)
    x = bn(train, 'bn')(x)                                # no activation
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    x = _run_stages(x, train, w, nb, lambda planes, stride, name: TwoStageBlock(
        planes, stride, self.binary, self.act, name=name))
    return _pooled_head(self, x, train, self.num_classes, 'fc', None)


def _builder(cls, default_blocks: Optional[Sequence[int]]):
  def build(num_classes, widths, blocks=None, binary=True, act='recu'):
    _check_act(act)
    kw = dict(num_classes=int(num_classes), widths=tuple(widths), binary=bool(binary), act=act)
    if default_blocks is not None:
      kw['blocks'] = tuple(blocks if blocks is not None else default_blocks)
    elif blocks is not None:
      raise ValueError(f'{cls.__name__} takes no blocks option; got blocks={blocks!r}')
    return cls(**kw)
  build.__doc__ = f'Builds :class:`{cls.__name__}` (see the module docstring for the options).'
  return build


register('recu_resnet20', default_widths=[16, 32, 64])(_builder(ResNet20, (3, 3, 3)))
register('recu_resnet18_cifar', default_widths=[64, 128, 256, 512])(
    _builder(ResNet18Cifar, (2, 2, 2, 2)))
register('recu_vgg_small', default_widths=[128, 128, 256, 256, 512, 512])(
    _builder(VGGSmall, None))
register('recu_resnet18', default_widths=[64, 128, 256, 512])(
    _builder(ResNetImageNet, (2, 2, 2, 2)))
register('recu_resnet34', default_widths=[64, 128, 256, 512])(
    _builder(ResNetImageNet, (3, 4, 6, 3)))
register('recu_resnet18_two_stage', default_widths=[64, 128, 256, 512])(
    _builder(ResNetTwoStage, (4, 4, 4, 4)))
register('recu_resnet34_two_stage', default_widths=[64, 128, 256, 512])(
    _builder(ResNetTwoStage, (6, 8, 12, 6)))
