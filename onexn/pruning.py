"""1xN block pruning masks, filter rearrangement, and the baselines of the official code
(lmbxmu/1xN ``utils/conv_type.py``).

Conventions. Kernels are Flax HWIO ``[kh, kw, C_in, C_out]`` (a dense kernel ``[C_in, C_out]`` is
treated as a 1x1 conv, the official code's classifier is a 1x1 conv). A *1xN block* is
``kernel[:, :, i, b*N:(b+1)*N]``: N consecutive output kernels (each a full ``kh x kw`` kernel) that
read the same input channel i (the paper's Fig. 1). Masks are bool arrays of the kernel's shape, True = kept.

Counting and tie rule (shared by every repo, ``common.masks``): a layer at rate p with G scored
units prunes exactly ``int(G * p)`` of the lowest-scored units; ties are broken by a stable
ascending sort (the earlier position is pruned first), where the official code uses ``torch.topk``
whose tie order is unspecified.

Official grouping (``utils/conv_type.py: BlockL1Conv.get_mask``): the PyTorch weight
``[C_out, C_in, k, k]`` is permuted to ``[C_in, C_out, k, k]``, flattened row-major and cut into
consecutive groups of ``N*k*k`` elements; group g therefore holds the (input i, output o) pairs with
``(i * C_out + o) // N == g``. When ``C_out % N == 0`` that is exactly the 1xN block (i, o // N).
When it is not (MobileNet-V2 at N = 16/32), groups *straddle* two input channels; this module then
raises a ValueError naming the layer unless ``straddle_blocks=True`` asks for the official grouping
(which the published MobileNet-V2 1x16 / 1x32 numbers used).
"""
from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from common import masks as common_masks


def _layer_str(layer) -> str:
  if not layer:
    return 'kernel'
  if isinstance(layer, (tuple, list)):
    layer = '/'.join(str(x) for x in layer)
  return f'layer {layer!r}'


def as_hwio(kernel, layer=None) -> jax.Array:
  """``[C_in, C_out]`` -> ``[1, 1, C_in, C_out]``; HWIO kernels unchanged; else ValueError."""
  kernel = jnp.asarray(kernel)
  if kernel.ndim == 2:
    return kernel[None, None]
  if kernel.ndim == 4:
    return kernel
  raise ValueError(f'{_layer_str(layer)}: expected an HWIO conv kernel [kh, kw, C_in, C_out] or a '
                   f'dense kernel [C_in, C_out]; got shape {tuple(kernel.shape)}')


def check_rate(p, what: str = 'pruning rate p') -> float:
  """Validates a per-layer pruning rate: a number in [0, 1)."""
  if isinstance(p, bool) or not isinstance(p, (int, float, np.integer, np.floating)):
    raise ValueError(f'{what} must be a number in [0, 1); got {p!r}')
  p = float(p)
  if not 0.0 <= p < 1.0:
    raise ValueError(f'{what} must lie in [0, 1); got {p}')
  return p


def check_block_size(n, c_out: int, c_in: int = 1, straddle_blocks: bool = False,
                     layer=None) -> int:
  """Validates the block size N against a layer's output width.

  Raises:
    ValueError: N not a positive int; ``C_out % N != 0`` without ``straddle_blocks`` (naming the
      layer); ``C_in * C_out % N != 0`` even with it (the official ``view`` would fail too).
  """
  if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n <= 0:
    raise ValueError(f'block size N must be a positive integer; got {n!r}')
  n = int(n)
  if c_out % n:
    if not straddle_blocks:
      raise ValueError(
          f'{_layer_str(layer)}: C_out={c_out} is not divisible by the block size N={n}; 1xN '
          f'blocks would straddle two input channels. Use a block size dividing {c_out}, or '
          f'straddle_blocks=True to reproduce the official flattened grouping.')
    if (c_in * c_out) % n:
      raise ValueError(
          f'{_layer_str(layer)}: C_in*C_out={c_in}*{c_out} is not divisible by N={n}; even the '
          f'official flattened grouping is undefined for this layer')
  return n


def kernel_l1(kernel) -> jax.Array:
  """Per-(input, output) kernel L1 norm ``sum_{h,w} |W[h, w, i, o]|``: ``[C_in, C_out]``."""
  return jnp.sum(jnp.abs(as_hwio(kernel)), axis=(0, 1))


def block_scores(kernel, n: int, *, straddle_blocks: bool = False, layer=None) -> jax.Array:
  """L1 norm of every 1xN block (``BlockL1Conv.get_mask``'s score).

  Args:
    kernel: ``[kh, kw, C_in, C_out]`` or ``[C_in, C_out]``.
    n: block size N.
    straddle_blocks: allow ``C_out % N != 0`` with the official flattened grouping.
    layer: name used in error messages.
  Returns:
    ``[C_in, C_out // N]`` with entry (i, b) = ``sum |kernel[:, :, i, b*N:(b+1)*N]|``; with
    ``straddle_blocks`` and ``C_out % N != 0`` the flat ``[C_in * C_out // N]`` group scores in the
    official order (group g = pairs with ``(i*C_out + o) // N == g``).
  """
  w = as_hwio(kernel, layer)
  c_in, c_out = w.shape[2], w.shape[3]
  n = check_block_size(n, c_out, c_in, straddle_blocks, layer)
  l1 = kernel_l1(w)
  if c_out % n == 0:
    return l1.reshape(c_in, c_out // n, n).sum(-1)
  return l1.reshape(-1, n).sum(-1)


def _expand_group_mask(keep_groups, shape, n: int) -> jax.Array:
  """Group keep flags (any shape, official group order) -> bool mask of the HWIO ``shape``."""
  kh, kw, c_in, c_out = shape
  keep = jnp.repeat(keep_groups.reshape(-1), n).reshape(c_in, c_out)
  return jnp.broadcast_to(keep[None, None], shape)


def block_mask(kernel, n: int, p: float, *, straddle_blocks: bool = False, layer=None) -> jax.Array:
  """1xN block mask: prune the ``int(G * p)`` lowest-L1 blocks of the layer
  (``BlockL1Conv.get_mask``).

  Args:
    kernel: ``[kh, kw, C_in, C_out]`` or ``[C_in, C_out]``.
    n: block size N (N = 1 is kernel-wise L1 pruning; N = C_out on a 1x1 conv is input-channel
      pruning).
    p: per-layer pruning rate in [0, 1).
    straddle_blocks, layer: see :func:`block_scores`.
  Returns:
    bool mask of ``kernel.shape``; True = kept. Exactly ``int(G * p)`` whole blocks are False,
    ``G = C_in * C_out / N``.
  """
  p = check_rate(p)
  shape = jnp.shape(kernel)
  w = as_hwio(kernel, layer)
  scores = block_scores(w, n, straddle_blocks=straddle_blocks, layer=layer)
  keep = common_masks.lowest_k_mask(scores, int(scores.size * p))
  return _expand_group_mask(keep, w.shape, n).reshape(shape)


def rearrange_permutation(kernel) -> jax.Array:
  """Filter rearrangement order π: output channels sorted by filter L1 norm, **ascending**.

  The official ``rearrange_w`` calls ``torch.sort`` (ascending) on ``||W[j]||_1``; the paper's
  Fig. 2 sorts descending, which gives the same block partition when ``C_out % N == 0``.
  Ties: stable (lower channel first).

  Args:
    kernel: ``[kh, kw, C_in, C_out]`` or ``[C_in, C_out]``.
  Returns:
    int32 ``[C_out]``: ``π[i]`` is the original channel placed at sorted position i, so
    ``kernel[..., π]`` is the rearranged layer.
  """
  l1 = jnp.sum(jnp.abs(as_hwio(kernel)), axis=(0, 1, 2))
  return jnp.argsort(l1, stable=True).astype(jnp.int32)


def inverse_permutation(perm) -> jax.Array:
  """``inv`` with ``inv[perm[i]] = i`` (so ``x[..., perm][..., inv] == x``)."""
  perm = jnp.asarray(perm)
  return jnp.zeros_like(perm).at[perm].set(jnp.arange(perm.shape[0], dtype=perm.dtype))


def rearranged_block_mask(kernel, n: int, p: float, *, straddle_blocks: bool = False,
                          layer=None) -> jax.Array:
  """1xN block mask computed on the L1-rearranged filters and scattered back
  (``BlockL1Conv.get_rearr_mask``).

  Exactly what ``BlockL1Conv.get_rearr_mask`` does: the weights are *not* moved; the returned mask
  is in the original channel order and ``mask[..., π]`` is a valid 1xN block mask
  (:func:`rearrange_permutation`). Deploying it as N-consecutive blocks needs the physical
  permutation of ``onexn.export``.

  Returns:
    bool mask of ``kernel.shape`` with ``mask[..., π[i]] = block_mask(kernel[..., π])[..., i]``.
  """
  perm = rearrange_permutation(kernel)
  m_perm = block_mask(jnp.asarray(kernel)[..., perm], n, p, straddle_blocks=straddle_blocks,
                      layer=layer)
  return m_perm[..., inverse_permutation(perm)]


# ---------------------------------------------------------------------------------------------
# Baselines of the same code (``utils/conv_type.py``)


def weight_mask(kernel, p: float) -> jax.Array:
  """Unstructured weight pruning (``UnstructureConv``): prune ``int(n * p)`` smallest ``|w|``.

  Returns:
    bool mask of ``kernel.shape`` (the layer's own rate, not a global threshold).
  """
  return common_masks.magnitude_mask(jnp.asarray(kernel), check_rate(p))


def filter_mask(kernel, p: float) -> jax.Array:
  """Filter (L1) pruning (``StructureConv``): zero the ``int(C_out * p)`` smallest-L1 filters.

  Masked, not removed, as in the official baseline.

  Returns:
    bool mask of ``kernel.shape``, constant over all axes but the last.
  """
  return common_masks.filter_l1_mask(jnp.asarray(kernel), check_rate(p))


def random_block_mask(kernel, n: int, p: float, rng: jax.Array, *, with_replacement: bool = True,
                      straddle_blocks: bool = False, layer=None) -> jax.Array:
  """Random 1xN blocks (``BlockRandomConv``).

  The official code draws ``int(G * p)`` block indices **with replacement**
  (``torch.randint``), so duplicates make it prune fewer than ``int(G * p)`` blocks (about
  ``G * (1 - exp(-p))``); ``with_replacement=False`` prunes exactly ``int(G * p)``.

  Args:
    kernel: ``[kh, kw, C_in, C_out]`` or ``[C_in, C_out]``.
    n, p, straddle_blocks, layer: as :func:`block_mask`.
    rng: a JAX PRNG key.
  Returns:
    bool mask of ``kernel.shape``.
  """
  p = check_rate(p)
  shape = jnp.shape(kernel)
  w = as_hwio(kernel, layer)
  c_in, c_out = w.shape[2], w.shape[3]
  n = check_block_size(n, c_out, c_in, straddle_blocks, layer)
  g = c_in * c_out // n
  k = int(g * p)
  if with_replacement:
    idx = jax.random.randint(rng, (k,), 0, g)
  else:
    idx = jax.random.permutation(rng, g)[:k]
  keep = jnp.ones((g,), bool).at[idx].set(False)
  return _expand_group_mask(keep, w.shape, n).reshape(shape)


def nnz_blocks(mask, n: int) -> int:
  """Number of kept groups of a block mask (host side; for reports and tests)."""
  m = np.asarray(as_hwio(mask))
  per_pair = m.any(axis=(0, 1)).reshape(-1)
  return int(per_pair.reshape(-1, n).any(-1).sum())


def is_block_mask(mask, n: int, perm: Optional[np.ndarray] = None) -> bool:
  """True when ``mask`` (optionally in channel order ``perm``) is constant on every 1xN block."""
  m = np.asarray(as_hwio(mask))
  if perm is not None:
    m = m[..., np.asarray(perm)]
  kh, kw, c_in, c_out = m.shape
  if c_out % n:
    return False
  g = m.reshape(kh, kw, c_in, c_out // n, n)
  return bool(np.all(g == g[:, :, :, :, :1]) and np.all(m == m[:1, :1]))
