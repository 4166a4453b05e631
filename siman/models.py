"""The binary networks of the SiMaN code (lmbxmu/SiMaN ``models_cifar/``, ``models_imagenet/``),
built from ``common.models.bnn_layers``. Importing the ``siman`` package registers them with
``common.models``.

Every binary conv binarizes its *input* with the activation binarizer named by ``act_binarizer``
(SiMaN: ``(a - mean) / std`` per sample, then ApproxSign; ``siman.siman.siman_activation``),
convolves with the kernel *as given* and multiplies by a learnable per-output-channel ``alpha``
(initialised to the per-channel mean |w| of a PyTorch-default weight, as
``BinarizeConv2d.__init__`` does), before its BatchNorm. The models know nothing of the weight
binarizer: the method replaces the binary kernels on the parameter tree before ``apply``
(``siman.siman.binarize_params``). A binary conv is recognisable in the tree by its ``alpha``
leaf. The stem conv and the classifier stay full precision.

Registered names and their official counterparts:

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
* ``siman_vgg_small`` (``models_cifar/vgg.py: vgg_small_1w1a``): ``bnn_layers.VGGSmall`` with
  PReLU, conv weights N(0, 2 / (9 C_out)), Linear N(0, 0.01) with zero bias; the FC input is the
  NHWC-flattened map (a fixed permutation of PyTorch's C*H*W order: same function class, other
  initial weights). Widths: the six conv widths ``[128, 128, 256, 256, 512, 512]``.
* ``siman_resnet18`` / ``siman_resnet34`` (``models_imagenet/resnet.py``): stem 7x7/2 conv -> BN
  -> ReLU -> maxpool 3/2; Bi-Real blocks with PReLU after each sum; the downsample is a
  *full-precision* 1x1 strided conv + BN (``downsample_0`` / ``downsample_1``); head global
  average pool -> BN1d -> Linear. kaiming_normal (fan_in) on every conv, **every BatchNorm2d
  gamma = 1e-8** (BN1d keeps 1), Linear PyTorch default. Widths
  ``{'stem': 64, 'stages': [64, 128, 256, 512]}``; blocks [2, 2, 2, 2] / [3, 4, 6, 3].

Parameter names mirror the official module names (``layer{s}_{b}/conv1``, ``bn1``,
``nonlinear1``, ``shortcut_0``, ``downsample_0``, ``bn2`` of the head, ``linear`` / ``fc``),
because SiMaN's weight-decay groups are name tests (``cifar/main.py``; ``siman.siman.decay_mask``).

Keyword options of every builder: ``act_binarizer`` (:data:`ACT_BINARIZERS`: 'siman' default |
'plain' | 'none' = full-precision activations, the FP-ceiling control), ``nonlinearity``
('prelu' | 'hardtanh' | 'relu'; default the official one of the model), ``alpha_init``
(``common.binarize.alpha_init`` kinds), ``init`` (``common.models.layers`` schemes; default the
official one), ``bn_axis_name``.
"""
from __future__ import annotations

from typing import Optional, Tuple

import flax.linen as nn

from common import binarize
from common.models import bnn_layers as BL
from common.models import layers as L
from common.models.registry import register
from common.models.resnet_cifar import option_a_shortcut
from siman.siman import siman_activation

ACT_BINARIZERS = {'siman': siman_activation, 'plain': binarize.plain_activation, 'none': None}
LAYOUTS = ('cifar_bireal', 'cifar_standard', 'imagenet')


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
    BL.check_choice('nonlinearity', self.nonlinearity, BL.NONLINEARITIES)
    BL.check_choice('layout', self.layout, LAYOUTS)
    act = BL.act_binarizer_fn(self.act_binarizer, ACT_BINARIZERS)
    kinit = L.kernel_init(init)
    imagenet = self.layout == 'imagenet'
    k, s = (7, 2) if imagenet else (3, 1)
    x = L.conv(self.stem, k, in_ch=x.shape[-1], stride=s, init=init, name='conv1')(x)
    x = BL.bn(train, 'bn1', self.bn_gamma, self.bn_axis_name)(x)
    if self.stem_act == 'relu':
      x = nn.relu(x)
    elif self.stem_act != 'none':
      raise ValueError(f"unknown stem_act {self.stem_act!r}; allowed: ['relu', 'none']")
    if imagenet:
      x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))

    def block(planes, stride, name):
      if self.layout == 'cifar_standard':
        return BL.StandardBlock(planes, stride, 'binary_conv', act, self.alpha_init, kinit,
                                self.nonlinearity, self.bn_axis_name, name=name)
      return BL.BiRealBlock(planes, stride, 'fp_conv' if imagenet else option_a_shortcut, act,
                            self.alpha_init, kinit, self.nonlinearity, self.bn_gamma,
                            self.bn_axis_name, name=name)

    x = BL.run_stages(x, train, self.stages, self.blocks, block)
    return BL.pooled_head(self, x, train, self.num_classes, fc_name='fc' if imagenet else 'linear',
                          bn1d_name='bn2', dense_init=dense_init, bn_axis_name=self.bn_axis_name)


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
  """Validates ``{'stem': int, 'stages': [int] * S}``; returns ``(stem, stages)``.

  Option-A shortcuts (ResNet-20) zero-pad channels evenly, so each stage must be at least as wide
  as its input with an even difference.
  """
  stem, stages = BL.parse_resnet_widths(name, widths, len(RESNETS[name][1]))
  if RESNETS[name][0] == 'cifar_bireal':
    prev = stem
    for s, c in enumerate(stages):
      if c < prev or (c - prev) % 2:
        raise ValueError(f'{name}: option-A shortcuts zero-pad channels evenly; stage {s} width '
                         f'{c} must be >= its input width {prev} with an even difference')
      prev = c
  return stem, stages


def _register_resnet(name: str):
  layout, blocks, widths0, official = RESNETS[name]

  def build(num_classes, widths, act_binarizer='siman', nonlinearity=None, stem_act=None,
            alpha_init='mean_abs_default', init=None, dense_init=None, bn_gamma=None,
            bn_axis_name=None):
    stem, stages = parse_resnet_widths(name, widths)
    BL.check_choice('act_binarizer', act_binarizer, ACT_BINARIZERS)
    BL.check_choice('alpha_init', alpha_init, BL.ALPHA_INITS)
    nl = official['nonlinearity'] if nonlinearity is None else nonlinearity
    BL.check_choice('nonlinearity', nl, BL.NONLINEARITIES)
    init = official['init'] if init is None else init
    dense_init = official['dense_init'] if dense_init is None else dense_init
    L.check_init(init, dense_init)
    return SimanResNet(num_classes=num_classes, layout=layout, stem=stem, stages=stages,
                       blocks=blocks, act_binarizer=act_binarizer, nonlinearity=nl,
                       stem_act=official['stem_act'] if stem_act is None else stem_act,
                       alpha_init=alpha_init, init_scheme=init, dense_init=dense_init,
                       bn_gamma=float(official['bn_gamma'] if bn_gamma is None else bn_gamma),
                       bn_axis_name=bn_axis_name)

  build.__doc__ = f'Builds {name} (module docstring for the widths and options).'
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
  BL.check_choice('alpha_init', alpha_init, BL.ALPHA_INITS)
  BL.check_choice('nonlinearity', nonlinearity, BL.NONLINEARITIES)
  L.check_init(init, dense_init)
  return BL.VGGSmall(num_classes=num_classes, widths=tuple(w),
                     act_binarizer=BL.act_binarizer_fn(act_binarizer, ACT_BINARIZERS),
                     alpha=alpha_init, nonlinearity=nonlinearity,
                     kernel_init=L.kernel_init(init), dense_init=dense_init, flatten='hwc',
                     bn_axis_name=bn_axis_name)
