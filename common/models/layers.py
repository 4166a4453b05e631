"""Conv / BN / dense building blocks shared by the model zoo, with PyTorch-faithful defaults.

Why these wrappers exist (PyTorch's ``torch.nn.Conv2d`` / ``BatchNorm2d`` / ``Linear`` defaults,
which every official repository reimplemented here trains with):

* Padding is always the explicit symmetric PyTorch padding ``k // 2`` (never Flax 'SAME', which
  pads stride-2 convs asymmetrically ``(0, 1)`` and would break converted torchvision weights).
* BatchNorm uses momentum 0.9 (= PyTorch 0.1) and eps 1e-5; scale 1, bias 0 (PyTorch default).
* Initialisers reproduce PyTorch's, because the from-scratch papers (DCFF, White-Box) depend on
  them; the scheme is chosen by a string so configs can carry it:

  * ``'pytorch'``: kernel kaiming-uniform(a=sqrt 5) = U(+-1/sqrt(fan_in)); bias U(+-1/sqrt(fan_in)).
  * ``'kaiming_normal_fan_in'``: kernel N(0, 2/fan_in) (akamaster ResNet-CIFAR ``_weights_init``);
    bias PyTorch default U(+-1/sqrt(fan_in)).
  * ``'kaiming_normal_fan_out'``: kernel N(0, 2/fan_out) (torchvision); conv bias 0.
  * ``'flax'``: lecun-normal kernel, bias 0 (Flax defaults).

  The classifier (``dense_init``) defaults to what the same PyTorch code does with its Linear:
  ``'pytorch'`` for 'pytorch' and 'kaiming_normal_fan_out' (torchvision ResNets leave the Linear
  at its default), ``'kaiming_normal_fan_in'`` for 'kaiming_normal_fan_in' (akamaster's
  ``_weights_init`` also hits the Linear), lecun-normal for 'flax'. ``'normal_0.01'`` (weight
  N(0, 0.01), bias 0) is the torchvision VGG / MobileNet-V2 / White-Box VGG classifier init.

  fan_in / fan_out follow PyTorch: ``fan_in = C_in/groups * k * k``, ``fan_out = C_out * k * k``
  (Flax's variance-scaling on HWIO kernels computes exactly these).

CPU training convolutions: by default the convs built here, depthwise ones included, compute
through ``xla_ext.conv.conv_general_dilated``: oneDNN's forward, input-gradient and weight-gradient
kernels on CPU, XLA's own convolution on every other platform (chosen per platform with
``jax.lax.platform_dependent`` when the program is lowered). Parameters, initialisers and shapes
are unchanged; values and gradients equal XLA's up to float32 summation order.
``COMPRESS_JAX_CPU_CONV=0`` in the environment (or ``with cpu_conv(False):`` while a model is
traced) keeps XLA's convolution everywhere. Without the compiled kernels
(``xla_ext.conv.available()`` False) XLA's convolution runs, with a warning once when the kernels
were asked for explicitly (``=1`` or ``cpu_conv(True)``).
"""
from __future__ import annotations

import contextlib
import contextvars
import math
import numbers
import os
import warnings
from typing import Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

INITS = ('pytorch', 'kaiming_normal_fan_in', 'kaiming_normal_fan_out', 'flax')
DENSE_INITS = ('pytorch', 'kaiming_normal_fan_in', 'kaiming_normal_fan_out', 'flax', 'normal_0.01')

CPU_CONV_ENV = 'COMPRESS_JAX_CPU_CONV'
_CPU_CONV_ON = ('1', 'true', 'on', 'yes')
_CPU_CONV_OFF = ('0', 'false', 'off', 'no')
_cpu_conv_override: contextvars.ContextVar = contextvars.ContextVar('cpu_conv', default=None)
_cpu_conv_warned = False

BN_MOMENTUM = 0.9   # running = 0.9 running + 0.1 batch: PyTorch's momentum=0.1
BN_EPS = 1e-5


def check_init(init: str, dense_init: Optional[str] = None) -> Tuple[str, str]:
  """Validates the initialiser names; returns ``(init, resolved dense_init)``."""
  if init not in INITS:
    raise ValueError(f'unknown init {init!r}; allowed: {list(INITS)}')
  if dense_init is None:
    dense_init = {'pytorch': 'pytorch', 'kaiming_normal_fan_in': 'kaiming_normal_fan_in',
                  'kaiming_normal_fan_out': 'pytorch', 'flax': 'flax'}[init]
  if dense_init not in DENSE_INITS:
    raise ValueError(f'unknown dense_init {dense_init!r}; allowed: {list(DENSE_INITS)}')
  return init, dense_init


def kernel_init(init: str):
  """Kernel initialiser of a scheme (HWIO conv or ``[in, out]`` dense kernels)."""
  if init == 'pytorch':
    # kaiming_uniform(a=sqrt(5)): gain^2 = 2/(1+5) = 1/3 -> bound sqrt(3 * (1/3) / fan_in).
    return nn.initializers.variance_scaling(1.0 / 3.0, 'fan_in', 'uniform')
  if init == 'kaiming_normal_fan_in':
    return nn.initializers.variance_scaling(2.0, 'fan_in', 'normal')
  if init == 'kaiming_normal_fan_out':
    return nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')
  if init == 'flax':
    return nn.initializers.lecun_normal()
  if init == 'normal_0.01':
    return nn.initializers.normal(0.01)
  raise ValueError(f'unknown init {init!r}; allowed: {list(DENSE_INITS)}')


def bias_init(init: str, fan_in: int, *, is_dense: bool = False):
  """Bias initialiser: PyTorch's U(+-1/sqrt(fan_in)) or zeros (see the module table)."""
  zero = (init in ('flax', 'normal_0.01')) or (init == 'kaiming_normal_fan_out' and not is_dense)
  if zero:
    return nn.initializers.zeros
  bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0

  def init_fn(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)
  return init_fn


def _cpu_conv_setting() -> Optional[bool]:
  """The explicit choice: the innermost :func:`cpu_conv` context, else ``$COMPRESS_JAX_CPU_CONV``
  (1/true/on/yes -> True, 0/false/off/no -> False); None when neither says (unset or empty)."""
  override = _cpu_conv_override.get()
  if override is not None:
    return override
  value = os.environ.get(CPU_CONV_ENV, '').strip().lower()
  if value == '':
    return None
  if value in _CPU_CONV_ON:
    return True
  if value in _CPU_CONV_OFF:
    return False
  raise ValueError(f'{CPU_CONV_ENV}={os.environ[CPU_CONV_ENV]!r}: allowed values are '
                   f'{list(_CPU_CONV_ON)} (on), {list(_CPU_CONV_OFF)} (off), or unset (on)')


def cpu_conv_enabled() -> bool:
  """Whether the convs built now use the CPU kernels: the innermost :func:`cpu_conv` context, else
  ``$COMPRESS_JAX_CPU_CONV`` (1/true/on/yes or 0/false/off/no); on when neither says.

  Raises:
    ValueError: the environment variable holds anything else.
  """
  setting = _cpu_conv_setting()
  return True if setting is None else setting


@contextlib.contextmanager
def cpu_conv(enabled: bool):
  """Within the block, models traced build their convs with (True) or without (False) the CPU
  kernels, whatever the environment says (e.g. both arms of a benchmark in one process)."""
  if not isinstance(enabled, bool):
    raise ValueError(f'cpu_conv(enabled) takes a bool; got {enabled!r}')
  token = _cpu_conv_override.set(enabled)
  try:
    yield
  finally:
    _cpu_conv_override.reset(token)


def cpu_conv_fn():
  """``xla_ext.conv.conv_general_dilated`` when the CPU kernels are enabled and built, else None
  (the conv then calls ``lax.conv_general_dilated`` as usual)."""
  global _cpu_conv_warned
  setting = _cpu_conv_setting()
  if setting is False:
    return None
  from xla_ext import conv as xla_conv  # pylint: disable=g-import-not-at-top
  if not xla_conv.available():
    if setting and not _cpu_conv_warned:   # the default falls back silently
      warnings.warn(f'{CPU_CONV_ENV} is on but the CPU conv kernels are not available '
                    f'({xla_conv.load_error()}); using XLA\'s convolution')
      _cpu_conv_warned = True
    return None
  return xla_conv.conv_general_dilated


def as_pair(s) -> Tuple[int, int]:
  """None | int | pair -> ``(sh, sw)`` (None: 1)."""
  if s is None:
    return (1, 1)
  if isinstance(s, numbers.Integral):
    return (int(s), int(s))
  return tuple(int(v) for v in s)


def explicit_padding(padding, in_hw, kernel_hw, strides) -> Tuple[Tuple[int, int], Tuple[int, int]]:
  """Flax/lax padding spec ('SAME' | 'VALID' | int | pairs) -> ``((top, bottom), (left, right))``."""
  if isinstance(padding, str):
    return tuple(tuple(int(v) for v in p) for p in
                 jax.lax.padtype_to_pads(in_hw, kernel_hw, strides, padding.upper()))
  if isinstance(padding, numbers.Integral):
    return ((int(padding), int(padding)),) * 2
  return tuple(tuple(int(v) for v in p) for p in padding)


def depthwise_conv(x, kernel, strides, padding):
  """Depthwise conv ``[B, H, W, C] * [kh, kw, 1, C] -> [B, Ho, Wo, C]`` as a sum of shifted slices.

  Equals ``lax.conv_general_dilated(x, kernel, strides, padding, feature_group_count=C)`` up to
  float32 summation order. Why not that call: XLA:CPU lowers a grouped convolution with
  ``feature_group_count == C`` to a slow generic loop, 20-100x slower at MobileNet shapes than
  ``sum_{dy,dx} slice(x, dy, dx) * w[dy, dx]`` (forward and backward), which then dominated the
  MobileNets' training and CPU inference time.

  Args:
    x: NHWC input; kernel: HWIO depthwise kernel ``[kh, kw, 1, C]``.
    strides: int or (sh, sw); padding: 'SAME' | 'VALID' | int | ((top, bottom), (left, right)).
  """
  kh, kw = kernel.shape[:2]
  sh, sw = as_pair(strides)
  b, h, w, c = x.shape
  (pt, pb), (pl, pr) = explicit_padding(padding, (h, w), (kh, kw), (sh, sw))
  xp = jnp.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
  ho, wo = (h + pt + pb - kh) // sh + 1, (w + pl + pr - kw) // sw + 1
  acc = None
  for dy in range(kh):
    for dx in range(kw):
      t = jax.lax.slice(xp, (0, dy, dx, 0), (b, dy + (ho - 1) * sh + 1, dx + (wo - 1) * sw + 1, c),
                        (1, sh, sw, 1)) * kernel[dy, dx, 0]
      acc = t if acc is None else acc + t
  return acc


class DepthwiseConv(nn.Conv):
  """``nn.Conv`` with ``feature_group_count == C_in == features``, computed by
  :func:`depthwise_conv`: same parameters (HWIO ``kernel [kh, kw, 1, C]``, ``bias [C]``) and the
  same initialisers, so checkpoints, masks and layer specs are those of an ``nn.Conv``.

  With ``conv_general_dilated`` set (the CPU kernels, see the module docstring) it is called as a
  grouped convolution (``feature_group_count = C``) instead: oneDNN's depthwise kernels.
  """

  @nn.compact
  def __call__(self, inputs):
    c = inputs.shape[-1]
    if not (self.feature_group_count == c == self.features):
      raise ValueError(f'DepthwiseConv {self.name!r}: needs feature_group_count == C_in == '
                       f'features; got {self.feature_group_count}, {c}, {self.features}')
    kernel = self.param('kernel', self.kernel_init, tuple(self.kernel_size) + (1, self.features),
                        self.param_dtype)
    bias = (self.param('bias', self.bias_init, (self.features,), self.param_dtype)
            if self.use_bias else None)
    inputs, kernel, bias = nn.dtypes.promote_dtype(inputs, kernel, bias, dtype=self.dtype)
    if self.conv_general_dilated is not None:
      strides = as_pair(self.strides)
      pads = explicit_padding(self.padding, inputs.shape[1:3], kernel.shape[:2], strides)
      y = self.conv_general_dilated(inputs, kernel, strides, pads,
                                    dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
                                    feature_group_count=c)
    else:
      y = depthwise_conv(inputs, kernel, self.strides, self.padding)
    return y if bias is None else y + bias


def conv(features: int, kernel: int, *, in_ch: int, stride: int = 1, groups: int = 1,
         bias: bool = False, init: str = 'pytorch', name: str) -> nn.Conv:
  """``nn.Conv`` with PyTorch padding ``kernel // 2`` and the scheme's initialisers.

  Args:
    features: output channels C_out.
    kernel: square kernel size k.
    in_ch: input channels C_in (needed for the PyTorch bias bound, fan_in = C_in/groups*k*k).
    stride, groups: as in PyTorch (``groups = C_in = C_out`` is a depthwise conv).
    bias: conv bias.
    init: one of :data:`INITS` (or :data:`DENSE_INITS` for a classifier implemented as a conv).
    name: module name (the params-tree key).
  Returns:
    the module (a :class:`DepthwiseConv` for depthwise convs); applied to NHWC
    ``[B, H, W, C_in]`` it gives ``[B, H', W', C_out]`` with ``H' = (H + 2*(k//2) - k) // stride + 1``.
  """
  if in_ch % groups or features % groups:
    raise ValueError(f'conv {name!r}: in_ch={in_ch} and features={features} must be divisible '
                     f'by groups={groups}')
  p = kernel // 2
  fan_in = in_ch // groups * kernel * kernel
  # Depthwise convs (groups == C_in == C_out) as shifted slices: see depthwise_conv.
  cls = DepthwiseConv if groups > 1 and groups == in_ch == features else nn.Conv
  return cls(features, (kernel, kernel), strides=(stride, stride), padding=((p, p), (p, p)),
             feature_group_count=groups, use_bias=bias, kernel_init=kernel_init(init),
             bias_init=bias_init(init, fan_in), conv_general_dilated=cpu_conv_fn(), name=name)


def batch_norm(train: bool, name: str, axis_name: Optional[str] = None) -> nn.BatchNorm:
  """BatchNorm with PyTorch's defaults (momentum 0.1 -> Flax 0.9, eps 1e-5, scale 1, bias 0).

  Flax stores the *biased* batch variance in ``batch_stats/var``; PyTorch stores the unbiased one
  (``torch.nn.BatchNorm2d`` docs): a ``B*H*W / (B*H*W - 1)`` difference in the running variance
  only.
  """
  return nn.BatchNorm(use_running_average=not train, momentum=BN_MOMENTUM, epsilon=BN_EPS,
                      axis_name=axis_name, name=name)


def dense(features: int, *, in_ch: int, bias: bool = True, init: str = 'pytorch',
          name: str) -> nn.Dense:
  """``nn.Dense`` (PyTorch ``nn.Linear``) with the scheme's initialisers; kernel ``[in, out]``."""
  return nn.Dense(features, use_bias=bias, kernel_init=kernel_init(init),
                  bias_init=bias_init(init, in_ch, is_dense=True), name=name)


def classifier(feats, num_classes: int, *, as_conv: bool, init: str, name: str = 'fc'):
  """The final linear layer on pooled features ``[B, C] -> [B, num_classes]`` (with bias).

  ``as_conv=True`` implements it as a 1x1 conv with bias (kernel ``[1, 1, C, K]``), as the 1xN and
  Lottery-Jackpot code do (lmbxmu/1xN ``models/``, zyxxmu/lottery-jackpots ``models/``: the
  classifier is a 1x1 conv with bias), so that masks / rearrangement treat it like a conv.
  """
  c = feats.shape[-1]
  if as_conv:
    y = conv(num_classes, 1, in_ch=c, bias=True, init=init, name=name)(feats[:, None, None, :])
    return y.reshape(y.shape[0], num_classes)
  return dense(num_classes, in_ch=c, init=init, name=name)(feats)


def global_avg_pool(x):
  """``[B, H, W, C] -> [B, C]`` (AdaptiveAvgPool2d(1) + flatten)."""
  return jnp.mean(x, axis=(1, 2))


def act_fn(act):
  """The activation callable of ``act``: 'relu', 'relu6' (MobileNet-V2's), or any callable
  ``Array -> Array`` of the same shape (returned as is, e.g. ``jnp.tanh``)."""
  if callable(act):
    return act
  if act == 'relu':
    return nn.relu
  if act == 'relu6':
    return nn.relu6
  raise ValueError(f'unknown activation {act!r}; allowed: relu, relu6 or a callable')


def check_int_list(name: str, value, length: Optional[int] = None) -> Tuple[int, ...]:
  """Validates a list of positive ints (a width list); returns it as a tuple."""
  if not isinstance(value, (list, tuple)):
    raise ValueError(f'{name} must be a list of positive ints; got {value!r}')
  out = []
  for v in value:
    if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v <= 0:
      raise ValueError(f'{name} must hold positive ints; got {v!r} in {list(value)!r}')
    out.append(int(v))
  if length is not None and len(out) != length:
    raise ValueError(f'{name} must have {length} entries; got {len(out)}: {list(value)!r}')
  return tuple(out)


def check_pos_int(name: str, v) -> int:
  """Validates one positive int width."""
  if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v <= 0:
    raise ValueError(f'{name} must be a positive int; got {v!r}')
  return int(v)


def check_keys(model: str, widths, keys: Sequence[str]):
  """Validates that a dict width config has exactly ``keys``."""
  if not isinstance(widths, dict):
    raise ValueError(f'{model} widths must be a dict with keys {list(keys)}; got {widths!r}')
  if set(widths) != set(keys):
    raise ValueError(f'{model} widths must have exactly the keys {sorted(keys)}; '
                     f'got {sorted(widths)}')
