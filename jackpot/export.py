"""The jackpot as a deployable model, and how much its mask overlaps magnitude pruning.

The searched network is the pretrained one with the pruned weights zeroed
(zyxxmu/lottery-jackpots ``evaluate.py`` runs the same ``PretrainConv`` forward, ``W * b``); the
export here is that dense ``W * b`` params tree, which any plain ``model.apply`` runs. Zeros save no
time on dense kernels: the export reports the kept-weight counts, not a speedup.
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np
from flax import traverse_util

from common import masks as common_masks

Path = Tuple[str, ...]


def export_sparse(params, masks) -> Tuple[Any, Dict[str, Any]]:
  """``(params with W * b on every masked kernel, nnz report)``.

  Args:
    params: the frozen pretrained params tree.
    masks: bool mask tree over the masked kernels (v2 ``b``, or ``search.v1_masks`` for v1).
  Returns:
    the exported params (same structure and shapes as ``params``) and
    ``common.masks.sparsity_report(masks)`` (per-layer and global kept counts).
  """
  return common_masks.apply_masks(params, masks), common_masks.sparsity_report(masks)


def mask_iou(a, b, exclude: Sequence[Path] = ()) -> float:
  """Intersection over union of the kept weights of two mask trees with the same paths.

  ``|kept_a & kept_b| / |kept_a | kept_b|`` summed over every layer not in ``exclude`` (e.g. the
  dense classifier, whose trivially identical mask would inflate the overlap).
  """
  fa, fb = traverse_util.flatten_dict(a), traverse_util.flatten_dict(b)
  if set(fa) != set(fb):
    raise ValueError(f'mask trees differ in paths: {sorted(set(fa) ^ set(fb))[:4]}')
  skip = {tuple(p) for p in exclude}
  inter = union = 0
  for p in fa:
    if p in skip:
      continue
    x, y = np.asarray(fa[p], bool), np.asarray(fb[p], bool)
    inter += int(np.count_nonzero(x & y))
    union += int(np.count_nonzero(x | y))
  return inter / union if union else 1.0


def sparsity_excluding(masks, exclude: Sequence[Path] = ()) -> Optional[float]:
  """Fraction of pruned weights over the masked layers not in ``exclude`` (the paper's sparsity:
  the classifier is excluded)."""
  skip = {tuple(p) for p in exclude}
  kept = total = 0
  for p, m in traverse_util.flatten_dict(masks).items():
    if p in skip:
      continue
    m = np.asarray(m)
    kept += int(np.count_nonzero(m))
    total += int(m.size)
  return 1.0 - kept / total if total else None

