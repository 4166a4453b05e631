"""C++ XLA FFI CPU kernels and their JAX bindings: the 1xN block-sparse matmul (NHWC and
channels-first) and the channels-first 3x3 depthwise conv.

On import this module finds the compiled kernels and registers them with XLA
(`jax.ffi.register_ffi_target`, platform 'cpu'):

1. the library built by `pip install --no-build-isolation -e .` (setup.py), next to this file,
   if it is at least as new as the sources;
2. otherwise a copy compiled on first import with g++ into a cache directory
   (`$XLA_EXT_CACHE_DIR`, default `~/.cache/compress-jax/xla_ext`), keyed by a hash of the
   sources, flags, FFI headers and compiler, so later imports load it in milliseconds.

If neither works (no compiler), importing still succeeds: `available()` is False, `load_error()`
says why, and `onexn.sparse_matmul` falls back to its pure-JAX path (or raises when the FFI
backend was requested explicitly).

The kernel computes, for the BSR-by-output-block encoding of a 1xN-sparse weight (1xN paper,
Lin et al. TPAMI 2022, Fig. 3),

    y[..., g*N + j] = sum_{t = row_ptr[g]}^{row_ptr[g+1]-1} x[..., col_idx[t]] * values[t, j]

The packed format and its validation live in `onexn.block_sparse`, the differentiable, vmappable
user API in `onexn.ops`; this module is the thin, checked call into C++. Every error names the op
that raised it (`block_sparse_matmul`, `block_sparse_matmul_cf`, `depthwise3x3_cf`), here and in
the C++ handlers.
"""
from __future__ import annotations

import ctypes
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from xla_ext import _build

TARGET_NAME = 'xla_ext_block_sparse_matmul'
TARGET_NAME_CF = 'xla_ext_block_sparse_matmul_cf'
TARGET_NAME_DW = 'xla_ext_depthwise3x3_cf'
# Epilogue activations of the channels-first kernel, as the C++ `activation` attribute numbers them.
ACTIVATIONS = {'none': 0, 'relu': 1, 'relu6': 2}
# Instruction sets of the kernel, as the C++ `isa` attribute numbers them.
ISAS = {'auto': 0, 'generic': 1, 'avx2': 2, 'avx512': 3}
# Element types the kernel reads (x) and writes (y); the values are always read as float32.
KERNEL_DTYPES = (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16))

_lib: Optional[ctypes.CDLL] = None
_lib_path: Optional[str] = None
_load_error: Optional[str] = None


def _register(lib) -> None:
  lib.XlaExtBsmmBestIsa.restype = ctypes.c_int64
  lib.XlaExtBsmmIsaSupported.restype = ctypes.c_int64
  lib.XlaExtBsmmIsaSupported.argtypes = [ctypes.c_int64]
  jax.ffi.register_ffi_target(TARGET_NAME, jax.ffi.pycapsule(lib.XlaExtBlockSparseMatmul),
                              platform='cpu')
  jax.ffi.register_ffi_target(TARGET_NAME_CF,
                              jax.ffi.pycapsule(lib.XlaExtBlockSparseMatmulCf), platform='cpu')
  jax.ffi.register_ffi_target(TARGET_NAME_DW, jax.ffi.pycapsule(lib.XlaExtDepthwise3x3Cf),
                              platform='cpu')


def _load() -> None:
  global _lib, _lib_path, _load_error
  _lib, _lib_path, _load_error = _build.load_ffi_library(
      '_bsmm', _build.newest_source_mtime,
      lambda: f'libbsmm-{_build.source_digest(jax.ffi.include_dir())}.so',
      lambda path: _build.compile_shared_library(jax.ffi.include_dir(), path), _register)


def available() -> bool:
  """True when the C++ kernel is compiled, loaded and registered for the CPU platform."""
  return _lib is not None


def load_error() -> Optional[str]:
  """Why the kernel is unavailable (None when it is available)."""
  return _load_error


def library_path() -> Optional[str]:
  """Path of the loaded shared library (None when unavailable)."""
  return _lib_path


def best_isa() -> str:
  """The instruction set `isa='auto'` runs on this CPU: 'avx512', 'avx2' or 'generic'."""
  _require()
  code = int(_lib.XlaExtBsmmBestIsa())
  return next(k for k, v in ISAS.items() if v == code)


def isa_supported(isa: str) -> bool:
  """Whether this CPU can run the kernel built for `isa` ('generic', 'avx2', 'avx512')."""
  _require()
  if isa not in ISAS or isa == 'auto':
    raise ValueError(f"isa must be one of 'generic', 'avx2', 'avx512'; got {isa!r}")
  return bool(_lib.XlaExtBsmmIsaSupported(ISAS[isa]))


def _require() -> None:
  if _lib is None:
    raise RuntimeError(f'the xla_ext C++ kernels are not available: {_load_error}')


def block_sparse_matmul(x: jax.Array, row_ptr: jax.Array, col_idx: jax.Array,
                        values: jax.Array, *, out_dtype=None, num_threads: int = 0,
                        isa: str = 'auto', vmap_method: str = 'sequential') -> jax.Array:
  """One call of the FFI kernel (CPU only): the 1xN block-sparse product x @ W.

  Args:
    x: [..., K] float32 or bfloat16 (leading dims are rows: pixels, batch, ...).
    row_ptr: int32 [G + 1], row_ptr[0] = 0, non-decreasing, row_ptr[G] = nnzb.
    col_idx: int32 [nnzb], input feature of every kept segment, in [0, K).
    values: [nnzb, N] floating; the N weights of each kept segment (read as float32).
    out_dtype: float32 or bfloat16; default x.dtype.
    num_threads: threads of XLA's intra-op pool to use (0 = all).
    isa: 'auto' (the best this CPU has), 'generic', 'avx2' or 'avx512'.
    vmap_method: passed to `jax.ffi.ffi_call`; `onexn.sparse_matmul` has a faster batching rule.
  Returns:
    y: [..., G * N] of out_dtype, y[..., g*N + j] = sum_t x[..., col_idx[t]] * values[t, j]
    over the segments t of group g (paper Fig. 3). Empty groups give zeros.
  Raises:
    RuntimeError: the kernel is not available (see `load_error()`).
    ValueError/TypeError: bad shapes, dtypes or options (checked here, before C++ sees them).
  """
  op = 'block_sparse_matmul'
  _check_call_options(op, isa, 'none', num_threads)
  x_dtype = jnp.dtype(x.dtype)
  out_dtype = x_dtype if out_dtype is None else jnp.dtype(out_dtype)
  if x_dtype not in KERNEL_DTYPES or out_dtype not in KERNEL_DTYPES:
    raise TypeError(f'{op}: the CPU kernel reads and writes float32 or bfloat16; got x '
                    f'{x_dtype}, out {out_dtype}')
  _check_encoding(op, row_ptr, col_idx, values)
  if x.ndim < 1:
    raise ValueError(f'{op}: x must have rank >= 1 ([..., K]); got shape {x.shape}')
  m = (row_ptr.shape[0] - 1) * values.shape[1]
  out = jax.ShapeDtypeStruct(x.shape[:-1] + (m,), out_dtype)
  call = jax.ffi.ffi_call(TARGET_NAME, out, vmap_method=vmap_method)
  return call(row_ptr, col_idx, values.astype(jnp.float32), x,
              num_threads=np.int64(num_threads), isa=np.int64(ISAS[isa]))



def _check_call_options(op: str, isa: str, activation: str, num_threads) -> None:
  _require()
  if isa not in ISAS:
    raise ValueError(f'{op}: isa must be one of {sorted(ISAS)}; got {isa!r}')
  if activation not in ACTIVATIONS:
    raise ValueError(f'{op}: activation must be one of {sorted(ACTIVATIONS)}; got {activation!r}')
  if (isinstance(num_threads, bool) or not isinstance(num_threads, (int, np.integer)) or
      num_threads < 0):
    raise ValueError(f'{op}: num_threads must be an int >= 0 (0 = all); got {num_threads!r}')


def _check_encoding(op: str, row_ptr, col_idx, values) -> None:
  if jnp.dtype(row_ptr.dtype) != jnp.int32 or jnp.dtype(col_idx.dtype) != jnp.int32:
    raise TypeError(f'{op}: row_ptr and col_idx must be int32; got {row_ptr.dtype}, '
                    f'{col_idx.dtype}')
  if not jnp.issubdtype(values.dtype, jnp.floating):
    raise TypeError(f'{op}: values must be floating point; got {values.dtype}')
  if row_ptr.ndim != 1 or row_ptr.shape[0] < 1 or col_idx.ndim != 1 or values.ndim != 2:
    raise ValueError(f'{op}: expected row_ptr [G+1], col_idx [nnzb], values [nnzb, N]; got '
                     f'{row_ptr.shape}, {col_idx.shape}, {values.shape}')
  if values.shape[0] != col_idx.shape[0] or values.shape[1] < 1:
    raise ValueError(f'{op}: values {values.shape} must be [nnzb, N>=1] with nnzb = '
                     f'len(col_idx) = {col_idx.shape[0]}')


def block_sparse_matmul_cf(x: jax.Array, row_ptr: jax.Array, col_idx: jax.Array,
                           values: jax.Array, bias: Optional[jax.Array] = None,
                           residual: Optional[jax.Array] = None, *, activation: str = 'none',
                           num_threads: int = 0, isa: str = 'auto',
                           vmap_method: str = 'sequential') -> jax.Array:
  """One call of the channels-first FFI kernel (CPU only, float32), with a fused epilogue.

  ``y[b, g*N + j, p] = act(sum_t values[t, j] * x[b, col_idx[t], p] + bias[g*N + j]
  + residual[b, g*N + j, p])`` over the kept segments t of group g (paper Fig. 3; the
  epilogue is a folded BatchNorm's bias, a residual sum and ReLU / ReLU6).

  Args:
    x: float32 ``[B, K, P]`` (NCHW with H*W flattened to P).
    row_ptr, col_idx, values: the BSR-by-output-block encoding, as :func:`block_sparse_matmul`.
    bias: float32 ``[G*N]`` or None.
    residual: float32 ``[B, G*N, P]`` or None (added before the activation).
    activation: 'none' | 'relu' | 'relu6'.
    num_threads, isa, vmap_method: as :func:`block_sparse_matmul`.
  Returns:
    y: float32 ``[B, G*N, P]``.
  Raises:
    RuntimeError: the kernel is not available (see `load_error()`).
    ValueError/TypeError: bad shapes, dtypes or options (checked here, before C++ sees them).
  """
  op = 'block_sparse_matmul_cf'
  _check_call_options(op, isa, activation, num_threads)
  _check_encoding(op, row_ptr, col_idx, values)
  if jnp.dtype(x.dtype) != jnp.float32:
    raise TypeError(f'{op}: the channels-first CPU kernel reads and writes float32; got x '
                    f'{x.dtype}')
  if x.ndim != 3:
    raise ValueError(f'{op}: x must be [B, K, P]; got shape {x.shape}')
  m = (row_ptr.shape[0] - 1) * values.shape[1]
  out_shape = (x.shape[0], m, x.shape[2])
  if bias is not None and (tuple(bias.shape) != (m,) or jnp.dtype(bias.dtype) != jnp.float32):
    raise ValueError(f'{op}: bias must be float32 [{m}]; got {bias.dtype} {tuple(bias.shape)}')
  if residual is not None and (tuple(residual.shape) != out_shape or
                               jnp.dtype(residual.dtype) != jnp.float32):
    raise ValueError(f'{op}: residual must be float32 {list(out_shape)}; got {residual.dtype} '
                     f'{list(residual.shape)}')
  empty = jnp.zeros((0,), jnp.float32)
  call = jax.ffi.ffi_call(TARGET_NAME_CF, jax.ShapeDtypeStruct(out_shape, jnp.float32),
                          vmap_method=vmap_method)
  return call(row_ptr, col_idx, values.astype(jnp.float32), x,
              empty if bias is None else bias, empty if residual is None else residual,
              num_threads=np.int64(num_threads), isa=np.int64(ISAS[isa]),
              activation=np.int64(ACTIVATIONS[activation]), has_bias=np.int64(bias is not None),
              has_residual=np.int64(residual is not None))



def depthwise3x3_cf(x: jax.Array, kernel: jax.Array, bias: jax.Array, hw, stride: int, *,
                    activation: str = 'none', num_threads: int = 0, isa: str = 'auto',
                    vmap_method: str = 'sequential') -> jax.Array:
  """One call of the channels-first 3x3 depthwise FFI kernel (CPU only, float32).

  ``y[b, c, o] = act(bias[c] + sum_{dy,dx} kernel[c, dy*3 + dx] * x[b, c, i(o) + (dy-1, dx-1)])``
  with zero padding 1 (the zoo's ``k // 2``), on the padded-width layout of
  ``onexn.channels_first``: a ``h x w`` plane is ``h`` rows of ``w + 2`` floats whose last two are
  junk (ignored here; written as 0 in y).

  Args:
    x: float32 ``[B, C, h * (w + 2)]``.
    kernel: float32 ``[C, 9]`` / ``[C, 3, 3]`` (per channel, row-major) or the depthwise HWIO
      ``[3, 3, 1, C]`` of a flax conv with ``feature_group_count = C``.
    bias: float32 ``[C]``.
    hw: ``(h, w)``; stride: 1 or 2.
    activation, num_threads, isa: as :func:`block_sparse_matmul_cf`.
  Returns:
    float32 ``[B, C, ho * (wo + 2)]`` with ``ho = ceil(h / stride)``, ``wo = ceil(w / stride)``.
  Raises:
    ValueError/TypeError: bad shapes, dtypes or options (checked here, before C++ sees them).
  """
  op = 'depthwise3x3_cf'
  _check_call_options(op, isa, activation, num_threads)
  if stride not in (1, 2):
    raise ValueError(f'{op}: stride must be 1 or 2; got {stride!r}')
  h, w = (int(v) for v in hw)
  if h < 1 or w < 1:
    raise ValueError(f'{op}: hw must be two positive ints; got {hw!r}')
  if x.ndim != 3 or x.shape[2] != h * (w + 2):
    raise ValueError(f'{op}: x must be [B, C, h*(w+2)] = [B, C, {h * (w + 2)}] for hw={hw}; got '
                     f'{list(x.shape)}')
  c = x.shape[1]
  if kernel.ndim == 4:
    if kernel.shape != (3, 3, 1, c):
      raise ValueError(f'{op}: a 4-D kernel must be the depthwise HWIO [3, 3, 1, {c}] (flax\'s); '
                       f'got {list(kernel.shape)}')
    kernel = jnp.transpose(kernel[:, :, 0, :], (2, 0, 1))
  kernel = kernel.reshape(kernel.shape[0], -1) if kernel.ndim == 3 else kernel
  if kernel.shape != (c, 9) or bias.shape != (c,):
    raise ValueError(f'{op}: kernel must be [{c}, 9] (or [{c}, 3, 3]) and bias [{c}]; got '
                     f'{list(kernel.shape)}, {list(bias.shape)}')
  for name, a in (('x', x), ('kernel', kernel), ('bias', bias)):
    if jnp.dtype(a.dtype) != jnp.float32:
      raise TypeError(f'{op}: the depthwise CPU kernel computes float32; got {name} {a.dtype}')
  ho, wo = (h - 1) // stride + 1, (w - 1) // stride + 1
  out = jax.ShapeDtypeStruct((x.shape[0], c, ho * (wo + 2)), jnp.float32)
  call = jax.ffi.ffi_call(TARGET_NAME_DW, out, vmap_method=vmap_method)
  return call(x, kernel, bias, h=np.int64(h), w=np.int64(w), stride=np.int64(stride),
              activation=np.int64(ACTIVATIONS[activation]), num_threads=np.int64(num_threads),
              isa=np.int64(ISAS[isa]))


_load()

from xla_ext import binconv  # noqa: E402,F401  (the bit-packed binary conv; registers its target)
