"""ReCU's binarizers and diagnostics as pure functions, following z-hXu/ReCU
``modules/binarized_modules.py: BinarizeConv2d.forward``.

A weight ``w`` is a Flax HWIO kernel ``[kh, kw, C_in, C_out]`` (or ``[C_in, C_out]``): "per output
channel" reduces over every axis but the last (PyTorch ``[Co, Ci, kh, kw]`` reduces over dims 1-3).

    w1 = standardize_per_channel(w) * 2 sqrt 2     # unbiased var, eps 1e-5 inside
    E  = mean |w1|        (whole layer)            # MLE of the Laplace scale
    Q  = stop_grad(-E ln(2 - 2 tau))               # tau-quantile of Laplace(0, E) (step 4)
    b  = sign_ste(clip(w1, -Q, Q))                 # identity STE after the clamp (steps 5-6)

The forward equals ``sign(w - mean_c w)`` for every tau (Q > 0); the clamp only zeroes the task
gradient of the tail weights ("dead weights"), which weight decay then pulls back.
tau = 1 gives ``ln 0 = -inf`` and Q = +inf: no clamp (the official buffer's initial value).
"""
from __future__ import annotations

import math
from typing import Dict

import jax
import jax.numpy as jnp

from common import binarize

SCALE = 2.0 * math.sqrt(2.0)   # each channel of w1 gets std 2 sqrt 2 (Laplace b = 2)
TAU_MIN = 0.85                 # utils/options.py defaults, used by every official run.sh
TAU_MAX = 0.99


def tau_schedule(epoch, num_epochs: int, tau_min: float = TAU_MIN, tau_max: float = TAU_MAX):
  """tau at the start of ``epoch`` (the official per-epoch update in ``main.py``).

  ``tau(e) = A exp(e/E) + B`` with ``A = (tau_max - tau_min) / (exp(1) - 1)``, ``B = tau_min - A``,
  i.e. ``tau_min + (tau_max - tau_min) (exp(e/E) - 1) / (exp(1) - 1)``; tau(0) = tau_min and
  tau(E) = tau_max (never reached: the last epoch is E - 1).

  Args:
    epoch: epoch index e (python number; 0 <= e <= E).
    num_epochs: E > 0.
  Returns:
    a python float.
  """
  if isinstance(num_epochs, bool) or int(num_epochs) != num_epochs or num_epochs <= 0:
    raise ValueError(f'num_epochs must be a positive int; got {num_epochs!r}')
  if not 0 <= epoch <= num_epochs:
    raise ValueError(f'epoch must be in [0, num_epochs={num_epochs}]; got {epoch!r}')
  if not 0.5 <= tau_min <= tau_max <= 1.0:
    raise ValueError(f'need 0.5 <= tau_min <= tau_max <= 1 (Q = -E ln(2 - 2 tau) >= 0); got '
                     f'tau_min={tau_min!r}, tau_max={tau_max!r}')
  a = (tau_max - tau_min) / (math.e - 1.0)
  return float(a * math.exp(epoch / num_epochs) + tau_min - a)


def standardize(w: jax.Array) -> jax.Array:
  """``w1``: per-output-channel ``(w - mean) / sqrt(var + 1e-5) * 2 sqrt 2``.

  Unbiased variance, not detached. Same shape as ``w``.
  """
  return binarize.standardize_per_channel(w, scale=SCALE)


def clamp_threshold(w1: jax.Array, tau) -> jax.Array:
  """``Q = -mean|w1| * ln(2 - 2 tau)``, detached (the official ``.item()``); scalar, +inf at
  tau = 1. ``Q`` is the tau-quantile of Laplace(0, mean|w1|) (mean|w1| is the MLE of its scale)."""
  e = jnp.mean(jnp.abs(w1))
  return jax.lax.stop_gradient(-e * jnp.log(2.0 - 2.0 * jnp.asarray(tau, w1.dtype)))


def recu_clamp(w: jax.Array, tau) -> jax.Array:
  """ReCU, the *rectified clamp unit*: ``clip(w1, -Q, Q)``, same shape as ``w``.

  The gradient is the clamp's (1 where ``|w1| <= Q``, else 0) chained with the Jacobian of the
  standardisation.
  """
  w1 = standardize(w)
  q = clamp_threshold(w1, tau)
  return jnp.clip(w1, -q, q)


def binarize_weight(w: jax.Array, tau) -> jax.Array:
  """ReCU's binary weight ``sign(recu_clamp(w, tau))`` with the identity STE.

  Args:
    w: kernel ``[..., C_out]``.
    tau: scalar in [0.5, 1] (python float or traced array; 1 = no clamp).
  Returns:
    ``{-1, +1}`` array like ``w`` (``sign(0) = 0`` kept as PyTorch, probability ~0).
  """
  return binarize.sign_ste(recu_clamp(w, tau))


def recu_activation(a: jax.Array, train: bool) -> jax.Array:
  """ReCU's activation binarizer: ``approx_sign(a / std(a))`` in training, ``approx_sign(a)`` in eval.

  ``a [B, ...]``; the per-sample unbiased std over every axis but the batch, no mean subtraction,
  not detached (``BinarizeConv2d.forward``: ``a = a / sqrt(a.var([1,2,3]) + 1e-5)`` under
  ``if self.training``). The forward is the same in both modes (sign is scale-invariant);
  training only rescales the ApproxSign gradient window.
  """
  return binarize.approx_sign(binarize.standardize_per_sample(a, subtract_mean=False) if train
                              else a)


def sign_weight(w: jax.Array) -> jax.Array:
  """The plain baseline ``sign(w)`` with identity STE: no standardisation, no clamp."""
  return binarize.sign_ste(w)


def dead_fraction(w: jax.Array, tau) -> jax.Array:
  """Share of entries with ``|w1| > Q(tau)``: clamped ("dead") weights, no task gradient."""
  w1 = standardize(w)
  return jnp.mean((jnp.abs(w1) > clamp_threshold(w1, tau)).astype(jnp.float32))


def weight_entropy(w: jax.Array) -> jax.Array:
  """Information entropy (bits) of the binary weights ``sign(w - mean_c w)`` of one layer.

  ``H = -p log2 p - (1 - p) log2 (1 - p)``, p = share of +1 entries (ReCU paper Sec. 3.3 argues ReCU
  keeps this near its 1-bit maximum). Scalar in [0, 1].
  """
  p = jnp.mean((standardize(w) > 0).astype(jnp.float32))
  p = jnp.clip(p, 1e-12, 1.0 - 1e-12)
  return -(p * jnp.log2(p) + (1.0 - p) * jnp.log2(1.0 - p))


def quantization_error(w: jax.Array, tau) -> jax.Array:
  """Mean squared error between the clamped weights and their best scaled sign (ReCU paper Sec. 3.2).

  ``mean((w2 - s sign(w2))^2)`` with ``w2 = recu_clamp(w, tau)`` and ``s = mean|w2|`` (the
  L2-optimal per-layer scale); divided by ``mean(w2^2)`` so that layers of different scale compare.
  Scalar; smaller tau clamps more tail and lowers it.
  """
  w2 = recu_clamp(w, tau)
  s = jnp.mean(jnp.abs(w2))
  return jnp.mean((w2 - s * jnp.sign(w2)) ** 2) / jnp.mean(w2 ** 2)


def layer_diagnostics(w: jax.Array, tau) -> Dict[str, jax.Array]:
  """``{'dead_fraction', 'weight_entropy', 'quantization_error'}`` of one kernel at ``tau``."""
  return {'dead_fraction': dead_fraction(w, tau), 'weight_entropy': weight_entropy(w),
          'quantization_error': quantization_error(w, tau)}
