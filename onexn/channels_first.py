"""Channels-first inference forward of an exported 1xN model (the paper's Fig. 5 deployment graph).

:class:`onexn.export.SparseModel` runs the zoo's NHWC ``__call__`` with its layers intercepted, so
every packed 1x1 conv pays a layout conversion inside the NHWC kernel and its bias, residual sum
and ReLU6 are separate XLA passes behind a custom call XLA cannot fuse into. The deployment graph
of the paper's latency figure (TVM on the official ONNX export: NCHW, BN folded, epilogues fused)
keeps activations channels-first. This module builds that graph for an exported MobileNet:

* activations are ``[B, C, P]`` with the pixels flattened row-major in a *padded-width* layout:
  ``P = h * (w + 2)``, 2 junk columns per row (:func:`to_padded_width`). The junk columns are the
  zero padding of the next 3x3 conv, so every conv tap is a unit-stride slice (:func:`taps3x3`);
  1x1 convs, bias, residual sums and activations run on the junk pixels too (2/w extra work) and
  the pool ignores them. The NHWC input is transposed once (3 channels);
* the stem 3x3 conv is an im2col GEMM in this layout: its 9 taps stacked to ``[B, 27, P]``, rows
  ``(dy, dx, c)`` = the HWIO flattening of the (folded) kernel;
* every 1x1 conv is ``onexn.ops.sparse_matmul_cf`` when it is packed, with the folded bias,
  the identity / conv shortcut (added before the activation) and ReLU/ReLU6 fused into the
  kernel, else a dense GEMM ``W^T x`` with the same epilogue in jnp (XLA fuses it);
* depthwise convs are the sum of the 9 taps times per-channel weights, + bias + act, one XLA
  loop fusion after one pass that zeroes the junk and pads (stride 2: splits the parity phases),
  with the zoo's symmetric PyTorch padding ``k // 2`` (``common.models.layers.conv``);
* global average pool over the real pixels, classifier (dense or packed).

An export with ``use_sparse_kernel=False`` has no packed layer and gives the same graph all dense:
the fair dense baseline. The structure (widths, strides, shortcuts, activation) is read from the
exported model's attributes; the numbers equal the masked zoo model's eval logits up to float32
summation order.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Tuple

import jax
import jax.numpy as jnp
from jax import lax
import numpy as np

import xla_ext
from onexn import ops

SUPPORTED = ('MobileNetV2 (mobilenet_v2, mobilenet_v2_cifar)',
             'MobileNetV1 (mobilenet_v1, mobilenet_v1_tiny)')

# One op of the plan: (kind, key, attrs). Kinds: 'stem', 'conv1x1', 'dw', 'pool', 'fc', 'save',
# 'shortcut'. Built on the host from the model's attributes; static under jit.
Op = Tuple[str, Optional[str], Tuple[Tuple[str, Any], ...]]


def _op(kind: str, key: Optional[str] = None, **attrs) -> Op:
  return (kind, key, tuple(sorted(attrs.items())))


def _mobilenet_v2_plan(m) -> List[Op]:
  from common.models.mobilenet_v2 import block_plan
  plan = [_op('stem', 'conv1', stride=int(m.stem_stride), act=m.act)]
  for i, ((_, expand, shortcut), s) in enumerate(
      zip(block_plan(m.variant, m.stem, m.hidden, m.out, m.strides), m.strides)):
    blk = f'block{i}'
    if shortcut != 'none':
      plan.append(_op('save'))  # block input, read by the shortcut
    if expand:
      plan.append(_op('conv1x1', f'{blk}/expand_conv', act=m.act, residual=None))
    plan.append(_op('dw', f'{blk}/dw_conv', stride=int(s), act=m.act))
    if shortcut == 'identity':
      plan.append(_op('conv1x1', f'{blk}/project_conv', act='none', residual='saved'))
    elif shortcut == 'conv':
      plan.append(_op('shortcut', f'{blk}/shortcut_conv'))
      plan.append(_op('conv1x1', f'{blk}/project_conv', act='none', residual='shortcut'))
    else:
      plan.append(_op('conv1x1', f'{blk}/project_conv', act='none', residual=None))
  plan.append(_op('conv1x1', 'conv_last', act=m.act, residual=None))
  plan += [_op('pool'), _op('fc', 'fc')]
  return plan


def _mobilenet_v1_plan(m) -> List[Op]:
  plan = [_op('stem', 'conv1', stride=int(m.stem_stride), act=m.act)]
  for i, s in enumerate(m.strides):
    plan.append(_op('dw', f'block{i}/dw_conv', stride=int(s), act=m.act))
    plan.append(_op('conv1x1', f'block{i}/pw_conv', act=m.act, residual=None))
  plan += [_op('pool'), _op('fc', 'fc')]
  return plan


def layer_plan(model) -> Tuple[Op, ...]:
  """The channels-first op sequence of a zoo model (host side).

  Args:
    model: the linen module of a ``SparseModel`` (``sm.model``).
  Returns:
    a tuple of ``(kind, layer key, attrs)`` in forward order.
  Raises:
    ValueError: a model other than MobileNet-V1/V2 (:data:`SUPPORTED`).
  """
  from common.models.mobilenet_v1 import MobileNetV1
  from common.models.mobilenet_v2 import MobileNetV2
  if isinstance(model, MobileNetV2):
    return tuple(_mobilenet_v2_plan(model))
  if isinstance(model, MobileNetV1):
    return tuple(_mobilenet_v1_plan(model))
  raise ValueError(f'onexn.channels_first supports {", ".join(SUPPORTED)}; got '
                   f'{type(model).__name__}')


def _activate(y, act: str):
  if act == 'relu':
    return jnp.maximum(y, 0)
  if act == 'relu6':
    return jnp.clip(y, 0, 6)
  if act == 'none':
    return y
  raise ValueError(f'activation must be relu, relu6 or none; got {act!r}')


# Junk columns per row of the padded-width layout (the zero padding of a 3x3 depthwise conv).
JUNK = 2


def _valid_columns(hw) -> np.ndarray:
  """bool ``[h * (w + JUNK)]``: True at the real pixels of the padded-width layout."""
  h, w = hw
  return np.tile(np.arange(w + JUNK) < w, h)


def to_padded_width(x4):
  """``[B, C, h, w] -> [B, C, h * (w + JUNK)]``: the layout of this module's activations (zero
  junk columns; later layers may leave any finite value there)."""
  return jnp.pad(x4, ((0, 0), (0, 0), (0, 0), (0, JUNK))).reshape(x4.shape[:2] + (-1,))


def from_padded_width(x, hw):
  """``[B, C, h * (w + JUNK)] -> [B, C, h, w]`` (the junk columns dropped)."""
  h, w = hw
  return x.reshape(x.shape[:2] + (h, w + JUNK))[..., :w]


def taps3x3(x, hw, stride: int):
  """The 9 taps of a 3x3 conv with padding 1 (PyTorch's ``k // 2``, as every zoo conv:
  ``common.models.layers.conv``) on the padded-width layout, each a unit-stride flat slice.

  Row-major with ``JUNK = 2`` extra columns per row, the zero padding is the junk columns
  themselves (column -1 of a row is the previous row's last junk column): after zeroing them and
  padding the flat pixel axis by ``w + 3`` zeros at both ends, tap (dy, dx) of output pixel ``o``
  is element ``o + dy*(w + 2) + dx``, so every tap is one contiguous slice and XLA fuses a sum of
  taps into one vectorised loop (strided 4-D slices of ``[B, C, H, W]`` ran 3-6x slower: short,
  unaligned rows). Stride 2 first splits the map into its 4 (row, column) parity phases, each laid
  out padded-width at the output size; a tap is then a unit-stride slice of one phase at offset
  -1 or 0 rows / columns.

  Args:
    x: ``[B, C, h * (w + 2)]``; hw ``(h, w)``; stride 1 or 2.
  Returns:
    ``(taps, (ho, wo))``: 9 arrays ``[B, C, ho * (wo + 2)]`` in (dy, dx) order (junk columns hold
    values that the caller must ignore).
  """
  h, w = hw
  b, c = x.shape[:2]
  xm = jnp.where(jnp.asarray(_valid_columns(hw)), x, 0)
  if stride == 1:
    w2 = w + JUNK
    n = h * w2
    xp = jnp.pad(xm, ((0, 0), (0, 0), (w2 + 1, w2 + 1)))
    return [xp[:, :, dy * w2 + dx:dy * w2 + dx + n] for dy in range(3) for dx in range(3)], hw
  if stride != 2:
    raise ValueError(f'channels_first: 3x3 conv stride must be 1 or 2; got {stride!r}')
  ho, wo = (h + 1) // 2, (w + 1) // 2
  wp = wo + JUNK
  # [B, C, 2*ho, 2*(wo + 1)] zero-padded (junk columns are 0 now) -> phases [B, C, 2, 2, ho, wo+1],
  # then one zero row above and below and one zero column on the left: row stride wo + 2 = the
  # output's, and one fusion (transpose + pad) writes them all.
  x4 = jnp.pad(xm.reshape(b, c, h, w + JUNK), ((0, 0), (0, 0), (0, 2 * ho - h),
                                                (0, 2 * (wo + 1) - (w + JUNK))))
  ph = x4.reshape(b, c, ho, 2, wo + 1, 2).transpose(0, 1, 3, 5, 2, 4)
  ph = jnp.pad(ph, ((0, 0),) * 4 + ((1, 1), (1, wp - wo - 2))).reshape(b, c, 4, (ho + 2) * wp)
  n = ho * wp
  taps = []
  for dy in range(3):
    for dx in range(3):
      # input row 2*i + dy - 1 = phase (dy - 1) % 2, phase row i - 1 for dy = 0 else i (+1: the
      # zero row above); the same for columns
      py, px = (dy - 1) % 2, (dx - 1) % 2
      off = wp + 1 - (wp if dy == 0 else 0) - (1 if dx == 0 else 0)
      taps.append(ph[:, :, 2 * py + px, off:off + n])
  return taps, (ho, wo)


def _depthwise3x3_xla(x, kernel, bias, hw, stride: int, act: str):
  taps, out_hw = taps3x3(x, hw, stride)
  acc = None
  for t, tap in enumerate(taps):
    term = tap * kernel[:, t][:, None]
    acc = term if acc is None else acc + term
  return _activate(acc + bias[:, None], act), out_hw


def depthwise3x3(x, kernel, bias, hw, stride: int, act: str, *, backend: str = 'auto',
                 num_threads: int = 0):
  """3x3 depthwise conv (padding 1, the zoo's) + bias + act on the padded-width layout.

  'ffi' is the ``xla_ext`` CPU kernel (``xla_ext.depthwise3x3_cf``: reads the layout as it is,
  junk columns ignored, one pass with the epilogue fused); 'xla' the sum of the :func:`taps3x3`
  times per-channel weights (one XLA loop fusion after the zero-and-pad pass); 'auto' the kernel
  on CPU when built (float32), else 'xla'. Both give the same numbers up to summation order.

  Args:
    x: ``[B, C, h * (w + 2)]``; kernel ``[C, 9]`` (per channel, ``(dy, dx)`` row-major); bias
      ``[C]``; hw ``(h, w)``.
    stride: 1 or 2; act: 'none' | 'relu' | 'relu6'.
    backend: 'auto' | 'ffi' | 'xla'; num_threads: kernel threads (0 = all of XLA's).
  Returns:
    ``(y [B, C, ho * (wo + 2)], (ho, wo))``.
  """
  if backend not in ops.BACKENDS:
    raise ValueError(f'backend must be one of {ops.BACKENDS}; got {backend!r}')
  if stride not in (1, 2):
    raise ValueError(f'channels_first: 3x3 conv stride must be 1 or 2; got {stride!r}')
  h, w = hw
  out_hw = ((h - 1) // stride + 1, (w - 1) // stride + 1)
  usable = xla_ext.available() and all(jnp.dtype(a.dtype) == jnp.float32
                                       for a in (x, kernel, bias))
  if backend == 'ffi' and not usable:
    raise TypeError(f'backend="ffi" needs the xla_ext kernel and float32 operands; available='
                    f'{xla_ext.available()}, dtypes {x.dtype}, {kernel.dtype}, {bias.dtype}')
  if backend == 'xla' or not usable:
    return _depthwise3x3_xla(x, kernel, bias, hw, stride, act)

  def ffi(x, kernel, bias):
    return xla_ext.depthwise3x3_cf(x, kernel, bias, hw, stride, activation=act,
                                   num_threads=num_threads)

  if backend == 'ffi':
    return ffi(x, kernel, bias), out_hw
  y = lax.platform_dependent(x, kernel, bias, cpu=ffi,
                             default=lambda *a: _depthwise3x3_xla(*a, hw, stride, act)[0])
  return y, out_hw


def cf_apply_fn(model, *, backend: str = 'auto', num_threads: int = 0) -> Callable:
  """The channels-first forward of an exported model as a pure function.

  Args:
    model: ``SparseModel.model`` (MobileNet-V1 or V2, :func:`layer_plan`).
    backend, num_threads: as ``onexn.ops.sparse_matmul_cf``.
  Returns:
    ``apply(weights, packed, bias, x) -> logits [B, num_classes]`` with ``x [B, H, W, 3]`` NHWC
    and the three dicts of :func:`cf_params` (jit it once).
  """
  plan = layer_plan(model)

  def dense_or_sparse(weights, packed, bias, key, x, act, residual):
    # x [B, K, P] -> act(W^T x + b + residual) [B, C_out, P]: the fused epilogue of the kernel,
    # or the same expression in jnp after a dense GEMM (XLA fuses bias/residual/act into one pass).
    if key in packed:
      return ops.sparse_matmul_cf(x, packed[key], bias=bias[key], residual=residual,
                                     activation=act, backend=backend, num_threads=num_threads)
    wk = weights[key]
    if wk.ndim == 4:  # the stem's HWIO kernel: its im2col GEMM weight [kh*kw*C_in, C_out]
      wk = wk.reshape(-1, wk.shape[-1]).T
    if x.shape[0] == 1:
      # batch 1 (the latency setting): a plain 2-D GEMM; XLA:CPU runs the batched einsum form
      # ~2x slower at these shapes (measured on the stem and the 1x1 convs of MobileNet-V2).
      y = jnp.dot(wk, x[0], precision=lax.Precision.HIGHEST)[None]
    else:
      y = jnp.einsum('ck,bkp->bcp', wk, x, precision=lax.Precision.HIGHEST)
    y = y + bias[key][:, None]
    if residual is not None:
      y = y + residual
    return _activate(y, act)

  def apply(weights, packed, bias, x):
    if x.ndim != 4 or x.shape[-1] != 3:
      raise ValueError(f'channels_first: x must be NHWC [B, H, W, 3]; got {x.shape}')
    b, h, w, _ = x.shape
    hw = (h, w)
    x = jnp.transpose(x, (0, 3, 1, 2))  # the only layout change: 3 channels
    saved = short = None
    for kind, key, attrs in plan:
      a = dict(attrs)
      if kind == 'stem':
        k = packed[key].kernel_size if key in packed else weights[key].shape[:2]
        if tuple(k) != (3, 3):
          raise ValueError(f'channels_first: stem conv {key!r} must be 3x3 (MobileNets); got {k}')
        taps, hw = taps3x3(to_padded_width(x), hw, a['stride'])
        # [B, 9, C, P] -> rows (dy*3 + dx)*C + c: the HWIO row-major flattening (im2col).
        patches = jnp.stack(taps, axis=1).reshape(b, -1, taps[0].shape[-1])
        x = dense_or_sparse(weights, packed, bias, key, patches, a['act'], None)
      elif kind == 'save':
        saved = x
      elif kind == 'shortcut':
        short = dense_or_sparse(weights, packed, bias, key, saved, 'none', None)
      elif kind == 'conv1x1':
        res = {'saved': saved, 'shortcut': short, None: None}[a['residual']]
        x = dense_or_sparse(weights, packed, bias, key, x, a['act'], res)
        if a['residual'] is not None:
          saved = short = None
      elif kind == 'dw':
        if key in packed or weights[key].shape[1:] != (9,):
          raise ValueError(f'channels_first: depthwise conv {key!r} must be a dense 3x3 conv (1xN '
                           f'never prunes depthwise convs: lmbxmu/1xN models/* wrap only the 1x1 convs; MobileNets use 3x3)')
        x, hw = depthwise3x3(x, weights[key], bias[key], hw, a['stride'], a['act'],
                             backend=backend, num_threads=num_threads)
      elif kind == 'pool':
        x = jnp.mean(from_padded_width(x, hw), axis=(2, 3))  # [B, C]
      elif kind == 'fc':
        if key in packed:
          y = ops.sparse_matmul(x, packed[key], backend=backend, num_threads=num_threads)
        else:
          y = jnp.dot(x, weights[key], precision=lax.Precision.HIGHEST)
        x = y + bias[key]
    return x

  return apply


def cf_params(sm) -> Tuple[Dict[str, Any], Dict[str, Any], Dict[str, Any]]:
  """``(weights, packed, bias)`` of a ``SparseModel`` in the channels-first graph's layouts.

  Dense 1x1 kernels ``[1, 1, K, C_out]`` become ``[C_out, K]`` (the GEMM's left operand, so that
  the product is ``W^T x`` without a transpose per call), depthwise kernels ``[kh, kw, C, 1]``
  (per-channel scales that broadcast over ``[C, P]``), the classifier ``[C, num_classes]``;
  the stem keeps its HWIO kernel; packed layers and biases are used as exported (BN folded,
  rearrangement applied).

  Raises:
    ValueError: unsupported model (:func:`layer_plan`).
  """
  kinds = {key: kind for kind, key, _ in layer_plan(sm.model) if key is not None}
  weights = {}
  for key, d in sm.weights.items():
    k = jnp.asarray(d['kernel'])
    kind = kinds.get(key)
    if kind == 'dw':  # HWIO [3, 3, 1, C] -> [C, 9]
      if k.shape[:3] != (3, 3, 1):
        raise ValueError(f'channels_first: depthwise conv {key!r} must be 3x3 (MobileNets); got '
                         f'kernel {k.shape}')
      weights[key] = jnp.transpose(k[:, :, 0, :], (2, 0, 1)).reshape(k.shape[-1], 9)
    elif kind == 'fc':
      weights[key] = k.reshape(-1, k.shape[-1])
    elif kind == 'stem':
      weights[key] = k
    elif kind in ('conv1x1', 'shortcut'):
      weights[key] = k.reshape(-1, k.shape[-1]).T
    else:
      raise ValueError(f'channels_first: exported layer {key!r} is not in the '
                       f'{type(sm.model).__name__} plan ({sorted(kinds)})')
  return weights, dict(sm.packed), dict(sm.bias)


class ChannelsFirstModel:
  """An exported 1xN model run channels-first (module docstring): ``logits = cfm(x_nhwc)``.

  Args:
    sm: a ``SparseModel`` of MobileNet-V1/V2 (``onexn.export_sparse``; with
      ``use_sparse_kernel=False`` the all-dense graph).
    backend: ``onexn.ops`` backend (default: the export's).
    num_threads: kernel threads (0 = all of XLA's).
  Raises:
    ValueError: unsupported model (:data:`SUPPORTED`).
  """

  def __init__(self, sm, *, backend: Optional[str] = None, num_threads: int = 0):
    self.backend = sm.backend if backend is None else backend
    if self.backend not in ops.BACKENDS:
      raise ValueError(f'backend must be one of {ops.BACKENDS}; got {self.backend!r}')
    self.plan = layer_plan(sm.model)
    self.weights, self.packed, self.bias = cf_params(sm)
    self._fn = jax.jit(cf_apply_fn(sm.model, backend=self.backend, num_threads=num_threads))

  def __call__(self, x):
    """``x [B, H, W, 3]`` (NHWC, as the zoo model) ``-> logits [B, num_classes]``."""
    return self._fn(self.weights, self.packed, self.bias, x)
