"""FFSD's loss terms as pure functions (SJLeo/FFSD ``CIFARTrainer.py``).

Feature maps are NHWC ``[B, H, W, C]`` (the official code is NCHW; every reduction below is over
the channel axis or over all elements of a sample, so the layout does not change a value).
``sg`` = ``jax.lax.stop_gradient``. The softened KL terms are ``common.losses.kl_divergence``
(batch-mean, times ``T^2``), whose target is already detached.

* :func:`attention_map`: ``A(f) = mean_c f^2`` (``f.pow(2).mean(1, keepdim=True)``).
* :func:`normalized_mse`: ``attention_loss`` / ``fusion_loss`` of ``CIFARTrainer`` (identical
  functions): rows L2-normalised (``F.normalize``, eps 1e-12), mean of squared differences.
* :func:`diversity_loss` and :func:`diversity_shift`: ``diversity_loss`` / ``diversity_target``
  (the self-distillation input of common student ``i`` is the *shifted* last feature of student
  ``i - 1``).
* :func:`dml_losses`: the deep-mutual-learning term of every common student.
* :func:`lambda_warmup`: ``lambda_warmup`` (the loss weights' ramp over the first 5 epochs).
"""
from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp

from common import losses as common_losses

Array = jax.Array
sg = jax.lax.stop_gradient

NORMALIZE_EPS = 1e-12   # torch.nn.functional.normalize's default eps
WARMUP_EPOCHS = 5       # CIFARTrainer.lambda_warmup: alpha = 5


def attention_map(f: Array) -> Array:
  """``A(f) = mean_c f^2``: ``[B, H, W, C] -> [B, H, W]`` (``f.pow(2).mean(1)``)."""
  return jnp.mean(jnp.square(f.astype(jnp.float32)), axis=-1)


def _flat(x: Array) -> Array:
  return x.reshape(x.shape[0], -1).astype(jnp.float32)


def l2_normalize(x: Array) -> Array:
  """Rows of ``x [B, N]`` divided by ``max(||row||_2, 1e-12)`` (``F.normalize(x, dim=1)``)."""
  n = jnp.linalg.norm(x, axis=-1, keepdims=True)
  return x / jnp.maximum(n, NORMALIZE_EPS)


def normalized_mse(x: Array, y: Array) -> Array:
  """``mean_{b,n} (x_hat - y_hat)^2`` with per-sample L2-normalised rows; ``x, y [B, ...]``.

  ``CIFARTrainer.attention_loss`` / ``fusion_loss``. Both sides carry gradient (the callers detach
  the target, as the official code does). A mean over all ``B * N`` elements, so the value is at
  most ``4 / N`` (``2 / N`` for non-negative maps). Raises ValueError on unequal sizes.
  """
  if x.shape[0] != y.shape[0] or x[0].size != y[0].size:
    raise ValueError(f'normalized_mse needs equal per-sample sizes; got {x.shape} and {y.shape}')
  return jnp.mean(jnp.square(l2_normalize(_flat(x)) - l2_normalize(_flat(y))))


def _kth_smallest(a: Array) -> Array:
  """``[B, N] -> [B, 1]``: the ``floor(N / 3)``-th smallest entry of every row
  (``a.topk(int(N / 3), largest=False)[0][:, -1]``)."""
  k = a.shape[-1] // 3
  if k < 1:
    raise ValueError(f'the diversity target needs maps of >= 3 elements; got N={a.shape[-1]}')
  return jnp.sort(a, axis=-1)[:, k - 1:k]


def diversity_target(y_hat: Array, norm: Array) -> Array:
  """The map a student is pushed to: ``(r/2 - y_hat) sign(y_hat - thr) + r/2``; ``[B, N]``.

  ``y_hat [B, N]`` is a unit-norm attention map, ``norm [B, 1]`` its un-normalised norm ``r`` and
  ``thr`` its ``floor(N/3)``-th smallest entry: entries below ``thr`` stay ``y_hat``, entries above
  become ``r - y_hat`` and the threshold entry becomes ``r / 2`` (``CIFARTrainer.diversity_loss``;
  the code mixes the un-normalised ``r`` with the unit-norm map, kept here).
  """
  thr = _kth_smallest(y_hat)
  return (norm / 2 - y_hat) * jnp.sign(y_hat - thr) + norm / 2


def diversity_loss(x: Array, y: Array) -> Array:
  """``D(x, y) = mean (x_hat - t(y))^2``: student ``i``'s attention ``x`` pushed away from
  student ``i - 1``'s ``y`` (``CIFARTrainer.diversity_loss``); ``x, y [B, H, W]`` -> scalar.

  ``t`` is :func:`diversity_target` of ``y``'s normalised map with ``r = ||y||``; ``y`` is detached.
  """
  y = sg(_flat(y))
  norm = jnp.linalg.norm(y, axis=-1, keepdims=True)
  return jnp.mean(jnp.square(l2_normalize(_flat(x)) - diversity_target(l2_normalize(y), norm)))


def diversity_shift(f: Array) -> Array:
  """The diversity-shifted feature ``f + (t - a_hat) r / C`` broadcast over channels;
  ``[B, H, W, C] -> [B, H, W, C]`` (``CIFARTrainer.diversity_target``).

  ``a = A(f)``, ``r = ||a||``, ``a_hat = a / r``, ``t`` = :func:`diversity_target` of ``a_hat``:
  every channel of a position moves by the same amount, zero where ``t == a_hat`` (the smallest
  third). ``f`` is detached: the shift is the input of a self-distillation decoder.
  """
  f = sg(f.astype(jnp.float32))
  a = _flat(attention_map(f))
  norm = jnp.linalg.norm(a, axis=-1, keepdims=True)
  a_hat = l2_normalize(a)
  diff = (diversity_target(a_hat, norm) - a_hat) * norm / f.shape[-1]
  return f + diff.reshape(f.shape[:-1] + (1,))


def dml_losses(logits: Array, temperature: float) -> Array:
  """The DML term of every common student, ``[m, B, K] -> [m]``:

  ``T^2 / (m - 1) * sum_{j != i} KL(p^T(sg z_j) || p^T(z_i))`` (batch-mean KL,
  ``CIFARTrainer.train_with_test``: ``loss_dml``). ``m = 1`` gives zeros (nobody to learn from).
  """
  m = logits.shape[0]
  if m < 2:
    return jnp.zeros((m,), jnp.float32)
  kl = jax.vmap(jax.vmap(lambda s, t: common_losses.kl_divergence(s, t, temperature, True),
                         (None, 0)), (0, None))(logits, logits)       # [i, j] = KL(p_j || p_i)
  off = 1.0 - jnp.eye(m, dtype=kl.dtype)
  return jnp.sum(kl * off, axis=1) / (m - 1)


def lambda_warmup(lam: float, epoch: int, alpha: int = WARMUP_EPOCHS) -> float:
  """``lam * exp(-5 (1 - e / alpha)^2)`` for ``e <= alpha``, else ``lam``; ``e`` counts from 1
  (``CIFARTrainer.lambda_warmup``, called with the 1-based epoch): ``e = 1`` gives
  ``lam e^-3.2``, ``e = alpha`` gives ``lam``."""
  if epoch <= alpha:
    return lam * math.exp(-5.0 * (1.0 - float(epoch) / alpha) ** 2)
  return lam


def attention_sum(features: Sequence[Array], targets: Sequence[Array]) -> Array:
  """``sum_k NMSE(A(f_k), sg A(d_k))``: a backbone's shallow attention maps pulled toward a
  decoder's reconstructions (``CIFARTrainer.self_distillation_loss``; the decoder outputs are
  detached). ``features``, ``targets``: equal-length lists of ``[B, H_k, W_k, *]`` maps."""
  if len(features) != len(targets):
    raise ValueError(f'{len(features)} features but {len(targets)} targets')
  return sum(normalized_mse(attention_map(f), sg(attention_map(d)))
             for f, d in zip(features, targets))


def reconstruction_loss(decoded: Sequence[Array], features: Sequence[Array]) -> Array:
  """``sum_k NMSE(d_k, sg f_k) + NMSE(A(d_k), sg A(f_k))``: what a self-distillation decoder is
  trained on (``CIFARTrainer.train_self_distillation_model``, before the ``lambda_sd`` weight)."""
  if len(decoded) != len(features):
    raise ValueError(f'{len(decoded)} decoder outputs but {len(features)} features')
  return sum(normalized_mse(d, sg(f)) + normalized_mse(attention_map(d), sg(attention_map(f)))
             for d, f in zip(decoded, features))
