"""SiMaN's weight binarization as pure functions (lmbxmu/SiMaN ``modules/binarized_modules.py:
BinarizeConv2d``, ``main.py``; Lin et al., "SiMaN: Sign-to-Magnitude Network Binarization",
TPAMI 2022).

Per binary conv kernel ``w`` (Flax HWIO ``[kh, kw, C_in, C_out]``; "per output channel" reduces
over the first three axes, N = kh * kw * C_in):

* :func:`project` — the parameter overwrite the official ``BinarizeConv2d.forward`` performs before
  every forward, in train *and* eval: centre each channel, then clip the magnitudes to the
  layer's [p, 100 - p] percentiles (``np.percentile``, linear interpolation), keeping signs.
* :func:`percent_schedule` — ``p(e) = 15 (1 - e / E)`` set at the start of epoch e (``main.py``).
* :func:`binary_code` — ``B = 1[|w2| > median]`` per output channel with ``w2`` the standardised
  kernel (the default median branch; 'sort' is the ``--sort quick`` branch).
* :func:`siman_binarize` — forward ``2B - 1``, backward identity onto ``X = |w2|``
  (``X - X.detach() + (2B - 1)``): ``dL/dw = J_std(w)^T (g * sign(w2))``; the straight-through
  node is a ``jax.custom_vjp``.
* :func:`centred_sign_binarize` — the control that keeps everything but the code:
  ``sign(w2)`` with identity STE onto ``w2``.
* :func:`angle_alignment_k` — the k that maximises the paper's {0, +1} angle-alignment objective
  ``cos(X, b) = X.b / (|X| |b|)`` over codes b with k ones (the top-k of X); the code fixes k = N/2.
* Tree-level helpers: :func:`binary_kernel_paths` (a kernel is binary iff its module has an
  ``alpha`` leaf, ``siman.models``), :func:`project_params`, :func:`binary_codes`,
  :func:`binarize_params`, :func:`decay_mask` (the official name-based weight-decay groups of
  ``main.py``).
"""
from __future__ import annotations

import math
from typing import Any, Dict, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from common import binarize
from common import transforms

Path = Tuple[str, ...]

PERCENT_MAX = 15.0           # main.py: percent = 15 (1 - e / E)
CODE_METHODS = ('median', 'sort')
# The weight binarizers trained the SiMaN way (projection before every forward, percent schedule,
# official decay rule): the magnitude code, and the centred-sign arm that isolates it.
SIMAN_TRAINING = ('siman', 'centred_sign')
DECAY_RULES = ('resnet', 'vgg')


# --- per-epoch schedule ---------------------------------------------------------------------------


def percent_schedule(epoch: int, num_epochs: int, percent_max: float = PERCENT_MAX) -> float:
  """``p(e) = percent_max * (1 - e / E)`` (official ``main.py``:
  ``15.0 * (1 - epoch / args.epochs)``).

  Args:
    epoch: 0-based epoch e, ``0 <= e < E``.
    num_epochs: E > 0.
    percent_max: the value at e = 0 (15 in the code; 0 disables the clipping, keeping only the
      per-channel centring).
  Returns:
    the percentile p in [0, percent_max] (15 at e = 0, 15 / E at e = E - 1).
  """
  if isinstance(num_epochs, bool) or int(num_epochs) != num_epochs or num_epochs <= 0:
    raise ValueError(f'num_epochs must be a positive int; got {num_epochs!r}')
  if isinstance(epoch, bool) or int(epoch) != epoch or not 0 <= epoch < num_epochs:
    raise ValueError(f'epoch must be an int in [0, {num_epochs - 1}]; got {epoch!r}')
  if not 0.0 <= percent_max <= 50.0:
    raise ValueError(f'percent_max must lie in [0, 50] (p and 100 - p are the clip '
                     f'percentiles); got {percent_max!r}')
  return float(percent_max) * (1.0 - epoch / num_epochs)


# --- projection (the overwrite at the top of BinarizeConv2d.forward) -----------------------------


def _out_axes(w: jax.Array) -> Tuple[int, ...]:
  return tuple(range(w.ndim - 1))


def percentile_of_sorted(sorted_x: jax.Array, q) -> jax.Array:
  """``np.percentile(x, q)`` (default 'linear' method) from the ascending ``sorted_x [n]``.

  ``q`` in [0, 100] may be a traced scalar. Position ``q/100 (n - 1)``, linear interpolation
  between its two neighbours.
  """
  n = sorted_x.shape[0]
  pos = jnp.clip(jnp.asarray(q, jnp.float32) / 100.0 * (n - 1), 0.0, n - 1)
  lo = jnp.floor(pos).astype(jnp.int32)
  hi = jnp.minimum(lo + 1, n - 1)
  frac = (pos - lo.astype(jnp.float32)).astype(sorted_x.dtype)
  a, b = sorted_x[lo], sorted_x[hi]
  return a + (b - a) * frac


def project(w: jax.Array, percent) -> jax.Array:
  """The per-forward weight overwrite of SiMaN (the top of ``BinarizeConv2d.forward``).

  ``wc = w - mean_c(w)``; L, H = the ``percent``-th and ``(100 - percent)``-th percentiles of
  ``|wc|`` over the *whole* tensor; returns ``sign(wc) * clip(|wc|, L, H)``. Small magnitudes are
  raised to L and large ones capped at H. The official code runs it outside autograd (on
  ``.data``), so the result carries no gradient here either.

  Args:
    w: kernel ``[..., C_out]``.
    percent: scalar p in [0, 50] (may be traced; ``TrainState.extra['percent']``).
  Returns:
    the projected kernel, same shape and dtype.
  """
  w = jax.lax.stop_gradient(w)
  wc = w - jnp.mean(w, axis=_out_axes(w), keepdims=True)
  mag = jnp.abs(wc)
  s = jnp.sort(mag.reshape(-1))
  lo = percentile_of_sorted(s, percent)
  hi = percentile_of_sorted(s, 100.0 - jnp.asarray(percent, jnp.float32))
  return jnp.sign(wc) * jnp.clip(mag, lo, hi)


# --- binary code and binarizer (the rest of BinarizeConv2d.forward) -----------------------------


def standardized_magnitude(w: jax.Array) -> jax.Array:
  """``X = |w2|``, ``w2 = (w - mean_c) / sqrt(var_c + 1e-5)`` (unbiased, not detached)."""
  return jnp.abs(binarize.standardize_per_channel(w, scale=1.0, eps=1e-5))


def binary_code(w: jax.Array, method: str = 'median') -> jax.Array:
  """SiMaN's code ``B in {0, 1}`` of a kernel ``[..., C_out]`` (the median branch of
  ``BinarizeConv2d.forward``), float32.

  'median' (the default branch of the code): ``B = 1[X > median_c(X)]`` with the *lower* median
  (``torch.median``: sorted index ``(N - 1) // 2``), i.e. N/2 ones per channel for even N and
  (N - 1)/2 for odd N when there are no ties. 'sort' (``--sort quick``): ones at the ``N // 2``
  largest X of each channel (the same set without ties). No gradient flows through B.
  """
  x = jax.lax.stop_gradient(standardized_magnitude(w))
  c = x.shape[-1]
  flat = x.reshape(-1, c)                     # [N, C_out]
  n = flat.shape[0]
  if method == 'median':
    med = jnp.sort(flat, axis=0)[(n - 1) // 2]
    code = (flat > med[None, :])
  elif method == 'sort':
    order = jnp.argsort(-flat, axis=0, stable=True)
    rank = jnp.argsort(order, axis=0, stable=True)
    code = rank < n // 2
  else:
    raise ValueError(f'unknown code method {method!r}; allowed: {list(CODE_METHODS)}')
  return code.astype(jnp.float32).reshape(x.shape)


@jax.custom_vjp
def straight_through_code(x: jax.Array, code: jax.Array) -> jax.Array:
  """``2 code - 1`` forward, identity backward onto ``x`` (``X - X.detach() + (2B - 1)``).

  ``x`` and ``code`` have the same shape; the code gets a zero cotangent.
  """
  return 2.0 * code - 1.0


def _stc_fwd(x, code):
  return 2.0 * code - 1.0, code


def _stc_bwd(code, g):
  return g, jnp.zeros_like(code)


straight_through_code.defvjp(_stc_fwd, _stc_bwd)


def siman_binarize(w: jax.Array, code: jax.Array | None = None, method: str = 'median'):
  """SiMaN's binary kernel (``BinarizeConv2d.forward``): ``[..., C_out] -> {-1, +1}``, same shape.

  Forward: ``2B - 1`` where ``B`` is ``code`` (the stored code: eval uses the code of the last
  training forward: the official ``B`` is a Parameter updated only when ``self.training``) or,
  when None, :func:`binary_code` of ``w``. The sign of ``w`` is
  discarded: the larger-magnitude half of each output channel is +1, the rest -1.
  Backward: ``dL/dw = J_std(w)^T (g * sign(w2))`` — identity onto ``X = |w2|`` through the
  custom_vjp node, then ``|.|`` and the (non-detached) standardisation by autodiff; no window.
  """
  if code is None:
    code = binary_code(w, method)
  return straight_through_code(standardized_magnitude(w), jax.lax.stop_gradient(code))


def siman_activation(a: jax.Array, train: bool) -> jax.Array:
  """SiMaN's activation binarizer: ``approx_sign((a - mean) / std)`` per sample, train *and* eval.

  ``a [B, ...]``; mean and unbiased std over every axis but the batch, not detached
  (``BinarizeConv2d.forward`` of lmbxmu/SiMaN). The mean subtraction changes the forward: the
  sign threshold is each sample's own mean.
  """
  del train
  return binarize.approx_sign(binarize.standardize_per_sample(a, subtract_mean=True))


def centred_sign_binarize(w: jax.Array) -> jax.Array:
  """The control that isolates SiMaN's code: ``sign(w2)``, ``w2`` the per-channel standardised
  kernel (same sign as ``w - mean_c w``), identity STE onto ``w2``.

  ``[..., C_out] -> {-1, +1}``, same shape. Backward ``dL/dw = J_std(w)^T g`` through the same
  (not detached, unbiased, eps 1e-5) standardisation :func:`siman_binarize` uses; the only change
  from SiMaN is the forward value: the sign of the centred weight instead of ``2B - 1`` (larger
  half of the magnitudes -> +1), and correspondingly no ``|.|`` in the backward.
  """
  return binarize.sign_ste(binarize.standardize_per_channel(w, scale=1.0, eps=1e-5))


# --- the paper's angle-alignment objective -------------------------------------------------------


def angle_alignment_k(w: jax.Array) -> jax.Array:
  """Per output channel, the number of ones k* that maximises the {0, +1} angle objective.

  The paper binarizes to ``b in {0, 1}^N`` by maximising ``cos(X, b) = X.b / (|X| |b|)`` with
  ``X = |w2|`` (the magnitudes the code ranks). For a fixed k the best b holds the k largest X, so
  ``k* = argmax_k (sum of the k largest X) / sqrt(k)`` (ties: smallest k). The official code fixes
  k = N/2 (the median); for Laplacian weights the continuous optimum is ``k*/N = 1/e ~ 0.37``,
  for Gaussian ~0.54 — the quick experiment logs ``k*/N`` beside the code's 0.5.

  Args:
    w: kernel ``[..., C_out]``.
  Returns:
    int32 ``[C_out]``, values in [1, N].
  """
  x = standardized_magnitude(jax.lax.stop_gradient(w))
  flat = x.reshape(-1, x.shape[-1])
  desc = -jnp.sort(-flat, axis=0)
  ks = jnp.arange(1, flat.shape[0] + 1, dtype=flat.dtype)[:, None]
  obj = jnp.cumsum(desc, axis=0) / jnp.sqrt(ks)
  return (jnp.argmax(obj, axis=0) + 1).astype(jnp.int32)


def laplace_fit(x) -> Tuple[float, float]:
  """Maximum-likelihood Laplace ``(mu, b)`` of a sample: the median and mean |x - median|."""
  x = np.asarray(x, np.float64).reshape(-1)
  if x.size == 0:
    raise ValueError('laplace_fit needs a non-empty sample')
  mu = float(np.median(x))
  return mu, float(np.mean(np.abs(x - mu)))


# --- parameter-tree level --------------------------------------------------------------------------


def is_binary_kernel(params) -> transforms.Where:
  """Selector (for ``common.transforms``) of the binary conv kernels of ``params``.

  A kernel is binary iff its module also holds an ``alpha`` leaf
  (``common.models.bnn_layers.BinaryConv``);
  the full-precision stem, downsample convs and classifier have none.
  """
  binary_modules = {p[:-1] for p in transforms.select(params, lambda p, _: p[-1] == 'alpha')}

  def where(path: Path, leaf) -> bool:
    return path[-1] == 'kernel' and path[:-1] in binary_modules
  return where


def binary_kernel_paths(params):
  """Paths of the binary conv kernels, in tree order."""
  return list(transforms.select(params, is_binary_kernel(params)))


def project_params(params, percent):
  """:func:`project` on every binary kernel; other leaves unchanged (pure, jit-able)."""
  return transforms.map_kernels(lambda w: project(w, percent), params, is_binary_kernel(params))


def reproject_params(params, percent, times):
  """``project_params`` applied ``times`` (traced int >= 0) times in a row (a ``fori_loop``)."""
  return jax.lax.fori_loop(0, times, lambda _, p: project_params(p, percent), params)


def binary_codes(params, method: str = 'median') -> Dict[str, Any]:
  """``{module path joined by '/': B}`` for every binary kernel (B float32, kernel-shaped)."""
  return {transforms.path_str(p[:-1]): binary_code(w, method)
          for p, w in transforms.select(params, is_binary_kernel(params)).items()}


def binarize_params(params, codes: Dict[str, Any]):
  """Replaces every binary kernel by :func:`siman_binarize` with its stored code.

  Args:
    params: the parameter tree (binary kernels are SiMaN's latent real weights).
    codes: ``binary_codes``-shaped dict; must hold every binary module.
  Returns:
    the tree the network computes with (binary kernels in {-1, +1}).
  """
  def fn(path, w):
    key = transforms.path_str(path[:-1])
    if key not in codes:
      raise KeyError(f'no binary code stored for {key!r}; have {sorted(codes)}')
    return siman_binarize(w, codes[key])
  return transforms.map_kernels(fn, params, is_binary_kernel(params), with_path=True)


def decay_rule_for(model_name: str) -> str:
  """The official grouping rule that applies to a model: 'vgg' for VGG names, else 'resnet'."""
  return 'vgg' if 'vgg' in model_name else 'resnet'


def decay_mask(params, rule: str):
  """SiMaN's weight-decay groups, as the official ``main.py`` name tests on the module path.

  The official ``main.py`` puts a parameter in the wd = 0 group iff its name contains both
  ``layer`` and ``conv`` (ResNets) or contains ``conv`` and no ``0`` (VGG). The parameter paths of
  ``siman.models`` mirror the official names, so the same tests select exactly the
  block ``conv1`` / ``conv2`` kernels and alphas (ResNets; not the CIFAR ResNet-18 binarized
  ``shortcut_0``, nor the FP ``downsample_0``) and VGG ``conv1..5`` kernels and alphas; the stem,
  every BN, PReLU slopes, BN1d and the classifier are decayed.

  Returns:
    a bool tree like ``params``: True = decayed.
  """
  if rule not in DECAY_RULES:
    raise ValueError(f'unknown decay rule {rule!r}; allowed: {list(DECAY_RULES)}')

  def decayed(path: Path, leaf) -> bool:
    name = '.'.join(path)
    if rule == 'resnet':
      return not ('layer' in name and 'conv' in name)
    return not ('conv' in name and '0' not in name)
  return jax.tree_util.tree_map_with_path(
      lambda kp, leaf: decayed(transforms.path_tuple(kp), leaf), params)


def code_stats(codes_new: Dict[str, Any], codes_old: Dict[str, Any]) -> Dict[str, float]:
  """Host-side summary: fraction of code entries that flipped, and the mean fraction of ones."""
  flips, ones, total = 0.0, 0.0, 0
  for k, b in codes_new.items():
    b = np.asarray(b)
    flips += float(np.sum(b != np.asarray(codes_old[k])))
    ones += float(np.sum(b))
    total += b.size
  if total == 0:
    return {'code_flip_rate': 0.0, 'code_ones_fraction': 0.0}
  return {'code_flip_rate': flips / total, 'code_ones_fraction': ones / total}


def weight_stats(params) -> Dict[str, float]:
  """Host-side summary of the binary kernels: the mean ``k*/N`` of :func:`angle_alignment_k` (the
  code's own fraction of ones, ~0.5, is ``code_stats``' ``code_ones_fraction``) and the mean |w2|
  of the standardised weights (0.798 for Gaussian, 0.707 for Laplacian weights)."""
  kfrac, mabs, n_layers = [], [], 0
  for _, w in transforms.select(params, is_binary_kernel(params)).items():
    n = math.prod(w.shape[:-1])
    kfrac.append(float(jnp.mean(angle_alignment_k(w))) / n)
    mabs.append(float(jnp.mean(standardized_magnitude(w))))
    n_layers += 1
  if not n_layers:
    return {}
  return {'angle_k_fraction': float(np.mean(kfrac)), 'std_weight_mean_abs': float(np.mean(mabs))}
