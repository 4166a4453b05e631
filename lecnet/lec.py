"""LEC-Net's mechanism as pure functions (Yang et al., ICCV 2021; ICCV2021-LEC/LEC
``models/LECNet.py``: ``OneModel.forward``, ``get_loss``, ``distillation_loss``).

Notation (N = number of nodes of the embedding, F = backbone feature width):

* ``x [B, F]`` backbone feature; ``u = x W_1 [B, N]`` the base embedding ("old nodes");
* ``a_s = x W_aux,s [B, N]`` the expansion branch of incremental session ``s`` ("tentative node
  expansion"); it reads the backbone feature, not ``u``;
* self-activation gate ``alpha_s = sigmoid(beta_e * mean_b a_s) [N]``, slope
  ``beta_e = 1 + max(e - e_0, 0)`` (e_0 = 20), frozen as ``A[s]`` when session ``s`` ends;
* session features ``z_0 = n(u)``, ``z_j = n(gamma u + g_j * a_j)`` for ``j >= 1`` with
  ``n(v) = v / (1e-6 + ||v||_2)`` and gamma = 0.6;
* logits ``[z_0 W_c0, z_1 W_c1, ..., z_s W_cs]`` over every class seen up to session ``s``;
* compression penalty ``R = max(0, ||alpha_s||_1 / N - r)`` (weight 0.1, r = 0.1) and knowledge
  distillation at T = 2 on the old-class logits.
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp

from common import losses

Array = jax.Array

GAMMA = 0.6
ANNEAL_START = 20
KD_TEMPERATURE = 2.0
PENALTY_WEIGHT = 0.1
R_BUDGET = 0.1
NORM_EPS = 1e-6


def beta_schedule(epoch, start: int = ANNEAL_START) -> Array:
  """Gate slope ``beta_e = 1 + max(e - start, 0)`` (``OneModel.forward``: ``beta =
  1.0 + max(epoch - 20, 0)``): constant 1 for the first ``start`` epochs, then +1 per epoch.

  ``epoch`` may be a traced integer scalar (the slope changes without recompiling). Returns a
  float32 scalar.
  """
  e = jnp.asarray(epoch, jnp.float32)
  return 1.0 + jnp.maximum(e - float(start), 0.0)


def gate(expanded: Array, beta) -> Array:
  """Self-activation gate ``alpha = sigmoid(beta * mean_b a) [N]`` of ``a = expanded [B, N]``.

  The mean is over the batch (``torch.mean(out_aux, dim=0)``), so in training the gate of one
  sample depends on the others in its batch; test time uses the stored gate instead.
  """
  if expanded.ndim != 2:
    raise ValueError(f'expanded activations must be [B, N]; got shape {expanded.shape}')
  t = jnp.mean(expanded.astype(jnp.float32), axis=0)
  return jax.nn.sigmoid(jnp.asarray(beta, jnp.float32) * t)


def compression_penalty(alpha: Array, r=R_BUDGET) -> Array:
  """``R = max(0, ||alpha||_1 / N - r)`` for ``alpha [N]`` in (0, 1) (``get_loss``: ``R1``).

  Zero while the fraction of active expanded nodes is within the budget ``r``; above it each
  gate receives gradient ``1 / N``. Scalar float32.
  """
  if alpha.ndim != 1:
    raise ValueError(f'alpha must be [N]; got shape {alpha.shape}')
  n = alpha.shape[0]
  return jax.nn.relu(jnp.sum(jnp.abs(alpha.astype(jnp.float32))) / n - r)


def kd_loss(new_logits: Array, old_logits: Array, temperature: float = KD_TEMPERATURE) -> Array:
  """LEC's distillation ``-mean_b sum_k softmax(o/T)_k log_softmax(n[:, :K_old]/T)_k``.

  ``new_logits [B, K_new]`` are truncated to the ``K_old`` columns of ``old_logits [B, K_old]``
  (``distillation_loss``: no ``T^2`` factor, weight 1); the teacher gets no gradient
  (``common.losses.soft_cross_entropy``).
  """
  k_old = old_logits.shape[-1]
  if new_logits.shape[-1] < k_old:
    raise ValueError(f'the student has {new_logits.shape[-1]} classes, fewer than the '
                     f'teacher\'s {k_old}')
  return losses.soft_cross_entropy(new_logits[:, :k_old], old_logits, temperature)


def l2_normalize(v: Array) -> Array:
  """``v / (1e-6 + ||v||_2)`` along the last axis (``OneModel._l2norm``)."""
  return v / (NORM_EPS + jnp.linalg.norm(v, axis=-1, keepdims=True))


def session_features(u: Array, expanded: Sequence[Array], gates: Sequence[Array],
                     gamma: float = GAMMA):
  """``[z_0, z_1, ..., z_s]``: ``z_0 = n(u)``, ``z_j = n(gamma u + g_j * a_j)``.

  Args:
    u: ``[B, N]`` base embedding.
    expanded: ``s`` arrays ``a_j [B, N]`` (sessions 1..s).
    gates: ``s`` gates ``g_j [N]`` (stored ``A[j]`` for old sessions, ``alpha_s`` or ``A[s]``
      for the current one).
  """
  if len(expanded) != len(gates):
    raise ValueError(f'{len(expanded)} expansion branches but {len(gates)} gates')
  zs = [l2_normalize(u)]
  for a, g in zip(expanded, gates):
    zs.append(l2_normalize(gamma * u + g[None, :] * a))
  return zs


def session_logits(u: Array, expanded: Sequence[Array], gates: Sequence[Array],
                   heads: Sequence[Array], gamma: float = GAMMA) -> Array:
  """Logits over every seen class after session ``s = len(expanded)``.

  ``concat[z_0 W_c0, z_1 W_c1, ..., z_s W_cs]`` (``OneModel.forward``'s ``torch.cat``) with
  ``heads[j] [N, K_j]`` (K_0 base classes, then ``way`` per session; no bias). Returns
  ``[B, sum_j K_j]``; the block of session ``j`` depends on ``u``, ``a_j`` and ``g_j`` only.
  """
  if len(heads) != len(expanded) + 1:
    raise ValueError(f'session {len(expanded)} needs {len(expanded) + 1} heads; got {len(heads)}')
  zs = session_features(u, expanded, gates, gamma)
  return jnp.concatenate([z @ w for z, w in zip(zs, heads)], axis=-1)


def active_fraction(alpha: Array, threshold: float = 0.5) -> Array:
  """Fraction of expanded nodes whose gate exceeds ``threshold`` (the compressed size)."""
  return jnp.mean((alpha > threshold).astype(jnp.float32))
