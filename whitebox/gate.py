"""Class-wise channel masks: the label-dependent gate, its regulariser and the channel scores.

Zhang et al., "Carrying out CNN Channel Pruning in a White Box" (TNNLS 2022), stage 1, as the
official code runs it (zyxxmu/White-Box ``model/vgg_cifar.py: Gaussian_select,
ClassScale_Gaussian``; the same functions are repeated in every model file).

A masked position l holds a trainable ``M_l [K, C_l]`` (K classes, ones at init). For a batch with
labels ``y [B]`` the code draws ``u [B, K]`` i.i.d. Uniform[0, 1) (``torch.rand``; the paper text
and the function name say "Gaussian"), sets ``u[i, y_i] = 1`` and scales channel c of sample i by
``g[i, c] = (u M_l)[i, c] = M_l[y_i, c] + sum_{k != y_i} u[i, k] M_l[k, c]``. Its hand-written
backward is the ordinary derivative of ``g = u M`` (``dM = u^T dg``), so plain autodiff is exact
and no custom VJP is needed.
"""
from __future__ import annotations

from typing import Iterable, Sequence

import jax
import jax.numpy as jnp

Array = jax.Array


def class_weights(key: Array, labels: Array, num_classes: int) -> Array:
  """``u [B, K]``: Uniform[0, 1) entries, 1 at each sample's true class (``Gaussian_select``).

  Args:
    key: a PRNG key; one fresh key per masked position and per forward.
    labels: int ``[B]`` in ``[0, K)``.
    num_classes: K.
  Returns:
    float32 ``[B, K]``.
  """
  u = jax.random.uniform(key, (labels.shape[0], num_classes), jnp.float32)
  return jnp.where(jax.nn.one_hot(labels, num_classes, dtype=bool), 1.0, u)


def class_gate(mask: Array, labels: Array, key: Array) -> Array:
  """The per-sample channel gate ``g = u M`` ``[B, C]`` of one position (module docstring).

  Args:
    mask: ``M [K, C]`` (a trainable param).
    labels: int ``[B]``.
    key: the position's PRNG key for this forward.
  """
  return class_weights(key, labels, mask.shape[0]) @ mask


def apply_gate(x: Array, gate: Array) -> Array:
  """``x * g`` broadcast over the spatial axes: ``x [B, ..., C]``, ``g [B, C]`` or ``[C]``."""
  g = gate if gate.ndim == 1 else gate.reshape(gate.shape[:1] + (1,) * (x.ndim - 2)
                                               + gate.shape[-1:])
  return x * g.astype(x.dtype)


def label_free_gate(mask: Array) -> Array:
  """``m = sum_k M[k] / 2`` ``[C]``: the gate the compact model folds into BN (``final_mask`` of
  zyxxmu/White-Box ``cifar.py``); the expected gate when every class weight were 1/2. Used for
  the class model's test-set evaluation, which needs no label (the code never evaluates it)."""
  return jnp.sum(mask, axis=0) / 2


def mask_regularizer(masks: Iterable[Array], lam: float) -> Array:
  """``lam * sum_l || sum_k M_l[k, :] ||_2`` over every allocated mask, used in the forward or
  not (``cifar.py: train_class``: ``loss += sparse_lambda * torch.sum(m, 0).norm(2)``).

  Args:
    masks: the ``[K, C_l]`` masks.
    lam: lambda (``--sparse_lambda``).
  Returns:
    float32 scalar.
  """
  total = jnp.zeros((), jnp.float32)
  for m in masks:
    total = total + jnp.linalg.norm(jnp.sum(m, axis=0))
  return lam * total


def channel_scores(mask, halve: bool):
  """Voting score ``s [C] = |sum_k M[k]|`` (ResNets) or ``|sum_k M[k]| / 2`` (VGG, MobileNet-V2)
  (``cifar.py`` / ``imagenet.py: build_*_pruned_model``). Works on numpy and jnp arrays."""
  s = abs(mask.sum(0))
  return s / 2 if halve else s


def folded_scales(mask):
  """Signed ``m [C] = sum_k M[k] / 2``, the factor the code multiplies into BN gamma and beta
  (``final_mask``); numpy or jnp. Negative entries flip the channel (selection uses ``|.|``)."""
  return mask.sum(0) / 2


def gate_tap(sites: Sequence[str], masks: Sequence[Array], labels, key, *, train: bool):
  """A ``common.models.taps`` tap multiplying the activation at ``sites[j]`` by mask ``j``'s gate.

  Training: ``class_gate`` with key ``fold_in(key, j)`` (a fresh draw per position and forward).
  Evaluation (``train=False``): the label-free ``label_free_gate``; ``labels``/``key`` unused.
  """
  index = {s: j for j, s in enumerate(sites)}

  def tap(site, h):
    j = index.get(site)
    if j is None:
      return h
    if train:
      g = class_gate(masks[j], labels, jax.random.fold_in(key, j))
    else:
      g = label_free_gate(masks[j])
    return apply_gate(h, g)

  return tap
