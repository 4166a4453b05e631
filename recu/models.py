"""ReCU's binary networks, as the official z-hXu/ReCU code builds them (newest snapshot; the first
commit's CIFAR ResNet-18 had a binarized 1x1 shortcut), from ``common.models.bnn_layers``.
Importing the ``recu`` package registers them with ``common.models``.

Registered names (``common.models.get_model``) and their official counterparts:

* ``recu_resnet20`` (``cifar/models_cifar/resnet.py: resnet20_1w1a``): FP stem conv3x3 -> BN ->
  Hardtanh; Bi-Real block with **one shortcut per binary conv**,
  ``h = hardtanh(bn1(bconv1(x)) + sc(x)); y = hardtanh(bn2(bconv2(h)) + h)``; the downsampling
  shortcut is parameter-free: AvgPool 2x2 then ``planes // 4`` zero channels on each side; head
  global average pool -> BatchNorm1d -> FP Linear. kaiming_normal (fan_in) on every conv (binary
  ones too), Linear PyTorch default. Widths ``{'stem': 16, 'stages': [16, 32, 64]}``, blocks
  ``[3, 3, 3]``.
* ``recu_resnet18_cifar`` (``resnet2.py: resnet18_1w1a``): stem conv3x3 -> BN (**no
  activation**); *standard* block, one shortcut per block,
  ``y = hardtanh(bn2(bconv2(hardtanh(bn1(bconv1(x))))) + sc(x))``, same AvgPool + zero-pad
  shortcut; head avg_pool 4 -> BatchNorm1d -> Linear. Widths
  ``{'stem': 64, 'stages': [64, 128, 256, 512]}``, blocks [2, 2, 2, 2].
* ``recu_vgg_small`` (``vgg.py: vgg_small_1w1a``): ``bnn_layers.VGGSmall`` with Hardtanh, convs
  N(0, 2/(9 C_out)), Linear N(0, 0.01) with zero bias, the FC input in PyTorch's C*H*W order.
  Widths: the 6 conv widths.
* ``recu_resnet18`` / ``recu_resnet34`` (``imagenet/models_imagenet/resnet.py``): stem 7x7/2 ->
  BN -> Hardtanh -> MaxPool 3/2; Bi-Real block; downsample = **FP** 1x1/2 conv + BN
  (``downsample_0`` / ``downsample_1``); head global avg pool (AvgPool 7 at 224) -> BatchNorm1d ->
  FC. kaiming_normal on every conv; **every BatchNorm2d gamma = 1e-8** (``_initialize_weights``;
  BN1d keeps 1), so every binary branch starts near zero and the network shortcut-dominated.
* ``recu_resnet18_two_stage`` / ``recu_resnet34_two_stage`` (``imagenet_two-stage/``,
  ReActNet-like): blocks [4,4,4,4] / [6,8,12,6] with **one** binary 3x3 conv each,
  ``out = bn(bconv(x + move0)) + res; out = nonlinear(out + move1) + move2`` (PReLU per channel,
  init 0.25; ``move*`` learnable per-channel biases, init 0); ``res`` = x or AvgPool 2/2 -> FP 1x1
  conv -> BN (``downsample_1`` / ``downsample_2``); stem conv 7x7/2 -> BN -> MaxPool (no
  activation); head avg pool -> FC (no BN1d). PyTorch default init everywhere.

Parameter paths mirror the PyTorch module names (``layer1_0/conv1`` for ``layer1.0.conv1``),
because ReCU's ImageNet weight-decay groups are name tests (``imagenet/main.py``: ``conv`` or
``fc`` in the name; ``recu.train.decay_mask_conv_fc``).

Options of every builder: ``binary`` (default True; False builds the *same* network in full
precision: plain convs without input binarizer or alpha, the ceiling the quick experiment and
``recu.bench`` compare against), ``act_binarizer`` (:data:`ACT_BINARIZERS`: 'recu' default |
'plain' | 'none'), ``blocks`` (per-stage block counts of the ResNets).

The binary convs have ``alpha`` U[0, 1) (``torch.rand``) and no weight binarizer of their own:
ReCU's weight binarizer depends on the per-epoch tau, so the method binarizes their kernels on
the parameter tree (``recu.train.binarize_params``). The stem conv and the classifier are full
precision. These models register no ``layer_specs``.
"""
from __future__ import annotations

from typing import Optional, Sequence

import flax.linen as nn
import jax.numpy as jnp

from common import binarize
from common.models import bnn_layers as BL
from common.models import layers as L
from common.models.registry import register
from recu.recu import recu_activation

ACT_BINARIZERS = {'recu': recu_activation, 'plain': binarize.plain_activation, 'none': None}
_KN_FAN_IN = L.kernel_init('kaiming_normal_fan_in')     # torch.nn.init.kaiming_normal_
_KN_FAN_OUT = L.kernel_init('kaiming_normal_fan_out')   # VGG: N(0, sqrt(2 / (k*k*C_out)))


def _act(binary: bool, act_binarizer: str):
  fn = BL.act_binarizer_fn(act_binarizer, ACT_BINARIZERS)
  return fn if binary else None


def _alpha(binary: bool) -> Optional[str]:
  return 'uniform' if binary else None


def avgpool_pad_shortcut(x, planes: int, stride: int):
  """ReCU's parameter-free shortcut: AvgPool 2x2/2, then ``planes // 4`` zero channels per side.

  ``[B, H, W, C] -> [B, H/2, W/2, planes]`` (``models_cifar/resnet.py``:
  ``LambdaLayer(F.pad(x[...], (.., planes//4, planes//4)))`` after ``nn.AvgPool2d((2, 2))``).
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


class ResNet20(nn.Module):
  """ReCU CIFAR ResNet-20: ``[B, 32, 32, 3] -> [B, num_classes]``."""
  num_classes: int
  stem: int = 16
  stages: Sequence[int] = (16, 32, 64)
  blocks: Sequence[int] = (3, 3, 3)
  binary: bool = True
  act_binarizer: str = 'recu'

  @nn.compact
  def __call__(self, x, train: bool):
    act, alpha = _act(self.binary, self.act_binarizer), _alpha(self.binary)
    x = nn.Conv(self.stem, (3, 3), padding=((1, 1), (1, 1)), use_bias=False,
                kernel_init=_KN_FAN_IN, name='conv1')(x)
    x = BL.hardtanh(BL.bn(train, 'bn1')(x))
    x = BL.run_stages(x, train, self.stages, self.blocks, lambda planes, stride, name:
                      BL.BiRealBlock(planes, stride, avgpool_pad_shortcut, act, alpha, _KN_FAN_IN,
                                     name=name))
    return BL.pooled_head(self, x, train, self.num_classes, fc_name='linear', bn1d_name='bn2')


class ResNet18Cifar(nn.Module):
  """ReCU CIFAR ResNet-18 (``resnet2.py``): ``[B, 32, 32, 3] -> [B, num_classes]``."""
  num_classes: int
  stem: int = 64
  stages: Sequence[int] = (64, 128, 256, 512)
  blocks: Sequence[int] = (2, 2, 2, 2)
  binary: bool = True
  act_binarizer: str = 'recu'

  @nn.compact
  def __call__(self, x, train: bool):
    act, alpha = _act(self.binary, self.act_binarizer), _alpha(self.binary)
    x = nn.Conv(self.stem, (3, 3), padding=((1, 1), (1, 1)), use_bias=False,
                kernel_init=_KN_FAN_IN, name='conv1')(x)
    x = BL.bn(train, 'bn1')(x)                            # no activation after the stem
    x = BL.run_stages(x, train, self.stages, self.blocks, lambda planes, stride, name:
                      BL.StandardBlock(planes, stride, avgpool_pad_shortcut, act, alpha,
                                       _KN_FAN_IN, name=name))
    # avg_pool2d(4) on the 4x4 map, BatchNorm1d
    return BL.pooled_head(self, x, train, self.num_classes, fc_name='linear', bn1d_name='bn2')


class ResNetImageNet(nn.Module):
  """ReCU ImageNet ResNet-18/34: ``[B, 224, 224, 3] -> [B, num_classes]``. Every BatchNorm2d
  starts at gamma 1e-8 (shortcut-dominated start, ``models_imagenet/resnet.py``)."""
  num_classes: int
  stem: int = 64
  stages: Sequence[int] = (64, 128, 256, 512)
  blocks: Sequence[int] = (2, 2, 2, 2)
  binary: bool = True
  act_binarizer: str = 'recu'

  @nn.compact
  def __call__(self, x, train: bool):
    act, alpha = _act(self.binary, self.act_binarizer), _alpha(self.binary)
    x = nn.Conv(self.stem, (7, 7), strides=(2, 2), padding=((3, 3), (3, 3)), use_bias=False,
                kernel_init=_KN_FAN_IN, name='conv1')(x)
    x = BL.hardtanh(BL.bn(train, 'bn1', 1e-8)(x))
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    x = BL.run_stages(x, train, self.stages, self.blocks, lambda planes, stride, name:
                      BL.BiRealBlock(planes, stride, 'fp_conv', act, alpha, _KN_FAN_IN,
                                     bn_gamma=1e-8, name=name))
    # AvgPool2d(7) on the 7x7 map; the BatchNorm1d keeps gamma = 1
    return BL.pooled_head(self, x, train, self.num_classes, fc_name='fc', bn1d_name='bn2')


class LearnableBias(nn.Module):
  """``LearnableBias``: per-channel bias ``[C]`` added to the input, init 0."""

  @nn.compact
  def __call__(self, x):
    return x + self.param('bias', nn.initializers.zeros, (x.shape[-1],))


class TwoStageBlock(nn.Module):
  """``imagenet_two-stage`` BasicBlock: one binary 3x3 conv.

  ``out = bn(conv(x + move0)) + res; out = nonlinear(out + move1) + move2``; ``res`` = x, or
  AvgPool(2, stride) -> FP 1x1 conv -> BN when the block changes shape.
  """
  planes: int
  stride: int
  binary: bool
  act_binarizer: str

  @nn.compact
  def __call__(self, x, train: bool):
    in_ch = x.shape[-1]
    out = LearnableBias(name='move0')(x)
    out = BL.binary_conv(self.planes, 3, self.stride,
                         act_binarizer=_act(self.binary, self.act_binarizer),
                         alpha=_alpha(self.binary), kernel_init=L.kernel_init('pytorch'),
                         name='conv')(out, train)
    out = BL.bn(train, 'bn')(out)
    if self.stride != 1 or in_ch != self.planes:
      res = nn.avg_pool(x, (2, 2), strides=(self.stride, self.stride))
      res = L.conv(self.planes, 1, in_ch=in_ch, init='pytorch', name='downsample_1')(res)
      res = BL.bn(train, 'downsample_2')(res)
    else:
      res = x
    out = LearnableBias(name='move1')(out + res)
    out = BL.PReLU(param_name='weight', name='nonlinear')(out)
    return LearnableBias(name='move2')(out)


class ResNetTwoStage(nn.Module):
  """ReCU two-stage (ReActNet-like) ResNet: ``[B, 224, 224, 3] -> [B, num_classes]``."""
  num_classes: int
  stem: int = 64
  stages: Sequence[int] = (64, 128, 256, 512)
  blocks: Sequence[int] = (4, 4, 4, 4)
  binary: bool = True
  act_binarizer: str = 'recu'

  @nn.compact
  def __call__(self, x, train: bool):
    x = L.conv(self.stem, 7, in_ch=x.shape[-1], stride=2, init='pytorch', name='conv')(x)
    x = BL.bn(train, 'bn')(x)                             # no activation
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    x = BL.run_stages(x, train, self.stages, self.blocks, lambda planes, stride, name:
                      TwoStageBlock(planes, stride, self.binary, self.act_binarizer, name=name))
    return BL.pooled_head(self, x, train, self.num_classes, fc_name='fc', bn1d_name=None)


def _resnet_builder(name: str, cls, default_blocks: Sequence[int]):
  def build(num_classes, widths, blocks=None, binary=True, act_binarizer='recu'):
    BL.check_choice('act_binarizer', act_binarizer, ACT_BINARIZERS)
    blocks = tuple(blocks if blocks is not None else default_blocks)
    stem, stages = BL.parse_resnet_widths(name, widths, len(blocks))
    return cls(num_classes=int(num_classes), stem=stem, stages=stages,
               blocks=tuple(L.check_int_list(f'{name} blocks', list(blocks), len(blocks))),
               binary=bool(binary), act_binarizer=act_binarizer)
  build.__doc__ = (f'Builds :class:`{cls.__name__}`; ``widths = {{"stem": int, "stages": '
                   f'[int] * {len(default_blocks)}}}`` (module docstring for the options).')
  return build


def build_vgg_small(num_classes, widths, blocks=None, binary=True, act_binarizer='recu'):
  """ReCU VGG-Small (``models_cifar/vgg.py``); ``widths``: the six conv widths."""
  BL.check_choice('act_binarizer', act_binarizer, ACT_BINARIZERS)
  if blocks is not None:
    raise ValueError(f'recu_vgg_small takes no blocks option; got blocks={blocks!r}')
  return BL.VGGSmall(num_classes=int(num_classes), widths=tuple(widths),
                     act_binarizer=_act(binary, act_binarizer), alpha=_alpha(binary),
                     nonlinearity='hardtanh', kernel_init=_KN_FAN_OUT, dense_init='normal_0.01',
                     flatten='chw')


def _widths(stem: int, stages):
  return lambda: {'stem': stem, 'stages': list(stages)}


RESNETS = {
    # name: (class, default blocks, default widths)
    'recu_resnet20': (ResNet20, (3, 3, 3), (16, [16, 32, 64])),
    'recu_resnet18_cifar': (ResNet18Cifar, (2, 2, 2, 2), (64, [64, 128, 256, 512])),
    'recu_resnet18': (ResNetImageNet, (2, 2, 2, 2), (64, [64, 128, 256, 512])),
    'recu_resnet34': (ResNetImageNet, (3, 4, 6, 3), (64, [64, 128, 256, 512])),
    'recu_resnet18_two_stage': (ResNetTwoStage, (4, 4, 4, 4), (64, [64, 128, 256, 512])),
    'recu_resnet34_two_stage': (ResNetTwoStage, (6, 8, 12, 6), (64, [64, 128, 256, 512])),
}
for _name, (_cls, _blocks, _w) in RESNETS.items():
  register(_name, default_widths=_widths(*_w))(_resnet_builder(_name, _cls, _blocks))
register('recu_vgg_small', default_widths=lambda: [128, 128, 256, 256, 512, 512])(
    build_vgg_small)
