"""FDDA's data-distribution alignment: per-class BN-statistic centres and the generator losses.

Notation (zysxmu/FDDA ``trainer_DBNS_CBNS.py``): the teacher T has L BatchNorm layers in forward
order; for a batch, ``mu_l, var_l`` are the per-channel mean and *biased* variance of the input of
BN l over (N, H, W) (the code's ``hook_fn_forward``; ``common.capture``); ``MSE`` is the mean over
channels (``nn.MSELoss``).

* Centres (``BNScenters.py``): for every class c, the statistics ``mu_l^c, var_l^c`` of the BN
  inputs of its single calibration image (batch size 1, spatial statistics), the teacher in eval
  mode; ``C_correct = {c : argmax T(x_c) == c}``.
* ``L_BNS = 1/L sum_l MSE(mu_l, running_mean_l) + MSE(var_l, running_var_l)`` (GDFQ's loss; the
  code weighs it by ``BNLoss_weight = 0.2``).
* Deep half: ``s = floor((L + 1) / 2) - 2`` (``self.start_layer``); ResNet-18 (L = 20): 8,
  MobileNet-V2 (L = 52): 24.
* ``C_BNS = 1/(L - s) sum_{l >= s} MSE(mu_l, mu_l^c) + MSE(var_l, var_l^c)`` (centralized).
* ``D_BNS = 1/(L - s) sum_{l >= s} MSE(mu_l, mu_l^c + e_mu) + MSE(var_l, var_l^c + e_var)``,
  ``e_mu ~ N(0, 0.5^2)``, ``e_var ~ N(0, 1)`` per channel, redrawn every call (distorted;
  ``torch.normal(mean=centre, std=...)``, no clamping: variance targets may be negative).
  Since the noise is independent of the statistics, ``E[D_BNS] = C_BNS + 0.5^2 + 1``.
* The code's branch for epochs 0-4 and a class the teacher misclassifies:
  ``D_BNS = 2/L sum_{all l} MSE(mu_l, n) + MSE(var_l, n')`` with ``n, n' ~ N(0, 1)``, ``C_BNS = 0``.

All functions are pure and take the statistics as lists of per-layer arrays (forward order).
"""
from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from common import capture
from common import transforms
from common.models import taps as taps_lib

Stats = List[jax.Array]

NOISE_STD_MEAN = 0.5
NOISE_STD_VAR = 1.0


def deep_start(num_bn: int) -> int:
  """``s = floor((L + 1) / 2) - 2``: the first BN layer of the deep half (``start_layer``).

  Raises:
    ValueError: ``num_bn < 3`` (no layer would be left, or s would be negative).
  """
  num_bn = int(num_bn)
  if num_bn < 3:
    raise ValueError(f'the deep-half rule needs at least 3 BN layers; got {num_bn}')
  return (num_bn + 1) // 2 - 2


def bn_names(model, input_shape) -> List[str]:
  """Module paths of a zoo model's BatchNorms in forward order (its ``<bn>_in`` tap sites)."""
  return [s[:-len(capture.BN_IN)] for s, _ in taps_lib.tap_sites(model, input_shape)
          if s.endswith(capture.BN_IN)]


def running_stats(batch_stats, names: Sequence[str]) -> Tuple[Stats, Stats]:
  """``(running means, running vars)`` of the BNs ``names`` from a ``batch_stats`` tree."""
  means, vars_ = [], []
  for n in names:
    node = transforms.get_path(batch_stats, tuple(n.split('/')))
    means.append(node['mean'])
    vars_.append(node['var'])
  return means, vars_


def batch_stats_of_inputs(model, variables, x, names: Sequence[str]):
  """``(logits [B, K], means, vars)``: the BN-input moments over (N, H, W) of ``x`` through the
  model in eval mode (running statistics normalise; the hooks of ``trainer_DBNS_CBNS.py``)."""
  logits, stats = capture.bn_input_moments(model, variables, x, train=False)
  return logits, [stats[n][0] for n in names], [stats[n][1] for n in names]


def class_centres(model, variables, images, labels, num_classes: int,
                  names: Sequence[str]) -> Dict[str, object]:
  """Per-class BN-input centres from one calibration image per class (``BNScenters.py``).

  Args:
    model, variables: the full-precision teacher (eval mode).
    images: ``[K, H, W, C]``, one image of every class; ``labels [K]`` their classes (each of
      ``0..K-1`` exactly once).
    names: the BN paths in forward order (:func:`bn_names`).
  Returns:
    ``{'mean': [[K, C_l]] * L, 'var': [[K, C_l]] * L, 'logits': [K, K], 'correct': bool [K]}``
    indexed by class: ``mean[l][c]`` is the spatial mean of BN l's input on class c's image,
    ``var`` the biased spatial variance, ``correct[c]`` whether the teacher classifies it as c.
  Raises:
    ValueError: when ``labels`` is not one image per class.
  """
  labels = np.asarray(labels)
  if sorted(labels.tolist()) != list(range(num_classes)):
    raise ValueError(f'class_centres needs exactly one image of each of the {num_classes} '
                     f'classes; got labels {labels.tolist()}')
  order = np.argsort(labels)
  x = jnp.asarray(np.asarray(images)[order])
  logits, acts = capture.taps(model, variables, x, sites=[n + capture.BN_IN for n in names])
  means, vars_ = [], []
  for n in names:
    h = acts[n + capture.BN_IN]
    axes = tuple(range(1, h.ndim - 1))   # per image: over H, W (batch size 1 in the code)
    m = jnp.mean(h, axes)
    means.append(m)
    vars_.append(jnp.mean(jnp.square(h - jnp.expand_dims(m, axes)), axes))
  correct = jnp.argmax(logits, -1) == jnp.arange(num_classes)
  return {'mean': means, 'var': vars_, 'logits': logits, 'correct': correct}


def _mse(a, b):
  return jnp.mean(jnp.square(a - b))


def bns_loss(means: Stats, vars_: Stats, run_means: Stats, run_vars: Stats) -> jax.Array:
  """``1/L sum_l MSE(mu_l, running_mean_l) + MSE(var_l, running_var_l)`` (unweighted)."""
  return sum(_mse(m, rm) + _mse(v, rv) for m, v, rm, rv in
             zip(means, vars_, run_means, run_vars)) / len(means)


def centralized_loss(means: Stats, vars_: Stats, c_means: Stats, c_vars: Stats,
                     start: int) -> jax.Array:
  """``C_BNS``: ``1/(L - s) sum_{l >= s} MSE(mu_l, mu_l^c) + MSE(var_l, var_l^c)``.

  ``c_means[l], c_vars[l]``: ``[C_l]`` centres of the batch's class.
  """
  n = len(means) - start
  return sum(_mse(means[l], c_means[l]) + _mse(vars_[l], c_vars[l])
             for l in range(start, len(means))) / n


def distorted_loss(means: Stats, vars_: Stats, c_means: Stats, c_vars: Stats, start: int,
                   rng, std_mean: float = NOISE_STD_MEAN,
                   std_var: float = NOISE_STD_VAR) -> jax.Array:
  """``D_BNS``: :func:`centralized_loss` against centres plus per-channel Gaussian noise
  ``e_mu ~ N(0, std_mean^2)``, ``e_var ~ N(0, std_var^2)`` drawn from ``rng``."""
  total = 0.0
  keys = jax.random.split(rng, 2 * len(means))
  for l in range(start, len(means)):
    e_m = std_mean * jax.random.normal(keys[2 * l], c_means[l].shape)
    e_v = std_var * jax.random.normal(keys[2 * l + 1], c_vars[l].shape)
    total = total + _mse(means[l], c_means[l] + e_m) + _mse(vars_[l], c_vars[l] + e_v)
  return total / (len(means) - start)


def noise_target_loss(means: Stats, vars_: Stats, rng) -> jax.Array:
  """The code's epochs-0-4 branch for a misclassified class: ``2/L sum_{all l}
  MSE(mu_l, n_l) + MSE(var_l, n'_l)``, ``n, n' ~ N(0, 1)`` per channel."""
  keys = jax.random.split(rng, 2 * len(means))
  total = sum(_mse(m, jax.random.normal(keys[2 * l], m.shape))
              + _mse(v, jax.random.normal(keys[2 * l + 1], v.shape))
              for l, (m, v) in enumerate(zip(means, vars_)))
  return 2.0 * total / len(means)


def pick_class(rng, correct, restrict: bool):
  """The single class of the FDDA batch: uniform over all classes, or (``restrict``: epochs > 4)
  uniform over ``correct`` (the code's resampling loop ``while l not in correct``; all classes
  when none is correct, where the code would loop forever)."""
  k = correct.shape[0]
  if not restrict:
    return jax.random.randint(rng, (), 0, k)
  ok = jnp.where(jnp.any(correct), correct, jnp.ones_like(correct))
  return jax.random.categorical(rng, jnp.where(ok, 0.0, -jnp.inf))


def class_separation(means: Stats, start: int) -> float:
  """Inter-class separation of per-class BN statistics: the mean pairwise Euclidean distance
  between classes of the concatenated deep-layer means ``[K, sum_{l >= s} C_l]`` (the paper's
  observation that deep-layer statistics separate classes). ``means[l]``: ``[K, C_l]``."""
  m = np.concatenate([np.asarray(x) for x in means[start:]], axis=1)
  d = np.sqrt(np.maximum(((m[:, None, :] - m[None, :, :]) ** 2).sum(-1), 0.0))
  k = m.shape[0]
  return float(d.sum() / (k * (k - 1)))
