"""Pruning masks as pytrees: unstructured (per-layer and global magnitude) and filter (L1) masks.

A *mask tree* is a nested dict holding a subset of the parameter tree's paths (only the masked
leaves), each a bool array of the leaf's shape (filter masks are stored at full kernel shape too, so
that ``apply_masks`` is one multiply per leaf). Keeping only masked leaves makes the tree a valid
orbax/JSON-free pytree (no ``None`` leaves) and lets it live in ``TrainState.extra['masks']``.

Counting rule shared by every repo in this project: a layer at pruning rate ``p`` with ``n`` scored
units prunes exactly ``int(n * p)`` (truncation toward zero) of the lowest-scored units; ties are
broken by position (stable sort), so masks are deterministic.

Paper-specific patterns (1xN blocks with filter rearrangement, Lottery-Jackpot scores, White-Box
class-wise channel masks) live in their packages and produce trees of this same form.
"""
from __future__ import annotations

from typing import Any, Dict, Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from common import transforms

MaskTree = Dict[str, Any]


def _check_rate(p: float, what: str = 'sparsity') -> float:
  p = float(p)
  if not 0.0 <= p <= 1.0:
    raise ValueError(f'{what} must lie in [0, 1]; got {p}')
  return p


def lowest_k_mask(scores: jax.Array, k: int) -> jax.Array:
  """Keeps all but the ``k`` lowest entries of ``scores``.

  Args:
    scores: any shape; compared after flattening.
    k: number of entries to drop, ``0 <= k <= scores.size`` (static).
  Returns:
    bool array of ``scores.shape``; exactly ``scores.size - k`` True entries. Ties keep the later
    position, i.e. a stable ascending sort decides (as ``torch.sort`` does on CPU for these repos).
  """
  flat = scores.reshape(-1)
  if not 0 <= k <= flat.size:
    raise ValueError(f'k must be in [0, {flat.size}]; got {k}')
  order = jnp.argsort(flat, stable=True)
  keep = jnp.ones(flat.shape, bool).at[order[:k]].set(False)
  return keep.reshape(scores.shape)


def magnitude_mask(w: jax.Array, sparsity: float) -> jax.Array:
  """Per-layer unstructured magnitude mask: prune ``int(w.size * sparsity)`` smallest ``|w|``.

  Args:
    w: any-shaped weight tensor.
    sparsity: pruning rate p in [0, 1].
  Returns:
    bool mask of ``w.shape`` (True = kept).
  """
  p = _check_rate(sparsity)
  return lowest_k_mask(jnp.abs(w), int(w.size * p))


def filter_l1_mask(kernel: jax.Array, sparsity: float) -> jax.Array:
  """Filter (output-channel) L1 mask: prune ``int(C_out * sparsity)`` filters of smallest L1 norm.

  Li et al. 2017 "Pruning Filters for Efficient ConvNets", the filter baseline of the 1xN code.

  Args:
    kernel: ``[..., C_out]`` (HWIO conv kernel or ``[C_in, C_out]`` dense kernel).
    sparsity: pruning rate p in [0, 1].
  Returns:
    bool mask of ``kernel.shape``, constant over every axis but the last.
  """
  p = _check_rate(sparsity)
  c_out = kernel.shape[-1]
  l1 = jnp.sum(jnp.abs(kernel.reshape(-1, c_out)), axis=0)
  keep = lowest_k_mask(l1, int(c_out * p))
  return jnp.broadcast_to(keep, kernel.shape)


def per_layer_masks(params, sparsity: float, where: Optional[transforms.Where] = None,
                    kind: str = 'magnitude') -> MaskTree:
  """Masks every selected leaf at the same rate.

  Args:
    params: parameter pytree.
    sparsity: rate p in [0, 1] applied to each selected leaf.
    where: leaf selector (default: conv/dense kernels).
    kind: 'magnitude' (unstructured) or 'filter' (L1 filter pruning).
  Returns:
    mask tree with the selected paths only.
  """
  fns = {'magnitude': magnitude_mask, 'filter': filter_l1_mask}
  if kind not in fns:
    raise ValueError(f'unknown mask kind {kind!r}; allowed: {sorted(fns)}')
  sel = transforms.select(params, where)
  return traverse_util.unflatten_dict({p: fns[kind](w, sparsity) for p, w in sel.items()})


def global_magnitude_masks(params, sparsity: float,
                           where: Optional[transforms.Where] = None,
                           count: str = 'prune') -> MaskTree:
  """Global unstructured magnitude pruning: one threshold over all selected leaves.

  Args:
    params: parameter pytree.
    sparsity: pruning rate p in [0, 1].
    where: leaf selector (default: conv/dense kernels).
    count: which count is truncated, over the ``N`` selected weights:
      'prune' prunes exactly ``int(N * p)`` weights of smallest ``|w|`` (the rule of this module);
      'keep' keeps exactly ``int(N * (1 - p))`` weights of largest ``|w|``, the count of
      zyxxmu/lottery-jackpots ``cifar.py: generate_pr_cfg`` (``preserve_num``). The two differ by
      one weight whenever ``N * p`` is not an integer.
  Returns:
    mask tree with the selected paths only.
  """
  p = _check_rate(sparsity)
  if count not in ('prune', 'keep'):
    raise ValueError(f"count must be 'prune' or 'keep'; got {count!r}")
  sel = transforms.select(params, where)
  if not sel:
    raise ValueError('no parameters selected for global magnitude pruning')
  flat = jnp.concatenate([jnp.abs(w).reshape(-1) for w in sel.values()])
  n_prune = (int(flat.size * p) if count == 'prune'
             else flat.size - int(flat.size * (1.0 - p)))
  keep = lowest_k_mask(flat, n_prune)
  out, i = {}, 0
  for path, w in sel.items():
    out[path] = keep[i:i + w.size].reshape(w.shape)
    i += w.size
  return traverse_util.unflatten_dict(out)


def apply_masks(params, masks: MaskTree):
  """``params * masks`` on the masked leaves; other leaves unchanged (pure, jit-able).

  Raises:
    ValueError: a mask path missing from ``params`` or a shape mismatch, naming the path.
  """
  flat_p = traverse_util.flatten_dict(params)
  for path, m in traverse_util.flatten_dict(masks).items():
    if path not in flat_p:
      raise ValueError(f'mask for {transforms.path_str(path)!r} has no matching parameter')
    w = flat_p[path]
    if tuple(m.shape) != tuple(w.shape):
      raise ValueError(f'mask shape {tuple(m.shape)} != parameter shape {tuple(w.shape)} '
                       f'at {transforms.path_str(path)!r}')
    flat_p[path] = w * m.astype(w.dtype)
  return traverse_util.unflatten_dict(flat_p)


def sparsity_report(masks: MaskTree) -> Dict[str, Any]:
  """Per-layer and global sparsity of a mask tree (host side).

  Returns:
    ``{'layers': {path_str: {'sparsity', 'kept', 'total'}}, 'global_sparsity', 'kept', 'total'}``.
  """
  layers, kept_all, total_all = {}, 0, 0
  for path, m in traverse_util.flatten_dict(masks).items():
    m = np.asarray(m)
    kept, total = int(np.count_nonzero(m)), int(m.size)
    layers[transforms.path_str(path)] = {
        'sparsity': 1.0 - kept / total if total else 0.0, 'kept': kept, 'total': total}
    kept_all += kept
    total_all += total
  return {'layers': layers, 'kept': kept_all, 'total': total_all,
          'global_sparsity': 1.0 - kept_all / total_all if total_all else 0.0}
