"""CPU latency of a 1xN-sparse export against its dense baseline (the paper's Fig. 5 measurement:
MobileNet-V2 224x224, batch 1, 1x4 blocks).

:func:`end_to_end_latency` builds a random model, its official masks (``onexn.model_masks``) and the
exports of ``onexn.export`` / ``onexn.channels_first``, and times them interleaved
(:func:`time_fns`); :func:`layer_latency` times the packed layers alone.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Sequence

import jax
import jax.numpy as jnp

from common import masks as common_masks
from common import timing
from common import transforms
from onexn import conv, layer_policy
from onexn.export import SparseModel, export_sparse, im2col_conv


def time_fn(fn: Callable[[], Any], repeats: int = 20, warmup: int = 2) -> float:
  """Median wall time in seconds of ``fn()`` (results blocked on), after ``warmup`` calls."""
  return time_fns({'f': fn}, repeats, warmup)['f']['median']


def time_fns(fns: Dict[str, Callable[[], Any]], repeats: int = 20,
             warmup: int = 2) -> Dict[str, Dict[str, float]]:
  """Times several functions **interleaved** (``common.timing.time_interleaved``: one call of each
  per round), so that load from other processes hits all of them alike; returns
  ``{name: {'median', 'min'}}`` in seconds."""
  t = timing.time_interleaved(fns, repeats, warmup=warmup)
  return {k: {'median': v.median, 'min': v.min} for k, v in t.items()}


def layer_latency(sm: SparseModel, dm: SparseModel, specs, batch: int = 1,
                  repeats: int = 20) -> Dict[str, float]:
  """Sum over the packed layers of their time alone: sparse kernel vs the dense GEMM (min of
  interleaved calls, BN-folded weights of ``dm``, random inputs of the layer's shape).

  Returns:
    ``{'pruned_layers_dense_ms', 'pruned_layers_sparse_ms', 'pruned_layers_speedup'}``.
  """
  by_path = {transforms.path_str(tuple(s.path)): s for s in specs}
  dense_fn = jax.jit(lambda a, k, s: im2col_conv(a, k, s, ((k.shape[0] // 2,) * 2,) * 2),
                     static_argnums=2)
  sparse_fn = jax.jit(lambda a, p, s: conv.sparse_conv(a, p, stride=s,
                                                         padding=((p.kernel_size[0] // 2,) * 2,) * 2,
                                                         backend=sm.backend), static_argnums=2)
  tot_d = tot_s = 0.0
  for key, pk in sm.packed.items():
    s = by_path[key]
    k = dm.weights[key]['kernel']
    if s.kind != 'conv':
      continue
    a = jax.random.normal(jax.random.PRNGKey(0), (batch,) + tuple(s.in_hw) + (s.in_ch,))
    t = time_fns({'d': lambda: dense_fn(a, k, (s.stride, s.stride)),
                  's': lambda: sparse_fn(a, pk, (s.stride, s.stride))}, repeats)
    tot_d += t['d']['min']
    tot_s += t['s']['min']
  return {'pruned_layers_dense_ms': 1e3 * tot_d, 'pruned_layers_sparse_ms': 1e3 * tot_s,
          'pruned_layers_speedup': tot_d / tot_s if tot_s else float('nan')}


def end_to_end_latency(sparsities: Sequence[float] = (0.5, 0.75, 0.9), *, n: int = 4,
                       model_name: str = 'mobilenet_v2', widths=None, input_hw=(224, 224),
                       batch: int = 1, num_classes: int = 1000, rearrange: bool = True,
                       repeats: int = 20, seed: int = 0, check: bool = True,
                       per_layer: bool = True, backend: str = 'auto',
                       model_kwargs=None) -> List[Dict[str, Any]]:
  """End-to-end CPU latency of a dense model vs its 1xN-sparse export (paper Fig. 5).

  Random weights, BN statistics of the input (latency does not depend on the values); the masks are
  the official ones (``onexn.model_masks``: uniform p, classifier dense, rearrangement rules).

  Args:
    sparsities: pruning rates p to time.
    n: block size N (the paper's latency figure uses 1x4).
    model_name, widths, input_hw, batch, num_classes, model_kwargs: the network (default:
      MobileNet-V2 224x224, batch 1, as Fig. 5).
    rearrange: compute masks with filter rearrangement (exported with the physical permutation).
    repeats: timed calls per measurement (median reported).
    check: also report the max |sparse - masked dense| logit difference.
    per_layer: also time every packed layer alone against its dense GEMM (:func:`layer_latency`).
  Returns:
    one dict per p: ``p``, ``zoo_dense_ms`` (the zoo model under XLA, for context); two deployment
    graphs of the export (BN folded, fast depthwise), each timed with every layer dense and with
    the packed layers sparse: the zoo's NHWC ``__call__`` with intercepted layers
    (:class:`SparseModel`: ``dense_nhwc_ms``, ``sparse_nhwc_ms``) and the channels-first graph with
    fused epilogues (``onexn.channels_first``: ``dense_cf_ms``, ``sparse_cf_ms``);
    ``dense_ms`` = the faster dense graph (the fair baseline), ``sparse_ms`` = ``sparse_cf_ms``
    (models without a channels-first graph, i.e. not MobileNet-V1/V2: the NHWC graphs only),
    ``speedup = dense_ms / sparse_ms`` (what 1xN sparsity buys); medians of interleaved calls,
    plus the same from minima: ``dense_min_ms``, ``sparse_min_ms``, ``speedup_min``
    (``*_nhwc_min_ms``, ``*_cf_min_ms`` raw); with ``per_layer`` the :func:`layer_latency` fields
    (the part of the network 1xN prunes, the rest — stem, depthwise convs, activations — being the
    same in both graphs); ``sparse_layers``, ``absorbed``, ``gathered``, ``max_rel_diff`` (the
    largest over the three non-zoo graphs that compute the masked model: NHWC sparse, CF dense, CF
    sparse, vs the masked zoo model, relative to its largest logit).
  """
  import ml_collections
  from common import cpu_alloc, models
  from onexn import channels_first
  # Per-call XLA buffers otherwise page-fault on fresh mmaps, charged to whichever op writes first.
  cpu_alloc.retain_freed_memory()
  model = models.get_model(model_name, num_classes, widths=widths, **(model_kwargs or {}))
  try:  # the channels-first graph exists for MobileNet-V1/V2; other models: NHWC graphs only
    channels_first.layer_plan(model)
    cf_supported = True
  except ValueError:
    cf_supported = False
  specs = models.layer_specs(model_name, widths=widths, input_hw=tuple(input_hw),
                             num_classes=num_classes, **(model_kwargs or {}))
  key = jax.random.PRNGKey(seed)
  x = jax.random.normal(jax.random.fold_in(key, 1), (batch,) + tuple(input_hw) + (3,))
  v = jax.jit(lambda k, x: model.init(k, x, train=False))(key, x[:1])
  # BN statistics calibrated on the input (one train-mode pass: running = 0.9 old + 0.1 batch),
  # so that activations and logits have unit scale and the exactness check means something.
  _, upd = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=['batch_stats']))(v, x)
  stats = jax.tree.map(lambda new, old: (new - 0.9 * old) / 0.1, upd['batch_stats'],
                       v['batch_stats'])
  params = v['params']
  zoo_fn = jax.jit(lambda v, x: model.apply(v, x, train=False))
  zoo_vars = {'params': params, 'batch_stats': stats}
  rows = []
  for p in sparsities:
    model_cfg = ml_collections.ConfigDict({'name': model_name, 'widths': widths,
                                           'kwargs': dict(model_kwargs or {})})
    m = layer_policy.model_masks(params, specs, model_name, pattern='block', p=float(p), n=n,
                                 rearrange=rearrange)
    kw = dict(n=n, num_classes=num_classes, specs=specs, model=model, backend=backend)
    dm = export_sparse(params, stats, m, model_cfg, use_sparse_kernel=False, **kw)
    sm = export_sparse(params, stats, m, model_cfg, **kw)
    fns = {'zoo': lambda: zoo_fn(zoo_vars, x), 'dense_nhwc': lambda: dm(x),
           'sparse_nhwc': lambda: sm(x)}
    graphs = [sm]
    if cf_supported:
      dcf = channels_first.ChannelsFirstModel(dm)
      scf = channels_first.ChannelsFirstModel(sm)
      fns.update({'dense_cf': lambda: dcf(x), 'sparse_cf': lambda: scf(x)})
      graphs += [dcf, scf]
    t = time_fns(fns, repeats)
    ms = {f'{k}_ms': 1e3 * v['median'] for k, v in t.items() if k != 'zoo'}
    ms.update({f'{k}_min_ms': 1e3 * v['min'] for k, v in t.items() if k != 'zoo'})
    sparse_key = 'sparse_cf' if cf_supported else 'sparse_nhwc'
    dense_ms = min(v for k, v in ms.items() if k.startswith('dense') and not k.endswith('min_ms'))
    dense_min = min(v for k, v in ms.items() if k.startswith('dense') and k.endswith('min_ms'))
    row = {'p': float(p), 'n': n, 'zoo_dense_ms': 1e3 * t['zoo']['median'],
           'dense_ms': dense_ms, 'sparse_ms': ms[f'{sparse_key}_ms'],
           'dense_min_ms': dense_min, 'sparse_min_ms': ms[f'{sparse_key}_min_ms'],
           'speedup': dense_ms / ms[f'{sparse_key}_ms'],
           'speedup_min': dense_min / ms[f'{sparse_key}_min_ms'], **ms,
           'sparse_layers': len(sm.packed), 'absorbed': len(sm.absorbed),
           'gathered': len(sm.gathers)}
    if per_layer:
      row.update(layer_latency(sm, dm, specs, batch, repeats))
    if check:
      masked_vars = {'params': common_masks.apply_masks(params, m), 'batch_stats': stats}
      ref = zoo_fn(masked_vars, x)
      row['max_rel_diff'] = max(float(jnp.max(jnp.abs(f(x) - ref)) / jnp.max(jnp.abs(ref)))
                                for f in graphs)
    rows.append(row)
  return rows
