"""The 1xN block-sparse packed format: :class:`PackedBlockSparse`, :func:`pack`, :func:`unpack`.

Paper: Lin et al., "1xN Pattern for Pruning Convolutional Neural Networks", TPAMI 2022, Fig. 3 (the
encoding). A conv with an HWIO kernel ``[kh, kw, C_in, C_out]`` is the GEMM
``Y[P, C_out] = X[P, K] W[K, C_out]`` with ``K = kh*kw*C_in`` (im2col; for a 1x1 conv X is the NHWC
activation itself, P = B*H*W pixels). The im2col row of (dy, dx, input channel c) is
``r = (dy*kw + dx)*C_in + c``: the row-major flattening of the HWIO kernel's first three axes. A 1xN
mask keeps or prunes, per input channel c and output block b (channels ``b*N .. b*N+N-1``), all
``kh*kw*N`` weights together (the groups of lmbxmu/1xN ``BlockL1Conv.get_mask``), so W is made of
dense 1xN row segments and packs into BSR-by-output-block:

  row_ptr [C_out/N + 1]   the kept segments of output block b are ``row_ptr[b] .. row_ptr[b+1]-1``
  col_idx [nnzb]          the im2col row r of each segment (ascending within a block)
  values  [nnzb, N]       its N contiguous weights ``W[r, b*N : (b+1)*N]``
  perm    [C_out] | None  filter rearrangement: block b covers original output channels
                          ``perm[b*N : (b+1)*N]``, i.e. the packed layer is ``kernel[..., perm]``

``Y[p, b*N + j] = sum_{t in block b} X[p, col_idx[t]] * values[t, j]`` (``onexn.ops``): one
broadcast input times an N-vector of weights per kept segment. Storage:
``(1-s) K C_out`` values + ``(1-s) K C_out / N`` int32 indices + ``C_out/N + 1`` pointers.
``unpack(pack(w, m, n, perm)) == (where(m, w, 0), m != 0)`` exactly (``tests/onexn/test_sparse.py``).
"""
from __future__ import annotations

import dataclasses
from typing import Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

@dataclasses.dataclass(frozen=True, eq=False)
class PackedBlockSparse:
  """A 1xN block-sparse layer in BSR-by-output-block form (module docstring; paper Fig. 3).

  A pytree: the arrays are leaves (so a packed layer can be passed through ``jit``/``vmap`` or
  stored in a params tree), ``n`` and ``kernel_shape`` are static metadata.

  Attributes:
    row_ptr: int32 ``[C_out/N + 1]``.
    col_idx: int32 ``[nnzb]``, im2col rows ``(dy*kw + dx)*C_in + c``, ascending within a block.
    values: ``[nnzb, N]``, the kernel's dtype.
    perm: int32 ``[C_out]`` or None; block b holds original output channels ``perm[b*N:(b+1)*N]``.
    n: block size N.
    kernel_shape: shape of the original kernel, ``(kh, kw, C_in, C_out)`` or ``(C_in, C_out)``.
  """
  row_ptr: jax.Array
  col_idx: jax.Array
  values: jax.Array
  perm: Optional[jax.Array]
  n: int
  kernel_shape: Tuple[int, ...]

  @property
  def in_channels(self) -> int:
    return self.kernel_shape[-2]

  @property
  def out_channels(self) -> int:
    return self.kernel_shape[-1]

  @property
  def kernel_size(self) -> Tuple[int, int]:
    return tuple(self.kernel_shape[:2]) if len(self.kernel_shape) == 4 else (1, 1)

  @property
  def k(self) -> int:
    """Rows of the GEMM weight: ``kh * kw * C_in``."""
    return int(np.prod(self.kernel_shape[:-1]))

  @property
  def num_blocks(self) -> int:
    """Output blocks ``C_out / N``."""
    return self.out_channels // self.n

  @property
  def nnzb(self) -> int:
    """Kept 1xN segments (im2col rows x output blocks)."""
    return self.col_idx.shape[0]

  @property
  def density(self) -> float:
    """Kept fraction of the weights."""
    total = self.k * self.out_channels
    return self.nnzb * self.n / total if total else 1.0

  @property
  def nbytes(self) -> int:
    """Storage of the packed arrays in bytes."""
    leaves = (self.row_ptr, self.col_idx, self.values) + (() if self.perm is None else (self.perm,))
    return int(sum(np.prod(a.shape) * jnp.dtype(a.dtype).itemsize for a in leaves))


jax.tree_util.register_dataclass(PackedBlockSparse,
                                 data_fields=['row_ptr', 'col_idx', 'values', 'perm'],
                                 meta_fields=['n', 'kernel_shape'])


# --------------------------------------------------------------------------------------------------
# Validation helpers (host side, before any kernel runs)


def _where(layer) -> str:
  if layer is None or layer == '' or layer == ():
    return 'kernel'
  if isinstance(layer, (tuple, list)):
    layer = '/'.join(str(p) for p in layer)
  return f'layer {layer!r}'


def _check_n(n, c_out: int, layer) -> int:
  if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n <= 0:
    raise ValueError(f'{_where(layer)}: block size N must be a positive integer (1, 2, 4, 8, 16 '
                     f'and 32 are the paper\'s); got {n!r}')
  n = int(n)
  if c_out % n:
    divisors = [d for d in (1, 2, 4, 8, 16, 32, 64) if c_out % d == 0]
    raise ValueError(f'{_where(layer)}: C_out={c_out} is not divisible by the block size N={n}, '
                     f'so 1xN blocks would straddle two input channels; allowed N for this layer: '
                     f'{divisors} (any divisor of {c_out})')
  return n


def _host_array(a, what: str, layer) -> np.ndarray:
  if isinstance(a, jax.core.Tracer):
    raise TypeError(f'{_where(layer)}: pack() builds the sparse structure on the host (its size '
                    f'depends on the mask values), so {what} must be concrete; call it outside '
                    f'jit/vmap')
  return np.asarray(a)


def _check_perm(perm, c_out: int, layer) -> Optional[np.ndarray]:
  if perm is None:
    return None
  p = _host_array(perm, 'perm', layer)
  if p.shape != (c_out,) or not np.issubdtype(p.dtype, np.integer):
    raise ValueError(f'{_where(layer)}: perm must be an integer array of shape ({c_out},) (a '
                     f'permutation of the output channels); got {p.dtype} {p.shape}')
  if not np.array_equal(np.sort(p), np.arange(c_out)):
    raise ValueError(f'{_where(layer)}: perm is not a permutation of range({c_out})')
  return p.astype(np.int32)


def block_keep(mask, n: int, perm=None, *, layer=None) -> np.ndarray:
  """Per-block keep flags of a 1xN mask, after checking that it is one.

  A mask is 1xN-valid when, in channel order ``perm`` (identity if None), every group of N
  consecutive output channels has, for each input channel, one value on all its ``kh*kw*N``
  entries.

  Args:
    mask: ``[kh, kw, C_in, C_out]`` or ``[C_in, C_out]``, bool or numeric (nonzero = kept).
    n: block size N (must divide C_out).
    perm: optional int ``[C_out]``: the mask is checked on ``mask[..., perm]``.
    layer: name for error messages.
  Returns:
    bool numpy ``[C_in, C_out // N]``: whether block (input c, output block b) is kept.
  Raises:
    ValueError: bad N / perm, or the first block that mixes kept and pruned entries.
  """
  m = _host_array(mask, 'mask', layer) != 0
  if m.ndim == 2:
    m = m[None, None]
  if m.ndim != 4:
    raise ValueError(f'{_where(layer)}: mask must be [kh, kw, C_in, C_out] or [C_in, C_out]; got '
                     f'shape {np.shape(mask)}')
  c_out = m.shape[-1]
  n = _check_n(n, c_out, layer)
  p = _check_perm(perm, c_out, layer)
  if p is not None:
    m = m[..., p]
  kh, kw, c_in, _ = m.shape
  blocks = np.moveaxis(m.reshape(kh, kw, c_in, c_out // n, n), (0, 1), (3, 4))  # [C_in, G, N, kh, kw]
  blocks = blocks.reshape(c_in, c_out // n, -1)
  keep = blocks.any(-1)
  mixed = keep & ~blocks.all(-1)
  if mixed.any():
    c, b = (int(i[0]) for i in np.nonzero(mixed))
    chans = (f'channels {b * n}..{b * n + n - 1}' if p is None else
             f'channels perm[{b * n}:{b * n + n}] = {p[b * n:b * n + n].tolist()}')
    raise ValueError(f'{_where(layer)}: the mask is not a 1xN block mask for N={n}: input channel '
                     f'{c} x output block {b} ({chans}) mixes kept and pruned weights; within '
                     f'each block all kh*kw*N entries must share one value')
  return keep


# --------------------------------------------------------------------------------------------------
# pack / unpack


def pack(kernel, mask, n: int, perm=None, *, layer=None) -> PackedBlockSparse:
  """Packs a 1xN-masked kernel into BSR-by-output-block form (paper Fig. 3).

  Runs on the host (numpy): the number of kept segments depends on the mask values.

  Args:
    kernel: HWIO ``[kh, kw, C_in, C_out]`` (kxk convs through im2col) or dense ``[C_in, C_out]``;
      float dtype (kept as the values' dtype).
    mask: same shape, bool or numeric (nonzero = kept), a valid 1xN mask in channel order
      ``perm`` (see :func:`block_keep`); None keeps every block.
    n: block size N, a positive divisor of C_out.
    perm: optional int ``[C_out]``, the filter rearrangement π of the 1xN code: block b holds
      original output channels ``perm[b*N:(b+1)*N]``; outputs are returned in the original order.
    layer: name used in error messages (e.g. the param path).
  Returns:
    :class:`PackedBlockSparse`. Kept weights that happen to be 0 are stored (the mask decides).
  Raises:
    ValueError / TypeError: bad shapes, dtype, N, perm or mask (naming the layer).
  """
  w = _host_array(kernel, 'kernel', layer)
  if w.ndim not in (2, 4):
    raise ValueError(f'{_where(layer)}: expected an HWIO conv kernel [kh, kw, C_in, C_out] or a '
                     f'dense kernel [C_in, C_out]; got shape {w.shape}')
  if not jnp.issubdtype(w.dtype, jnp.floating):
    raise TypeError(f'{_where(layer)}: kernel must be floating point; got {w.dtype}')
  if mask is None:
    mask = np.ones(w.shape, bool)
  if np.shape(mask) != w.shape:
    raise ValueError(f'{_where(layer)}: mask shape {np.shape(mask)} != kernel shape {w.shape}')
  keep = block_keep(mask, n, perm, layer=layer)  # validates n, perm and the mask
  n = int(n)
  c_out = w.shape[-1]
  p = _check_perm(perm, c_out, layer)
  w2 = w.reshape(-1, c_out)  # im2col rows (dy, dx, c) in HWIO row-major order
  if p is not None:
    w2 = w2[:, p]
  k = w2.shape[0]
  groups = c_out // n
  taps = k // keep.shape[0]
  keep_rows = np.tile(keep, (taps, 1))  # [K, G]: row (dy*kw + dx)*C_in + c shares block (c, b)
  blk, rows = np.nonzero(keep_rows.T)  # sorted by block, then by im2col row
  counts = np.bincount(blk, minlength=groups)
  row_ptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
  values = w2.reshape(k, groups, n)[rows, blk]
  if k * c_out >= 2**31:
    raise ValueError(f'{_where(layer)}: K*C_out = {k * c_out} does not fit the int32 indices')
  return PackedBlockSparse(
      row_ptr=jnp.asarray(row_ptr), col_idx=jnp.asarray(rows.astype(np.int32)),
      values=jnp.asarray(np.ascontiguousarray(values)),
      perm=None if p is None else jnp.asarray(p), n=n, kernel_shape=tuple(int(d) for d in w.shape))


def segment_columns(packed: PackedBlockSparse) -> jax.Array:
  """Original output channel of every stored value: int32 ``[nnzb, N]``."""
  block = jnp.repeat(jnp.arange(packed.num_blocks, dtype=jnp.int32), jnp.diff(packed.row_ptr),
                     total_repeat_length=packed.nnzb)
  cols = block[:, None] * packed.n + jnp.arange(packed.n, dtype=jnp.int32)[None, :]
  return cols if packed.perm is None else packed.perm[cols]


def dense_matrix(packed: PackedBlockSparse) -> jax.Array:
  """The GEMM weight ``[K, C_out]`` (original channel order), zeros at pruned blocks."""
  rows = jnp.broadcast_to(packed.col_idx[:, None], (packed.nnzb, packed.n))
  w = jnp.zeros((packed.k, packed.out_channels), packed.values.dtype)
  return w.at[rows, segment_columns(packed)].set(packed.values, unique_indices=True)


def unpack(packed: PackedBlockSparse) -> Tuple[jax.Array, jax.Array]:
  """Inverse of :func:`pack`: exact, jit-able.

  Args:
    packed: a :class:`PackedBlockSparse`.
  Returns:
    (kernel, mask) of ``packed.kernel_shape`` in the original channel order: the kept weights
    bit-for-bit, +0 at pruned weights; mask bool, True where kept. So
    ``unpack(pack(w, m, n, perm)) == (where(m, w, 0), m != 0)``.
  """
  check_packed(packed)
  return _unpack(packed)


@jax.jit
def _unpack(packed: PackedBlockSparse) -> Tuple[jax.Array, jax.Array]:
  rows = jnp.broadcast_to(packed.col_idx[:, None], (packed.nnzb, packed.n))
  cols = segment_columns(packed)
  mask = jnp.zeros((packed.k, packed.out_channels), bool).at[rows, cols].set(True)
  return (dense_matrix(packed).reshape(packed.kernel_shape),
          mask.reshape(packed.kernel_shape))


def check_packed(packed) -> None:
  """Raises TypeError unless ``packed`` is a :class:`PackedBlockSparse` (checked before any kernel)."""
  if not isinstance(packed, PackedBlockSparse):
    raise TypeError(f'expected a PackedBlockSparse (from onexn.pack); got {type(packed).__name__}')

