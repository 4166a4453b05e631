"""Export a 1xN-pruned model as a sparse inference function (lmbxmu/1xN ``model_tune.py``'s role).

The official export writes ``W * mask`` as a dense ONNX model and lets TVM convert 1x1 convs to BSR
(``model_tune.py``); the filter rearrangement is never applied to the weights, so rearranged layers
are not N-consecutive there (the paper, Fig. 2, permutes the next layer's input channels instead).
:func:`export_sparse` does it as the paper describes:

1. masks applied (``W * mask``) to the fine-tuned params;
2. for every masked layer, in forward order, the permutation that makes its mask 1xN-consecutive
   (:func:`onexn.permute.block_permutation_from_mask`; identity for unrearranged layers) is
   applied **physically** where one layer alone reads the output: the layer, its BN, the depthwise
   conv + BN between, and the consumer's input channels (:func:`onexn.permute.permute_pair`);
   where a residual sum or the logits read the output (ResNet downsample convs and the fc of the
   released ResNet-50 path) the layer is packed with ``perm`` and its output gathered back into the
   original order by ``onexn.ops``;
3. every layer with pruned blocks is packed (``onexn.block_sparse.pack``) and runs through
   ``onexn.conv.sparse_conv`` / ``onexn.ops.sparse_matmul`` (the ``xla_ext`` CPU kernel); layers with
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
from common import transforms
from onexn import block_sparse, conv, layer_policy, ops, permute
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
  ``onexn.ops`` / ``onexn.conv``.

  Attributes:
    model: the linen module whose ``__call__`` is run with its conv / dense / BN modules intercepted.
    variables: ``{'params', 'batch_stats'}`` after masking and physical permutation.
    weights: ``{path_str: {'kernel', 'bias'}}`` BN-folded weights of the layers run densely.
    packed: ``{path_str: onexn.block_sparse.PackedBlockSparse}`` (BN folded) run by the sparse kernel.
    bias: ``{path_str: [C_out]}`` folded bias of every conv / dense layer.
    folded_bn: BN paths folded into their conv (identity in the forward).
    absorbed: paths whose rearrangement was applied physically.
    gathers: paths packed with ``perm`` (output gathered back: a residual sum or the logits read it).
    dense: ``{path: reason}`` of masked layers left dense.
    backend: ``onexn.ops`` backend ('auto' = the C++ kernel on CPU).
  """
  model: nn.Module
  variables: Dict[str, Any]
  weights: Dict[str, Dict[str, Any]]
  packed: Dict[str, block_sparse.PackedBlockSparse]
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
  same GEMM layout as ``onexn.conv.sparse_conv``, and faster than XLA:CPU's direct conv for the
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
          y = conv.sparse_conv(inp, packed[key], stride=as_pair(mod.strides),
                                 padding=mod.padding, backend=backend)
        else:
          y = ops.sparse_matmul(inp, packed[key], backend=backend)
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
  """BN-folded ``{path_str: (kernel, bias)}`` of every conv/dense layer (from the layer specs, host side).

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
  """Turns a 1xN-pruned model into a sparse inference function (module docstring).

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
    backend: ``onexn.ops`` backend ('auto' | 'ffi' | 'xla').
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
      packed[key] = block_sparse.pack(k, mask, n, perm=to_pack[path], layer=path)
    else:
      weights[key] = {'kernel': k}
  folded_bn = tuple(transforms.path_str(tuple(s.bn)) for s in specs
                    if s.kind in ('conv', 'dense') and s.bn)
  return SparseModel(model, {'params': params, 'batch_stats': batch_stats}, weights, packed, bias,
                     folded_bn, absorbed, gathers, dense, backend)
