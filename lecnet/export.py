"""Physically compressed expansion branches: keep only the expanded nodes whose stored gate is on.

LEC-Net's compression is a gate, not a pruning step: ``OneModel`` keeps the full ``512 x 512``
``fc_aux`` of every session and multiplies by ``Alpha[s]``. With annealed (nearly binary) gates
the columns whose gate is off contribute ``A_i a_i ~ 0``, so they can be dropped at export:
``h_j = gamma u + A_j * (x W_aux,j)`` becomes ``gamma u`` plus a scatter of the ``k_j`` kept
columns. The result differs from the gated model by the dropped terms
``|A_i a_i| <= max_dropped(A) * |a_i|`` only.
"""
from __future__ import annotations

from typing import Dict, List

import jax
import jax.numpy as jnp
import numpy as np

from lecnet import lec

Array = jax.Array


def compact_branches(params: Dict[str, Array], gates, session: int,
                     threshold: float = 0.5) -> List[Dict[str, np.ndarray]]:
  """Per session ``j = 1..session``: ``{'index' [k_j], 'kernel' [F, k_j], 'gate' [k_j],
  'dropped_max' scalar}`` of the nodes with ``A[j] > threshold``.

  ``params``: a ``lecnet.model.LECNet`` params tree; ``gates [S+1, N]``: the stored ``A``.
  """
  gates = np.asarray(gates)
  out = []
  for j in range(1, session + 1):
    keep = np.flatnonzero(gates[j] > threshold)
    dropped = np.delete(gates[j], keep)
    out.append({'index': keep, 'kernel': np.asarray(params[f'expand_{j}'])[:, keep],
                'gate': gates[j][keep],
                'dropped_max': float(dropped.max()) if dropped.size else 0.0})
  return out


def compact_logits(x: Array, params: Dict[str, Array], branches, gamma: float = lec.GAMMA) -> Array:
  """Logits ``[B, base + s way]`` of backbone features ``x [B, F]`` with the compact branches of
  :func:`compact_branches` (``s = len(branches)``): the gated model's logits up to the dropped
  gates' contributions."""
  u = x @ params['node']
  logits = [lec.l2_normalize(u) @ params['head_0']]
  for j, b in enumerate(branches, 1):
    h = (gamma * u).at[:, b['index']].add((x @ b['kernel']) * b['gate'][None, :])
    logits.append(lec.l2_normalize(h) @ params[f'head_{j}'])
  return jnp.concatenate(logits, axis=-1)
