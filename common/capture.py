"""Reading what flows through a model: tapped activations, BN-input moments, pooled features.

FDDA aligns synthetic data to per-class BatchNorm-input statistics (zysxmu/FDDA ``BNScenters.py``),
ZeroQ-style calibration needs BN input moments, FFSD and LEC-Net read intermediate features. The
zoo models expose named tap sites (``common.models.taps``): :func:`taps` records them with a
recording tap, and :func:`bn_input_moments` reduces the ``<bn>_in`` sites. Models without taps
(any other linen module) get their BN inputs by intercepting the ``nn.BatchNorm`` calls
(``flax.linen.intercept_methods``). Everything here is pure and runs under ``jit``.
"""
from __future__ import annotations

import fnmatch
from typing import Any, Callable, Dict, Optional, Sequence, Tuple, Union

import flax.linen as nn
import jax
import jax.numpy as jnp

from common.models.taps import Tap, has_taps

Sites = Union[None, str, Sequence[str], Callable[[str], bool]]

BN_IN = '_in'


def _selector(sites: Sites) -> Callable[[str], bool]:
  if sites is None:
    return lambda name: True
  if callable(sites):
    return sites
  patterns = [sites] if isinstance(sites, str) else list(sites)
  if not patterns or not all(isinstance(p, str) for p in patterns):
    raise ValueError(f'sites must be None, a name / glob pattern, a list of them or a predicate; '
                     f'got {sites!r}')
  return lambda name: any(fnmatch.fnmatchcase(name, p) for p in patterns)


def _apply(model, variables, x, train, apply_kwargs, **call_kwargs):
  if train:
    out, _ = model.apply(variables, x, train=True, mutable=['batch_stats'], **call_kwargs,
                         **apply_kwargs)
    return out
  return model.apply(variables, x, train=False, **call_kwargs, **apply_kwargs)


def taps(model: nn.Module, variables, x, *, sites: Sites = None, train: bool = False,
         tap: Optional[Tap] = None, **apply_kwargs) -> Tuple[Any, Dict[str, jax.Array]]:
  """Runs a zoo model and returns the activations at the selected tap sites.

  Args:
    model: a zoo model (``__call__(x, train, tap)``); ``variables`` its variables.
    x: the input batch ``[B, H, W, C]``.
    sites: None (every site), a site name or ``fnmatch`` pattern (``'*/out'``: block outputs,
      ``'*_in'``: BN inputs, ``'*act*'``: activations), a list of them, or a predicate on names.
    train: passed to the model; with ``train=True`` BN uses (and the discarded updates come from)
      batch statistics.
    tap: an optional tap applied first (a gate, a quantizer); the recorded value is its result,
      i.e. what the model continues with.
  Returns:
    ``(output, {site: activation})`` in forward order; a site's activation has the shape listed
    by ``common.models.tap_sites``.
  Raises:
    ValueError: if the model has no taps or ``sites`` selects none of its sites (the message lists
    them).
  """
  if not has_taps(model):
    raise ValueError(f'{type(model).__name__} has no tap sites (its __call__ takes no `tap`)')
  keep = _selector(sites)
  found: Dict[str, jax.Array] = {}
  seen = []

  def record(site, h):
    if tap is not None:
      h = tap(site, h)
    seen.append(site)
    if keep(site):
      found[site] = h
    return h

  out = _apply(model, variables, x, train, apply_kwargs, tap=record)
  if not found:
    raise ValueError(f'sites={sites!r} selects none of the {type(model).__name__} sites {seen}')
  return out, found


def moments(h: jax.Array) -> Tuple[jax.Array, jax.Array]:
  """Per-channel ``(mean [C], biased var [C])`` of ``h [..., C]`` over every axis but the last:
  what BatchNorm normalises with in training mode (``var = E[(h - mean)^2]``)."""
  axes = tuple(range(h.ndim - 1))
  mean = jnp.mean(h, axes)
  return mean, jnp.mean(jnp.square(h - mean), axes)


def bn_input_moments(model: nn.Module, variables, x, *, train: bool = False,
                     **apply_kwargs) -> Tuple[Any, Dict[str, Tuple[jax.Array, jax.Array]]]:
  """Runs ``model`` and returns the per-channel mean and (biased) variance entering every BatchNorm.

  Args:
    model: a linen module; ``variables`` its variables.
    x: the input batch ``[B, H, W, C]`` (or ``[B, D]``).
    train: passed to the model; with ``train=False`` running statistics are not updated.
  Returns:
    ``(output, {bn_path: (mean [C], var [C])})`` where ``bn_path`` is the '/'-joined module path of
    the BN (the ``batch_stats`` key) and the moments are :func:`moments` of its input (FDDA's BNS
    loss compares them with the stored running statistics). Zoo models: from the ``<bn>_in`` tap
    sites; other modules: by intercepting their ``nn.BatchNorm`` calls.
  """
  if has_taps(model):
    out, acts = taps(model, variables, x, sites=lambda s: s.endswith(BN_IN), train=train,
                     **apply_kwargs)
    return out, {site[:-len(BN_IN)]: moments(h) for site, h in acts.items()}
  stats: Dict[str, Tuple[jax.Array, jax.Array]] = {}

  def interceptor(next_fun: Callable, args, kwargs, context):
    if isinstance(context.module, nn.BatchNorm) and context.method_name == '__call__':
      stats['/'.join(context.module.path)] = moments(args[0])
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(interceptor):
    out = _apply(model, variables, x, train, apply_kwargs)
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
