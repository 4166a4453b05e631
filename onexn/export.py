"""Export a 1xN-pruned model as a sparse inference function, and measure its CPU latency (spec §2.2 step 6, §2.7).

The official export writes ``W * mask`` as a dense ONNX model and lets TVM convert 1x1 convs to BSR
(``model_tune.py``); the filter rearrangement is never applied to the weights, so rearranged layers
are not N-consecutive there (spec §2.7). :func:`export_sparse` does it properly:

1. masks applied (``W * mask``) to the fine-tuned params;
2. for every masked layer, in forward order, the permutation that makes its mask 1xN-consecutive
   (:func:`onexn.permute.block_permutation_from_mask`; identity for unrearranged layers) is
   applied **physically** where one layer alone reads the output: the layer, its BN, the depthwise
   conv + BN between, and the consumer's input channels (:func:`onexn.permute.permute_pair`);
   where a residual sum or the logits read the output (ResNet downsample convs and the fc of the
   released ResNet-50 path) the layer is packed with ``perm`` and its output gathered back into the
   original order by ``onexn.sparse``;
3. every layer with pruned blocks is packed (``onexn.sparse.pack``) and runs through
   ``onexn.sparse.sparse_conv`` / ``sparse_matmul`` (the ``xla_ext`` CPU kernel); layers with
   nothing pruned (classifier at rate 0), the stem and depthwise convs, and masks that are not 1xN
   (weight / filter patterns, ``straddle_blocks`` groups) stay dense.

The forward is the model's own ``__call__`` with those conv/dense modules intercepted
(``flax.linen.intercept_methods``), so BN, activations, residual sums and pooling are the zoo's code.
It equals the masked dense model in eval mode up to float32 summation order.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from common import masks as common_masks
from common import timing
from common import transforms
from onexn import layer_policy, permute, sparse
from common.models.layers import as_pair, depthwise_conv, explicit_padding

Path = Tuple[str, ...]


@dataclasses.dataclass
class SparseModel:
  """A 1xN-pruned network as an inference function ``logits = sparse_model(x)`` (eval mode).

  Deployment form (what TVM does to the official ONNX export too): every BatchNorm that follows a
  conv is folded into it (``W' = W * gamma / sqrt(var + eps)``, ``b' = beta - mean * gamma /
  sqrt(var + eps)``; column scaling keeps the 1xN pattern), depthwise convs run as a sum of
  ``kh*kw`` shifted, per-channel-scaled slices (``common.models.layers.depthwise_conv``: XLA:CPU's
  grouped convolution is ~40x slower at MobileNet shapes, which would hide every 1x1 saving), other
  dense convs as one im2col GEMM (:func:`im2col_conv`), and the packed layers through
  ``onexn.sparse``.

  Attributes:
    model: the linen module whose ``__call__`` is run with its conv / dense / BN modules intercepted.
    variables: ``{'params', 'batch_stats'}`` after masking and physical permutation.
    weights: ``{path_str: {'kernel', 'bias'}}`` BN-folded weights of the layers run densely.
    packed: ``{path_str: onexn.sparse.PackedBlockSparse}`` (BN folded) run by the sparse kernel.
    bias: ``{path_str: [C_out]}`` folded bias of every conv / dense layer.
    folded_bn: BN paths folded into their conv (identity in the forward).
    absorbed: paths whose rearrangement was applied physically.
    gathers: paths packed with ``perm`` (output gathered back: a residual sum or the logits read it).
    dense: ``{path: reason}`` of masked layers left dense.
    backend: ``onexn.sparse`` backend ('auto' = the C++ kernel on CPU).
  """
  model: nn.Module
  variables: Dict[str, Any]
  weights: Dict[str, Dict[str, Any]]
  packed: Dict[str, sparse.PackedBlockSparse]
  bias: Dict[str, Any]
  folded_bn: Tuple[str, ...]
  absorbed: List[Path]
  gathers: List[Path]
  dense: Dict[Path, str]
  backend: str = 'auto'

  def __post_init__(self):
    self._fn = jax.jit(sparse_apply_fn(self.model, self.folded_bn, self.backend))

  def __call__(self, x):
    """``x [B, H, W, C] -> logits [B, num_classes]``."""
    return self._fn(self.variables, self.weights, self.packed, self.bias, x)

  def summary(self) -> Dict[str, Any]:
    """Per-layer export report (host side): density and how each masked layer is run."""
    return {'sparse': {p: round(float(pk.density), 4) for p, pk in self.packed.items()},
            'absorbed': [transforms.path_str(p) for p in self.absorbed],
            'gathered': [transforms.path_str(p) for p in self.gathers],
            'dense': {transforms.path_str(p): r for p, r in self.dense.items()}}


def im2col_conv(x, kernel, strides, padding):
  """Dense conv as one GEMM on im2col patches (rows ``(dy, dx, c)``, the HWIO flattening); the
  same GEMM layout as ``onexn.sparse.sparse_conv``, and faster than XLA:CPU's direct conv for the
  3-channel stem (the dense graph of a latency comparison uses it too)."""
  kh, kw, c_in, c_out = kernel.shape
  sh, sw = as_pair(strides)
  (pt, pb), (pl, pr) = padding
  b, h, w, c = x.shape
  if (kh, kw) == (1, 1) and (pt, pb, pl, pr) == (0, 0, 0, 0):
    return jnp.dot(x[:, ::sh, ::sw, :], kernel[0, 0], precision=jax.lax.Precision.HIGHEST)
  xp = jnp.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
  ho, wo = (h + pt + pb - kh) // sh + 1, (w + pl + pr - kw) // sw + 1
  taps = [jax.lax.slice(xp, (0, dy, dx, 0), (b, dy + (ho - 1) * sh + 1, dx + (wo - 1) * sw + 1, c),
                        (1, sh, sw, 1)) for dy in range(kh) for dx in range(kw)]
  patches = taps[0] if len(taps) == 1 else jnp.concatenate(taps, axis=-1)
  return jnp.dot(patches, kernel.reshape(-1, c_out), precision=jax.lax.Precision.HIGHEST)


def sparse_apply_fn(model: nn.Module, folded_bn: Tuple[str, ...], backend: str) -> Callable:
  """``(variables, weights, packed, bias, x) -> logits``: ``model.apply`` with intercepted layers."""
  folded = set(folded_bn)

  def apply(variables, weights, packed, bias, x):
    def interceptor(next_fun, args, kwargs, context):
      mod = context.module
      if context.method_name != '__call__':
        return next_fun(*args, **kwargs)
      key = transforms.path_str(tuple(mod.path))
      if isinstance(mod, nn.BatchNorm) and key in folded:
        return args[0]
      if not isinstance(mod, (nn.Conv, nn.Dense)) or key not in bias:
        return next_fun(*args, **kwargs)
      inp = args[0]
      if key in packed:
        if isinstance(mod, nn.Conv):
          y = sparse.sparse_conv(inp, packed[key], stride=as_pair(mod.strides),
                                 padding=mod.padding, backend=backend)
        else:
          y = sparse.sparse_matmul(inp, packed[key], backend=backend)
      elif isinstance(mod, nn.Dense):
        y = inp @ weights[key]['kernel']
      else:
        k = weights[key]['kernel']
        strides = as_pair(mod.strides)
        pads = explicit_padding(mod.padding, inp.shape[1:3], k.shape[:2], strides)
        if mod.feature_group_count > 1 and mod.feature_group_count == inp.shape[-1] == k.shape[-1]:
          y = depthwise_conv(inp, k, strides, pads)
        elif mod.feature_group_count == 1:
          y = im2col_conv(inp, k, strides, pads)
        else:
          y = jax.lax.conv_general_dilated(inp, k, strides, pads,
                                           dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
                                           feature_group_count=mod.feature_group_count)
      return y + bias[key]

    with nn.intercept_methods(interceptor):
      return model.apply(variables, x, train=False)

  return apply


def fold_bn(params, batch_stats, specs, eps: float = 1e-5):
  """BN-folded ``{path_str: (kernel, bias)}`` of every conv/dense layer (spec-driven, host side).

  A conv followed by BN (``spec.bn``) becomes ``kernel * s``, ``(bias - mean) * s + beta`` with
  ``s = gamma / sqrt(var + eps)`` (eval-mode BN, Flax's biased running variance); other layers
  keep their kernel and bias (0 when absent).
  """
  out = {}
  for s in specs:
    if s.kind not in ('conv', 'dense'):
      continue
    path = tuple(s.path)
    k = transforms.get_path(params, path + ('kernel',))
    b = (transforms.get_path(params, path + ('bias',)) if s.bias
         else jnp.zeros((k.shape[-1],), k.dtype))
    if s.bn:
      bn = tuple(s.bn)
      gamma = transforms.get_path(params, bn + ('scale',))
      beta = transforms.get_path(params, bn + ('bias',))
      mean = transforms.get_path(batch_stats, bn + ('mean',))
      var = transforms.get_path(batch_stats, bn + ('var',))
      scale = gamma / jnp.sqrt(var + eps)
      k = k * scale
      b = (b - mean) * scale + beta
    out[transforms.path_str(path)] = (k, b)
  return out


def export_sparse(params, batch_stats, masks, model_cfg, *, n: int,
                  num_classes: Optional[int] = None, specs: Optional[Sequence[Any]] = None,
                  model: Optional[nn.Module] = None, absorb: bool = True,
                  use_sparse_kernel: bool = True, backend: str = 'auto') -> SparseModel:
  """Turns a 1xN-pruned model into a sparse inference function (module docstring; spec §2.7).

  Args:
    params, batch_stats: the (fine-tuned) variables; masked weights need not be zero.
    masks: the mask tree of ``onexn.model_masks`` (block patterns, plain or rearranged).
    model_cfg: ``config.model`` (``name``, ``widths``, ``kwargs``).
    n: block size N the masks were made with.
    num_classes: classifier width (default: from the last kernel of ``params``).
    specs: the model's ``layer_specs`` (default: from ``model_cfg``).
    model: the linen module (default: ``common.models.get_model`` of ``model_cfg``).
    absorb: apply rearrangements physically where possible (False: every rearranged layer is
      packed with ``perm`` and gathers its output, the fallback of step 2).
    use_sparse_kernel: False exports the same deployment graph with every layer dense (the fair
      dense baseline of a latency comparison).
    backend: ``onexn.sparse`` backend.
  Returns:
    a :class:`SparseModel`; ``sparse_model(x)`` equals the masked dense model's eval logits.
  """
  from common import models
  from common.models import layers as model_layers
  kw = model_cfg.get('kwargs', None) if hasattr(model_cfg, 'get') else None
  kw = dict(kw.to_dict() if hasattr(kw, 'to_dict') else (kw or {}))
  widths = model_cfg.get('widths', None) if hasattr(model_cfg, 'get') else None
  if num_classes is None:
    num_classes = int(list(transforms.select(params).values())[-1].shape[-1])
  if specs is None:
    specs = models.layer_specs(model_cfg.name, widths=widths, num_classes=num_classes, **kw)
  if model is None:
    model = models.get_model(model_cfg.name, num_classes, widths=widths, **kw)
  params = common_masks.apply_masks(params, masks)
  to_pack, absorbed, gathers, dense = {}, [], [], {}
  for s in layer_policy.masked_layers(specs):
    path = tuple(s.path)
    mask = np.asarray(transforms.get_path(masks, path + ('kernel',)))
    if not use_sparse_kernel:
      dense[path] = 'use_sparse_kernel=False'
      continue
    if mask.all():
      dense[path] = 'nothing pruned'
      continue
    if s.out_ch % n:
      dense[path] = f'C_out={s.out_ch} not divisible by N={n} (straddling groups)'
      continue
    perm = permute.block_permutation_from_mask(mask, n)
    if perm is None:
      dense[path] = f'mask is not a 1x{n} block mask in any channel order'
      continue
    pack_perm = None
    if not np.array_equal(perm, np.arange(s.out_ch)):
      plan = permute.absorb_plan(specs, path) if absorb else None
      if plan is not None:
        params, batch_stats, masks = permute.permute_pair(params, batch_stats, masks, plan, perm)
        absorbed.append(path)
      else:
        pack_perm = perm
        gathers.append(path)
    to_pack[path] = pack_perm
  folded = fold_bn(params, batch_stats, specs, model_layers.BN_EPS)
  weights, packed, bias = {}, {}, {}
  for key, (k, b) in folded.items():
    path = tuple(key.split('/'))
    bias[key] = b
    if path in to_pack:
      mask = transforms.get_path(masks, path + ('kernel',))
      packed[key] = sparse.pack(k, mask, n, perm=to_pack[path], layer=path)
    else:
      weights[key] = {'kernel': k}
  folded_bn = tuple(transforms.path_str(tuple(s.bn)) for s in specs
                    if s.kind in ('conv', 'dense') and s.bn)
  return SparseModel(model, {'params': params, 'batch_stats': batch_stats}, weights, packed, bias,
                     folded_bn, absorbed, gathers, dense, backend)


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
  sparse_fn = jax.jit(lambda a, p, s: sparse.sparse_conv(a, p, stride=s,
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
  """End-to-end CPU latency of a dense model vs its 1xN-sparse export (spec §2.6, Fig. 5).

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
    c = ml_collections.ConfigDict({'seed': seed, 'model': {'name': model_name, 'widths': widths,
                                                           'kwargs': dict(model_kwargs or {})},
                                   'method': {'pattern': 'block', 'block_size_n': n,
                                              'sparsity': float(p), 'rearrange': rearrange}})
    m = layer_policy.model_masks(params, c, specs=specs)
    kw = dict(n=n, num_classes=num_classes, specs=specs, model=model, backend=backend)
    dm = export_sparse(params, stats, m, c.model, use_sparse_kernel=False, **kw)
    sm = export_sparse(params, stats, m, c.model, **kw)
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
