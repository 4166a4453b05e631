"""FSCIL accuracy per session (TOPIC, CVPR 2020; CEC, CVPR 2021; ICCV2021-LEC/LEC
``Inc_test.py``).

Classes are numbered in session order: the base session holds ``0 .. base-1``, incremental
session ``j >= 1`` holds ``base + (j-1) way .. base + j way - 1``. After session ``s`` the model is
tested on the test images of every class seen so far, predicting over all of them.

* joint accuracy: correct / images over the joint test set (the TOPIC / CEC standard);
* LEC's ``ACC``: ``sum_j acc_j n_j / sum_j n_j`` with ``acc_j`` the accuracy on session ``j``'s
  test images and ``n_j`` its class count (equal to the joint accuracy when every class has the
  same number of test images);
* base accuracy (session 0's classes), old accuracy (LEC's ``ACC_M``: classes of sessions
  ``< s``), new accuracy (LEC's ``ACC_A``: session ``s``'s classes);
* performance drop ``PD = acc(session 0) - acc(last session)``.
"""
from __future__ import annotations

from typing import Dict, Sequence

import jax.numpy as jnp
import numpy as np


def session_of_class(labels, base: int, way: int):
  """Session index of each class label: 0 below ``base``, else ``1 + (y - base) // way``."""
  labels = jnp.asarray(labels)
  return jnp.where(labels < base, 0, 1 + (labels - base) // way)


def block_counts(predictions, labels, base: int, way: int, session: int, weight=None):
  """Correct predictions and images per session block.

  Args:
    predictions, labels: int ``[B]`` predicted and true classes.
    base, way: the protocol's class counts; ``session``: the current session ``s`` (static).
    weight: ``[B]`` 1 for real images, 0 for padding (default all 1).
  Returns:
    ``(correct [s + 1], count [s + 1])`` float32, summed over the batch.
  """
  predictions, labels = jnp.asarray(predictions), jnp.asarray(labels)
  w = jnp.ones(labels.shape, jnp.float32) if weight is None else jnp.asarray(weight, jnp.float32)
  onehot = (session_of_class(labels, base, way)[:, None] == jnp.arange(session + 1)[None, :])
  onehot = onehot.astype(jnp.float32) * w[:, None]
  hit = (predictions == labels).astype(jnp.float32)
  return jnp.sum(onehot * hit[:, None], 0), jnp.sum(onehot, 0)


def summarize(correct: Sequence[float], count: Sequence[float], base: int,
              way: int) -> Dict[str, float]:
  """Session metrics from per-block ``correct`` and ``count`` (any common scale).

  Returns ``{'acc_joint', 'acc_weighted', 'acc_base', 'acc_old', 'acc_new', 'acc_blocks'}``;
  ``acc_old`` and ``acc_new`` are NaN in the base session (no old / new classes yet).
  """
  correct = np.asarray(correct, np.float64)
  count = np.asarray(count, np.float64)
  if correct.shape != count.shape or correct.ndim != 1 or not len(correct):
    raise ValueError(f'correct and count must be equal-length vectors; got {correct.shape} and '
                     f'{count.shape}')
  if (count <= 0).any():
    raise ValueError(f'every session block needs test images; counts {count.tolist()}')
  s = len(correct) - 1
  acc = correct / count
  n_classes = np.asarray([base] + [way] * s, np.float64)
  out = {'acc_joint': float(correct.sum() / count.sum()),
         'acc_weighted': float((acc * n_classes).sum() / n_classes.sum()),
         'acc_base': float(acc[0]),
         'acc_old': float(correct[:s].sum() / count[:s].sum()) if s else float('nan'),
         'acc_new': float(acc[s]) if s else float('nan'),
         'acc_blocks': [float(a) for a in acc]}
  return out


def performance_drop(accuracies: Sequence[float]) -> float:
  """``PD = acc_0 - acc_last`` of the per-session accuracies."""
  if not len(accuracies):
    raise ValueError('performance_drop needs at least one session accuracy')
  return float(accuracies[0] - accuracies[-1])
