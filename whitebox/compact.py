"""Stage 2 end to end: masks -> scores -> global vote (FLOPs by ``common.flops``) -> compact model.

zyxxmu/White-Box ``cifar.py`` / ``imagenet.py: build_*_pruned_model``, host side, once, on numpy.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, List, Optional

import jax
import jax.numpy as jnp
import numpy as np

from whitebox import families, gate, surgery, vote as vote_lib

MASKS = 'whitebox_masks'   # the params entry holding the class-wise masks


def init_masks(plan: families.Plan, num_classes: int) -> Dict[str, jax.Array]:
  """Every allocated mask ``[K, C_l]``, ones (the code's ``torch.ones(num_classes, C)``)."""
  return {m.name: jnp.ones((num_classes, m.width), jnp.float32) for m in plan.masks}


def mask_list(plan: families.Plan, masks) -> List[np.ndarray]:
  """The masks as numpy arrays in ``plan.masks`` order."""
  return [np.asarray(masks[m.name], np.float32) for m in plan.masks]


def dense_flops(plan: families.Plan, input_hw, num_classes: int, model_kwargs=None) -> int:
  """thop-convention FLOPs of the dense pruned-model architecture (the code's ``oriflops``)."""
  from common import flops
  return int(flops.count(plan.model_name, plan.widths, tuple(input_hw), num_classes,
                         **(model_kwargs or {}))[0])


def reduction_fn(plan: families.Plan, input_hw, num_classes: int, model_kwargs=None):
  """``flops_fn(keep, previous_reduction) -> reduction`` for :func:`whitebox.vote.global_vote`,
  ``keep`` given over ``plan.pool`` (FLOPs of each candidate by ``common.flops``)."""
  from common import flops
  kw = dict(model_kwargs or {})
  base = dense_flops(plan, input_hw, num_classes, kw)
  pool = plan.pool

  def fn(keep, prev):
    by_mask = dict(zip(pool, keep))
    w = plan.compact_widths({i: by_mask[i] for i in plan.narrowed()}, plan.random_width(prev))
    f = flops.count(plan.model_name, w, tuple(input_hw), num_classes, **kw)[0]
    return (base - f) / base

  return fn


@dataclasses.dataclass
class Pruning:
  """What stage 2 decided.

  Attributes:
    widths: the compact width config.
    keep: mask index -> kept channels of every narrowed layer.
    random_idx: the sorted random subset of the randomly narrowed layer (None if none).
    scales: per mask the signed ``m = sum_k M / 2``.
    vote: the :class:`whitebox.vote.Vote`.
  """
  widths: Any
  keep: Dict[int, np.ndarray]
  random_idx: Optional[np.ndarray]
  scales: List[np.ndarray]
  vote: vote_lib.Vote


def prune(plan: families.Plan, masks, target: float, *, input_hw, num_classes: int,
          model_kwargs=None, min_preserve: float = 0.3, seed: int = 0) -> Pruning:
  """Scores every pool mask, runs the vote to ``target`` and draws the random layer's subset.

  Args:
    plan: the family plan; masks: ``{name: [K, C]}``; target: FLOPs reduction in (0, 1).
    input_hw, num_classes, model_kwargs: the pruned architecture the FLOPs are counted on.
    min_preserve: least kept fraction per layer.
    seed: seeds the numpy Generator of the random subset (the code uses ``random.sample``).
  """
  ms = mask_list(plan, masks)
  scores = [gate.channel_scores(ms[i], plan.halve) for i in plan.pool]
  v = vote_lib.global_vote(scores, reduction_fn(plan, input_hw, num_classes, model_kwargs),
                           target, min_preserve)
  by_mask = dict(zip(plan.pool, v.keep))
  keep = {i: by_mask[i] for i in plan.narrowed()}
  prev = v.history[-2][2] if len(v.history) > 1 else 0.0
  rw = plan.random_width(prev)
  random_idx = None
  if rw is not None:
    rng = np.random.default_rng(seed)
    random_idx = np.sort(rng.choice(plan.random_source_width(), size=max(rw, 1), replace=False))
  return Pruning(widths=plan.compact_widths(keep, rw), keep=keep, random_idx=random_idx,
                 scales=[gate.folded_scales(m) for m in ms], vote=v)


def compact_variables(plan: families.Plan, pruning: Pruning, params, batch_stats, compact_model,
                      image_shape, rng, *, bn_fold: bool = True, fold_unused: bool = True,
                      fresh_shortcuts: bool = True):
  """The compact model's ``{'params', 'batch_stats'}`` inherited from the class model.

  Args:
    params: the class model's params (with or without the ``MASKS`` entry); batch_stats: its BN
      statistics; compact_model: the linen module at ``pruning.widths``; image_shape ``(H, W, C)``;
      rng: initialises the modules the code leaves fresh. Flags: see ``families.Plan.rules``.
  """
  params = {k: v for k, v in params.items() if k != MASKS}
  init = compact_model.init(rng, jnp.zeros((1,) + tuple(image_shape), jnp.float32), train=False)
  rules = plan.rules(pruning.keep, pruning.random_idx, pruning.scales, bn_fold=bn_fold,
                     fold_unused=fold_unused, fresh_shortcuts=fresh_shortcuts)
  return surgery.inherit(rules, jax.device_get(params), jax.device_get(batch_stats),
                         init['params'], init.get('batch_stats', {}))


def layer_report(plan: families.Plan, pruning: Pruning, fold_unused: bool = True) -> Dict[str, Any]:
  """Per-layer widths and kept ratios, and the folded-scale report (``surgery.scale_report``)."""
  names = [m.name for m in plan.masks]
  layers = []
  for i in plan.narrowed():
    m = plan.masks[i]
    layers.append({'mask': m.name, 'site': m.site, 'width': m.width,
                   'kept': int(len(pruning.keep[i])),
                   'kept_ratio': float(len(pruning.keep[i]) / m.width)})
  if pruning.random_idx is not None:
    layers.append({'mask': None, 'site': 'random', 'width': plan.random_source_width(),
                   'kept': int(pruning.random_idx.size),
                   'kept_ratio': float(pruning.random_idx.size / plan.random_source_width())})
  empty = [l for l in layers if l['kept'] == 0]
  if empty:
    raise ValueError(f'the vote emptied layers {empty}')
  return {'layers': layers,
          'folded_scales': surgery.scale_report(pruning.scales, pruning.keep, names,
                                                plan.folded(fold_unused)),
          'keep_ratio': pruning.vote.keep_ratio, 'threshold': pruning.vote.threshold,
          'flops_reduction': pruning.vote.reduction, 'vote_iterations': len(pruning.vote.history)}
