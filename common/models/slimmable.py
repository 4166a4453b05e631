"""Slimmable MobileNet-V1 / V2: one max-width network, any prefix-width subnet selected by data.

A subnet keeps the first ``c_l`` output channels of every layer ``l`` (the prefix slicing of
``USConv2d`` / ``USBatchNorm2d``: JiahuiYu/slimmable_networks ``models/slimmable_ops.py``, reused
by chenbong/PSS-Net ``models/slimmable_ops.py``). Here the network always runs at its maximum
width and the active widths arrive as an int vector ``counts``; every layer multiplies its
output by the mask ``arange(C_max) < c_l``. Widths are data, not shapes, so one compilation
serves every subnet of an input resolution.

Why masking equals slicing (tested in ``tests/common/test_slimmable.py``):

* a conv whose inputs beyond the active width are zero computes exactly the sliced conv on the
  active outputs; the inactive outputs are masked to zero;
* a depthwise conv maps channel c to channel c, so zero inputs stay zero;
* BatchNorm: batch statistics are per channel, so the active channels see the statistics of the
  sliced network. The mask is applied *after* the affine map (otherwise inactive channels would
  output beta), and the running statistics are updated on the active channels only (slicing
  leaves the rest of the buffer untouched);
* global average pooling and the classifier see zeros in the inactive channels.

Gradients of the shared parameters are those of the sliced network: inactive slices get zero
gradient (but still decay, as the whole PyTorch tensor does).

Counts layout (``counts_of`` builds it from a zoo width config):

* ``slim_mobilenet_v1`` / ``slim_mobilenet_v1_tiny``: the zoo's MobileNet-V1 width list
  ``[stem, pw_1, ..., pw_n]`` (chenbong/PSS-Net's 14 per-layer widths for the ImageNet net);
* ``slim_mobilenet_v2``: ``[stem, hidden_0..hidden_{n-1}, out_0..out_{n-1}]`` of the zoo's
  MobileNet-V2 width dict; ``last`` (1280) is never sliced, as in chenbong/PSS-Net
  ``models/mobilenet_v2.py``.

Param and batch-stats trees are those of the zoo model of the same max widths (same module
names), so :func:`slice_variables` turns supernet variables into the variables of a plain narrow
zoo model, which then runs on its own.

BatchNorm: besides the running statistics, every BN sows its batch mean and *unbiased* batch
variance into the ``bn_batch`` collection (``mutable=['bn_batch']``), which is what an exact
post-training recalibration (``ComputePostBN``) averages.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from common.models import layers as L
from common.models import mobilenet_v1 as mbv1
from common.models import mobilenet_v2 as mbv2
from common.models.registry import register


def channel_mask(count, size: int):
  """``[size]`` float32: 1.0 on the first ``count`` channels (``count`` a traced int scalar)."""
  return (jnp.arange(size) < count).astype(jnp.float32)


class MaskedBatchNorm(nn.Module):
  """BatchNorm over NHWC whose channels beyond ``mask`` are inactive (``mask [C]`` of 0/1).

  Same variables as ``common.models.layers.batch_norm`` (params ``scale, bias``; batch stats
  ``mean, var``; momentum 0.9 = PyTorch 0.1, eps 1e-5, biased running variance as Flax stores
  it), same arithmetic as ``flax.linen.BatchNorm`` (fast variance ``E[x^2] - E[x]^2``).
  ``y = mask * (scale (x - mu) / sqrt(var + eps) + bias)``. In training, only the active entries
  of the running statistics move. Sows ``bn_batch/{mean, var}``: the batch mean and unbiased
  batch variance (``n / (n - 1)``, as PyTorch's running variance uses).
  """
  use_running_average: bool
  axis_name: Optional[str] = None

  @nn.compact
  def __call__(self, x, mask):
    c = x.shape[-1]
    scale = self.param('scale', nn.initializers.ones, (c,))
    bias = self.param('bias', nn.initializers.zeros, (c,))
    ra_mean = self.variable('batch_stats', 'mean', lambda: jnp.zeros((c,), jnp.float32))
    ra_var = self.variable('batch_stats', 'var', lambda: jnp.ones((c,), jnp.float32))
    if self.use_running_average:
      mean, var = ra_mean.value, ra_var.value
    else:
      axes = tuple(range(x.ndim - 1))
      mean = jnp.mean(x, axes)
      mean2 = jnp.mean(jnp.square(x), axes)
      if self.axis_name is not None and not self.is_initializing():
        mean, mean2 = jax.lax.pmean((mean, mean2), self.axis_name)
      var = jnp.maximum(0.0, mean2 - jnp.square(mean))
      n = int(np.prod([x.shape[a] for a in axes]))
      self.sow('bn_batch', 'mean', mean, reduce_fn=lambda _, b: b)
      self.sow('bn_batch', 'var', var * (n / max(n - 1, 1)), reduce_fn=lambda _, b: b)
      if not self.is_initializing():
        on = mask > 0
        m = L.BN_MOMENTUM
        ra_mean.value = jnp.where(on, m * ra_mean.value + (1 - m) * mean, ra_mean.value)
        ra_var.value = jnp.where(on, m * ra_var.value + (1 - m) * var, ra_var.value)
    y = (x - mean) * (jax.lax.rsqrt(var + L.BN_EPS) * scale) + bias
    return y * mask


def _split_counts(counts, sizes: Sequence[int]):
  """``counts [len(sizes)]`` (None: full widths) -> list of ``[size]`` masks."""
  if counts is None:
    return [jnp.ones((s,), jnp.float32) for s in sizes]
  counts = jnp.asarray(counts)
  if counts.shape != (len(sizes),):
    raise ValueError(f'counts must have shape ({len(sizes)},); got {counts.shape}')
  return [channel_mask(counts[i], s) for i, s in enumerate(sizes)]


class SlimMobileNetV1(nn.Module):
  """Masked MobileNet-V1 (layout of ``common.models.mobilenet_v1``).

  ``__call__(x [B, H, W, 3], train, counts=None) -> logits [B, num_classes]``; ``counts``: int
  ``[n + 1]`` active widths ``[stem, pw_1, ..., pw_n]`` (None: all of ``widths``). Each depthwise
  conv inherits its input's mask.
  """
  num_classes: int
  widths: Tuple[int, ...]
  strides: Tuple[int, ...]
  stem_stride: int = 2
  act: Any = 'relu6'
  init_scheme: str = 'kaiming_normal_fan_out'
  dense_init: Optional[str] = 'normal_0.01'
  bn_axis_name: Optional[str] = None

  @nn.compact
  def __call__(self, x, train: bool, counts=None):
    init, dense_init = L.check_init(self.init_scheme, self.dense_init)
    act = L.act_fn(self.act)
    masks = _split_counts(counts, self.widths)
    bn = lambda name: MaskedBatchNorm(not train, self.bn_axis_name, name=name)
    x = L.conv(self.widths[0], 3, in_ch=x.shape[-1], stride=self.stem_stride, init=init,
               name='conv1')(x)
    x = act(bn('bn1')(x, masks[0])) * masks[0]
    for i, (w, s) in enumerate(zip(self.widths[1:], self.strides)):
      x = _SlimDepthwiseSeparable(w, s, self.act, init, self.bn_axis_name, train,
                                  name=f'block{i}')(x, masks[i], masks[i + 1])
    feats = L.global_avg_pool(x)
    return L.classifier(feats, self.num_classes, as_conv=False, init=dense_init)


class _SlimDepthwiseSeparable(nn.Module):
  out: int
  stride: int
  act: Any
  init: str = 'kaiming_normal_fan_out'
  bn_axis_name: Optional[str] = None
  train: bool = False

  @nn.compact
  def __call__(self, x, in_mask, out_mask):
    act = L.act_fn(self.act)
    bn = lambda name: MaskedBatchNorm(not self.train, self.bn_axis_name, name=name)
    c = x.shape[-1]
    x = L.conv(c, 3, in_ch=c, stride=self.stride, groups=c, init=self.init, name='dw_conv')(x)
    x = act(bn('dw_bn')(x, in_mask)) * in_mask
    x = L.conv(self.out, 1, in_ch=c, init=self.init, name='pw_conv')(x)
    return act(bn('pw_bn')(x, out_mask)) * out_mask


class SlimMobileNetV2(nn.Module):
  """Masked MobileNet-V2, ImageNet layout of ``common.models.mobilenet_v2``.

  ``__call__(x [B, H, W, 3], train, counts=None) -> logits``; ``counts``: int ``[1 + 2n]`` =
  ``[stem, hidden_0..hidden_{n-1}, out_0..out_{n-1}]`` (None: all of the max widths). The
  residual plan (which blocks add an identity shortcut) is that of the max widths; the blocks of
  a stage share their output width, so the sums stay channel-consistent.
  """
  num_classes: int
  stem: int
  hidden: Tuple[int, ...]
  out: Tuple[int, ...]
  last: int
  strides: Tuple[int, ...]
  stem_stride: int = 2
  act: Any = 'relu6'
  init_scheme: str = 'kaiming_normal_fan_out'
  dense_init: Optional[str] = 'normal_0.01'
  bn_axis_name: Optional[str] = None

  @nn.compact
  def __call__(self, x, train: bool, counts=None):
    init, dense_init = L.check_init(self.init_scheme, self.dense_init)
    act = L.act_fn(self.act)
    n = len(self.out)
    masks = _split_counts(counts, (self.stem,) + tuple(self.hidden) + tuple(self.out))
    m_stem, m_hidden, m_out = masks[0], masks[1:1 + n], masks[1 + n:]
    bn = lambda name: MaskedBatchNorm(not train, self.bn_axis_name, name=name)
    x = L.conv(self.stem, 3, in_ch=x.shape[-1], stride=self.stem_stride, init=init,
               name='conv1')(x)
    x = act(bn('bn1')(x, m_stem)) * m_stem
    plan = mbv2.block_plan('imagenet', self.stem, self.hidden, self.out, self.strides)
    in_mask = m_stem
    for i, ((_, expand, shortcut), h, o, s) in enumerate(zip(plan, self.hidden, self.out,
                                                              self.strides)):
      x = _SlimInvertedResidual(h, o, s, expand, shortcut, self.act, init, self.bn_axis_name,
                                train, name=f'block{i}')(x, in_mask, m_hidden[i], m_out[i])
      in_mask = m_out[i]
    x = L.conv(self.last, 1, in_ch=x.shape[-1], init=init, name='conv_last')(x)
    x = act(bn('bn_last')(x, jnp.ones((self.last,), jnp.float32)))
    return L.classifier(L.global_avg_pool(x), self.num_classes, as_conv=False, init=dense_init)


class _SlimInvertedResidual(nn.Module):
  hidden: int
  out: int
  stride: int
  expand: bool
  shortcut: str
  act: Any
  init: str = 'kaiming_normal_fan_out'
  bn_axis_name: Optional[str] = None
  train: bool = False

  @nn.compact
  def __call__(self, x, in_mask, hidden_mask, out_mask):
    act = L.act_fn(self.act)
    bn = lambda name: MaskedBatchNorm(not self.train, self.bn_axis_name, name=name)
    cin = x.shape[-1]
    y = x
    if self.expand:
      y = L.conv(self.hidden, 1, in_ch=cin, init=self.init, name='expand_conv')(y)
      y = act(bn('expand_bn')(y, hidden_mask)) * hidden_mask
    else:
      # t = 1: the depthwise conv runs on the block input, so its width is the input's.
      hidden_mask = in_mask
    y = L.conv(self.hidden, 3, in_ch=self.hidden, stride=self.stride, groups=self.hidden,
               init=self.init, name='dw_conv')(y)
    y = act(bn('dw_bn')(y, hidden_mask)) * hidden_mask
    y = L.conv(self.out, 1, in_ch=self.hidden, init=self.init, name='project_conv')(y)
    y = bn('project_bn')(y, out_mask)
    if self.shortcut == 'identity':
      y = y + x
    return y


# ---------------------------------------------------------------------------------------------
# Host-side helpers: counts of a zoo width config, slicing supernet variables.

ZOO_NAME = {'slim_mobilenet_v1': 'mobilenet_v1', 'slim_mobilenet_v1_tiny': 'mobilenet_v1_tiny',
            'slim_mobilenet_v2': 'mobilenet_v2'}


def counts_of(name: str, widths) -> np.ndarray:
  """int32 ``counts`` vector of a zoo width config (module docstring layout).

  Args:
    name: a ``slim_*`` name (or its zoo name ``mobilenet_v1``, ``mobilenet_v1_tiny``,
      ``mobilenet_v2``).
    widths: MobileNet-V1 width list, or MobileNet-V2 width dict.
  """
  zoo = ZOO_NAME.get(name, name)
  if zoo.startswith('mobilenet_v1'):
    return np.asarray(list(widths), np.int32)
  if zoo == 'mobilenet_v2':
    return np.asarray([widths['stem']] + list(widths['hidden']) + list(widths['out']), np.int32)
  raise ValueError(f'unknown slimmable model {name!r}; allowed: {sorted(ZOO_NAME)}')


def slice_variables(variables, narrow_shapes):
  """Prefix-slices every leaf of ``variables`` to the shape of the matching ``narrow_shapes`` leaf.

  ``v[:s_0, :s_1, ...]`` is what ``USConv2d`` / ``USBatchNorm2d`` compute with
  (``weight[:out, :in]``, ``running_mean[:c]``). Args: two trees of the same structure (arrays;
  shape-structs, e.g. from ``jax.eval_shape`` of the narrow model's ``init``).
  """
  def cut(v, s):
    shape = tuple(s.shape)
    if len(shape) != np.ndim(v) or any(a > b for a, b in zip(shape, np.shape(v))):
      raise ValueError(f'cannot slice a {np.shape(v)} leaf to {shape}')
    return v[tuple(slice(0, a) for a in shape)]
  return jax.tree.map(cut, variables, narrow_shapes)


def _register():
  for slim, zoo in ZOO_NAME.items():
    def build(num_classes, widths, zoo=zoo, strides=None, stem_stride=None,
              init='kaiming_normal_fan_out', dense_init='normal_0.01', act='relu6', **kwargs):
      L.check_init(init, dense_init)
      L.act_fn(act)
      if zoo.startswith('mobilenet_v1'):
        ws, st, ss = mbv1.parse(zoo, widths, strides, stem_stride)
        return SlimMobileNetV1(num_classes=num_classes, widths=ws, strides=st, stem_stride=ss,
                               act=act, init_scheme=init, dense_init=dense_init, **kwargs)
      stem, hidden, out, last, st, ss = mbv2.parse(zoo, 'imagenet', widths, strides, stem_stride)
      return SlimMobileNetV2(num_classes=num_classes, stem=stem, hidden=hidden, out=out,
                             last=last, strides=st, stem_stride=ss, act=act, init_scheme=init,
                             dense_init=dense_init, **kwargs)

    def specs(widths, input_hw, num_classes, zoo=zoo, **kwargs):
      from common.models.registry import layer_specs
      kwargs.setdefault('act', 'relu6')
      return layer_specs(zoo, widths=widths, input_hw=input_hw, num_classes=num_classes,
                         **kwargs)

    if zoo.startswith('mobilenet_v1'):
      default = lambda zoo=zoo: list(mbv1.CONFIGS[zoo]['widths'])
    else:
      default = mbv2.default_widths
    register(slim, default_widths=default, specs=specs)(build)


_register()
