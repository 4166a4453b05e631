"""The zoo's training convolutions on CPU: oneDNN's convolution primitives as XLA FFI custom calls,
behind a differentiable drop-in for ``jax.lax.conv_general_dilated``.

For NHWC activations and HWIO kernels (a Flax ``nn.Conv``),

    y[b, o, p, co]   = sum_{i, j, ci} x[b, s_h o + i - pad_t, s_w p + j - pad_l, g(co) Cig + ci] w[i, j, ci, co]
    dx               = the transpose of that linear map applied to dy            (``conv_bwd_data``)
    dw[i, j, ci, co] = sum_{b, o, p} x[b, s_h o + i - pad_t, s_w p + j - pad_l, g(co) Cig + ci] dy[b, o, p, co]
                                                                                   (``conv_bwd_weights``)

with zeros outside the image, ``Cig = Ci / groups`` and ``g(co) = co // (Co / groups)``; strides
and paddings are any, kernels any size (3x3, 1x1, ...), ``groups`` 1 or ``Ci`` (depthwise) or
anything between.

:func:`conv_general_dilated` is what ``common.models.layers`` hands its convs: a ``jax.custom_vjp``
whose forward and backward choose their lowering with ``jax.lax.platform_dependent``: on CPU the
three FFI calls above, on every other platform XLA's own convolution and its autodiff, unchanged.
Calls it cannot take (dilation, other layouts, non-float32 dtypes) go to
``jax.lax.conv_general_dilated`` as they are.

The library (``_conv*.so``) is built by ``pip install --no-build-isolation -e .`` or on first import
into ``$XLA_EXT_CACHE_DIR`` (as the block-sparse kernels are, ``xla_ext/__init__.py``); it needs
oneDNN (``pip install onednn-cpu-gomp onednn-devel-cpu-gomp``). Without it ``available()`` is
False, :func:`load_error` says why, and :func:`conv_general_dilated` is
``jax.lax.conv_general_dilated``.
"""
from __future__ import annotations

import ctypes
import functools
import os
from typing import Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from xla_ext import _build

TARGETS = {'fwd': 'xla_ext_conv_fwd', 'bwd_data': 'xla_ext_conv_bwd_data',
           'bwd_weights': 'xla_ext_conv_bwd_weights', 'wgrad_direct': 'xla_ext_conv_wgrad_direct'}
_SYMBOLS = {'fwd': 'XlaExtConvFwd', 'bwd_data': 'XlaExtConvBwdData',
            'bwd_weights': 'XlaExtConvBwdWeights', 'wgrad_direct': 'XlaExtConvWgradDirect'}
# The only layout the kernels take: a Flax nn.Conv's.
DIMENSION_NUMBERS = ('NHWC', 'HWIO', 'NHWC')

_lib: Optional[ctypes.CDLL] = None
_lib_path: Optional[str] = None
_load_error: Optional[str] = None


def _register(lib) -> None:
  for op, symbol in _SYMBOLS.items():
    jax.ffi.register_ffi_target(TARGETS[op], jax.ffi.pycapsule(getattr(lib, symbol)),
                                platform='cpu')


def _load() -> None:
  global _lib, _lib_path, _load_error
  newest = lambda: max(os.path.getmtime(os.path.join(_build.HERE, f))
                       for f in _build.CONV_SOURCES + _build.CONV_HEADERS)
  _lib, _lib_path, _load_error = _build.load_ffi_library(
      '_conv', newest,
      lambda: f'libconv-{_build.conv_source_digest(jax.ffi.include_dir())}.so',
      lambda path: _build.compile_conv_library(jax.ffi.include_dir(), path), _register)


def available() -> bool:
  """True when the conv library is compiled, loaded and registered for the CPU platform."""
  return _lib is not None


def load_error() -> Optional[str]:
  """Why the conv library is unavailable (None when it is available)."""
  return _load_error


def library_path() -> Optional[str]:
  """Path of the loaded conv library (None when unavailable)."""
  return _lib_path


def _require(op: str) -> None:
  if _lib is None:
    raise RuntimeError(f'{op}: the xla_ext conv kernels are not available: {_load_error}')


Pads = Tuple[Tuple[int, int], Tuple[int, int]]


def _check(op: str, strides, padding, groups, num_threads) -> Tuple[Tuple[int, int], Pads, int]:
  _require(op)
  try:
    s = tuple(int(v) for v in strides)
    p = tuple(tuple(int(v) for v in pair) for pair in padding)
  except (TypeError, ValueError):
    raise ValueError(f'{op}: strides must be (sh, sw) and padding ((top, bottom), (left, right)) '
                     f'ints; got {strides!r}, {padding!r}') from None
  if len(s) != 2 or min(s) < 1 or len(p) != 2 or any(len(q) != 2 or min(q) < 0 for q in p):
    raise ValueError(f'{op}: strides must be two ints >= 1 and padding two pairs of ints >= 0; '
                     f'got {strides!r}, {padding!r}')
  if isinstance(groups, bool) or not isinstance(groups, (int, np.integer)) or groups < 1:
    raise ValueError(f'{op}: groups must be an int >= 1; got {groups!r}')
  if (isinstance(num_threads, bool) or not isinstance(num_threads, (int, np.integer)) or
      num_threads < 0):
    raise ValueError(f'{op}: num_threads must be an int >= 0 (0 = all); got {num_threads!r}')
  return s, p, int(groups)


def _check_f32(op: str, **arrays) -> None:
  for name, a in arrays.items():
    if jnp.dtype(a.dtype) != jnp.float32 or a.ndim != 4:
      raise TypeError(f'{op}: {name} must be a float32 4-D array; got {a.dtype} '
                      f'{list(a.shape)}')


def _out_hw(op, hw, khw, s, p) -> Tuple[int, int]:
  out = tuple((hw[k] + p[k][0] + p[k][1] - khw[k]) // s[k] + 1 for k in range(2))
  if min(out) < 1:
    raise ValueError(f'{op}: an input of {list(hw)} with kernel {list(khw)}, strides {list(s)} '
                     f'and padding {list(p)} has no output pixel')
  return out


def _attrs(s, p, groups, num_threads) -> dict:
  return dict(stride_h=np.int64(s[0]), stride_w=np.int64(s[1]), pad_top=np.int64(p[0][0]),
              pad_bottom=np.int64(p[0][1]), pad_left=np.int64(p[1][0]),
              pad_right=np.int64(p[1][1]), groups=np.int64(groups),
              num_threads=np.int64(num_threads))


def _check_kernel(op, ci, w_shape, groups):
  if ci % groups or w_shape[3] % groups or w_shape[2] * groups != ci:
    raise ValueError(f'{op}: kernel {list(w_shape)} must be [kh, kw, Ci/groups, Co] with Ci = '
                     f'{ci} and Co divisible by groups = {groups}')


def conv_fwd(x: jax.Array, w: jax.Array, strides: Sequence[int], padding, groups: int = 1, *,
             num_threads: int = 0, vmap_method: str = 'sequential') -> jax.Array:
  """One FFI call (CPU only): the convolution ``y = conv(x, w)`` (module docstring).

  Args:
    x: float32 ``[B, H, W, Ci]``; w: float32 HWIO ``[kh, kw, Ci/groups, Co]``.
    strides: ``(sh, sw)``; padding: ``((top, bottom), (left, right))``; groups: feature groups.
    num_threads: threads of XLA's intra-op pool (0 = all).
    vmap_method: passed to ``jax.ffi.ffi_call``.
  Returns:
    float32 ``[B, Ho, Wo, Co]``, ``Ho = (H + top + bottom - kh) // sh + 1`` (and so ``Wo``).
  Raises:
    RuntimeError: the library is not available; ValueError/TypeError: bad shapes or options.
  """
  op = 'conv_fwd'
  s, p, g = _check(op, strides, padding, groups, num_threads)
  _check_f32(op, x=x, w=w)
  _check_kernel(op, x.shape[3], w.shape, g)
  ho, wo = _out_hw(op, x.shape[1:3], w.shape[:2], s, p)
  out = jax.ShapeDtypeStruct((x.shape[0], ho, wo, w.shape[3]), jnp.float32)
  return jax.ffi.ffi_call(TARGETS['fwd'], out, vmap_method=vmap_method)(
      x, w, **_attrs(s, p, g, num_threads))


def conv_bwd_data(dy: jax.Array, w: jax.Array, x_shape: Sequence[int], strides, padding,
                  groups: int = 1, *, num_threads: int = 0,
                  vmap_method: str = 'sequential') -> jax.Array:
  """One FFI call (CPU only): the input gradient ``dx = J_x(conv)^T dy`` of :func:`conv_fwd`.

  Args:
    dy: float32 ``[B, Ho, Wo, Co]``; w: float32 ``[kh, kw, Ci/groups, Co]``;
    x_shape: ``(B, H, W, Ci)`` of the forward's input (several H give the same Ho at stride 2).
    strides, padding, groups, num_threads, vmap_method: as :func:`conv_fwd`.
  Returns:
    float32 ``[B, H, W, Ci]``.
  """
  op = 'conv_bwd_data'
  s, p, g = _check(op, strides, padding, groups, num_threads)
  _check_f32(op, dy=dy, w=w)
  x_shape = tuple(int(v) for v in x_shape)
  _check_kernel(op, x_shape[3], w.shape, g)
  if (x_shape[0], *_out_hw(op, x_shape[1:3], w.shape[:2], s, p), w.shape[3]) != dy.shape:
    raise ValueError(f'{op}: dy {list(dy.shape)} is not the output shape of x {list(x_shape)} '
                     f'under kernel {list(w.shape)}, strides {list(s)}, padding {list(p)}')
  out = jax.ShapeDtypeStruct(x_shape, jnp.float32)
  return jax.ffi.ffi_call(TARGETS['bwd_data'], out, vmap_method=vmap_method)(
      dy, w, **_attrs(s, p, g, num_threads))


def conv_bwd_weights(x: jax.Array, dy: jax.Array, kernel_hw: Sequence[int], strides, padding,
                     groups: int = 1, *, num_threads: int = 0,
                     vmap_method: str = 'sequential') -> jax.Array:
  """One FFI call (CPU only): the weight gradient ``dw = J_w(conv)^T dy`` of :func:`conv_fwd`.

  Args:
    x: float32 ``[B, H, W, Ci]``; dy: float32 ``[B, Ho, Wo, Co]``; kernel_hw: ``(kh, kw)``.
    strides, padding, groups, num_threads, vmap_method: as :func:`conv_fwd`.
  Returns:
    float32 ``[kh, kw, Ci/groups, Co]``; the batch is summed in fixed chunks, in a fixed order,
    so the result does not depend on ``num_threads``.
  """
  op = 'conv_bwd_weights'
  s, p, g = _check(op, strides, padding, groups, num_threads)
  _check_f32(op, x=x, dy=dy)
  kh, kw = (int(v) for v in kernel_hw)
  if x.shape[3] % g or dy.shape[3] % g:
    raise ValueError(f'{op}: Ci = {x.shape[3]} and Co = {dy.shape[3]} must be divisible by '
                     f'groups = {g}')
  if (x.shape[0], *_out_hw(op, x.shape[1:3], (kh, kw), s, p), dy.shape[3]) != dy.shape:
    raise ValueError(f'{op}: dy {list(dy.shape)} is not the output shape of x {list(x.shape)} '
                     f'under a {kh}x{kw} kernel, strides {list(s)}, padding {list(p)}')
  out = jax.ShapeDtypeStruct((kh, kw, x.shape[3] // g, dy.shape[3]), jnp.float32)
  return jax.ffi.ffi_call(TARGETS['bwd_weights'], out, vmap_method=vmap_method)(
      x, dy, **_attrs(s, p, g, num_threads))


def conv_wgrad_direct(x: jax.Array, dy: jax.Array, kernel_hw: Sequence[int],
                      padding_tl: Sequence[int], *, num_threads: int = 0) -> jax.Array:
  """The hand-written AVX-512 weight gradient (stride 1, groups 1) that oneDNN's was measured
  against (``conv_wgrad_direct.cc``); same result as :func:`conv_bwd_weights`. Benchmarks only.

  Args:
    x: float32 ``[B, H, W, Ci]``; dy: float32 ``[B, Ho, Wo, Co]``; kernel_hw: ``(kh, kw)``;
    padding_tl: ``(top, left)`` zero padding (bottom/right follow from Ho, Wo).
  Returns:
    float32 ``[kh, kw, Ci, Co]``.
  """
  op = 'conv_wgrad_direct'
  _check(op, (1, 1), ((padding_tl[0], 0), (padding_tl[1], 0)), 1, num_threads)
  _check_f32(op, x=x, dy=dy)
  kh, kw = (int(v) for v in kernel_hw)
  out = jax.ShapeDtypeStruct((kh, kw, x.shape[3], dy.shape[3]), jnp.float32)
  return jax.ffi.ffi_call(TARGETS['wgrad_direct'], out, vmap_method='sequential')(
      x, dy, kh=np.int64(kh), kw=np.int64(kw), pad_top=np.int64(padding_tl[0]),
      pad_left=np.int64(padding_tl[1]), num_threads=np.int64(num_threads))


def _xla_conv(x, w, strides, padding, groups):
  return jax.lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=DIMENSION_NUMBERS,
                                      feature_group_count=groups)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def conv(x: jax.Array, w: jax.Array, strides: Tuple[int, int], padding: Pads,
         groups: int) -> jax.Array:
  """Differentiable NHWC/HWIO convolution: the FFI kernels on CPU, XLA's elsewhere.

  ``jax.lax.platform_dependent`` picks the lowering per platform when the program is lowered (not
  when it is traced, as ``jax.default_backend()`` would), so one traced function runs the oneDNN
  kernels on CPU and XLA's convolution (forward and autodiff) unchanged on GPU/TPU.

  Args:
    x: float32 ``[B, H, W, Ci]``; w: float32 ``[kh, kw, Ci/groups, Co]``.
    strides: ``(sh, sw)``; padding: ``((top, bottom), (left, right))``; groups: feature groups
      (all three static, hashable).
  Returns:
    float32 ``[B, Ho, Wo, Co]``, equal to ``lax.conv_general_dilated(x, w, strides, padding,
    dimension_numbers=('NHWC', 'HWIO', 'NHWC'), feature_group_count=groups)`` up to float32
    summation order; so are its gradients.
  """
  return jax.lax.platform_dependent(
      x, w, cpu=lambda x, w: conv_fwd(x, w, strides, padding, groups),
      default=lambda x, w: _xla_conv(x, w, strides, padding, groups))


def _conv_fwd_rule(x, w, strides, padding, groups):
  return conv(x, w, strides, padding, groups), (x, w)


def _conv_bwd_rule(strides, padding, groups, res, dy):
  x, w = res

  def cpu(x, w, dy):
    return (conv_bwd_data(dy, w, x.shape, strides, padding, groups),
            conv_bwd_weights(x, dy, w.shape[:2], strides, padding, groups))

  def default(x, w, dy):
    return jax.vjp(lambda x, w: _xla_conv(x, w, strides, padding, groups), x, w)[1](dy)

  return jax.lax.platform_dependent(x, w, dy, cpu=cpu, default=default)


conv.defvjp(_conv_fwd_rule, _conv_bwd_rule)


def supports(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
             dimension_numbers=None, feature_group_count=1, batch_group_count=1,
             preferred_element_type=None) -> Optional[Tuple[Tuple[int, int], Pads]]:
  """``(strides, explicit padding)`` when :func:`conv` can compute this
  ``lax.conv_general_dilated`` call (4-D float32 NHWC/HWIO/NHWC, no dilation, no batch groups),
  else None."""
  if not available() or lhs.ndim != 4 or rhs.ndim != 4:
    return None
  if any(jnp.dtype(a.dtype) != jnp.float32 for a in (lhs, rhs)):
    return None
  if preferred_element_type is not None and jnp.dtype(preferred_element_type) != jnp.float32:
    return None
  if batch_group_count != 1 or any(d != 1 for d in (lhs_dilation or ()) + (rhs_dilation or ())):
    return None
  want = jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, DIMENSION_NUMBERS)
  if dimension_numbers is None or jax.lax.conv_dimension_numbers(
      lhs.shape, rhs.shape, dimension_numbers) != want:
    return None
  strides = tuple(int(s) for s in window_strides)
  if isinstance(padding, str):
    padding = jax.lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], strides, padding)
  pads = tuple(tuple(int(v) for v in pq) for pq in padding)
  if len(strides) != 2 or len(pads) != 2 or min(min(pq) for pq in pads) < 0:
    return None
  return strides, pads


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                         dimension_numbers=None, feature_group_count=1, batch_group_count=1,
                         precision=None, preferred_element_type=None):
  """Drop-in for ``jax.lax.conv_general_dilated`` (same arguments; what ``nn.Conv`` calls): the
  calls :func:`supports` accepts go to :func:`conv`, all others to XLA unchanged. ``precision``
  is ignored on the kernel path (it computes in float32, XLA's CPU default)."""
  ok = supports(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                dimension_numbers, feature_group_count, batch_group_count, preferred_element_type)
  if ok is None:
    return jax.lax.conv_general_dilated(
        lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
        feature_group_count, batch_group_count, precision, preferred_element_type)
  return conv(lhs, rhs, ok[0], ok[1], int(feature_group_count))


_load()
