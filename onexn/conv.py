"""NHWC convolution with a packed 1xN kernel (:func:`sparse_conv`): im2col patches in the packed
rows' (dy, dx, c) order, then ``onexn.ops.sparse_matmul``.
"""
from __future__ import annotations

from typing import Sequence, Tuple, Union

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from onexn.block_sparse import PackedBlockSparse, check_packed
from onexn.ops import sparse_matmul

Padding = Union[str, int, Sequence[Tuple[int, int]]]


def _pair(v, what: str) -> Tuple[int, int]:
  if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
    v = (int(v), int(v))
  if (not isinstance(v, (tuple, list)) or len(v) != 2 or
      not all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s > 0 for s in v)):
    raise ValueError(f'{what} must be a positive int or a pair of them; got {v!r}')
  return int(v[0]), int(v[1])


def _pads(padding: Padding, in_hw, kernel_hw, strides) -> Tuple[Tuple[int, int], Tuple[int, int]]:
  if isinstance(padding, str):
    if padding.upper() not in ('SAME', 'VALID'):
      raise ValueError(f"padding must be 'SAME', 'VALID', an int or ((top, bottom), (left, "
                       f"right)); got {padding!r}")
    pads = lax.padtype_to_pads(in_hw, kernel_hw, strides, padding.upper())
    return tuple((int(lo), int(hi)) for lo, hi in pads)
  if isinstance(padding, (int, np.integer)) and not isinstance(padding, bool) and padding >= 0:
    return ((int(padding), int(padding)),) * 2
  try:
    pads = tuple((int(lo), int(hi)) for lo, hi in padding)
  except (TypeError, ValueError):
    pads = ()
  if len(pads) != 2 or min(min(p) for p in pads) < 0:
    raise ValueError(f"padding must be 'SAME', 'VALID', an int >= 0 or ((top, bottom), (left, "
                     f"right)) of ints >= 0; got {padding!r}")
  return pads


def sparse_conv(x, packed: PackedBlockSparse, stride=1, padding: Padding = 'SAME', *,
                backend: str = 'auto', num_threads: int = 0, isa: str = 'auto') -> jax.Array:
  """NHWC convolution with a packed 1xN kernel; equals ``lax.conv_general_dilated`` of the
  masked HWIO kernel (``dimension_numbers=('NHWC', 'HWIO', 'NHWC')``, as ``flax.linen.Conv``).

  1x1 convs run the GEMM on the (strided) activation itself; kxk convs build the im2col patches
  ``[..., Ho, Wo, kh*kw*C_in]`` (order (dy, dx, c), matching the packed rows) and run the GEMM
  on them. Dilation and feature groups (depthwise convs) are not supported.

  Args:
    x: ``[..., H, W, C_in]`` floating (any leading batch dims).
    packed: from :func:`pack` of an HWIO kernel (a 2-D kernel counts as 1x1).
    stride: int or (sh, sw).
    padding: 'SAME' | 'VALID' (lax semantics) | int | ((top, bottom), (left, right)).
    backend, num_threads, isa: as :func:`sparse_matmul`.
  Returns:
    ``[..., Ho, Wo, C_out]``.
  """
  check_packed(packed)
  x = jnp.asarray(x)
  if x.ndim < 3:
    raise ValueError(f'sparse_conv: x must be [..., H, W, C_in]; got shape {tuple(x.shape)}')
  if x.shape[-1] != packed.in_channels:
    raise ValueError(f'sparse_conv: x has {x.shape[-1]} input channels but the packed kernel '
                     f'{packed.kernel_shape} reads {packed.in_channels} (grouped/depthwise convs '
                     f'are not supported)')
  sh, sw = _pair(stride, 'stride')
  kh, kw = packed.kernel_size
  lead, (h, w, c) = x.shape[:-3], x.shape[-3:]
  (pt, pb), (pl, pr) = _pads(padding, (h, w), (kh, kw), (sh, sw))
  ho, wo = (h + pt + pb - kh) // sh + 1, (w + pl + pr - kw) // sw + 1
  if ho <= 0 or wo <= 0:
    raise ValueError(f'sparse_conv: a {kh}x{kw} kernel with stride {(sh, sw)} and padding '
                     f'{((pt, pb), (pl, pr))} leaves no output pixels for input {h}x{w}')
  xb = x.reshape((-1, h, w, c))
  if (pt, pb, pl, pr) != (0, 0, 0, 0):
    xb = jnp.pad(xb, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
  b = xb.shape[0]
  taps = [lax.slice(xb, (0, dy, dx, 0), (b, dy + (ho - 1) * sh + 1, dx + (wo - 1) * sw + 1, c),
                    (1, sh, sw, 1))
          for dy in range(kh) for dx in range(kw)]
  patches = taps[0] if len(taps) == 1 else jnp.concatenate(taps, axis=-1)
  y = sparse_matmul(patches, packed, backend=backend, num_threads=num_threads, isa=isa)
  return y.reshape(lead + (ho, wo, packed.out_channels))
