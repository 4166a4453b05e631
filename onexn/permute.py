"""Physical filter rearrangement: permute a layer's output channels and everything that reads them.

The official code only permutes the *mask computation* (lmbxmu/1xN ``utils/conv_type.py:
BlockL1Conv.get_rearr_mask`` scatters the mask back, weights never move); deploying a
rearranged layer as N-consecutive blocks needs the permutation applied to the weights. For a layer
l with permutation π (``new channel i = old channel π[i]``) this module permutes, as the paper
describes (Fig. 2: the next layer's input channels follow the permutation):

* the output channels of l (kernel last axis, bias) and its BatchNorm (scale, bias, mean, var);
* every depthwise conv between l and its consumer (MobileNets), with its BatchNorm;
* the input channels of the consumer (conv kernel axis 2, dense kernel axis 0; a global average
  pool in between commutes with the permutation).

This is exact only when nothing else reads l's output, i.e. l does not feed a residual sum and is
not the classifier; :func:`absorb_plan` returns None otherwise (``onexn.export`` then gathers the
layer's output back into the original order instead).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Optional, Sequence, Tuple

import jax.numpy as jnp
import numpy as np

from common import transforms

Path = Tuple[str, ...]

ABSORBABLE_ROLES = ('inner', 'expand', 'pointwise')


@dataclasses.dataclass(frozen=True)
class AbsorbPlan:
  """Where the permutation of ``layer``'s output channels must be applied (module paths)."""
  layer: Path
  bn: Optional[Path]
  depthwise: Tuple[Tuple[Path, Optional[Path]], ...]   # (conv, its BN) between layer and consumer
  consumer: Path
  consumer_kind: str                                    # 'conv' | 'dense'


def _find(specs, path):
  for i, s in enumerate(specs):
    if tuple(s.path) == tuple(path):
      return i, s
  raise ValueError(f'layer {transforms.path_str(tuple(path))!r} is not in the layer specs')


def absorb_plan(specs: Sequence[Any], layer: Path) -> Optional[AbsorbPlan]:
  """The chain ``layer -> [BN] -> (depthwise -> [BN])* -> consumer`` in forward-ordered specs.

  Returns None when the permutation cannot be absorbed: the layer's role is not one of
  ``ABSORBABLE_ROLES`` (stem, projection, block output, shortcut and classifier outputs may be read
  by a residual sum or are the logits), or the next non-depthwise conv/dense does not read exactly its
  ``out_ch`` channels (the layer's output is not consumed by one layer alone).
  """
  i, s = _find(specs, layer)
  # Only roles whose output has exactly one reader: a ResNet inner conv, a MobileNet-V2
  # expansion, a MobileNet-V1 pointwise / the final MobileNet-V2 1x1. A stem, projection,
  # block output or shortcut may also be read by a residual sum (as its identity branch).
  if s.feeds_residual or s.role not in ABSORBABLE_ROLES or getattr(s, 'depthwise', False):
    return None
  chain = []
  for t in specs[i + 1:]:
    if t.kind not in ('conv', 'dense'):
      continue
    if getattr(t, 'depthwise', False) or t.role == 'depthwise':
      if t.in_ch != s.out_ch or t.out_ch != s.out_ch:
        return None
      chain.append((tuple(t.path), tuple(t.bn) if t.bn else None))
      continue
    if t.in_ch != s.out_ch or int(getattr(t, 'groups', 1) or 1) != 1:
      return None
    return AbsorbPlan(tuple(s.path), tuple(s.bn) if s.bn else None, tuple(chain), tuple(t.path),
                      t.kind)
  return None


def _take(tree, path: Path, perm, axis: int):
  """``tree`` with the leaf at ``path`` permuted along ``axis`` (missing leaf: unchanged)."""
  try:
    leaf = transforms.get_path(tree, path)
  except KeyError:
    return tree
  return transforms.set_path(tree, path, jnp.take(leaf, perm, axis=axis))


def _permute_bn(params, batch_stats, bn: Optional[Path], perm):
  if bn is None:
    return params, batch_stats
  for leaf in ('scale', 'bias'):
    params = _take(params, bn + (leaf,), perm, 0)
  for leaf in ('mean', 'var'):
    batch_stats = _take(batch_stats, bn + (leaf,), perm, 0)
  return params, batch_stats


def permute_out_channels(params, batch_stats, masks, layer: Path, perm,
                         with_bn: Optional[Path] = None):
  """Permutes only ``layer``'s output channels (kernel, bias, mask and optionally its BN).

  Not function-preserving by itself; used with an output gather (``onexn.export``) or inside
  :func:`permute_pair`.
  """
  perm = jnp.asarray(perm)
  params = _take(params, layer + ('kernel',), perm, -1)
  params = _take(params, layer + ('bias',), perm, 0)
  if masks:
    masks = _take(masks, layer + ('kernel',), perm, -1)
  params, batch_stats = _permute_bn(params, batch_stats, with_bn, perm)
  return params, batch_stats, masks


def permute_pair(params, batch_stats, masks, plan: AbsorbPlan, perm):
  """Applies π physically along ``plan`` ; function-preserving (same logits in eval mode).

  Args:
    params, batch_stats: variable trees of the model.
    masks: mask tree (``common.masks`` form) or None; permuted identically so that the masked
      model stays the same function.
    plan: from :func:`absorb_plan`.
    perm: int ``[C]``, new channel i = old channel ``perm[i]``.
  Returns:
    ``(params, batch_stats, masks)`` permuted.
  """
  perm = jnp.asarray(perm)
  c = transforms.get_path(params, plan.layer + ('kernel',)).shape[-1]
  if perm.shape != (c,) or sorted(np.asarray(perm).tolist()) != list(range(c)):
    raise ValueError(f'perm must be a permutation of range({c}) for layer '
                     f'{transforms.path_str(plan.layer)!r}; got shape {tuple(perm.shape)}')
  params, batch_stats, masks = permute_out_channels(params, batch_stats, masks, plan.layer, perm,
                                                    plan.bn)
  for dw, dw_bn in plan.depthwise:
    params = _take(params, dw + ('kernel',), perm, -1)
    params = _take(params, dw + ('bias',), perm, 0)
    if masks:
      masks = _take(masks, dw + ('kernel',), perm, -1)
    params, batch_stats = _permute_bn(params, batch_stats, dw_bn, perm)
  axis = 0 if plan.consumer_kind == 'dense' else 2
  params = _take(params, plan.consumer + ('kernel',), perm, axis)
  if masks:
    masks = _take(masks, plan.consumer + ('kernel',), perm, axis)
  return params, batch_stats, masks


def block_permutation_from_mask(mask, n: int) -> Optional[np.ndarray]:
  """A permutation π of output channels with ``mask[..., π]`` a 1xN block mask, or None.

  Channels of one block have identical mask columns (over ``kh, kw, C_in``); a stable lexical
  sort of the columns followed by cutting into N-chunks yields blocks whenever every class of equal
  columns has a size divisible by N, which holds for any mask made by ``rearranged_block_mask``.
  The identity is returned when the mask is already a block mask. Host side (NumPy).
  """
  m = np.asarray(mask).astype(bool)
  m = m.reshape((-1, m.shape[-1]))                 # [kh*kw*C_in, C_out]
  c = m.shape[1]
  if c % n:
    return None
  ident = np.arange(c)
  if np.all(m.reshape(m.shape[0], c // n, n) == m.reshape(m.shape[0], c // n, n)[..., :1]):
    return ident
  keys = np.packbits(m, axis=0)                    # column fingerprints, [bytes, C_out]
  perm = np.lexsort(keys[::-1], axis=0) if keys.shape[0] else ident
  g = m[:, perm].reshape(m.shape[0], c // n, n)
  if not np.all(g == g[..., :1]):
    return None
  return perm.astype(np.int32)
