"""Classification and distillation losses shared by the methods.

All take logits ``[B, K]`` and return a scalar averaged over the batch, computed in float32.
Notation: ``p^T(z) = softmax(z / T)``; ``sg`` = ``jax.lax.stop_gradient`` (the target of a
distillation loss never receives gradient, as the official codes detach it).

* :func:`cross_entropy`: ``mean_b CE(z_b, onehot_eps(y_b))`` with label smoothing
  ``onehot_eps = (1 - eps) onehot + eps / K`` (``torch.nn.CrossEntropyLoss(label_smoothing=eps)``).
* :func:`soft_cross_entropy`: ``mean_b(-sum_k p^T(sg t)_k log p^T(s)_k)``; ReCU's two-stage KD at
  T = 1 (z-hXu/ReCU ``imagenet_two-stage``: the only training loss of stage 2, no label CE).
* :func:`kl_divergence`: ``mean_b sum_k p^T(sg t)_k (log p^T(sg t)_k - log p^T(s)_k)``, optionally
  times ``T^2`` (Hinton et al. 2015: keeps the gradient scale independent of T). PyTorch's
  ``KLDivLoss(reduction='batchmean')`` on ``log_softmax(s/T)`` and ``softmax(t/T)``. Uses: FFSD
  ``T^2 KL`` at T = 2 between students and towards the fusion / leader (SJLeo/FFSD);
  FDDA ``alpha T^2 KL`` (zysxmu/FDDA: alpha = 20, T = 20; pass ``alpha`` by multiplying);
  PSS-Net's in-place distillation ``KL(sg p(max-net) || p(subnet))`` at T = 1 without ``T^2``
  (chenbong/PSS-Net ``train.py``); LEC-Net distils at T = 2.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

Array = jax.Array


def _check_pair(student_logits, target_logits, temperature):
  if student_logits.shape != target_logits.shape or student_logits.ndim != 2:
    raise ValueError(f'student and target logits must both be [B, K]; got '
                     f'{student_logits.shape} and {target_logits.shape}')
  if not float(temperature) > 0.0:
    raise ValueError(f'temperature must be > 0; got {temperature!r}')


def cross_entropy(logits: Array, labels: Array, label_smoothing: float = 0.0) -> Array:
  """Mean softmax cross-entropy over the batch; ``logits [B, K]``, integer ``labels [B]``.

  ``label_smoothing`` eps in [0, 1): the target is ``(1 - eps) onehot(y) + eps / K``
  (``torch.nn.CrossEntropyLoss(label_smoothing=eps)``).
  """
  if not 0.0 <= float(label_smoothing) < 1.0:
    raise ValueError(f'label_smoothing must be in [0, 1); got {label_smoothing!r}')
  k = logits.shape[-1]
  onehot = jax.nn.one_hot(labels, k, dtype=logits.dtype)
  if label_smoothing:
    onehot = onehot * (1 - label_smoothing) + label_smoothing / k
  return jnp.mean(optax.softmax_cross_entropy(logits, onehot))


def soft_cross_entropy(student_logits: Array, teacher_logits: Array,
                       temperature: float = 1.0) -> Array:
  """``mean_b(-sum_k p^T(sg t)_k log p^T(s)_k)``: cross-entropy against the teacher's soft targets.

  ``[B, K], [B, K] -> scalar``. At T = 1 this is ReCU's stage-2 loss (z-hXu/ReCU
  ``imagenet_two-stage``); it differs from :func:`kl_divergence` by the
  teacher's entropy, a constant, so both give the same student gradient.
  """
  _check_pair(student_logits, teacher_logits, temperature)
  t = jax.nn.softmax(jax.lax.stop_gradient(teacher_logits).astype(jnp.float32) / temperature, -1)
  log_s = jax.nn.log_softmax(student_logits.astype(jnp.float32) / temperature, -1)
  return jnp.mean(-jnp.sum(t * log_s, -1))


def kl_divergence(student_logits: Array, target_logits: Array, temperature: float = 1.0,
                  scale_by_t2: bool = False) -> Array:
  """``mean_b KL(p^T(sg t) || p^T(s))`` (x ``T^2`` with ``scale_by_t2``); ``[B, K] x2 -> scalar``.

  ``KL = sum_k p_t (log p_t - log p_s)``, batch-mean as PyTorch's ``KLDivLoss('batchmean')``;
  terms with ``p_t = 0`` contribute 0. See the module docstring for which paper uses which form.
  """
  _check_pair(student_logits, target_logits, temperature)
  log_t = jax.nn.log_softmax(jax.lax.stop_gradient(target_logits).astype(jnp.float32)
                             / temperature, -1)
  log_s = jax.nn.log_softmax(student_logits.astype(jnp.float32) / temperature, -1)
  kl = jnp.mean(jnp.sum(jnp.exp(log_t) * (log_t - log_s), -1))
  return kl * (temperature ** 2) if scale_by_t2 else kl
