"""1xN block-sparse products: :func:`sparse_matmul` (NHWC rows) and :func:`sparse_matmul_cf`
(channels-first, with a fused bias / residual / ReLU(6) epilogue), on the packed format of
``onexn.block_sparse``.

The decode of the paper's Fig. 3 (Lin et al., TPAMI 2022):
``Y[m, b*N:(b+1)*N] = sum_{t in block b} X[m, col_idx[t]] * values[t, :]``.

Execution backends:
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

import functools
import warnings
from typing import NamedTuple, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import custom_batching
from jax import lax

import xla_ext
from onexn.block_sparse import PackedBlockSparse, check_packed, dense_matrix, segment_columns

BACKENDS = ('auto', 'ffi', 'xla')

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
  w = dense_matrix(packed)
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
    # permutation applied physically (layer + BN + consumer, ``onexn.permute.permute_pair``) packs with perm=None and
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
  w = dense_matrix(packed)
  dx = jnp.matmul(dy, w.T, precision=lax.Precision.HIGHEST, preferred_element_type=acc)
  x2 = x.reshape(-1, packed.k)
  dy2 = dy.reshape(-1, packed.out_channels)
  dw = jnp.matmul(x2.T, dy2, precision=lax.Precision.HIGHEST, preferred_element_type=acc)
  rows = jnp.broadcast_to(col_idx[:, None], (packed.nnzb, packed.n))
  dvalues = dw[rows, segment_columns(packed)]
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
  warnings.warn(f'onexn.ops: the xla_ext CPU kernel is not available ({xla_ext.load_error()}); '
                f'backend="auto" runs the dense pure-JAX fallback (no sparse speedup)',
                RuntimeWarning, stacklevel=3)


def sparse_matmul(x, packed: PackedBlockSparse, *, backend: str = 'auto', num_threads: int = 0,
                  isa: str = 'auto') -> jax.Array:
  """``x @ W`` for a 1xN block-sparse W (paper Fig. 3 decode: ``Y[m, bN:(b+1)N] = Σ_t X[m, I[t]] D[t]``).

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
  check_packed(packed)
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
  y = jnp.einsum('kc,bkp->bcp', dense_matrix(packed), x, precision=lax.Precision.HIGHEST,
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

  The same product as :func:`sparse_matmul` (paper Fig. 3 decode) on activations stored channels-first
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
  check_packed(packed)
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
