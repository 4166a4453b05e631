"""Uniform fake quantizers (pure functions + one activation module) for post-training quantization.

The asymmetric quantizer is the ZeroQ/GDFQ one that FDDA's code uses (zysxmu/FDDA ``quantization_utils/quant_utils.py``: ``asymmetric_linear_quantization_params`` / ``linear_quantize``):

  scale = (2^k - 1) / max(x_max - x_min, 1e-8)
  zp    = round(scale * x_min) + 2^(k-1)
  q     = clamp(round(scale * x - zp), -2^(k-1), 2^(k-1) - 1)
  x_q   = (q + zp) / scale

with a plain straight-through backward (gradient passed unchanged, no clipping mask). Weights are
quantized per output channel (HWIO kernels: reduce over every axis but the last) from their current
min/max; activations per tensor from an EMA of batch min/max kept in the ``quant_stats`` collection.
A symmetric per-channel quantizer and the LSQ learned-step quantizer complete the set.
"""
from __future__ import annotations

from typing import Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp


def _check_bits(bits: int) -> int:
  if int(bits) != bits or not 1 <= bits <= 16:
    raise ValueError(f'bits must be an integer in [1, 16]; got {bits}')
  return int(bits)


def straight_through(x: jax.Array, xq: jax.Array) -> jax.Array:
  """Forward ``xq``, backward identity to ``x`` (``x + stop_gradient(xq - x)``)."""
  return x + jax.lax.stop_gradient(xq - x)


def asymmetric_qparams(x_min, x_max, bits: int) -> Tuple[jax.Array, jax.Array]:
  """Scale and zero point of the asymmetric k-bit quantizer (``asymmetric_linear_quantization_params``)."""
  bits = _check_bits(bits)
  scale = (2.0 ** bits - 1) / jnp.maximum(x_max - x_min, 1e-8)
  zp = jnp.round(scale * x_min) + 2.0 ** (bits - 1)
  return scale, zp


def asymmetric_quantize(x, x_min, x_max, bits: int) -> jax.Array:
  """Fake-quantized ``x`` (same shape) with range ``[x_min, x_max]`` broadcast against ``x``.

  Implements ``linear_quantize`` then ``linear_dequantize``: ``(clamp(round(scale x - zp), -2^(k-1), 2^(k-1)-1) + zp) / scale`` with the
  straight-through gradient.
  """
  scale, zp = asymmetric_qparams(x_min, x_max, bits)
  q = jnp.clip(jnp.round(scale * x - zp), -2.0 ** (bits - 1), 2.0 ** (bits - 1) - 1)
  return straight_through(x, (q + zp) / scale)


def quantize_weight_per_channel(w: jax.Array, bits: int) -> jax.Array:
  """Per-output-channel asymmetric fake quantization of a ``[..., C_out]`` kernel.

  The range is the channel's current min/max, held constant in the backward (stop_gradient), as the
  FDDA code recomputes it every forward on the trainable full-precision shadow weights.
  """
  axes = tuple(range(w.ndim - 1))
  lo = jax.lax.stop_gradient(jnp.min(w, axis=axes, keepdims=True))
  hi = jax.lax.stop_gradient(jnp.max(w, axis=axes, keepdims=True))
  return asymmetric_quantize(w, lo, hi, bits)


def symmetric_quantize_per_channel(w: jax.Array, bits: int) -> jax.Array:
  """Symmetric signed per-output-channel quantizer: step ``max|w_c| / (2^(k-1) - 1)``, STE."""
  bits = _check_bits(bits)
  if bits < 2:
    raise ValueError(f'symmetric quantization needs bits >= 2; got {bits}')
  axes = tuple(range(w.ndim - 1))
  qmax = 2.0 ** (bits - 1) - 1
  step = jax.lax.stop_gradient(jnp.maximum(jnp.max(jnp.abs(w), axis=axes, keepdims=True), 1e-8)
                               / qmax)
  return straight_through(w, jnp.clip(jnp.round(w / step), -qmax, qmax) * step)


@jax.custom_vjp
def _round_ste(x):
  return jnp.round(x)


_round_ste.defvjp(lambda x: (jnp.round(x), None), lambda _, g: (g,))


def lsq_quantize(x: jax.Array, step: jax.Array, bits: int, signed: bool = True) -> jax.Array:
  """LSQ (Esser et al. 2020, eq. 1-3): ``round(clip(x / s, Qn, Qp)) * s`` with learned step ``s``.

  The step's gradient is scaled by ``1 / sqrt(numel * Qp)`` (LSQ eq. 4) so that its updates have
  the magnitude of the weights' updates.
  """
  bits = _check_bits(bits)
  qn, qp = (-(2.0 ** (bits - 1)), 2.0 ** (bits - 1) - 1) if signed else (0.0, 2.0 ** bits - 1)
  g = 1.0 / jnp.sqrt(x.size * qp)
  s = step * g + jax.lax.stop_gradient(step - step * g)   # value s, gradient scaled by g
  return _round_ste(jnp.clip(x / s, qn, qp)) * s


def ema_range(old_min, old_max, x, beta: float = 0.9):
  """``beta * old + (1 - beta) * batch`` for the running min and max.

  As ``QuantAct`` (zysxmu/FDDA ``quantization_utils/quant_modules.py``) keeps its activation range
  with ``act_range_momentum``.
  """
  return (beta * old_min + (1 - beta) * jnp.min(x), beta * old_max + (1 - beta) * jnp.max(x))


class ActQuant(nn.Module):
  """Per-tensor activation fake-quantizer with an EMA range in the ``quant_stats`` collection.

  Ranges start at 0 (no bias correction, as the code) and update only when ``quant_stats`` is
  mutable (the code's "unfixed" mode). ``bits=None`` makes it the identity.
  """
  bits: int = 8
  beta: float = 0.9

  @nn.compact
  def __call__(self, x):
    if self.bits is None:
      return x
    lo = self.variable('quant_stats', 'min', lambda: jnp.zeros((), jnp.float32))
    hi = self.variable('quant_stats', 'max', lambda: jnp.zeros((), jnp.float32))
    if self.is_mutable_collection('quant_stats') and not self.is_initializing():
      lo.value, hi.value = ema_range(lo.value, hi.value, jax.lax.stop_gradient(x), self.beta)
    return asymmetric_quantize(x, lo.value, hi.value, self.bits)
