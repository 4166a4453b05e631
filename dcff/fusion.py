"""Dynamic-coded filter fusion: the per-layer math of DCFF as the official code does it.

As the official code computes it (lmbxmu/DCFF ``main_cifar.py`` /
``main_imagenet.py`` of lmbxmu/DCFF and ``models/*/fuse_modules.py``).

Per fused conv layer with ``C`` original filters (HWIO kernel ``[k, k, C_in, C]``) and ``m`` kept
output channels, at the start of every epoch ``e``:

1. ``D[j, g] = ||F_j - F_g||_2`` over the flattened filters (float64 as the code's scipy
   ``cdist``, cast to float32);
2. the temperature ``T(e)`` (:func:`temperature`);
3. ``P[j, :] = softmax_g(-D[j, g] * T)`` (the inter-similarity distribution);
4. ``KL[j, k] = mean_g P[j,g] log(P[j,g] / (P[k,g] + 1e-7))`` and the importance
   ``s_j = sum_k KL[j, k]`` (:func:`kl_importance`);
5. stored scores are replaced only when the new ones are all finite (:func:`update_scores`);
6. the ``m`` highest stored scores are selected (:func:`select_filters`);
7. ``P_sel = P[selected]`` (``[m, C]``, current T) fuses the filters in every forward:
   ``W_fused = P_sel . W`` (:func:`fuse`).

The scoring (steps 1-6) is host-side NumPy, once per epoch: it reproduces the official float64
``cdist`` and the IEEE float32 underflow of ``exp`` (XLA's CPU backend flushes denormals, which
would move the underflow threshold). The fusion (step 7) is a jnp function traced into the train
step.

Float32 faithful mode (default) keeps the official numerics, including the fact (in float32 ``exp(-D T)`` underflows from epoch 1, every later score vector is NaN and the epoch-0 scores are kept) that
from epoch 1 on ``exp(-D*T)`` underflows, every score vector is NaN and the epoch-0 selection is
kept for the whole run. The ``'dynamic'`` score mode is an ablation that keeps the selection
dynamic: it scores in float64 with a log-space (stable) KL at ``min(T(e), score_temperature_cap)``;
float64 alone would not help (``exp(-D*T)`` still underflows at ``D*T > ~745``) and a stable KL
alone would tie every score at ``(C-1)/C * log(1e7)`` (top-k would silently become index order).
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from scipy.spatial import distance as sp_distance

# Official constants (``Ts = 1``, ``Te = 10000``, ``k = 1``) and the KL denominator epsilon.
T_START = 1.0
T_END = 1e4
T_K = 1.0
KL_EPS = 1e-7

SCORE_MODES = ('faithful', 'dynamic')


def temperature(epoch: int, num_epochs: int, t_start: float = T_START, t_end: float = T_END,
                k: float = T_K) -> float:
  """The temperature ``T(e)`` of epoch ``epoch`` (step 2 of the per-epoch update in lmbxmu/DCFF ``main_cifar.py``; official code, in float64).

  ``A = 2 (T_e - T_s)(1 + exp(-k E)) / (1 - exp(-k E))``, ``T(e) = A / (1 + exp(-k e)) + T_s - A/2``,
  so ``T(0) = T_s``, ``T(E) = T_e`` and T increases monotonically (saturating within ~10 epochs for
  ``k = 1`` whatever E is).

  Args:
    epoch: 0-based epoch e (may exceed E; T keeps approaching its limit).
    num_epochs: E > 0.
    t_start, t_end: T_s and T_e (``t_end > t_start > 0``).
    k: steepness (> 0).
  Returns:
    T(e) as a Python float.
  """
  if isinstance(num_epochs, bool) or int(num_epochs) != num_epochs or num_epochs <= 0:
    raise ValueError(f'num_epochs must be a positive int; got {num_epochs!r}')
  if epoch < 0:
    raise ValueError(f'epoch must be >= 0; got {epoch!r}')
  if not (0 < t_start < t_end):
    raise ValueError(f'need 0 < t_start < t_end; got t_start={t_start!r}, t_end={t_end!r}')
  if not k > 0:
    raise ValueError(f'k must be > 0; got {k!r}')
  big_e = float(num_epochs)
  a = 2 * (t_end - t_start) * (1 + math.exp(-k * big_e)) / (1 - math.exp(-k * big_e))
  return a / (1 + math.exp(-k * epoch)) + t_start - a / 2


def filter_matrix(kernel) -> np.ndarray:
  """Flattened filters ``F [C, d]`` of an HWIO kernel ``[k, k, C_in, C]`` (``d = k*k*C_in``).

  The flattening order differs from PyTorch's ``[C, C_in, k, k]`` reshape, which does not matter:
  only Euclidean distances between rows are used (lmbxmu/DCFF ``main_cifar.py``).
  """
  w = np.asarray(kernel)
  if w.ndim < 2:
    raise ValueError(f'kernel must have ndim >= 2 with filters on the last axis; got {w.shape}')
  return w.reshape(-1, w.shape[-1]).T


# Above this many multiply-adds (C^2 d) the distances use the BLAS Gram form instead of ``cdist``.
CDIST_MAX_WORK = 1 << 27


def distances64(filters) -> np.ndarray:
  """``D [C, C]`` float64 Euclidean distances between the rows of ``filters [C, d]``.

  scipy's ``cdist`` as the code calls it, except for large layers (``C^2 d > 2^27``, e.g. the
  2048-filter ResNet-50 convs where single-threaded ``cdist`` takes ~0.7 s per layer): there a
  float64 BLAS Gram product, clamped at 0 with an exactly-zero diagonal (a float64 Gram product instead of scipy ``cdist``), which equals
  ``cdist`` after the cast to float32 except for near-duplicate filters (``D < ~1e-4 |F|``).
  """
  f = np.asarray(filters, np.float64)
  c, d = f.shape
  if c * c * d <= CDIST_MAX_WORK:
    return sp_distance.cdist(f, f, metric='euclidean')
  sq = np.einsum('ij,ij->i', f, f)
  d2 = sq[:, None] + sq[None, :] - 2.0 * (f @ f.T)
  np.maximum(d2, 0.0, out=d2)
  np.fill_diagonal(d2, 0.0)
  return np.sqrt(d2)


def filter_distances(kernel) -> np.ndarray:
  """``D [C, C]`` float32: pairwise Euclidean filter distances (official ``cdist`` in float64,
  then ``.astype(np.float32)``; the diagonal is exactly 0)."""
  return distances64(filter_matrix(kernel)).astype(np.float32)


def _check_t(t) -> float:
  t = float(t)
  if not (t > 0 and math.isfinite(t)):
    raise ValueError(f'temperature must be a finite positive number; got {t!r}')
  return t


def similarity_distribution(kernel, t: float, *, distances: Optional[np.ndarray] = None
                            ) -> np.ndarray:
  """Inter-similarity distribution ``P [C, C]`` float32 at temperature ``t`` (step 3 of the per-epoch update in lmbxmu/DCFF ``main_cifar.py``).

  ``P[j, :] = softmax_g(-D[j, g] * t)``. The code writes ``softmax(-D / (1/T))`` in float32 with a
  max-subtracted softmax; that arithmetic (and therefore which entries underflow to exactly 0) is
  reproduced here. Rows sum to 1 and ``P[j, j]`` is the row maximum.

  Args:
    kernel: HWIO ``[k, k, C_in, C]`` (or any ``[..., C]``) filters; ignored when ``distances`` given.
    t: the temperature T (e.g. :func:`temperature`), > 0.
    distances: optional precomputed :func:`filter_distances`.
  """
  t = _check_t(t)
  d = filter_distances(kernel) if distances is None else np.asarray(distances, np.float32)
  z = (-d) / np.float32(1.0 / t)
  z = z - z.max(axis=1, keepdims=True)
  with np.errstate(under='ignore'):
    e = np.exp(z)
  return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def log_similarity_distribution(kernel, t: float, *, distances: Optional[np.ndarray] = None
                                ) -> np.ndarray:
  """``log P [C, C]`` in float64 via a log-softmax (the stable scoring of the 'dynamic' ablation).

  Distances are the float64 ``cdist`` values (not cast to float32).
  """
  t = _check_t(t)
  if distances is None:
    d = distances64(filter_matrix(kernel))
  else:
    d = np.asarray(distances, np.float64)
  z = -d * t
  z = z - z.max(axis=1, keepdims=True)
  return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def kl_matrix(p, *, log_p=None) -> np.ndarray:
  """``KL [C, C]`` with the official form ``mean_g P[j,g] log(P[j,g] / (P[k,g] + 1e-7))``.

  Computed in O(C^2) memory as ``(rowsum(P * log P)[:, None] - P @ log(P + 1e-7).T) / C``
  (a float64 Gram product instead of scipy ``cdist``) instead of the code's ``C x C x C`` tensor. ``P * log P`` is a plain product, so a
  row of P holding an exact 0 gives a NaN row exactly where the official code does (``0 * log 0``).

  Args:
    p: ``[C, C]`` rows of distributions (float32 faithful, float64 ablation).
    log_p: optional exact ``log P`` (stable KL: ``P * log P`` is then finite, 0 where P is 0).
  """
  p = np.asarray(p)
  if p.ndim != 2 or p.shape[0] != p.shape[1]:
    raise ValueError(f'P must be square [C, C]; got shape {p.shape}')
  c = p.shape[0]
  with np.errstate(divide='ignore', invalid='ignore', under='ignore'):
    lp = np.log(p) if log_p is None else np.asarray(log_p, p.dtype)
    plogp = (p * lp).sum(axis=1)
    cross = p @ np.log(p + p.dtype.type(KL_EPS)).T
    return ((plogp[:, None] - cross) / p.dtype.type(c)).astype(p.dtype)


def kl_importance(p, *, log_p=None) -> np.ndarray:
  """Importance ``s [C]``, ``s_j = sum_k KL[j, k]`` (step 4 of the per-epoch update in lmbxmu/DCFF ``main_cifar.py``): how far filter j's
  distribution is from everyone else's. NaN in exactly the rows of P that hold an exact zero
  (unless ``log_p`` is given)."""
  with np.errstate(invalid='ignore'):
    return kl_matrix(p, log_p=log_p).sum(axis=1)


def update_scores(previous: Optional[np.ndarray], new: np.ndarray) -> Tuple[np.ndarray, bool]:
  """Score bookkeeping (step 5 of the per-epoch update in lmbxmu/DCFF ``main_cifar.py``): keep ``previous`` unless every entry of ``new`` is finite.

  Args:
    previous: the stored scores ``[C]`` or None (first scoring: epoch 0).
    new: this epoch's scores ``[C]``.
  Returns:
    ``(stored scores, replaced)``.
  Raises:
    FloatingPointError: the first scores are non-finite. The official code would rank NaNs; this
      port refuses rather than let top-k fall back to an arbitrary (index) order.
  """
  new = np.asarray(new)
  finite = bool(np.all(np.isfinite(new)))
  if previous is None:
    if not finite:
      raise FloatingPointError(
          f'{int((~np.isfinite(new)).sum())} of {new.size} first DCFF scores are non-finite '
          '(exp(-D*T) underflowed at the first scoring: the filters are too far apart for T); '
          'refusing to select filters by index order')
    return new, True
  previous = np.asarray(previous)
  if previous.shape != new.shape:
    raise ValueError(f'score shapes differ: stored {previous.shape}, new {new.shape}')
  return (new, True) if finite else (previous, False)


def select_filters(scores, m: int) -> np.ndarray:
  """Indices ``[m]`` (int32) of the ``m`` highest scores, in descending score order.

  Ties are broken by the lower index (``lax.top_k``'s rule); the official ``topk(sorted=False)``
  order is implementation-defined, and only the set matters while it does not change (the official ``topk(sorted=False)`` order is implementation-defined).

  Raises:
    ValueError: ``m`` not in ``[1, C]`` or non-finite scores (never a silent index order).
  """
  s = np.asarray(scores)
  if s.ndim != 1:
    raise ValueError(f'scores must be 1-D [C]; got shape {s.shape}')
  c = s.shape[0]
  if isinstance(m, bool) or int(m) != m or not 1 <= m <= c:
    raise ValueError(f'm must be an int in [1, C={c}]; got {m!r}')
  if not np.all(np.isfinite(s)):
    raise ValueError('cannot select filters from non-finite scores '
                     f'({int((~np.isfinite(s)).sum())} of {c}); see dcff.fusion.update_scores')
  return np.argsort(-s, kind='stable')[:int(m)].astype(np.int32)


def boundary_ties(scores, m: int) -> int:
  """How many filters tie with the m-th best score on the *unselected* side (0 = unambiguous)."""
  s = np.asarray(scores)
  if m >= s.shape[0]:
    return 0
  order = np.argsort(-s, kind='stable')
  return int(np.sum(s[order[m:]] == s[order[m - 1]]))


def stable_slots(previous: np.ndarray, new: np.ndarray) -> np.ndarray:
  """Orders a new selection so that filters kept from ``previous`` stay in their output slot.

  Slot i of a fused layer feeds channel i of its BN and of the next layer; re-ranking the same
  set (or swapping one filter) must not permute the channels they see (in float32 ``exp(-D T)`` underflows from epoch 1, every later score vector is NaN and the epoch-0 scores are kept). Filters
  entering the set fill the vacated slots in ``new``'s order.

  Args:
    previous: ``[m]`` selected indices of the last epoch (slot order).
    new: ``[m]`` this epoch's selection (any order).
  Returns:
    ``[m]`` int32, a permutation of ``new``.
  """
  previous = np.asarray(previous)
  new = np.asarray(new)
  if previous.shape != new.shape:
    raise ValueError(f'selection sizes differ: {previous.shape} vs {new.shape}')
  keep = set(new.tolist())
  before = set(previous.tolist())
  incoming = [int(j) for j in new.tolist() if j not in before]
  out = []
  for j in previous.tolist():
    out.append(int(j) if j in keep else incoming.pop(0))
  return np.asarray(out, np.int32)


def fuse(x, p_selected):
  """Fused filters ``x . P_sel^T`` over the original-filter axis (``FuseConv2d.forward`` in ``models/cifar/fuse_modules.py``).

  ``fused[..., i] = sum_g P_sel[i, g] x[..., g]``: a kernel ``[k, k, C_in, C] -> [k, k, C_in, m]``
  or a bias ``[C] -> [m]``. ``P_sel`` is a constant of the epoch (the code computes it from
  detached weights), so it is wrapped in ``stop_gradient``; the gradient w.r.t. the original
  filters is ``dL/dW = P_sel^T dL/dW_fused``.

  Args:
    x: jnp array ``[..., C]``.
    p_selected: ``[m, C]``.
  """
  p = jax.lax.stop_gradient(jnp.asarray(p_selected, x.dtype))
  if p.ndim != 2 or p.shape[1] != x.shape[-1]:
    raise ValueError(f'P_sel must be [m, C={x.shape[-1]}]; got {p.shape}')
  return jnp.einsum('...o,mo->...m', x, p)


def layer_update(kernel, epoch: int, num_epochs: int, m: int, *, prev_scores=None,
                 prev_selected=None, mode: str = 'faithful', score_temperature_cap: float = 1.0,
                 t_start: float = T_START, t_end: float = T_END, k: float = T_K):
  """One layer's per-epoch update, the per-epoch update of ``main_cifar.py``, steps 1-7: distances, T(e), P, KL scores, finite-check, top-k, P_sel.

  Args:
    kernel: the layer's original filters ``[k, k, C_in, C]``.
    epoch, num_epochs: e and E of the temperature schedule.
    m: kept channels.
    prev_scores: stored scores ``[C]`` or None at the first scoring.
    prev_selected: last epoch's ``[m]`` selection (slot order) or None.
    mode: 'faithful' (float32 official numerics) or 'dynamic' (float64 log-space KL scored at
      ``min(T, score_temperature_cap)``; the fusion P still uses T).
  Returns:
    dict with ``p_sel [m, C]`` float32, ``scores [C]`` (stored), ``selected [m]`` int32 (slot
    order), ``replaced`` (bool: new scores accepted), ``changed`` (number of filters that entered
    the set), ``ties`` (:func:`boundary_ties`), ``temperature`` (T).
  """
  if mode not in SCORE_MODES:
    raise ValueError(f'unknown score mode {mode!r}; allowed: {list(SCORE_MODES)}')
  t = temperature(epoch, num_epochs, t_start, t_end, k)
  d64 = distances64(filter_matrix(kernel))
  d32 = d64.astype(np.float32)
  p = similarity_distribution(None, t, distances=d32)
  if mode == 'faithful':
    if prev_scores is not None and not np.all(p > 0):
      # A row of P with an exact 0 makes that row's score NaN (0 * log 0), and a non-finite
      # vector is discarded by the bookkeeping: skip the O(C^3) KL, the outcome is identical.
      new_scores = np.full(p.shape[0], np.nan, np.float32)
    else:
      new_scores = kl_importance(p)
  else:
    if not score_temperature_cap > 0:
      raise ValueError(f'score_temperature_cap must be > 0; got {score_temperature_cap!r}')
    ts = min(t, float(score_temperature_cap))
    lp = log_similarity_distribution(None, ts, distances=d64)
    new_scores = kl_importance(np.exp(lp), log_p=lp)
  scores, replaced = update_scores(prev_scores, new_scores)
  sel = select_filters(scores, m)
  changed = 0
  if prev_selected is not None:
    changed = len(set(sel.tolist()) - set(np.asarray(prev_selected).tolist()))
    sel = stable_slots(prev_selected, sel)
  return {'p_sel': p[sel], 'scores': scores, 'selected': sel, 'replaced': replaced,
          'changed': changed, 'ties': boundary_ties(scores, m), 'temperature': t}
