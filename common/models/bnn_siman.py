"""The binary networks of the SiMaN code (lmbxmu/SiMaN; spec ``binary-recu-siman.md`` §0, §2.4).

Every binary conv is a :class:`common.binarize.BinaryConv`: it binarizes its *input* with the
activation binarizer named by ``act_binarizer`` (SiMaN: ``(a - mean) / std`` per sample, then
ApproxSign, §2.2), convolves with the kernel *as given* and multiplies by a learnable
per-output-channel ``alpha`` (initialised to the per-channel mean |w| of a PyTorch-default weight,
as ``BinarizeConv2d.__init__`` does, §0), before its BatchNorm. The models know nothing of the
weight binarizer: the method replaces the binary kernels on the parameter tree before ``apply``
(``siman.siman.binarize_params``). A binary conv is recognisable in the tree by its ``alpha`` leaf.
The stem conv and the classifier stay full precision (§0).

Registered names and their official counterparts (§2.4):

* ``siman_resnet20`` (``models_cifar/resnet.py: resnet20_1w1a``): stem conv3x3 -> BN -> ReLU;
  Bi-Real blocks with one shortcut per binary conv and PReLU(C) (init 0.25) after each sum,
  ``h = prelu1(bn1(bconv1(x)) + sc(x)); y = prelu2(bn2(bconv2(h)) + h)``; ``sc`` is option A
  (``x[:, ::2, ::2]`` then planes/4 zero channels on each side); head global average pool ->
  BatchNorm1d -> Linear. kaiming_normal (fan_in) on every conv *and* the Linear weight
  (``_weights_init``). Widths ``{'stem': 16, 'stages': [16, 32, 64]}``, 3 blocks per stage.
* ``siman_resnet18_cifar`` (``models_cifar/resnet2.py: resnet18_1w1a``): stem conv3x3 -> BN with
  no activation; standard blocks ``y = hardtanh(bn2(bconv2(hardtanh(bn1(bconv1(x))))) + sc(x))``
  with a *binarized* 1x1 strided conv + BN shortcut when the shape changes (``shortcut_0`` /
  ``shortcut_1``, official ``shortcut.0`` / ``shortcut.1``); head avg-pool -> BN1d -> Linear;
  PyTorch default init everywhere. Widths ``{'stem': 64, 'stages': [64, 128, 256, 512]}``.
* ``siman_vgg_small`` (``models_cifar/vgg.py: vgg_small_1w1a``): FP conv0 -> BN -> PReLU, then
  bconv1 -> maxpool -> BN -> PReLU, bconv2 -> BN -> PReLU, bconv3 -> maxpool -> BN -> PReLU,
  bconv4 -> BN -> PReLU, bconv5 -> maxpool -> BN -> PReLU, flatten -> Linear (no BN1d; pool
  *before* BN). Conv weights N(0, 2 / (9 C_out)), Linear N(0, 0.01) with zero bias. Widths: the six
  conv widths ``[128, 128, 256, 256, 512, 512]``.
* ``siman_resnet18`` / ``siman_resnet34`` (``models_imagenet/resnet.py``): stem 7x7/2 conv -> BN
  -> ReLU -> maxpool 3/2; Bi-Real blocks with PReLU after each sum; the downsample is a
  *full-precision* 1x1 strided conv + BN (``downsample_0`` / ``downsample_1``); head global
  average pool -> BN1d -> Linear. kaiming_normal (fan_in) on every conv, **every BatchNorm2d
  gamma = 1e-8** (BN1d keeps 1), Linear PyTorch default. Widths
  ``{'stem': 64, 'stages': [64, 128, 256, 512]}``; blocks [2, 2, 2, 2] / [3, 4, 6, 3].

Parameter names mirror the official module names (``layer{s}_{b}/conv1``, ``bn1``,
``nonlinear1``, ``shortcut_0``, ``downsample_0``, ``bn2`` of the head, ``linear`` / ``fc``), because
SiMaN's weight-decay groups are defined on those names (§2.5; ``siman.siman.decay_mask``).

Keyword options of every builder: ``act_binarizer`` ('siman' default | 'recu' | 'plain' | 'none' =
full-precision activations, the FP-ceiling control), ``nonlinearity`` ('prelu' | 'hardtanh' |
'relu'; default the official one of the model), ``alpha_init`` (``common.binarize.alpha_init``
kinds), ``init`` (``common.models.layers`` schemes; default the official one), ``bn_axis_name``.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence, Tuple

import flax.linen as nn
import jax.numpy as jnp

from common import binarize
from common.models import layers as L
from common.models.registry import register
from common.models.resnet_cifar import option_a_shortcut

NONLINEARITIES = ('prelu', 'hardtanh', 'relu')
ACT_BINARIZERS = ('siman', 'recu', 'plain', 'none')
ALPHA_INITS = ('mean_abs_default', 'uniform', 'ones')


class PReLU(nn.Module):
  """``torch.nn.PReLU(C)``: one slope per channel (last axis), initialised to 0.25."""
  init_value: float = 0.25

  @nn.compact
  def __call__(self, x):
    a = self.param('negative_slope', nn.initializers.constant(self.init_value), (x.shape[-1],))
    return jnp.where(x >= 0, x, a * x)


def nonlinearity(kind: str, name: str) -> Callable:
  """The block nonlinearity: a per-channel PReLU module named ``name``, hardtanh, or ReLU."""
  if kind == 'prelu':
    return PReLU(name=name)
  if kind == 'hardtanh':
    return lambda x: jnp.clip(x, -1.0, 1.0)
  if kind == 'relu':
    return nn.relu
  raise ValueError(f'unknown nonlinearity {kind!r}; allowed: {list(NONLINEARITIES)}')


def act_binarizer_fn(name: str) -> Optional[Callable]:
  """``common.binarize`` activation binarizer by name, or None for 'none' (FP activations)."""
  if name == 'none':
    return None
  if name not in ACT_BINARIZERS:
    raise ValueError(f'unknown act_binarizer {name!r}; allowed: {list(ACT_BINARIZERS)}')
  return binarize.activation_binarizer(name)


def bn(train: bool, name: str, axis_name: Optional[str] = None, gamma: float = 1.0):
  """BatchNorm with PyTorch defaults (momentum 0.1, eps 1e-5) and scale init ``gamma``."""
  return nn.BatchNorm(use_running_average=not train, momentum=L.BN_MOMENTUM, epsilon=L.BN_EPS,
                      axis_name=axis_name, scale_init=nn.initializers.constant(gamma), name=name)


def binary_conv(features: int, kernel: int, stride: int, *, act: str, alpha_init: str,
                init: str, name: str) -> binarize.BinaryConv:
  """A ``BinarizeConv2d``: binarized input, kernel from the (method-binarized) params, alpha."""
  if alpha_init not in ALPHA_INITS:
    raise ValueError(f'unknown alpha_init {alpha_init!r}; allowed: {list(ALPHA_INITS)}')
  return binarize.BinaryConv(features, kernel, stride, act_binarizer=act_binarizer_fn(act),
                             weight_binarizer=None, alpha=alpha_init,
                             kernel_init=L.kernel_init(init), name=name)


class BiRealBlock(nn.Module):
  """Bi-Real basic block, one shortcut per binary conv (ResNet-20 CIFAR and ImageNet, §2.4).

  ``[B, H, W, C_in] -> [B, H/s, W/s, planes]``. ``shortcut``: 'A' (option A, parameter-free) or
  'fp_conv' (full-precision 1x1 conv + BN, ``downsample_0/1``), used when the shape changes.
  """
  planes: int
  stride: int
  shortcut: str
  act: str
  nonlin: str
  alpha_init: str
  init: str
  bn_gamma: float = 1.0
  bn_axis_name: Optional[str] = None

  @nn.compact
  def __call__(self, x, train: bool):
    in_ch = x.shape[-1]
    y = binary_conv(self.planes, 3, self.stride, act=self.act, alpha_init=self.alpha_init,
                    init=self.init, name='conv1')(x, train)
    y = bn(train, 'bn1', self.bn_axis_name, self.bn_gamma)(y)
    if self.stride != 1 or in_ch != self.planes:
      if self.shortcut == 'A':
        res = option_a_shortcut(x, self.planes, self.stride)
      elif self.shortcut == 'fp_conv':
        res = L.conv(self.planes, 1, in_ch=in_ch, stride=self.stride, init=self.init,
                     name='downsample_0')(x)
        res = bn(train, 'downsample_1', self.bn_axis_name, self.bn_gamma)(res)
      else:
        raise ValueError(f"unknown shortcut {self.shortcut!r}; allowed: ['A', 'fp_conv']")
    else:
      res = x
    h = nonlinearity(self.nonlin, 'nonlinear1')(y + res)
    y = binary_conv(self.planes, 3, 1, act=self.act, alpha_init=self.alpha_init, init=self.init,
                    name='conv2')(h, train)
    y = bn(train, 'bn2', self.bn_axis_name, self.bn_gamma)(y)
    return nonlinearity(self.nonlin, 'nonlinear2')(y + h)


class StandardBlock(nn.Module):
  """Standard basic block with one shortcut per block (CIFAR ResNet-18, §2.4).

  ``y = act(bn2(bconv2(act(bn1(bconv1(x))))) + sc(x))``; ``sc`` is a *binarized* 1x1 strided
  conv + BN (``shortcut_0/1``) when the shape changes, else the identity.
  """
  planes: int
  stride: int
  act: str
  nonlin: str
  alpha_init: str
  init: str
  bn_axis_name: Optional[str] = None

  @nn.compact
  def __call__(self, x, train: bool):
    in_ch = x.shape[-1]
    y = binary_conv(self.planes, 3, self.stride, act=self.act, alpha_init=self.alpha_init,
                    init=self.init, name='conv1')(x, train)
    y = nonlinearity(self.nonlin, 'nonlinear1')(bn(train, 'bn1', self.bn_axis_name)(y))
    y = binary_conv(self.planes, 3, 1, act=self.act, alpha_init=self.alpha_init, init=self.init,
                    name='conv2')(y, train)
    y = bn(train, 'bn2', self.bn_axis_name)(y)
    if self.stride != 1 or in_ch != self.planes:
      res = binary_conv(self.planes, 1, self.stride, act=self.act, alpha_init=self.alpha_init,
                        init=self.init, name='shortcut_0')(x, train)
      res = bn(train, 'shortcut_1', self.bn_axis_name)(res)
    else:
      res = x
    return nonlinearity(self.nonlin, 'nonlinear2')(y + res)


class SimanResNet(nn.Module):
  """The CIFAR / ImageNet binary ResNets of SiMaN (module docstring for the three layouts).

  ``__call__(x [B, H, W, 3], train) -> logits [B, num_classes]``; sows the pooled, pre-BN1d
  features ``[B, stages[-1]]`` as ``intermediates/features``.

  Attributes:
    layout: 'cifar_bireal' (ResNet-20), 'cifar_standard' (CIFAR ResNet-18), 'imagenet'.
    stem, stages, blocks: widths and blocks per stage.
    stem_act: activation after the stem BN ('relu' | 'none').
    bn_gamma: initial gamma of every BatchNorm2d (ImageNet: 1e-8).
    dense_init: init scheme of the Linear.
  """
  num_classes: int
  layout: str
  stem: int
  stages: Tuple[int, ...]
  blocks: Tuple[int, ...]
  act_binarizer: str = 'siman'
  nonlinearity: str = 'prelu'
  stem_act: str = 'relu'
  alpha_init: str = 'mean_abs_default'
  init_scheme: str = 'kaiming_normal_fan_in'
  dense_init: str = 'kaiming_normal_fan_in'
  bn_gamma: float = 1.0
  bn_axis_name: Optional[str] = None

  @nn.compact
  def __call__(self, x, train: bool):
    init, dense_init = L.check_init(self.init_scheme, self.dense_init)
    if self.nonlinearity not in NONLINEARITIES:
      raise ValueError(f'unknown nonlinearity {self.nonlinearity!r}; '
                       f'allowed: {list(NONLINEARITIES)}')
    imagenet = self.layout == 'imagenet'
    k, s = (7, 2) if imagenet else (3, 1)
    x = L.conv(self.stem, k, in_ch=x.shape[-1], stride=s, init=init, name='conv1')(x)
    x = bn(train, 'bn1', self.bn_axis_name, self.bn_gamma)(x)
    if self.stem_act == 'relu':
      x = nn.relu(x)
    elif self.stem_act != 'none':
      raise ValueError(f"unknown stem_act {self.stem_act!r}; allowed: ['relu', 'none']")
    if imagenet:
      x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    for si, (planes, n) in enumerate(zip(self.stages, self.blocks)):
      for b in range(n):
        stride = 2 if (si > 0 and b == 0) else 1
        name = f'layer{si + 1}_{b}'
        if self.layout == 'cifar_standard':
          x = StandardBlock(planes, stride, self.act_binarizer, self.nonlinearity, self.alpha_init,
                            init, self.bn_axis_name, name=name)(x, train)
        elif self.layout in ('cifar_bireal', 'imagenet'):
          x = BiRealBlock(planes, stride, 'fp_conv' if imagenet else 'A', self.act_binarizer,
                          self.nonlinearity, self.alpha_init, init, self.bn_gamma,
                          self.bn_axis_name, name=name)(x, train)
        else:
          raise ValueError(f"unknown layout {self.layout!r}; allowed: ['cifar_bireal', "
                           "'cifar_standard', 'imagenet']")
    feats = L.global_avg_pool(x)
    self.sow('intermediates', 'features', feats)
    feats = bn(train, 'bn2', self.bn_axis_name)(feats)   # BatchNorm1d: gamma 1 in every repo
    head = 'fc' if imagenet else 'linear'
    return L.dense(self.num_classes, in_ch=feats.shape[-1], init=dense_init, name=head)(feats)


class SimanVGGSmall(nn.Module):
  """VGG-Small 1w1a (§2.4): ``[B, 32, 32, 3] -> [B, num_classes]``; widths = six conv widths.

  Sows the flattened features ``[B, 16 * widths[-1]]`` as ``intermediates/features``.
  """
  num_classes: int
  widths: Tuple[int, ...]
  act_binarizer: str = 'siman'
  nonlinearity: str = 'prelu'
  alpha_init: str = 'mean_abs_default'
  init_scheme: str = 'kaiming_normal_fan_out'
  dense_init: str = 'normal_0.01'
  bn_axis_name: Optional[str] = None

  @nn.compact
  def __call__(self, x, train: bool):
    init, dense_init = L.check_init(self.init_scheme, self.dense_init)
    w = self.widths
    x = L.conv(w[0], 3, in_ch=x.shape[-1], init=init, name='conv0')(x)
    x = nonlinearity(self.nonlinearity, 'nonlinear0')(bn(train, 'bn0', self.bn_axis_name)(x))
    for i in range(1, 6):
      x = binary_conv(w[i], 3, 1, act=self.act_binarizer, alpha_init=self.alpha_init, init=init,
                      name=f'conv{i}')(x, train)
      if i in (1, 3, 5):   # the official forward pools *before* the BN of conv1/3/5
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
      x = bn(train, f'bn{i}', self.bn_axis_name)(x)
      x = nonlinearity(self.nonlinearity, f'nonlinear{i}')(x)
    feats = x.reshape(x.shape[0], -1)
    self.sow('intermediates', 'features', feats)
    return L.dense(self.num_classes, in_ch=feats.shape[-1], init=dense_init, name='fc')(feats)


# --- widths and registration --------------------------------------------------------------------

RESNETS = {
    # name: (layout, blocks, default widths, official defaults of the options)
    'siman_resnet20': ('cifar_bireal', (3, 3, 3), {'stem': 16, 'stages': [16, 32, 64]},
                       dict(nonlinearity='prelu', stem_act='relu', init='kaiming_normal_fan_in',
                            dense_init='kaiming_normal_fan_in', bn_gamma=1.0)),
    'siman_resnet18_cifar': ('cifar_standard', (2, 2, 2, 2),
                             {'stem': 64, 'stages': [64, 128, 256, 512]},
                             dict(nonlinearity='hardtanh', stem_act='none', init='pytorch',
                                  dense_init='pytorch', bn_gamma=1.0)),
    'siman_resnet18': ('imagenet', (2, 2, 2, 2), {'stem': 64, 'stages': [64, 128, 256, 512]},
                       dict(nonlinearity='prelu', stem_act='relu', init='kaiming_normal_fan_in',
                            dense_init='pytorch', bn_gamma=1e-8)),
    'siman_resnet34': ('imagenet', (3, 4, 6, 3), {'stem': 64, 'stages': [64, 128, 256, 512]},
                       dict(nonlinearity='prelu', stem_act='relu', init='kaiming_normal_fan_in',
                            dense_init='pytorch', bn_gamma=1e-8)),
}
VGG_SMALL_WIDTHS = [128, 128, 256, 256, 512, 512]


def parse_resnet_widths(name: str, widths) -> Tuple[int, Tuple[int, ...]]:
  """Validates ``{'stem': int, 'stages': [int] * S}``; returns ``(stem, stages)``."""
  L.check_keys(name, widths, ('stem', 'stages'))
  stem = L.check_pos_int(f'{name} widths["stem"]', widths['stem'])
  stages = L.check_int_list(f'{name} widths["stages"]', widths['stages'],
                            len(RESNETS[name][1]))
  if RESNETS[name][0] == 'cifar_bireal':
    prev = stem
    for s, c in enumerate(stages):
      if c < prev or (c - prev) % 2:
        raise ValueError(f'{name}: option-A shortcuts zero-pad channels evenly; stage {s} width '
                         f'{c} must be >= its input width {prev} with an even difference')
      prev = c
  return stem, stages


def _check_choice(what: str, value, allowed: Sequence[str]):
  if value not in allowed:
    raise ValueError(f'unknown {what} {value!r}; allowed: {list(allowed)}')


def _register_resnet(name: str):
  layout, blocks, widths0, official = RESNETS[name]

  def build(num_classes, widths, act_binarizer='siman', nonlinearity=None, stem_act=None,
            alpha_init='mean_abs_default', init=None, dense_init=None, bn_gamma=None,
            bn_axis_name=None):
    stem, stages = parse_resnet_widths(name, widths)
    _check_choice('act_binarizer', act_binarizer, ACT_BINARIZERS)
    _check_choice('alpha_init', alpha_init, ALPHA_INITS)
    nl = official['nonlinearity'] if nonlinearity is None else nonlinearity
    _check_choice('nonlinearity', nl, NONLINEARITIES)
    init = official['init'] if init is None else init
    dense_init = official['dense_init'] if dense_init is None else dense_init
    L.check_init(init, dense_init)
    return SimanResNet(num_classes=num_classes, layout=layout, stem=stem, stages=stages,
                       blocks=blocks, act_binarizer=act_binarizer, nonlinearity=nl,
                       stem_act=official['stem_act'] if stem_act is None else stem_act,
                       alpha_init=alpha_init, init_scheme=init, dense_init=dense_init,
                       bn_gamma=float(official['bn_gamma'] if bn_gamma is None else bn_gamma),
                       bn_axis_name=bn_axis_name)

  register(name, default_widths=lambda: {'stem': widths0['stem'],
                                         'stages': list(widths0['stages'])})(build)


for _name in RESNETS:
  _register_resnet(_name)


@register('siman_vgg_small', default_widths=lambda: list(VGG_SMALL_WIDTHS))
def build_vgg_small(num_classes, widths, act_binarizer='siman', nonlinearity='prelu',
                    alpha_init='mean_abs_default', init='kaiming_normal_fan_out',
                    dense_init='normal_0.01', bn_axis_name=None):
  """VGG-Small 1w1a; ``widths``: the six conv widths (official 128,128,256,256,512,512)."""
  w = L.check_int_list('siman_vgg_small widths', widths, 6)
  _check_choice('act_binarizer', act_binarizer, ACT_BINARIZERS)
  _check_choice('alpha_init', alpha_init, ALPHA_INITS)
  _check_choice('nonlinearity', nonlinearity, NONLINEARITIES)
  L.check_init(init, dense_init)
  return SimanVGGSmall(num_classes=num_classes, widths=w, act_binarizer=act_binarizer,
                       nonlinearity=nonlinearity, alpha_init=alpha_init, init_scheme=init,
                       dense_init=dense_init, bn_axis_name=bn_axis_name)
