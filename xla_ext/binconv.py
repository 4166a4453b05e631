"""Bit-packed binary convolution: packing, the FFI CPU kernel and its pure-JAX fallback.

A binary network's conv multiplies ``{-1, +1}`` activations by ``{-1, +1}`` weights. Packed one
bit per value (bit 1 = -1, the float sign bit; 32 channels per uint32 word, channel ``c`` in bit
``c % 32`` of word ``c // 32``, the bits past the last channel 0), the dot product over the
``k`` channels of one tap is ``k - 2 * popcount(x XOR w)`` (the XNOR-popcount of XNOR-Net /
Bi-Real Net inference; Larq Compute Engine's ``bconv2d`` does the same on ARM).

* :func:`pack_bits` / :func:`unpack_bits` -- float ``[..., C]`` <-> uint32 ``[..., ceil(C/32)]``.
  The simulated models' ``sign`` maps 0 to 0; the packed form has no zero, so **an exact zero
  packs as +1** (as does -0.0). Inputs of the exported models have no exact zeros in practice
  (they are BatchNorm outputs plus floats), and the tests use inputs without them.
* :func:`pack_weights` -- a binary HWIO kernel ``[k, k, C_in, C_out]`` -> :class:`PackedConv`
  (the kernel's word-major layout of ``binconv.h`` plus the per-tap popcounts used for the exact
  zero-padding correction).
* :func:`binary_conv2d` -- the conv (3x3 stride 1/2 padding 1, 1x1 stride 1/2 padding 0) and
  its float32 epilogue ``act(BN(alpha * acc) + residual)``: the FFI kernel on CPU
  (``backend='ffi'``), :func:`binary_conv2d_jax` elsewhere or on request (``backend='jax'``).

Padded taps: the official models (``modules/binarized_modules.py: BinarizeConv2d``, a
``F.conv2d(..., padding=1)`` of the *binarized* input) pad with zeros, so a padded tap contributes
0, not +-1. Both paths sum over the taps inside the image only, which is exact.

The instruction set: ``isa='auto'`` runs the best this CPU has ('avx512' = AVX-512 with
VPOPCNTDQ, then 'avx2' with a shuffle-based popcount, then 'generic' portable C++); the
environment variable ``XLA_EXT_BINCONV_ISA`` (read at each call, i.e. at trace time) replaces
'auto' with one of them, so that every path can be run and tested on any machine that has it.
"""
from __future__ import annotations

import ctypes
import functools
import os
from typing import Optional, Tuple

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

import xla_ext

TARGET_NAME = 'xla_ext_binary_conv2d'
WORD_BITS = 32
CHANNEL_PAD = 16          # binconv.h kBinconvChannelPad: output channels padded to this
ISAS = {'auto': 0, 'generic': 1, 'avx2': 2, 'avx512': 3}
ISA_ENV = 'XLA_EXT_BINCONV_ISA'
ACTIVATIONS = {'none': 0, 'hardtanh': 1, 'prelu': 2}
BACKENDS = ('auto', 'ffi', 'jax')
_OP = 'binary_conv2d'


def _register() -> None:
  lib = xla_ext._lib  # pylint: disable=protected-access
  if lib is None:
    return
  lib.XlaExtBinconvBestIsa.restype = ctypes.c_int64
  lib.XlaExtBinconvIsaSupported.restype = ctypes.c_int64
  lib.XlaExtBinconvIsaSupported.argtypes = [ctypes.c_int64]
  jax.ffi.register_ffi_target(TARGET_NAME, jax.ffi.pycapsule(lib.XlaExtBinaryConv2d),
                              platform='cpu')


def best_isa() -> str:
  """The instruction set ``isa='auto'`` runs here: 'avx512' (with VPOPCNTDQ), 'avx2', 'generic'.

  ``XLA_EXT_BINCONV_ISA`` is not consulted (see :func:`resolve_isa`)."""
  xla_ext._require()  # pylint: disable=protected-access
  code = int(xla_ext._lib.XlaExtBinconvBestIsa())  # pylint: disable=protected-access
  return next(k for k, v in ISAS.items() if v == code)


def isa_supported(isa: str) -> bool:
  """Whether this CPU can run the binary conv built for ``isa`` ('generic', 'avx2', 'avx512')."""
  xla_ext._require()  # pylint: disable=protected-access
  if isa not in ISAS or isa == 'auto':
    raise ValueError(f"{_OP}: isa must be one of 'generic', 'avx2', 'avx512'; got {isa!r}")
  return bool(xla_ext._lib.XlaExtBinconvIsaSupported(ISAS[isa]))  # pylint: disable=protected-access


def supported_isas() -> Tuple[str, ...]:
  """The instruction sets of the kernel this CPU can run, portable first."""
  return tuple(i for i in ('generic', 'avx2', 'avx512') if isa_supported(i))


def resolve_isa(isa: str = 'auto') -> str:
  """The ISA a call with ``isa`` runs: ``isa`` itself, or for 'auto' ``$XLA_EXT_BINCONV_ISA``
  when set, else :func:`best_isa`. Raises ValueError for an unknown name or one this CPU lacks."""
  if isa not in ISAS:
    raise ValueError(f'{_OP}: isa must be one of {list(ISAS)}; got {isa!r}')
  if isa == 'auto':
    forced = os.environ.get(ISA_ENV, '').strip()
    if forced and forced != 'auto':
      if forced not in ISAS:
        raise ValueError(f'{_OP}: ${ISA_ENV} must be one of {list(ISAS)}; got {forced!r}')
      isa = forced
    else:
      return best_isa()
  if not isa_supported(isa):
    raise ValueError(f'{_OP}: this CPU cannot run isa {isa!r}; it supports '
                     f'{list(supported_isas())}')
  return isa


# --- packing ------------------------------------------------------------------------------------

def num_words(channels: int) -> int:
  """uint32 words that hold ``channels`` packed values: ``ceil(channels / 32)``."""
  return -(-int(channels) // WORD_BITS)


@jax.jit
def pack_bits(x: jax.Array) -> jax.Array:
  """Packs the signs of ``x [..., C]`` (last axis) into uint32 ``[..., ceil(C / 32)]``.

  Bit ``c % 32`` of word ``c // 32`` is 1 iff ``x[..., c] < 0`` (-1); 0 (+1) otherwise,
  **including exact zeros** (the simulated ``sign(0) = 0`` has no packed form) and the padding
  bits past C. Pure jnp: under jit XLA fuses it with whatever computed ``x`` (the binarizer's
  normalisation), the "separate fused pass" before each binary conv.
  """
  c = x.shape[-1]
  cw = num_words(c)
  neg = x < 0
  if cw * WORD_BITS != c:
    neg = jnp.pad(neg, [(0, 0)] * (x.ndim - 1) + [(0, cw * WORD_BITS - c)])
  bits = neg.reshape(x.shape[:-1] + (cw, WORD_BITS)).astype(jnp.uint32)
  shifts = jnp.arange(WORD_BITS, dtype=jnp.uint32)
  return jnp.sum(bits << shifts, axis=-1, dtype=jnp.uint32)


@functools.partial(jax.jit, static_argnames=('channels', 'dtype'))
def unpack_bits(words: jax.Array, channels: int, dtype=jnp.float32) -> jax.Array:
  """Inverse of :func:`pack_bits`: uint32 ``[..., W]`` -> ``{-1, +1}`` ``[..., channels]``."""
  if channels < 1 or num_words(channels) != words.shape[-1]:
    raise ValueError(f'unpack_bits: {channels} channels need {num_words(max(channels, 1))} words; '
                     f'got {words.shape[-1]}')
  shifts = jnp.arange(WORD_BITS, dtype=jnp.uint32)
  bits = (words[..., None] >> shifts) & jnp.uint32(1)
  bits = bits.reshape(words.shape[:-1] + (-1,))[..., :channels]
  return (1 - 2 * bits.astype(jnp.int32)).astype(dtype)


@flax.struct.dataclass
class PackedConv:
  """A binary conv kernel in the FFI kernel's layout (``binconv.h``).

  Attributes:
    words: uint32 ``[k * k * cw, co_pad]``: word j of tap t = (dy, dx) (row-major) for output
      channel o at ``[t * cw + j, o]``; channels ``>= c_out`` are zero padding.
    wpop: int32 ``[k * k, co_pad]``: ``popcount`` of each tap's words per output channel (what a
      zero input word adds to the count; subtracted again at padded taps).
    ksize, c_in, c_out: static ints.
  """
  words: jax.Array
  wpop: jax.Array
  ksize: int = flax.struct.field(pytree_node=False)
  c_in: int = flax.struct.field(pytree_node=False)
  c_out: int = flax.struct.field(pytree_node=False)

  @property
  def nbytes(self) -> int:
    """Bytes of the packed weights as stored (words + wpop)."""
    return int(self.words.size * 4 + self.wpop.size * 4)


def pack_weights(w) -> PackedConv:
  """Packs a binary HWIO kernel ``[k, k, C_in, C_out]`` (k in {1, 3}) into :class:`PackedConv`.

  Entries ``< 0`` become -1 (bit 1), all others +1 (an exact 0 of ``sign(0)``, probability ~0
  for trained float weights, packs as +1). Host-side NumPy: run once at export.
  """
  w = np.asarray(w)
  if w.ndim != 4 or w.shape[0] != w.shape[1] or w.shape[0] not in (1, 3):
    raise ValueError(f'pack_weights: need an HWIO kernel [k, k, C_in, C_out] with k in (1, 3); '
                     f'got shape {list(w.shape)}')
  k, _, c_in, c_out = w.shape
  cw = num_words(c_in)
  co_pad = -(-c_out // CHANNEL_PAD) * CHANNEL_PAD
  neg = np.zeros((k * k, cw * WORD_BITS, co_pad), np.uint64)
  neg[:, :c_in, :c_out] = (w.reshape(k * k, c_in, c_out) < 0)
  shifts = np.arange(WORD_BITS, dtype=np.uint64)
  words = (neg.reshape(k * k, cw, WORD_BITS, co_pad) << shifts[None, None, :, None]).sum(axis=2)
  words = words.astype(np.uint32)                                    # [taps, cw, co_pad]
  wpop = neg.sum(axis=1).astype(np.int32)                            # [taps, co_pad]
  return PackedConv(words=jnp.asarray(words.reshape(k * k * cw, co_pad)), wpop=jnp.asarray(wpop),
                    ksize=int(k), c_in=int(c_in), c_out=int(c_out))


# --- the conv -----------------------------------------------------------------------------------

def output_hw(h: int, w: int, ksize: int, stride: int) -> Tuple[int, int]:
  """``(ho, wo)`` of a conv with PyTorch's padding ``k // 2``."""
  pad = (ksize - 1) // 2
  return (h + 2 * pad - ksize) // stride + 1, (w + 2 * pad - ksize) // stride + 1


def _check(x, packed: PackedConv, alpha, stride, bn, residual, activation, slope, num_threads):
  if not isinstance(packed, PackedConv):
    raise TypeError(f'{_OP}: packed must be a PackedConv (xla_ext.binconv.pack_weights); got '
                    f'{type(packed).__name__}')
  if jnp.dtype(x.dtype) != jnp.uint32 or x.ndim != 4 or x.shape[-1] != num_words(packed.c_in):
    raise ValueError(f'{_OP}: x must be uint32 [B, H, W, {num_words(packed.c_in)}] (pack_bits of '
                     f'{packed.c_in} channels); got {x.dtype} {list(x.shape)}')
  if stride not in (1, 2):
    raise ValueError(f'{_OP}: stride must be 1 or 2; got {stride!r}')
  if activation not in ACTIVATIONS:
    raise ValueError(f'{_OP}: activation must be one of {list(ACTIVATIONS)}; got {activation!r}')
  c = packed.c_out
  vecs = {'alpha': alpha, 'slope': slope}
  if bn is not None:
    if len(bn) != 3:
      raise ValueError(f'{_OP}: bn must be (mean, mul, beta); got {len(bn)} arrays')
    vecs.update(bn_mean=bn[0], bn_mul=bn[1], bn_beta=bn[2])
  for name, v in vecs.items():
    if v is not None and tuple(v.shape) != (c,):
      raise ValueError(f'{_OP}: {name} must be [{c}]; got {list(v.shape)}')
  if (activation == 'prelu') != (slope is not None):
    raise ValueError(f"{_OP}: slope is given exactly when activation='prelu'; got activation="
                     f'{activation!r}, slope {"given" if slope is not None else "None"}')
  ho, wo = output_hw(x.shape[1], x.shape[2], packed.ksize, stride)
  out = (x.shape[0], ho, wo, c)
  if residual is not None and tuple(residual.shape) != out:
    raise ValueError(f'{_OP}: residual must be {list(out)}; got {list(residual.shape)}')
  if (isinstance(num_threads, bool) or not isinstance(num_threads, (int, np.integer)) or
      num_threads < 0):
    raise ValueError(f'{_OP}: num_threads must be an int >= 0 (0 = all); got {num_threads!r}')
  return out


def epilogue(acc: jax.Array, alpha, bn=None, residual=None, activation='none', slope=None):
  """The float32 epilogue of a binary block on integer dot products ``acc [..., C]``.

  ``y = acc * alpha``; ``y = (y - mean) * mul + beta`` (BatchNorm in inference, flax's order,
  ``mul = gamma / sqrt(var + eps)``); ``y += residual``; hardtanh (``nn.Hardtanh``) or PReLU
  (``x if x >= 0 else slope * x``).
  """
  y = acc.astype(jnp.float32) * alpha
  if bn is not None:
    y = (y - bn[0]) * bn[1] + bn[2]
  if residual is not None:
    y = y + residual
  if activation == 'hardtanh':
    y = jnp.clip(y, -1.0, 1.0)
  elif activation == 'prelu':
    y = jnp.where(y >= 0, y, slope * y)
  return y


@functools.partial(jax.jit, static_argnames=('stride',))
def binary_dot_jax(x: jax.Array, packed: PackedConv, stride: int) -> jax.Array:
  """Pure-JAX integer count ``sum_{t valid} (c_in - 2 popcount(x[p + t] ^ w[t]))`` -> int32
  ``[B, Ho, Wo, C_out]``: the XOR-popcount per tap (``lax.population_count``) on shifted views of
  ``x`` and a validity mask for the padded taps (a different route to the padding rule than the
  kernel's popcount(w) correction)."""
  k, cw = packed.ksize, x.shape[-1]
  b, h, w, _ = x.shape
  ho, wo = output_hw(h, w, k, stride)
  pad = (k - 1) // 2
  xp = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  words = packed.words.reshape(k * k, cw, -1)[..., :packed.c_out]
  acc = jnp.zeros((b, ho, wo, packed.c_out), jnp.int32)
  oy = jnp.arange(ho) * stride
  ox = jnp.arange(wo) * stride
  for t in range(k * k):
    dy, dx = divmod(t, k)
    xs = xp[:, dy:dy + (ho - 1) * stride + 1:stride, dx:dx + (wo - 1) * stride + 1:stride, :]
    pc = jax.lax.population_count(xs[..., :, None] ^ words[t][None, None, None])
    dot = packed.c_in - 2 * jnp.sum(pc.astype(jnp.int32), axis=-2)
    iy, ix = oy + dy - pad, ox + dx - pad
    valid = ((iy >= 0) & (iy < h))[:, None] & ((ix >= 0) & (ix < w))[None, :]
    acc = acc + jnp.where(valid[None, :, :, None], dot, 0)
  return acc


def binary_conv2d_jax(x, packed: PackedConv, alpha, *, stride: int = 1, bn=None, residual=None,
                      activation: str = 'none', slope=None) -> jax.Array:
  """The pure-JAX fallback of :func:`binary_conv2d` (any backend; same arguments, same result:
  the integer counts are identical, the epilogue is the same float32 arithmetic)."""
  _check(x, packed, alpha, stride, bn, residual, activation, slope, 0)
  return epilogue(binary_dot_jax(x, packed, stride), alpha, bn, residual, activation, slope)


def binary_conv2d(x: jax.Array, packed: PackedConv, alpha: jax.Array, *, stride: int = 1,
                  bn: Optional[Tuple[jax.Array, jax.Array, jax.Array]] = None,
                  residual: Optional[jax.Array] = None, activation: str = 'none',
                  slope: Optional[jax.Array] = None, backend: str = 'auto', isa: str = 'auto',
                  num_threads: int = 0) -> jax.Array:
  """Binary conv of packed activations with packed weights, and the block's float32 epilogue.

  ``y[b, i, j, o] = act(BN(alpha[o] * sum_{t valid} (c_in - 2 popcount(x[b, i*s + dy - p,
  j*s + dx - p] ^ w[t, o]))) + residual[b, i, j, o])`` with ``p = k // 2`` (3x3: padding 1; 1x1:
  none); equal to ``conv(unpack(x), unpack(w))`` with zero padding, then the epilogue.

  Args:
    x: uint32 ``[B, H, W, ceil(C_in / 32)]`` (:func:`pack_bits` of the binarized input).
    packed: :func:`pack_weights` of the binary kernel.
    alpha: float32 ``[C_out]`` scaling factor.
    stride: 1 or 2.
    bn: None or float32 ``(mean, mul, beta)``, each ``[C_out]``.
    residual: None or float32 ``[B, Ho, Wo, C_out]``, added after BN.
    activation: 'none' | 'hardtanh' | 'prelu' (then ``slope [C_out]``).
    backend: 'ffi' (the C++ kernel; CPU), 'jax' (:func:`binary_conv2d_jax`), 'auto' (the kernel
      when it is loaded and the default backend is the CPU, else the fallback).
    isa: 'auto' | 'generic' | 'avx2' | 'avx512' (module docstring; checked against this CPU).
    num_threads: threads of XLA's intra-op pool (0 = all).
  Returns:
    float32 ``[B, Ho, Wo, C_out]``.
  Raises:
    ValueError/TypeError: bad shapes, dtypes or options, naming the value and what is allowed.
    RuntimeError: backend='ffi' but the kernel is not available (``xla_ext.load_error()``).
  """
  out = _check(x, packed, alpha, stride, bn, residual, activation, slope, num_threads)
  if backend not in BACKENDS:
    raise ValueError(f'{_OP}: backend must be one of {list(BACKENDS)}; got {backend!r}')
  if backend == 'auto':
    backend = 'ffi' if xla_ext.available() and jax.default_backend() == 'cpu' else 'jax'
  if backend == 'jax':
    return binary_conv2d_jax(x, packed, alpha, stride=stride, bn=bn, residual=residual,
                             activation=activation, slope=slope)
  xla_ext._require()  # pylint: disable=protected-access
  isa = resolve_isa(isa)
  f32 = lambda v: jnp.asarray(v, jnp.float32)
  empty = jnp.zeros((0,), jnp.float32)
  mean, mul, beta = (f32(v) for v in bn) if bn is not None else (empty, empty, empty)
  call = jax.ffi.ffi_call(TARGET_NAME, jax.ShapeDtypeStruct(out, jnp.float32),
                          vmap_method='sequential')
  return call(x, packed.words, packed.wpop, f32(alpha), mean, mul, beta,
              empty if slope is None else f32(slope), empty if residual is None else f32(residual),
              c_in=np.int64(packed.c_in), ksize=np.int64(packed.ksize), stride=np.int64(stride),
              activation=np.int64(ACTIVATIONS[activation]), has_bn=np.int64(bn is not None),
              has_residual=np.int64(residual is not None), num_threads=np.int64(num_threads),
              isa=np.int64(ISAS[isa]))


_register()
