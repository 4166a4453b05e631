"""The PSS-Net training step and BN post-statistics, as pure functions.

chenbong/PSS-Net ``train.py: train`` runs per step: the max net with CE on the labels, the
candidate with a no-grad forward for its metric, the candidate and the min net with
``KLDivLoss('batchmean')(log_softmax(out), softmax(max_out.detach()))``, then one SGD step on
the summed gradients. :func:`pss_loss` computes the same sum in one differentiable function.
``ComputePostBN.py: ComputePostBN`` recalibrates BN per subnet; :func:`recalibrate_bn` is that
exact cumulative average.
"""
from __future__ import annotations

from typing import Callable, Dict, Iterable, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from common.losses import cross_entropy, kl_divergence


def align_corners_matrix(n_in: int, n_out: int) -> np.ndarray:
  """``[n_out, n_in]`` linear-interpolation weights of ``F.interpolate(mode='bilinear',
  align_corners=True)`` along one axis: output i samples input ``i (n_in - 1) / (n_out - 1)``."""
  if n_out == 1 or n_in == 1:
    w = np.zeros((n_out, n_in))
    w[:, 0] = 1.0
    return w
  src = np.arange(n_out) * (n_in - 1) / (n_out - 1)
  i0 = np.minimum(np.floor(src).astype(int), n_in - 2)
  frac = src - i0
  w = np.zeros((n_out, n_in))
  w[np.arange(n_out), i0] = 1 - frac
  w[np.arange(n_out), i0 + 1] += frac
  return w


def resize(x, size: int):
  """Bilinear resize ``[B, H, W, C] -> [B, size, size, C]`` with align_corners=True and no
  antialiasing, as chenbong/PSS-Net ``models/mobilenet_v1.py: forward`` resizes the 224 crop to
  the subnet resolution (``jax.image.resize`` would use half-pixel centres and antialias).
  ``size == H == W`` returns ``x`` unchanged."""
  b, h, w, c = x.shape
  if h == size and w == size:
    return x
  wh = jnp.asarray(align_corners_matrix(h, size), x.dtype)
  ww = jnp.asarray(align_corners_matrix(w, size), x.dtype)
  return jnp.einsum('ih,bhwc,jw->bijc', wh, x, ww)


def pss_loss(apply_fn: Callable, params, batch_stats, images, labels, counts: Dict, res: Dict):
  """``CE(max) + KL(sg p_max || p_mid) + KL(sg p_max || p_min)`` and the candidate's metric.

  Args:
    apply_fn: ``(params, batch_stats, x, counts) -> (logits, new_batch_stats)`` in train mode
      (batch statistics; the shared running buffers are updated by every forward, in the order
      max, mid, min, as the three PyTorch forwards do).
    images: ``[B, H, W, 3]`` at the max resolution; labels ``[B]``.
    counts: ``{'max', 'mid', 'min'}`` -> int ``[L]`` active widths.
    res: ``{'max', 'mid', 'min'}`` -> Python int resolutions (static).
  Returns:
    ``(loss, (batch_stats, metrics))`` with metrics ``ce_max, kl_mid, kl_min`` and
    ``cand_metric = -CE(logits_mid, y)``: the official no-grad metric forward uses the same
    pre-update params, batch and train-mode BN as the candidate's training forward, so its
    logits are these (the +1 pass is read off the middle forward).
  """
  logits_max, bs = apply_fn(params, batch_stats, resize(images, res['max']), counts['max'])
  ce = cross_entropy(logits_max, labels)
  teacher = jax.lax.stop_gradient(logits_max)
  logits_mid, bs = apply_fn(params, bs, resize(images, res['mid']), counts['mid'])
  kl_mid = kl_divergence(logits_mid, teacher)
  logits_min, bs = apply_fn(params, bs, resize(images, res['min']), counts['min'])
  kl_min = kl_divergence(logits_min, teacher)
  metric = -cross_entropy(jax.lax.stop_gradient(logits_mid), labels)
  metrics = {'ce_max': ce, 'kl_mid': kl_mid, 'kl_min': kl_min, 'cand_metric': metric,
             'top1_max': jnp.mean((jnp.argmax(logits_max, -1) == labels).astype(jnp.float32))}
  return ce + kl_mid + kl_min, (bs, metrics, logits_max)


def recalibrate_bn(batch_stats_fn: Callable, batches: Iterable) -> Dict:
  """Exact post-statistics: the average over batches of per-batch BN means and unbiased
  variances (``ComputePostBN``: running stats reset, momentum ``1 / (t + 1)`` at batch t).

  Args:
    batch_stats_fn: ``images -> tree`` of ``{'mean', 'var'}`` per BN (the ``bn_batch``
      collection of ``common.models.slimmable``), jitted by the caller.
    batches: iterable of image arrays (at least one).
  Returns:
    the tree of averages, shaped like ``batch_stats``.
  """
  total, n = None, 0
  for x in batches:
    s = batch_stats_fn(x)
    total = s if total is None else jax.tree.map(jnp.add, total, s)
    n += 1
  if n == 0:
    raise ValueError('recalibrate_bn needs at least one batch')
  return jax.tree.map(lambda v: v / n, total)


def decay_mask(params):
  """chenbong/PSS-Net ``train.py: get_optimizer`` weight-decay groups: 4-D conv weights whose
  input-per-group dim is not 1 (so not depthwise) and 2-D FC weights; BN and biases undecayed.
  HWIO kernels: the PyTorch ``size(1)`` is Flax's ``shape[2]``."""
  def rule(path, v):
    name = str(getattr(path[-1], 'key', path[-1]))
    if name != 'kernel':
      return False
    return (v.ndim == 4 and v.shape[2] != 1) or v.ndim == 2
  return jax.tree_util.tree_map_with_path(rule, params)
