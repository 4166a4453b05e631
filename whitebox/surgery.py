"""Weight inheritance: the compact model's params from the class model's and the vote.

zyxxmu/White-Box ``cifar.py`` / ``imagenet.py: build_*_pruned_model``: each narrowed conv keeps
its kept filters (and conv bias), its consumer keeps the matching input channels
(``utils/common.py: direct_project``), BN running mean/var are copied for the kept channels and
BN gamma/beta are multiplied by the signed folded scale ``m = sum_k M / 2`` where the code does;
the layers the code never writes into the new state dict keep the compact model's fresh
initialisation. For a mask after a ReLU with ``m > 0`` the fold is exact:
``relu(m (gamma xhat + beta)) = m relu(gamma xhat + beta)``.
"""
from __future__ import annotations

from typing import Any, Dict, List, Sequence

import numpy as np
from flax import traverse_util

from whitebox import families

CONV_LEAVES = ('kernel', 'bias')
BN_PARAMS = ('scale', 'bias')
BN_STATS = ('mean', 'var')


def _slice_leaf(kind: str, leaf: str, value: np.ndarray, rule: families.Rule, path) -> np.ndarray:
  v = np.asarray(value)
  if kind == 'bn':
    if rule.out is not None:
      v = v[rule.out]
    if leaf in BN_PARAMS and rule.scale is not None:
      v = v * np.asarray(rule.scale, v.dtype)
    return v
  if leaf == 'kernel':
    # conv [kh, kw, C_in/groups, C_out] or dense [C_in, C_out]; a depthwise conv's input axis
    # has size 1 and is never sliced.
    if rule.inp is not None and v.shape[-2] != 1:
      v = np.take(v, rule.inp, axis=-2)
    if rule.out is not None:
      v = np.take(v, rule.out, axis=-1)
    return v
  if leaf == 'bias':
    return v[rule.out] if rule.out is not None else v
  raise ValueError(f'unexpected leaf {leaf!r} at {"/".join(path)}')


def inherit(rules: Dict[tuple, families.Rule], params, batch_stats, fresh_params,
            fresh_batch_stats):
  """The compact ``{'params', 'batch_stats'}`` (numpy float32 leaves).

  Args:
    rules: module path -> :class:`whitebox.families.Rule` (``Plan.rules``); unlisted modules are
      copied whole.
    params, batch_stats: the class model's (its masks removed).
    fresh_params, fresh_batch_stats: the compact model's own initialisation (its shapes are the
      target; ``Rule.fresh`` modules and modules the class model lacks are taken from it).
  Returns:
    the compact variables.
  Raises:
    ValueError: a sliced leaf whose shape differs from the compact model's (naming the path).
  """
  src_p = traverse_util.flatten_dict(params)
  src_s = traverse_util.flatten_dict(batch_stats)
  out_p, out_s = {}, {}
  for tree, src, dst, is_stats in ((traverse_util.flatten_dict(fresh_params), src_p, out_p, False),
                                   (traverse_util.flatten_dict(fresh_batch_stats), src_s, out_s,
                                    True)):
    for key, fresh in tree.items():
      module, leaf = key[:-1], key[-1]
      rule = rules.get(module, families.Rule())
      if rule.fresh or key not in src:
        dst[key] = np.asarray(fresh, np.float32)
        continue
      kind = 'bn' if (is_stats or leaf == 'scale' or 'bn' in module[-1]) else 'conv'
      v = _slice_leaf(kind, leaf, src[key], rule, key)
      if v.shape != tuple(fresh.shape):
        raise ValueError(f'{"/".join(key)}: inherited shape {v.shape} != compact shape '
                         f'{tuple(fresh.shape)}')
      dst[key] = v.astype(np.float32)
  return {'params': traverse_util.unflatten_dict(out_p),
          'batch_stats': traverse_util.unflatten_dict(out_s)}


def scale_report(scales: Sequence[np.ndarray], keep: Dict[int, np.ndarray], names: List[str],
                 folded: Sequence[int]) -> Dict[str, Any]:
  """Sign and size of the folded BN scales ``m`` per folded mask (what went into gamma/beta).

  Args:
    scales: per mask ``m [C]``; keep: mask index -> kept channels (others: all channels folded);
    names: mask names; folded: the mask indices whose ``m`` was multiplied into a BN.
  Returns:
    ``{'layers': {name: {min, max, mean_abs, negative}}, 'negative_total', 'min', 'max'}``.
  """
  layers, neg, lo, hi = {}, 0, np.inf, -np.inf
  for i in folded:
    m = np.asarray(scales[i], np.float64)
    if i in keep:
      m = m[keep[i]]
    n = int((m < 0).sum())
    layers[names[i]] = {'min': float(m.min()), 'max': float(m.max()),
                        'mean_abs': float(np.abs(m).mean()), 'negative': n}
    neg += n
    lo, hi = min(lo, float(m.min())), max(hi, float(m.max()))
  return {'layers': layers, 'negative_total': neg, 'min': lo, 'max': hi}
