"""Capturing what flows into layers, without changing the models.

FDDA aligns synthetic data to per-class BatchNorm statistics, ZeroQ-style calibration needs BN input
moments, FFSD and LEC-Net read intermediate features. Models stay plain linen modules: these
helpers intercept module calls with ``flax.linen.intercept_methods`` (pure, jit-able).
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp


def bn_input_moments(model: nn.Module, variables, x, *, train: bool = False,
                     **apply_kwargs) -> Tuple[Any, Dict[str, Tuple[jax.Array, jax.Array]]]:
  """Runs ``model`` and returns the per-channel mean and (biased) variance entering every BatchNorm.

  Args:
    model: a linen module; ``variables`` its variables.
    x: the input batch ``[B, H, W, C]`` (or ``[B, D]``).
    train: passed to the model; with ``train=False`` running statistics are not updated.
  Returns:
    ``(output, {bn_path: (mean [C], var [C])})`` where ``bn_path`` is the '/'-joined module path
    and the moments reduce over every axis but the last (what BN normalises over, in
    training mode: FDDA eq. for the BNS loss compares these with the stored running statistics).
  """
  stats: Dict[str, Tuple[jax.Array, jax.Array]] = {}

  def interceptor(next_fun: Callable, args, kwargs, context):
    if isinstance(context.module, nn.BatchNorm) and context.method_name == '__call__':
      h = args[0]
      axes = tuple(range(h.ndim - 1))
      mean = jnp.mean(h, axes)
      var = jnp.mean(jnp.square(h - mean), axes)
      stats['/'.join(context.module.path)] = (mean, var)
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(interceptor):
    if train:
      out, _ = model.apply(variables, x, train=True, mutable=['batch_stats'], **apply_kwargs)
    else:
      out = model.apply(variables, x, train=False, **apply_kwargs)
  return out, stats


def features(model: nn.Module, variables, x, *, train: bool = False, **apply_kwargs):
  """``(logits, penultimate features)``: the features the models sow as ``intermediates/features``."""
  if train:
    out, state = model.apply(variables, x, train=True, mutable=['batch_stats', 'intermediates'],
                             **apply_kwargs)
  else:
    out, state = model.apply(variables, x, train=False, mutable=['intermediates'], **apply_kwargs)
  inter = state['intermediates']
  found = [v for k, v in jax.tree_util.tree_flatten_with_path(inter)[0]
           if any(getattr(p, 'key', None) == 'features' for p in k)]
  if not found:
    raise ValueError(f'{type(model).__name__} sows no "features" intermediate')
  return out, found[0]
