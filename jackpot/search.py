"""The Lottery-Jackpots mask search as pure functions (Zhang et al., "Lottery Jackpots Exist in
Pre-trained Models", TPAMI 2023; official code zyxxmu/lottery-jackpots).

A pretrained network's weights ``W`` stay frozen; every masked layer (all convs and the classifier)
carries real-valued scores ``s`` (trained) and a binary mask ``b`` (not trained). The network
computes with ``W * b``; the straight-through estimator sends ``dL/ds = W * dL/d(W*b)``.

Trees: ``scores``, ``masks`` and ``counts`` are nested dicts holding only the masked kernels'
paths of the params tree (``common.masks`` mask-tree form): float32 scores and bool masks of the
kernel's shape, and int32 scalars ``k_l`` (the number of pruned weights of layer ``l``).

Two versions of the algorithm are in the official history:

* **v2** (HEAD, June 2023, ``utils/conv_type.py: PretrainConv``): scores 1, and 0.99 where magnitude
  pruning removes a weight (``set_prune_rate``); ``b`` lives beside the scores and after every
  optimizer step is re-derived per layer by :func:`popup` (``final_pop_up``).
* **v1** (first release, April 2021, ``GetMask.forward``): scores 1 / 0.95; every forward
  recomputes ``b`` as the top ``n_l - k_l`` of ``|s|`` (:func:`v1_mask`), no tie rule.
"""
from __future__ import annotations

import functools
import math
from typing import Dict, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from common import masks as common_masks
from common import transforms
from jackpot import select

Path = Tuple[str, ...]
VARIANTS = ('v2', 'v1')
LAYERWISE = ('l1', 'uniform')
SCORE_INITS = ('magnitude', 'random')
# The score of a magnitude-pruned position at initialisation (``set_prune_rate``), per variant.
PRUNED_SCORE = {'v2': 0.99, 'v1': 0.95}


def _flat(tree) -> Dict[Path, jax.Array]:
  return traverse_util.flatten_dict(tree)


def _unflat(flat: Dict[Path, jax.Array]):
  return traverse_util.unflatten_dict(flat)


def check_choice(name: str, value, allowed: Sequence[str]) -> str:
  """``value`` if it is in ``allowed``, else a ValueError naming ``name``, the allowed values and
  the value given."""
  if value not in allowed:
    raise ValueError(f'{name} must be one of {list(allowed)}; got {value!r}')
  return value


def layer_rates(params, sparsity: float, classifier_paths: Sequence[Path], *,
                mode: str = 'l1', where: Optional[transforms.Where] = None) -> Dict[Path, float]:
  """Per-layer pruning rates ``r_l`` (``cifar.py`` / ``imagenet.py: generate_pr_cfg``).

  ``mode='l1'``: over every selected kernel except the classifier, keep the ``int(N (1 - p))``
  largest ``|w|`` globally (``common.masks.global_magnitude_masks(count='keep')``); ``tau`` = the
  smallest kept ``|w|``; ``r_l = #{|w_l| < tau} / n_l``. ``mode='uniform'``: ``r_l = p``. The
  classifier gets rate 0 in both.

  Args:
    params: the pretrained params tree.
    sparsity: p in [0, 1).
    classifier_paths: kernel paths of the classifier (rate 0, excluded from the ranking).
    mode: 'l1' | 'uniform'.
    where: kernel selector (default: conv and dense kernels).
  Returns:
    ``{kernel path: r_l}`` (Python floats) for every selected kernel, in tree order.
  """
  check_choice('layerwise', mode, LAYERWISE)
  p = float(sparsity)
  if not 0.0 <= p < 1.0:
    raise ValueError(f'sparsity must lie in [0, 1); got {sparsity}')
  sel = transforms.select(params, where)
  cls = {tuple(c) for c in classifier_paths}
  missing = cls - set(sel)
  if missing:
    raise ValueError(f'classifier kernel(s) {sorted(map(transforms.path_str, missing))} are not '
                     f'among the masked kernels {[transforms.path_str(k) for k in sel]}')
  body = {k: w for k, w in sel.items() if k not in cls}
  if not body:
    raise ValueError('no kernel besides the classifier to prune')
  if mode == 'uniform':
    return {k: (0.0 if k in cls else p) for k in sel}
  keep = _flat(common_masks.global_magnitude_masks(_unflat(body), p, count='keep'))
  mags = {k: np.abs(np.asarray(w)) for k, w in body.items()}   # host: runs once per search
  tau = min(float(np.min(mags[k][np.asarray(keep[k])], initial=np.inf)) for k in body)
  return {k: (0.0 if k in cls else int(np.count_nonzero(mags[k] < tau)) / mags[k].size)
          for k in sel}


def pruned_counts(params, rates: Dict[Path, float]) -> Dict[Path, int]:
  """``k_l = int(n_l * r_l)`` per layer, the count ``set_prune_rate`` prunes (float64 product
  truncated, as ``torch.topk(..., int(w.size(0) * prune_rate))``)."""
  return {k: int(transforms.get_path(params, k).size * float(r)) for k, r in rates.items()}


def magnitude_masks(params, counts: Dict[Path, int]):
  """Per-layer magnitude masks: the ``k_l`` smallest ``|w|`` of each layer pruned (False).

  With global-magnitude rates this is global magnitude pruning at ``int(N (1 - p))`` kept weights
  (the jackpot's initial mask). Returns a bool mask tree over ``counts``' paths.
  """
  return _unflat({k: common_masks.lowest_k_mask(jnp.abs(transforms.get_path(params, k)), int(n))
                  for k, n in counts.items()})


def init_search(params, counts: Dict[Path, int], *, variant: str = 'v2',
                score_init: str = 'magnitude', rng: Optional[jax.Array] = None):
  """Initial ``(scores, masks, counts)`` trees (``set_prune_rate``).

  ``score_init='magnitude'`` (the paper): ``b`` = :func:`magnitude_masks`; ``s = 1`` where kept and
  ``PRUNED_SCORE[variant]`` (0.99 in v2, 0.95 in v1) where pruned. ``'random'`` (edge-popup-style
  control, no magnitude information): ``s ~ U[0, 1)`` i.i.d. and ``b`` = the top ``n_l - k_l``
  scores of each layer, same ``k_l``.

  Returns:
    ``scores`` (float32 trees), ``masks`` (bool), ``counts`` (int32 scalars), all over the paths
    of ``counts``.
  """
  check_choice('variant', variant, VARIANTS)
  check_choice('score_init', score_init, SCORE_INITS)
  scores, masks = {}, {}
  for i, (path, k) in enumerate(counts.items()):
    w = transforms.get_path(params, path)
    if score_init == 'magnitude':
      b = common_masks.lowest_k_mask(jnp.abs(w), int(k))
      s = jnp.where(b, 1.0, PRUNED_SCORE[variant]).astype(jnp.float32)
    else:
      if rng is None:
        raise ValueError("score_init='random' needs an rng")
      s = jax.random.uniform(jax.random.fold_in(rng, i), w.shape, jnp.float32)
      b = ~select.lowest_k_among(s, int(k))
    scores[path], masks[path] = s, b
  ks = {p: jnp.asarray(int(k), jnp.int32) for p, k in counts.items()}
  return _unflat(scores), _unflat(masks), _unflat(ks)


@jax.custom_vjp
def masked_weight(w: jax.Array, s: jax.Array, b: jax.Array) -> jax.Array:
  """``W * b`` with the straight-through gradient ``dL/ds = W * dL/d(W*b)`` (dense: pruned
  positions get gradient too), ``GetMask`` + ``mask * self.weight`` of ``PretrainConv.forward``.

  Args:
    w: weight, any shape; s: scores, same shape; b: the mask as ``w.dtype`` (0/1), same shape.
  Returns:
    ``w * b`` (exactly: the forward never mixes ``s`` into the value).
  """
  return w * b


def _masked_weight_fwd(w, s, b):
  return w * b, (w, b)


def _masked_weight_bwd(res, g):
  w, b = res
  return g * b, g * w, jnp.zeros_like(b)


masked_weight.defvjp(_masked_weight_fwd, _masked_weight_bwd)


@jax.jit
def v1_mask(s: jax.Array, k) -> jax.Array:
  """v1 forward mask (``GetMask.forward`` of the April 2021 release, on ``clamped_masks = |s|``):
  the ``k`` smallest ``|s|`` are 0, the rest 1; ties by position. Returns bool of ``s.shape``."""
  return ~select.lowest_k_among(jnp.abs(s), k)


def v1_masks(scores, counts):
  """:func:`v1_mask` over the trees."""
  fs, fk = _flat(scores), _flat(counts)
  return _unflat({p: v1_mask(s, fk[p]) for p, s in fs.items()})


def effective_params(params, scores, masks, counts=None, variant: str = 'v2'):
  """The params the network computes with: ``W * b`` on every masked kernel (STE to the scores).

  v2 uses the stored ``masks``; v1 recomputes them from ``|scores|`` and ``counts`` in the forward.
  Pure and jit-able; other leaves pass through.
  """
  fp = _flat(params)
  fs, fb = _flat(scores), _flat(masks)
  fk = _flat(counts) if counts is not None else None
  for path, s in fs.items():
    w = fp[path]
    b = v1_mask(s, fk[path]) if variant == 'v1' else fb[path]
    fp[path] = masked_weight(w, s, b.astype(w.dtype))
  return _unflat(fp)


@functools.partial(jax.jit, static_argnames=('rate',))
def popup(s: jax.Array, b: jax.Array, k, rate: float = 1.0) -> Tuple[jax.Array, jax.Array]:
  """One layer's v2 mask update after a step (``PretrainConv.final_pop_up``).

  ``tau`` = the k-th smallest score; ``A = {b = 0, s > tau}`` (to revive), ``B = {b = 1, s <= tau}``
  (to prune). Only when ``|A| == |B| > 0``: revive the ``q`` highest-scored of ``A`` and prune the
  ``q`` lowest-scored of ``B``, ``q = ceil(rate |A|)`` (``q = 1`` when ``|A| = 1``); otherwise (a
  tie at ``tau`` makes ``|B| > |A|``, or nothing to do) ``b`` is unchanged. ``#(b = 0)`` stays
  ``k``. With ``rate = 1`` and no ties this is ``b = [s > tau]``, the per-layer top ``n - k``.

  Args:
    s: scores, any shape; b: bool mask, same shape; k: pruned count (int or traced int32).
    rate: the restriction rate (static float in (0, 1]); the official CIFAR schedule
      :func:`adjust_rate` is 1 for every epoch and ImageNet returns 1.
  Returns:
    ``(new b, number of revived weights q or 0)``.
  """
  shape = s.shape
  s, b = s.reshape(-1), b.reshape(-1)
  k = jnp.asarray(k, jnp.int32)
  tau = select.kth_smallest(s, jnp.maximum(k, 1))
  revive = (~b) & (s > tau)
  prune = b & (s <= tau)
  n_a = jnp.sum(revive, dtype=jnp.int32)
  n_b = jnp.sum(prune, dtype=jnp.int32)
  act = (n_a == n_b) & (n_a > 0) & (k > 0)
  if rate == 1.0:
    q = n_a
  else:
    q = jnp.where(n_a > 1, jnp.ceil(n_a * jnp.float32(rate)).astype(jnp.int32), n_a)
    revive = select.lowest_k_among(-s, q, revive)   # the q highest scores of A
    prune = select.lowest_k_among(s, q, prune)      # the q lowest scores of B
  new = (b & ~prune) | revive
  return jnp.where(act, new, b).reshape(shape), jnp.where(act, q, 0)


def popup_tree(scores, masks, counts, rate: float = 1.0):
  """:func:`popup` for every layer. Returns ``(masks, swaps)`` trees (swaps: int32 scalars)."""
  fs, fb, fk = _flat(scores), _flat(masks), _flat(counts)
  out_b, out_q = {}, {}
  for p, s in fs.items():
    out_b[p], out_q[p] = popup(s, fb[p], fk[p], rate)
  return _unflat(out_b), _unflat(out_q)


def adjust_rate(epoch: int, num_epochs: int) -> int:
  """The CIFAR restriction rate of ``cifar.py: adjust_rate``: ``ceil((1 - e / E) ** 4)``, which is
  1 for every epoch ``0 <= e < E`` (so the "short restriction" never restricts)."""
  return math.ceil((1 - epoch / num_epochs) ** 4)


def kept_counts(masks) -> Dict[str, int]:
  """``{path string: nnz}`` of a mask tree (host)."""
  return {transforms.path_str(p): int(np.count_nonzero(np.asarray(m)))
          for p, m in _flat(masks).items()}
