"""Global voting: one threshold over every mask's channel scores, lowered until a FLOPs target.

zyxxmu/White-Box ``cifar.py: build_vgg_pruned_model / build_resnet_pruned_model /
build_mobilenetv2_pruned_model`` and ``imagenet.py: build_resnet_pruned_model``, stage 2:

1. ``n = int(N * rho)`` with N the number of scores in the pool; ``tau`` = the n-th largest score.
2. Every layer keeps ``{c : s[c] >= tau}`` in ascending channel order; if that is fewer than
   ``C * min_preserve`` (a float comparison) it keeps the ``int(C * min_preserve)`` best channels
   by score, in score order (``torch.topk``).
3. The candidate architecture's FLOPs reduction is measured; while it is below the target,
   ``rho -= 0.01`` (accumulated in floating point, as the code does) and repeat from 1.

The loop stops at the first ``rho`` (0.9, 0.89, ...) whose candidate meets the target.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, List, Sequence, Tuple

import numpy as np

KEEP_START = 0.9
KEEP_STEP = 0.01


@dataclasses.dataclass
class Vote:
  """The result of :func:`global_vote`.

  Attributes:
    keep: per pool layer, the kept channel indices (int64, the code's order).
    keep_ratio: the final rho.
    threshold: the final tau.
    reduction: the FLOPs reduction of the final candidate (what ``flops_fn`` returned).
    history: ``[(rho, tau, reduction)]`` of every iteration, in order.
  """
  keep: List[np.ndarray]
  keep_ratio: float
  threshold: float
  reduction: float
  history: List[Tuple[float, float, float]]

  @property
  def widths(self) -> List[int]:
    return [int(k.size) for k in self.keep]


def select(scores: Sequence[np.ndarray], keep_ratio: float, min_preserve: float = 0.3):
  """Steps 1-2 of the module docstring for one ``rho``: ``(keep per layer, tau)``.

  Args:
    scores: per layer a 1-D score array ``[C_l]``.
    keep_ratio: rho in (0, 1].
    min_preserve: the least kept fraction of a layer (``--min_preserve``).
  Returns:
    per layer the kept indices, and tau. A layer keeps at least one channel even where
    ``int(C * min_preserve)`` is 0 (the code could then empty it; an empty layer cannot be built).
  """
  flat = np.concatenate([np.asarray(s, np.float64).reshape(-1) for s in scores])
  n = int(flat.size * keep_ratio)
  if n < 1:
    raise ValueError(f'keep ratio {keep_ratio} keeps no channel of {flat.size}')
  tau = float(-np.sort(-flat, kind='stable')[n - 1])
  keep = []
  for s in scores:
    s = np.asarray(s, np.float64).reshape(-1)
    idx = np.nonzero(s >= tau)[0]
    if idx.size < s.size * min_preserve:
      k = max(int(s.size * min_preserve), 1)
      idx = np.argsort(-s, kind='stable')[:k]
    keep.append(idx.astype(np.int64))
  return keep, tau


def global_vote(scores: Sequence[np.ndarray], flops_fn: Callable[[List[np.ndarray], float], float],
                target: float, min_preserve: float = 0.3, keep_start: float = KEEP_START,
                keep_step: float = KEEP_STEP) -> Vote:
  """The voting loop (module docstring).

  Args:
    scores: the pool: per mask a 1-D score array (``whitebox.gate.channel_scores``), including
      masks whose layer is never narrowed (they only move tau).
    flops_fn: ``flops_fn(keep, previous_reduction) -> reduction`` of the candidate built from
      ``keep`` (computed with ``common.flops`` on the candidate's width config);
      ``previous_reduction`` is the previous iteration's value (0 in the first), which sizes
      VGG-16's randomly narrowed 13th conv.
    target: the FLOPs reduction to reach, in (0, 1) (``--pruning_rate``).
    min_preserve: see :func:`select`.
  Returns:
    :class:`Vote`.
  Raises:
    ValueError: a target outside (0, 1), an empty pool, or a target the loop cannot reach.
  """
  if not 0.0 < float(target) < 1.0:
    raise ValueError(f'FLOPs reduction target must be in (0, 1); got {target!r}')
  if not 0.0 <= float(min_preserve) <= 1.0:
    raise ValueError(f'min_preserve must be in [0, 1]; got {min_preserve!r}')
  if not scores or any(np.asarray(s).size == 0 for s in scores):
    raise ValueError('global_vote needs a non-empty score array for every layer')
  rho, reduction, history = float(keep_start), 0.0, []
  keep, tau = None, None
  total = sum(np.asarray(s).size for s in scores)
  while reduction < target:
    if int(total * rho) < 1:
      best = max(h[2] for h in history) if history else 0.0
      raise ValueError(f'FLOPs reduction target {target} is out of reach: the smallest '
                       f'candidate reduces FLOPs by {best:.4f} (min_preserve={min_preserve})')
    keep, tau = select(scores, rho, min_preserve)
    reduction = float(flops_fn(keep, reduction))
    history.append((rho, tau, reduction))
    if reduction >= target:
      break
    rho = rho - keep_step
  return Vote(keep=keep, keep_ratio=history[-1][0], threshold=tau, reduction=reduction,
              history=history)
