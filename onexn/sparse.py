"""1xN block-sparse layers for inference: the packed format, pack/unpack, sparse matmul and conv.

Paper: Lin et al., "1xN Pattern for Pruning Convolutional Neural Networks", TPAMI 2022, Fig. 3
(the encoding); spec ``shared/papers/pruning-dcff-1xn-whitebox-jackpot.md`` §2.3 (format), §2.8
(layout pitfalls), §2.9 property 6 (round trip, kernel == dense masked matmul).

A conv with an HWIO kernel ``[kh, kw, C_in, C_out]`` is the GEMM ``Y[P, C_out] = X[P, K] W[K, C_out]``
with ``K = kh*kw*C_in`` (im2col; for a 1x1 conv X is the NHWC activation itself, P = B*H*W pixels).
The im2col row of (dy, dx, input channel c) is ``r = (dy*kw + dx)*C_in + c``: the row-major
flattening of the HWIO kernel's first three axes. A 1xN mask keeps or prunes, per input channel c
and output block b (channels ``b*N .. b*N+N-1``), all ``kh*kw*N`` weights together, so W is made of
dense 1xN row segments and packs into BSR-by-output-block (:class:`PackedBlockSparse`):

  row_ptr [C_out/N + 1]   the kept segments of output block b are ``row_ptr[b] .. row_ptr[b+1]-1``
  col_idx [nnzb]          the im2col row r of each segment (ascending within a block)
  values  [nnzb, N]       its N contiguous weights ``W[r, b*N : (b+1)*N]``
  perm    [C_out] | None  filter rearrangement: block b covers original output channels
                          ``perm[b*N : (b+1)*N]``, i.e. the packed layer is ``kernel[..., perm]``

``Y[p, b*N + j] = sum_{t in block b} X[p, col_idx[t]] * values[t, j]``: one broadcast input times an
N-vector of weights per kept segment, which the ``xla_ext`` CPU kernel vectorises over pixels.
Storage: ``(1-s) K C_out`` values + ``(1-s) K C_out / N`` int32 indices + ``C_out/N + 1`` pointers.

Execution backends of :func:`sparse_matmul` / :func:`sparse_conv`:
  'ffi'  the C++ XLA FFI CPU kernel (``xla_ext``), float32/bfloat16;
  'xla'  pure JAX: the packed weights scattered back into a dense ``[K, C_out]`` matrix and one
         ``jnp.dot`` at HIGHEST precision. Same numbers up to summation order; on GPU/TPU a dense
         matmul is the fast way to run a 1xN layer anyway;
  'auto' (default) 'ffi' when the computation runs on CPU and the kernel is built, 'xla'
         everywhere else (chosen at lowering time with ``lax.platform_dependent``).
Both are differentiable (custom VJP with a dense backward) and vmappable (x batched only: the
batch folds into the kernel's rows; batched weights: one kernel call per element).
"""
from __future__ import annotations

import dataclasses
import functools
import warnings
from typing import Any, NamedTuple, Optional, Sequence, Tuple, Union

import jax
import jax.numpy as jnp
import numpy as np
from jax import custom_batching
from jax import lax

import xla_ext

BACKENDS = ('auto', 'ffi', 'xla')
Padding = Union[str, int, Sequence[Tuple[int, int]]]


@dataclasses.dataclass(frozen=True, eq=False)
class PackedBlockSparse:
  """A 1xN block-sparse layer in BSR-by-output-block form (module docstring; spec §2.3).

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
  """Per-block keep flags of a 1xN mask, after checking that it is one (spec §2.9 property 1/3).

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
  """Packs a 1xN-masked kernel into BSR-by-output-block form (spec §2.3; paper Fig. 3).

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


def _segment_columns(packed: PackedBlockSparse) -> jax.Array:
  """Original output channel of every stored value: int32 ``[nnzb, N]``."""
  block = jnp.repeat(jnp.arange(packed.num_blocks, dtype=jnp.int32), jnp.diff(packed.row_ptr),
                     total_repeat_length=packed.nnzb)
  cols = block[:, None] * packed.n + jnp.arange(packed.n, dtype=jnp.int32)[None, :]
  return cols if packed.perm is None else packed.perm[cols]


def _dense_matrix(packed: PackedBlockSparse) -> jax.Array:
  """The GEMM weight ``[K, C_out]`` (original channel order), zeros at pruned blocks."""
  rows = jnp.broadcast_to(packed.col_idx[:, None], (packed.nnzb, packed.n))
  w = jnp.zeros((packed.k, packed.out_channels), packed.values.dtype)
  return w.at[rows, _segment_columns(packed)].set(packed.values, unique_indices=True)


def unpack(packed: PackedBlockSparse) -> Tuple[jax.Array, jax.Array]:
  """Inverse of :func:`pack` (spec §2.9 property 6): exact, jit-able.

  Args:
    packed: a :class:`PackedBlockSparse`.
  Returns:
    (kernel, mask) of ``packed.kernel_shape`` in the original channel order: the kept weights
    bit-for-bit, +0 at pruned weights; mask bool, True where kept. So
    ``unpack(pack(w, m, n, perm)) == (where(m, w, 0), m != 0)``.
  """
  _check_packed(packed)
  return _unpack(packed)


@jax.jit
def _unpack(packed: PackedBlockSparse) -> Tuple[jax.Array, jax.Array]:
  rows = jnp.broadcast_to(packed.col_idx[:, None], (packed.nnzb, packed.n))
  cols = _segment_columns(packed)
  mask = jnp.zeros((packed.k, packed.out_channels), bool).at[rows, cols].set(True)
  return (_dense_matrix(packed).reshape(packed.kernel_shape),
          mask.reshape(packed.kernel_shape))


def _check_packed(packed) -> None:
  if not isinstance(packed, PackedBlockSparse):
    raise TypeError(f'expected a PackedBlockSparse (from onexn.pack); got {type(packed).__name__}')


# --------------------------------------------------------------------------------------------------
# sparse_matmul: forward backends, custom VJP, batching


class _Config(NamedTuple):
  n: int
  kernel_shape: Tuple[int, ...]
  backend: str
  num_threads: int
  isa: str


def _rebuild(cfg: _Config, values, row_ptr, col_idx, perm) -> PackedBlockSparse:
  return PackedBlockSparse(row_ptr=row_ptr, col_idx=col_idx, values=values, perm=perm, n=cfg.n,
                           kernel_shape=cfg.kernel_shape)


def _out_dtype(x, values):
  return jnp.result_type(x.dtype, values.dtype)


def _xla_forward(cfg: _Config, x, values, row_ptr, col_idx, perm):
  packed = _rebuild(cfg, values, row_ptr, col_idx, perm)
  out_dtype = _out_dtype(x, values)
  w = _dense_matrix(packed)
  # HIGHEST: TPUs otherwise multiply float32 in bfloat16 passes, and the fallback must give the
  # kernel's numbers. Low-precision inputs accumulate in float32, as the kernel does.
  y = jnp.matmul(x, w, precision=lax.Precision.HIGHEST,
                 preferred_element_type=jnp.promote_types(out_dtype, jnp.float32))
  return y.astype(out_dtype)


@functools.lru_cache(maxsize=None)
def _ffi_function(out_dtype: str, num_threads: int, isa: str):
  """The FFI call with a batching rule (one jit-cacheable function per static configuration)."""

  @custom_batching.custom_vmap
  def call(x, row_ptr, col_idx, values):
    return xla_ext.block_sparse_matmul(x, row_ptr, col_idx, values, out_dtype=out_dtype,
                                       num_threads=num_threads, isa=isa)

  @call.def_vmap
  def _batched(axis_size, in_batched, x, row_ptr, col_idx, values):
    x_b, *w_b = in_batched
    if not any(w_b):
      # Shared weights: the kernel treats all leading dims of x as rows, so the batch simply
      # becomes more rows (one call, better threading than a loop).
      return call(x, row_ptr, col_idx, values), x_b
    args = [a if b else jnp.broadcast_to(a, (axis_size,) + a.shape)
            for a, b in zip((x, row_ptr, col_idx, values), in_batched)]
    return lax.map(lambda a: call(*a), tuple(args)), True

  return call


def _ffi_forward(cfg: _Config, x, values, row_ptr, col_idx, perm):
  out_dtype = _out_dtype(x, values)
  y = _ffi_function(jnp.dtype(out_dtype).name, cfg.num_threads, cfg.isa)(x, row_ptr, col_idx,
                                                                          values)
  if perm is not None:
    # The kernel writes packed (rearranged) channel order; undo it. A model exported with the
    # permutation applied physically (layer + BN + consumer, spec §2.7) packs with perm=None and
    # skips this gather.
    inverse = jnp.zeros_like(perm).at[perm].set(jnp.arange(perm.shape[0], dtype=perm.dtype))
    y = jnp.take(y, inverse, axis=-1)
  return y


def _ffi_usable(x, values) -> bool:
  return (xla_ext.available() and jnp.dtype(x.dtype) in xla_ext.KERNEL_DTYPES and
          jnp.dtype(_out_dtype(x, values)) in xla_ext.KERNEL_DTYPES)


def _forward(cfg: _Config, x, values, row_ptr, col_idx, perm):
  args = (x, values, row_ptr, col_idx, perm)
  if cfg.backend == 'xla' or (cfg.backend == 'auto' and not _ffi_usable(x, values)):
    return _xla_forward(cfg, *args)
  if cfg.backend == 'ffi':
    return _ffi_forward(cfg, *args)
  return lax.platform_dependent(*args, cpu=functools.partial(_ffi_forward, cfg),
                                default=functools.partial(_xla_forward, cfg))


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _matmul(cfg: _Config, x, values, row_ptr, col_idx, perm):
  return _forward(cfg, x, values, row_ptr, col_idx, perm)


def _matmul_fwd(cfg, x, values, row_ptr, col_idx, perm):
  return _forward(cfg, x, values, row_ptr, col_idx, perm), (x, values, row_ptr, col_idx, perm)


def _matmul_bwd(cfg, res, dy):
  # Dense backward (training through a packed layer is allowed, inference is what the kernel is
  # for): dx = dy W^T; dvalues = (X^T dy) at the kept positions.
  x, values, row_ptr, col_idx, perm = res
  packed = _rebuild(cfg, values, row_ptr, col_idx, perm)
  acc = jnp.promote_types(dy.dtype, jnp.float32)
  w = _dense_matrix(packed)
  dx = jnp.matmul(dy, w.T, precision=lax.Precision.HIGHEST, preferred_element_type=acc)
  x2 = x.reshape(-1, packed.k)
  dy2 = dy.reshape(-1, packed.out_channels)
  dw = jnp.matmul(x2.T, dy2, precision=lax.Precision.HIGHEST, preferred_element_type=acc)
  rows = jnp.broadcast_to(col_idx[:, None], (packed.nnzb, packed.n))
  dvalues = dw[rows, _segment_columns(packed)]
  return dx.astype(x.dtype), dvalues.astype(values.dtype), None, None, None


_matmul.defvjp(_matmul_fwd, _matmul_bwd)
# One compiled computation per shape when called eagerly (inlined when the caller is jitted).
_matmul_jit = jax.jit(_matmul, static_argnums=0)


def _check_options(backend: str, num_threads, isa: str) -> None:
  if backend not in BACKENDS:
    raise ValueError(f'backend must be one of {BACKENDS}; got {backend!r}')
  if isinstance(num_threads, bool) or not isinstance(num_threads, (int, np.integer)) or num_threads < 0:
    raise ValueError(f'num_threads must be an int >= 0 (0 = all of XLA\'s CPU threads); got '
                     f'{num_threads!r}')
  if isa not in xla_ext.ISAS:
    raise ValueError(f'isa must be one of {sorted(xla_ext.ISAS)}; got {isa!r}')
  if backend == 'ffi' and not xla_ext.available():
    raise RuntimeError(f'backend="ffi" needs the xla_ext C++ kernel, which is not available: '
                       f'{xla_ext.load_error()}')
  if backend != 'xla' and isa != 'auto' and xla_ext.available() and not xla_ext.isa_supported(isa):
    raise ValueError(f'isa={isa!r} is not supported by this CPU (best: {xla_ext.best_isa()!r})')
  if backend == 'auto' and not xla_ext.available():
    _warn_fallback_once()


@functools.lru_cache(maxsize=1)
def _warn_fallback_once() -> None:
  warnings.warn(f'onexn.sparse: the xla_ext CPU kernel is not available ({xla_ext.load_error()}); '
                f'backend="auto" runs the dense pure-JAX fallback (no sparse speedup)',
                RuntimeWarning, stacklevel=3)


def sparse_matmul(x, packed: PackedBlockSparse, *, backend: str = 'auto', num_threads: int = 0,
                  isa: str = 'auto') -> jax.Array:
  """``x @ W`` for a 1xN block-sparse W (spec §2.3 decode: ``Y[m, bN:(b+1)N] = Σ_t X[m, I[t]] D[t]``).

  Jit-able, vmappable (over x and/or the packed arrays) and differentiable (custom VJP, dense
  backward).

  Args:
    x: ``[..., K]`` floating (``K = packed.k``; for a 1x1 conv the NHWC activation itself).
    packed: from :func:`pack`.
    backend: 'auto' | 'ffi' | 'xla' (module docstring). 'ffi' on a non-CPU device fails at
      lowering; 'auto' also uses 'xla' for dtypes the kernel lacks (float16, float64).
    num_threads: CPU kernel threads from XLA's intra-op pool, 0 = all.
    isa: CPU kernel instruction set: 'auto' | 'generic' | 'avx2' | 'avx512' (tests and benchmarks).
  Returns:
    ``[..., C_out]`` in the original channel order, dtype ``result_type(x, values)``.
  Raises:
    TypeError / ValueError / RuntimeError: bad input or options, before any kernel runs.
  """
  _check_packed(packed)
  _check_options(backend, num_threads, isa)
  x = jnp.asarray(x)
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise TypeError(f'sparse_matmul: x must be floating point (float32 or bfloat16 for the CPU '
                    f'kernel); got {x.dtype}')
  if x.ndim < 1 or x.shape[-1] != packed.k:
    raise ValueError(f'sparse_matmul: x has shape {tuple(x.shape)} but the packed layer (kernel '
                     f'{packed.kernel_shape}) needs x[..., K] with K = kh*kw*C_in = {packed.k}')
  if backend == 'ffi' and (jnp.dtype(x.dtype) not in xla_ext.KERNEL_DTYPES or
                           jnp.dtype(_out_dtype(x, packed.values)) not in xla_ext.KERNEL_DTYPES):
    raise TypeError(f'backend="ffi" computes float32/bfloat16; got x {x.dtype}, values '
                    f'{packed.values.dtype} (use backend="auto" or "xla")')
  cfg = _Config(packed.n, packed.kernel_shape, backend, int(num_threads), isa)
  return _matmul_jit(cfg, x, packed.values, packed.row_ptr, packed.col_idx, packed.perm)


# --------------------------------------------------------------------------------------------------
# sparse_matmul_cf: channels-first layout with a fused epilogue

ACTIVATIONS = ('none', 'relu', 'relu6')


class _CfConfig(NamedTuple):
  n: int
  kernel_shape: Tuple[int, ...]
  backend: str
  num_threads: int
  isa: str
  activation: str
  has_bias: bool
  has_residual: bool


def _activate(y, activation: str):
  if activation == 'relu':
    return jnp.maximum(y, 0)
  if activation == 'relu6':
    return jnp.clip(y, 0, 6)
  return y


def _cf_xla(cfg: _CfConfig, x, values, row_ptr, col_idx, perm, bias, residual):
  """Reference / non-CPU path: dense ``[K, C_out]`` weight, one einsum, the epilogue in jnp."""
  packed = PackedBlockSparse(row_ptr=row_ptr, col_idx=col_idx, values=values, perm=perm, n=cfg.n,
                             kernel_shape=cfg.kernel_shape)
  out_dtype = _out_dtype(x, values)
  acc = jnp.promote_types(out_dtype, jnp.float32)
  y = jnp.einsum('kc,bkp->bcp', _dense_matrix(packed), x, precision=lax.Precision.HIGHEST,
                 preferred_element_type=acc)
  if cfg.has_bias:
    y = y + bias.astype(acc)[:, None]
  if cfg.has_residual:
    y = y + residual.astype(acc)
  return _activate(y, cfg.activation).astype(out_dtype)


@functools.lru_cache(maxsize=None)
def _ffi_cf_function(num_threads: int, isa: str, activation: str, has_bias: bool,
                     has_residual: bool):
  """The channels-first FFI call with a batching rule, per static configuration."""

  @custom_batching.custom_vmap
  def call(x, bias, residual, row_ptr, col_idx, values):
    return xla_ext.block_sparse_matmul_cf(
        x, row_ptr, col_idx, values, bias if has_bias else None,
        residual if has_residual else None, activation=activation, num_threads=num_threads,
        isa=isa)

  @call.def_vmap
  def _batched(axis_size, in_batched, x, bias, residual, row_ptr, col_idx, values):
    x_b, bias_b, res_b, *w_b = in_batched
    if not any(w_b) and not bias_b:
      # Shared weights: the vmapped axis becomes more images of one call.
      xs = x if x_b else jnp.broadcast_to(x, (axis_size,) + x.shape)
      lead = xs.shape[:2]
      r = residual
      if has_residual:
        r = (r if res_b else jnp.broadcast_to(r, (axis_size,) + r.shape))
        r = r.reshape((-1,) + r.shape[2:])
      y = call(xs.reshape((-1,) + xs.shape[2:]), bias, r, row_ptr, col_idx, values)
      return y.reshape(lead + y.shape[1:]), True
    args = [a if b else jnp.broadcast_to(a, (axis_size,) + a.shape)
            for a, b in zip((x, bias, residual, row_ptr, col_idx, values), in_batched)]
    return lax.map(lambda a: call(*a), tuple(args)), True

  return call


def _cf_ffi(cfg: _CfConfig, x, values, row_ptr, col_idx, perm, bias, residual):
  if perm is not None:
    # The kernel computes packed (rearranged) channel order: feed it the epilogue operands in that
    # order and gather the result back (the activation commutes with the permutation).
    if cfg.has_bias:
      bias = jnp.take(bias, perm, axis=0)
    if cfg.has_residual:
      residual = jnp.take(residual, perm, axis=-2)
  y = _ffi_cf_function(cfg.num_threads, cfg.isa, cfg.activation, cfg.has_bias,
                       cfg.has_residual)(x, bias.astype(jnp.float32),
                                         residual.astype(jnp.float32), row_ptr, col_idx,
                                         values.astype(jnp.float32))
  if perm is not None:
    inverse = jnp.zeros_like(perm).at[perm].set(jnp.arange(perm.shape[0], dtype=perm.dtype))
    y = jnp.take(y, inverse, axis=-2)
  return y


def _cf_forward(cfg: _CfConfig, *args):
  x, values = args[0], args[1]
  if cfg.backend == 'xla' or (cfg.backend == 'auto' and not _cf_ffi_usable(x, values)):
    return _cf_xla(cfg, *args)
  if cfg.backend == 'ffi':
    return _cf_ffi(cfg, *args)
  return lax.platform_dependent(*args, cpu=functools.partial(_cf_ffi, cfg),
                                default=functools.partial(_cf_xla, cfg))


def _cf_ffi_usable(x, values) -> bool:
  return (xla_ext.available() and jnp.dtype(x.dtype) == jnp.float32 and
          jnp.dtype(_out_dtype(x, values)) == jnp.float32)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _matmul_cf(cfg: _CfConfig, x, values, row_ptr, col_idx, perm, bias, residual):
  return _cf_forward(cfg, x, values, row_ptr, col_idx, perm, bias, residual)


def _matmul_cf_fwd(cfg, x, values, row_ptr, col_idx, perm, bias, residual):
  args = (x, values, row_ptr, col_idx, perm, bias, residual)
  return _cf_forward(cfg, *args), args


def _matmul_cf_bwd(cfg, res, dy):
  # The backward of the dense reference (training through a packed layer is allowed; the kernel
  # is for inference): dx = W dy, dvalues = (x dy^T) at the kept positions, dbias, dresidual.
  x, values, row_ptr, col_idx, perm, bias, residual = res
  _, vjp = jax.vjp(lambda x, v, b, r: _cf_xla(cfg, x, v, row_ptr, col_idx, perm, b, r),
                   x, values, bias, residual)
  dx, dvalues, dbias, dres = vjp(dy)
  return dx, dvalues, None, None, None, dbias, dres


_matmul_cf.defvjp(_matmul_cf_fwd, _matmul_cf_bwd)
_matmul_cf_jit = jax.jit(_matmul_cf, static_argnums=0)


def sparse_matmul_cf(x, packed: PackedBlockSparse, *, bias=None, residual=None,
                     activation: str = 'none', backend: str = 'auto', num_threads: int = 0,
                     isa: str = 'auto') -> jax.Array:
  """Channels-first 1xN layer with its epilogue: ``y = act(W^T x + bias + residual)``.

  The same product as :func:`sparse_matmul` (spec §2.3 decode) on activations stored channels-first
  (NCHW with H*W flattened), with the BN-folded bias, a residual sum and ReLU / ReLU6 fused into
  the kernel's output stage. In this layout the CPU kernel reads only the input rows that kept
  segments use and transposes nothing (``xla_ext/README.md``), and the epilogue saves the separate
  elementwise passes over y; a network kept channels-first end to end (``onexn.channels_first``)
  never converts layouts between layers.

  ``y[..., c, p] = act(sum_k W[k, c] x[..., k, p] + bias[c] + residual[..., c, p])``

  Jit-able, vmappable (a vmapped x / residual with shared weights becomes more images of one
  kernel call) and differentiable (custom VJP through the dense reference). As with any sparse
  kernel, a NaN/inf in an input channel reaches only the outputs whose kept weights read it (the
  dense 'xla' fallback multiplies pruned zeros by it too).

  Args:
    x: ``[..., K, P]`` floating, ``K = packed.k`` (for a 1x1 conv, C_in; P = H*W pixels).
    packed: from :func:`pack`.
    bias: ``[C_out]`` or None (original channel order).
    residual: ``[..., C_out, P]`` (x's leading dims) or None; added before the activation.
    activation: 'none' | 'relu' | 'relu6'.
    backend: 'auto' | 'ffi' | 'xla' (module docstring); the CPU kernel computes float32 only, so
      'auto' runs other dtypes through 'xla'.
    num_threads, isa: as :func:`sparse_matmul`.
  Returns:
    ``[..., C_out, P]``, dtype ``result_type(x, values)``.
  Raises:
    TypeError / ValueError / RuntimeError: bad input or options, before any kernel runs.
  """
  _check_packed(packed)
  _check_options(backend, num_threads, isa)
  if activation not in ACTIVATIONS:
    raise ValueError(f'sparse_matmul_cf: activation must be one of {ACTIVATIONS}; got '
                     f'{activation!r}')
  x = jnp.asarray(x)
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise TypeError(f'sparse_matmul_cf: x must be floating point; got {x.dtype}')
  if x.ndim < 2 or x.shape[-2] != packed.k:
    raise ValueError(f'sparse_matmul_cf: x has shape {tuple(x.shape)} but the packed layer '
                     f'(kernel {packed.kernel_shape}) needs channels-first x[..., K, P] with '
                     f'K = kh*kw*C_in = {packed.k}')
  lead, pixels, c_out = x.shape[:-2], x.shape[-1], packed.out_channels
  out_shape = lead + (c_out, pixels)
  if backend == 'ffi' and not _cf_ffi_usable(x, packed.values):
    raise TypeError(f'backend="ffi" computes float32 channels-first; got x {x.dtype}, values '
                    f'{packed.values.dtype} (use backend="auto" or "xla")')
  if bias is not None:
    bias = jnp.asarray(bias)
    if bias.shape != (c_out,):
      raise ValueError(f'sparse_matmul_cf: bias must have shape ({c_out},); got {bias.shape}')
  if residual is not None:
    residual = jnp.asarray(residual)
    if residual.shape != out_shape:
      raise ValueError(f'sparse_matmul_cf: residual must have the output shape {out_shape}; got '
                       f'{residual.shape}')
  cfg = _CfConfig(packed.n, packed.kernel_shape, backend, int(num_threads), isa, activation,
                  bias is not None, residual is not None)
  empty = jnp.zeros((0,), jnp.float32)
  images = int(np.prod(lead, dtype=np.int64))  # not -1: reshape cannot infer it when P == 0
  xb = x.reshape((images, packed.k, pixels))
  rb = empty if residual is None else residual.reshape((images, c_out, pixels))
  y = _matmul_cf_jit(cfg, xb, packed.values, packed.row_ptr, packed.col_idx, packed.perm,
                     empty if bias is None else bias, rb)
  return y.reshape(out_shape)


# --------------------------------------------------------------------------------------------------
# sparse_conv


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
  on them (spec §2.3). Dilation and feature groups (depthwise convs) are not supported.

  Args:
    x: ``[..., H, W, C_in]`` floating (any leading batch dims).
    packed: from :func:`pack` of an HWIO kernel (a 2-D kernel counts as 1x1).
    stride: int or (sh, sw).
    padding: 'SAME' | 'VALID' (lax semantics) | int | ((top, bottom), (left, right)).
    backend, num_threads, isa: as :func:`sparse_matmul`.
  Returns:
    ``[..., Ho, Wo, C_out]``.
  """
  _check_packed(packed)
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
