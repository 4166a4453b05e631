"""Building blocks of the binary networks of ReCU (z-hXu/ReCU) and SiMaN (lmbxmu/SiMaN).

Both official repos share their model code (``models_cifar/{resnet,resnet2,vgg}.py``,
``models_imagenet/resnet.py``); the papers differ in the weight binarizer, the activation
binarizer and a few layout choices (nonlinearity, shortcut, initialisers), which are arguments
here. The paper packages (``recu.models``, ``siman.models``) build and register their networks
from these pieces.

* :class:`BinaryConv` / :class:`BinaryDense` -- ``BinarizeConv2d``: binarize the *input* with an
  activation binarizer, apply the kernel (optionally binarized by ``weight_binarizer``; the
  papers' weight binarizers run on the parameter tree instead) and multiply by a learnable
  per-output-channel ``alpha`` after the conv, before the following BatchNorm; no bias.
* :class:`PReLU`, :func:`hardtanh`, :func:`nonlinearity` -- the block nonlinearities.
* :func:`bn` -- BatchNorm with PyTorch's momentum 0.1 / eps 1e-5 and a chosen initial gamma.
* :class:`BiRealBlock` -- one shortcut per binary conv (``models_cifar/resnet.py`` and
  ``models_imagenet/resnet.py: BasicBlock``):
  ``h = act(bn1(conv1(x)) + sc(x)); y = act(bn2(conv2(h)) + h)``.
* :class:`StandardBlock` -- one shortcut per block (``models_cifar/resnet2.py: BasicBlock``):
  ``y = act(bn2(conv2(act(bn1(conv1(x))))) + sc(x))``.
* :class:`VGGSmall` -- ``models_cifar/vgg.py: VGG_SMALL_1W1A``: FP conv0, five binary convs,
  max-pool *before* the BN of conv1/3/5, FP classifier on the flattened 4x4 map.
* :func:`run_stages` / :func:`pooled_head` -- the ``_make_layer`` stage loop and the
  avg-pool -> BatchNorm1d -> Linear head of the ResNets.

A binary layer is recognised in a parameter tree by its ``alpha`` leaf
(``common.binarize.binary_kernel_paths``); the full-precision stem, downsample convs and
classifier have none. Parameter names mirror the official PyTorch module names (``layer1_0/conv1``
for ``layer1.0.conv1``), because both papers define their weight-decay groups by name tests.
"""
from __future__ import annotations

from typing import Callable, Mapping, Optional, Sequence, Tuple, Union

import flax.linen as nn
import jax
import jax.numpy as jnp

from common import binarize
from common.models import layers as L

NONLINEARITIES = ('hardtanh', 'prelu', 'relu')
ALPHA_INITS = ('uniform', 'mean_abs_default', 'ones')
# A parameter-free shortcut: ``shortcut(x [B, H, W, C_in], planes, stride) -> [B, H', W', planes]``.
Shortcut = Union[str, Callable]


class BinaryConv(nn.Module):
  """``conv(act_binarizer(x), weight_binarizer(kernel)) * alpha``; no bias (``BinarizeConv2d``).

  Attributes:
    features: C_out.
    kernel_size, strides: ints or pairs; padding is PyTorch's symmetric ``k // 2``.
    act_binarizer: ``f(a, train) -> {-1, 0, +1}`` or None (full-precision input).
    weight_binarizer: ``f(kernel) -> binary kernel`` or None (the kernel is used as given, e.g.
      already binarized on the param tree by the method).
    alpha: None (no scale) or a :func:`common.binarize.alpha_init` kind.
    kernel_init: initialiser of the HWIO kernel ``[k, k, C_in, C_out]``.
  Input ``[B, H, W, C_in]`` -> output ``[B, H', W', C_out]``.
  """
  features: int
  kernel_size: Union[int, Sequence[int]] = 3
  strides: Union[int, Sequence[int]] = 1
  act_binarizer: Optional[Callable] = None
  weight_binarizer: Optional[Callable] = None
  alpha: Optional[str] = 'uniform'
  kernel_init: Callable = nn.initializers.kaiming_normal()

  @nn.compact
  def __call__(self, x, train: bool = False):
    k = (self.kernel_size,) * 2 if isinstance(self.kernel_size, int) else tuple(self.kernel_size)
    s = (self.strides,) * 2 if isinstance(self.strides, int) else tuple(self.strides)
    c_in = x.shape[-1]
    kernel = self.param('kernel', self.kernel_init, (k[0], k[1], c_in, self.features))
    if self.act_binarizer is not None:
      x = self.act_binarizer(x, train)
    w = self.weight_binarizer(kernel) if self.weight_binarizer is not None else kernel
    y = jax.lax.conv_general_dilated(
        x, w.astype(x.dtype), s, [(k[0] // 2, k[0] // 2), (k[1] // 2, k[1] // 2)],
        dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    if self.alpha is not None:
      a = self.param('alpha', binarize.alpha_init(self.alpha, c_in * k[0] * k[1]),
                     (self.features,))
      y = y * a
    return y


class BinaryDense(nn.Module):
  """``act_binarizer(x) @ weight_binarizer(kernel) * alpha``; no bias (a binary linear layer).

  Attributes as :class:`BinaryConv`; kernel ``[C_in, C_out]``; input ``[B, C_in]`` ->
  ``[B, C_out]``.
  """
  features: int
  act_binarizer: Optional[Callable] = None
  weight_binarizer: Optional[Callable] = None
  alpha: Optional[str] = 'uniform'
  kernel_init: Callable = nn.initializers.kaiming_normal()

  @nn.compact
  def __call__(self, x, train: bool = False):
    c_in = x.shape[-1]
    kernel = self.param('kernel', self.kernel_init, (c_in, self.features))
    if self.act_binarizer is not None:
      x = self.act_binarizer(x, train)
    w = self.weight_binarizer(kernel) if self.weight_binarizer is not None else kernel
    y = x @ w.astype(x.dtype)
    if self.alpha is not None:
      y = y * self.param('alpha', binarize.alpha_init(self.alpha, c_in), (self.features,))
    return y


def check_choice(what: str, value, allowed) -> None:
  """ValueError naming ``what``, the bad ``value`` and the allowed ones."""
  if value not in allowed:
    raise ValueError(f'unknown {what} {value!r}; allowed: {list(allowed)}')


def act_binarizer_fn(name: str, table: Mapping[str, Optional[Callable]]) -> Optional[Callable]:
  """The activation binarizer ``table[name]`` (None = full-precision activations)."""
  check_choice('act_binarizer', name, table)
  return table[name]


def hardtanh(x):
  """``nn.Hardtanh``: clip to [-1, 1]."""
  return jnp.clip(x, -1.0, 1.0)


class PReLU(nn.Module):
  """``torch.nn.PReLU(C)``: one slope per channel (last axis), init 0.25.

  ``param_name`` is the slope's key in the params tree (PyTorch's ``weight`` in ReCU's two-stage
  network; ``negative_slope`` in the SiMaN networks).
  """
  init_value: float = 0.25
  param_name: str = 'negative_slope'

  @nn.compact
  def __call__(self, x):
    a = self.param(self.param_name, nn.initializers.constant(self.init_value), (x.shape[-1],))
    return jnp.where(x >= 0, x, a * x)


def nonlinearity(kind: str, name: str) -> Callable:
  """The block nonlinearity: hardtanh, a per-channel PReLU module named ``name``, or ReLU."""
  if kind == 'prelu':
    return PReLU(name=name)
  if kind == 'hardtanh':
    return hardtanh
  if kind == 'relu':
    return nn.relu
  raise ValueError(f'unknown nonlinearity {kind!r}; allowed: {list(NONLINEARITIES)}')


def bn(train: bool, name: str, gamma: float = 1.0, axis_name: Optional[str] = None):
  """BatchNorm with PyTorch defaults (momentum 0.1, eps 1e-5) and scale init ``gamma``."""
  return nn.BatchNorm(use_running_average=not train, momentum=L.BN_MOMENTUM, epsilon=L.BN_EPS,
                      axis_name=axis_name, scale_init=nn.initializers.constant(gamma), name=name)


def binary_conv(features: int, kernel: int, stride: int, *, act_binarizer: Optional[Callable],
                alpha: Optional[str], kernel_init: Callable, name: str) -> BinaryConv:
  """A ``BinarizeConv2d`` whose kernel the method binarizes on the parameter tree.

  ``act_binarizer=None`` and ``alpha=None`` give the same conv in full precision (the FP control
  with the identical layout minus alpha).
  """
  if alpha is not None:
    check_choice('alpha init', alpha, ALPHA_INITS)
  return BinaryConv(features, kernel, stride, act_binarizer=act_binarizer, weight_binarizer=None,
                    alpha=alpha, kernel_init=kernel_init, name=name)


def _shape_changes(x, planes: int, stride: int) -> bool:
  return stride != 1 or x.shape[-1] != planes


class BiRealBlock(nn.Module):
  """Bi-Real block, one shortcut per binary conv: ``[B, H, W, C_in] -> [B, H/s, W/s, planes]``.

  ``h = act(bn1(conv1(x)) + sc(x)); y = act(bn2(conv2(h)) + h)`` (``act`` named ``nonlinear1`` /
  ``nonlinear2``). ``shortcut`` is used when the shape changes: 'fp_conv' (full-precision 1x1
  strided conv + BN, ``downsample_0`` / ``downsample_1``, the ImageNet ``downsample``) or a
  parameter-free ``shortcut(x, planes, stride)``.
  """
  planes: int
  stride: int
  shortcut: Shortcut
  act_binarizer: Optional[Callable]
  alpha: Optional[str]
  kernel_init: Callable
  nonlinearity: str = 'hardtanh'
  bn_gamma: float = 1.0
  bn_axis_name: Optional[str] = None

  @nn.compact
  def __call__(self, x, train: bool):
    conv = lambda f, k, s, name: binary_conv(f, k, s, act_binarizer=self.act_binarizer,
                                             alpha=self.alpha, kernel_init=self.kernel_init,
                                             name=name)
    y = conv(self.planes, 3, self.stride, 'conv1')(x, train)
    y = bn(train, 'bn1', self.bn_gamma, self.bn_axis_name)(y)
    if not _shape_changes(x, self.planes, self.stride):
      sc = x
    elif self.shortcut == 'fp_conv':
      sc = nn.Conv(self.planes, (1, 1), strides=(self.stride, self.stride),
                   padding=((0, 0), (0, 0)), use_bias=False, kernel_init=self.kernel_init,
                   name='downsample_0')(x)
      sc = bn(train, 'downsample_1', self.bn_gamma, self.bn_axis_name)(sc)
    elif callable(self.shortcut):
      sc = self.shortcut(x, self.planes, self.stride)
    else:
      raise ValueError(f"unknown shortcut {self.shortcut!r}; allowed: 'fp_conv' or a function "
                       '(x, planes, stride) -> x')
    h = nonlinearity(self.nonlinearity, 'nonlinear1')(y + sc)
    y = conv(self.planes, 3, 1, 'conv2')(h, train)
    y = bn(train, 'bn2', self.bn_gamma, self.bn_axis_name)(y)
    return nonlinearity(self.nonlinearity, 'nonlinear2')(y + h)


class StandardBlock(nn.Module):
  """Standard block, one shortcut per block: ``[B, H, W, C_in] -> [B, H/s, W/s, planes]``.

  ``y = act(bn2(conv2(act(bn1(conv1(x))))) + sc(x))``. ``shortcut`` (when the shape changes):
  'binary_conv' (a *binarized* 1x1 strided conv + BN, ``shortcut_0`` / ``shortcut_1``, SiMaN's
  ``resnet2.py``) or a parameter-free ``shortcut(x, planes, stride)`` (ReCU's ``resnet2.py``).
  """
  planes: int
  stride: int
  shortcut: Shortcut
  act_binarizer: Optional[Callable]
  alpha: Optional[str]
  kernel_init: Callable
  nonlinearity: str = 'hardtanh'
  bn_axis_name: Optional[str] = None

  @nn.compact
  def __call__(self, x, train: bool):
    conv = lambda f, k, s, name: binary_conv(f, k, s, act_binarizer=self.act_binarizer,
                                             alpha=self.alpha, kernel_init=self.kernel_init,
                                             name=name)
    y = conv(self.planes, 3, self.stride, 'conv1')(x, train)
    y = nonlinearity(self.nonlinearity, 'nonlinear1')(bn(train, 'bn1',
                                                         axis_name=self.bn_axis_name)(y))
    y = conv(self.planes, 3, 1, 'conv2')(y, train)
    y = bn(train, 'bn2', axis_name=self.bn_axis_name)(y)
    if not _shape_changes(x, self.planes, self.stride):
      sc = x
    elif self.shortcut == 'binary_conv':
      sc = conv(self.planes, 1, self.stride, 'shortcut_0')(x, train)
      sc = bn(train, 'shortcut_1', axis_name=self.bn_axis_name)(sc)
    elif callable(self.shortcut):
      sc = self.shortcut(x, self.planes, self.stride)
    else:
      raise ValueError(f"unknown shortcut {self.shortcut!r}; allowed: 'binary_conv' or a "
                       'function (x, planes, stride) -> x')
    return nonlinearity(self.nonlinearity, 'nonlinear2')(y + sc)


def run_stages(x, train: bool, stages: Sequence[int], blocks: Sequence[int], block: Callable):
  """The official ``_make_layer`` loop: stage s has ``blocks[s]`` blocks of ``stages[s]``
  channels, stride 2 at the first block of every stage after the first; ``block(planes, stride,
  name)`` builds one (names ``layer{s+1}_{b}``, the params-tree keys)."""
  for s, (planes, n) in enumerate(zip(stages, blocks)):
    for b in range(n):
      x = block(planes, 2 if (s > 0 and b == 0) else 1, f'layer{s + 1}_{b}')(x, train)
  return x


def pooled_head(module: nn.Module, x, train: bool, num_classes: int, *, fc_name: str,
                bn1d_name: Optional[str], dense_init: str = 'pytorch',
                bn_axis_name: Optional[str] = None):
  """Global average pool (``[B, C]``, sown as ``intermediates/features``), optional BatchNorm1d
  (gamma 1), the full-precision classifier -> ``[B, num_classes]``."""
  feats = L.global_avg_pool(x)
  module.sow('intermediates', 'features', feats)
  if bn1d_name is not None:
    feats = bn(train, bn1d_name, axis_name=bn_axis_name)(feats)
  return L.dense(num_classes, in_ch=feats.shape[-1], init=dense_init, name=fc_name)(feats)


def parse_resnet_widths(name: str, widths, num_stages: int) -> Tuple[int, Tuple[int, ...]]:
  """Validates ``{'stem': int, 'stages': [int] * num_stages}``; returns ``(stem, stages)``."""
  L.check_keys(name, widths, ('stem', 'stages'))
  stem = L.check_pos_int(f'{name} widths["stem"]', widths['stem'])
  stages = L.check_int_list(f'{name} widths["stages"]', widths['stages'], num_stages)
  return stem, tuple(stages)


class VGGSmall(nn.Module):
  """VGG-Small 1w1a: ``[B, 32, 32, 3] -> [B, num_classes]``; ``widths`` = the six conv widths.

  FP conv0 -> BN -> act; bconv1 -> MaxPool -> BN -> act; bconv2 -> BN -> act; bconv3 -> MaxPool
  -> ...; bconv5 -> MaxPool -> BN -> act; flatten -> FP Linear ``fc`` (no BatchNorm1d). Sows the
  flattened features ``[B, 16 * widths[-1]]`` as ``intermediates/features``.

  Attributes:
    act_binarizer, alpha: of the five binary convs (None, None: the same network in FP).
    nonlinearity: ``act`` (modules ``nonlinear{i}`` when it is a PReLU).
    kernel_init: of every conv (official ``N(0, sqrt(2 / (9 C_out)))``).
    dense_init: ``common.models.layers`` scheme of the classifier (official N(0, 0.01), bias 0).
    flatten: 'chw' (PyTorch's ``x.view(B, -1)`` of the NCHW map) or 'hwc' (NHWC order).
  """
  num_classes: int
  widths: Sequence[int]
  act_binarizer: Optional[Callable]
  alpha: Optional[str]
  nonlinearity: str
  kernel_init: Callable
  dense_init: str = 'normal_0.01'
  flatten: str = 'chw'
  bn_axis_name: Optional[str] = None

  @nn.compact
  def __call__(self, x, train: bool):
    w = L.check_int_list('VGG-Small widths', list(self.widths), 6)
    check_choice('flatten order', self.flatten, ('chw', 'hwc'))
    x = nn.Conv(w[0], (3, 3), padding=((1, 1), (1, 1)), use_bias=False,
                kernel_init=self.kernel_init, name='conv0')(x)
    x = nonlinearity(self.nonlinearity, 'nonlinear0')(
        bn(train, 'bn0', axis_name=self.bn_axis_name)(x))
    for i in range(1, 6):
      x = binary_conv(w[i], 3, 1, act_binarizer=self.act_binarizer, alpha=self.alpha,
                      kernel_init=self.kernel_init, name=f'conv{i}')(x, train)
      if i % 2 == 1:   # the official forward pools *before* the BN of conv1/3/5
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
      x = bn(train, f'bn{i}', axis_name=self.bn_axis_name)(x)
      x = nonlinearity(self.nonlinearity, f'nonlinear{i}')(x)
    if self.flatten == 'chw':
      x = jnp.transpose(x, (0, 3, 1, 2))
    feats = x.reshape(x.shape[0], -1)
    self.sow('intermediates', 'features', feats)
    return L.dense(self.num_classes, in_ch=feats.shape[-1], init=self.dense_init, name='fc')(feats)
