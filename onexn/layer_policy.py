"""Which layers of a model the official 1xN code masks and rearranges, and the model's masks.

Rules of ``lmbxmu/1xN`` (``imagenet.py: main``, ``models/*``), written against
``common.models.layer_specs`` roles so that they hold for any width configuration:

* Masked: every conv / dense layer except the stem conv and the depthwise convs (the official
  builder only wraps 1x1 and ResNet 3x3 convs and the classifier 1x1 conv); BN is never masked.
* Classifier rate 0 (``pr_cfg[-1] = 0``). The released ResNet-50 path misses this exemption
  (``cfg_len = 54`` for 53 masked modules) and prunes its fc at p; ``prune_classifier=True``
  reproduces that.
* Rearranged (``--rearrange`` with ``BlockL1Conv``):
  - MobileNet-V1: every masked layer;
  - ResNets: every masked layer except ``conv3`` (role ``block_out``, it feeds the residual sum);
    the downsample conv and the fc *are* rearranged (the code tests ``name.endswith('conv3')``);
  - MobileNet-V2: an alternating flag over the masked-module order that starts with "plain"; on the
    official architecture (block 0 has no expansion conv) it rearranges exactly every expansion
    1x1, and the final 1x1 conv (320 -> 1280), while every projection and the classifier stay plain;
    this module states that outcome by role (``expand`` / ``pointwise``) so it also holds for
    width/depth variants;
  - other models: masked layers that do not feed a residual sum, classifier excluded.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from common import transforms
from onexn import pruning

Path = Tuple[str, ...]

PATTERNS = ('block', 'weight', 'filter', 'random_block')


def is_masked(spec) -> bool:
  """True for the layers the official builder wraps in a masked conv (see module docstring)."""
  if spec.kind not in ('conv', 'dense'):
    return False
  if getattr(spec, 'depthwise', False) or spec.role in ('stem', 'depthwise'):
    return False
  return int(getattr(spec, 'groups', 1) or 1) == 1


def masked_layers(specs: Sequence[Any]) -> List[Any]:
  """The masked conv/dense layer specs, in forward order."""
  return [s for s in specs if is_masked(s)]


def rearranged_layers(model_name: str, specs: Sequence[Any]) -> List[Any]:
  """Masked layers whose mask the official ``--rearrange`` computes on L1-sorted filters.

  Args:
    model_name: registry name (``mobilenet_v1``, ``mobilenet_v2``, ``resnet50``, ... variants
      matched by prefix).
    specs: ``common.models.layer_specs`` of the model.
  Returns:
    list of specs (forward order).
  """
  masked = masked_layers(specs)
  name = model_name.lower()
  if name.startswith('mobilenet_v1'):
    return masked
  if name.startswith('mobilenet_v2'):
    return [s for s in masked if s.role in ('expand', 'pointwise')]
  if name.startswith('resnet'):
    return [s for s in masked if s.role != 'block_out']
  return [s for s in masked if not s.feeds_residual and s.role != 'classifier']


def official_alternating_rule(specs: Sequence[Any]) -> List[bool]:
  """The literal MobileNet-V2/V3 rule of ``imagenet.py`` over the masked-module order.

  ``flag`` starts True; a module with flag False is rearranged and sets flag True, otherwise it is
  plain and sets flag False unless its name contains 'fc'. Kept for the test that the role rule of
  :func:`rearranged_layers` equals it on the official architecture.

  Returns:
    one bool per masked layer (True = rearranged).
  """
  out, flag = [], True
  for s in masked_layers(specs):
    if not flag:
      out.append(True)
      flag = True
    else:
      out.append(False)
      flag = any('fc' in part for part in s.path)
  return out


def layer_rates(specs: Sequence[Any], p: float, prune_classifier: bool = False) -> Dict[Path, float]:
  """``{path: rate}`` of every masked layer: p, and 0 for the classifier (``pr_cfg[-1] = 0``)."""
  p = pruning.check_rate(p)
  return {tuple(s.path): (p if (s.role != 'classifier' or prune_classifier) else 0.0)
          for s in masked_layers(specs)}


def layer_mask(kernel, pattern: str, p: float, n: int = 1, rearrange: bool = False,
               straddle_blocks: bool = False, rng: Optional[jax.Array] = None,
               random_with_replacement: bool = True, layer=None):
  """Mask of one layer for one of the official ``--conv_type`` patterns.

  Args:
    kernel: HWIO / dense kernel.
    pattern: 'block' (BlockL1Conv), 'weight' (UnstructureConv), 'filter' (StructureConv),
      'random_block' (BlockRandomConv).
    p: the layer's rate in [0, 1).
    n: block size N (block patterns).
    rearrange: compute the block mask on L1-sorted filters ('block' only; the code routes
      ``--rearrange`` with other conv types to their plain ``get_mask(p)``).
    rng: PRNG key for 'random_block'.
  Returns:
    bool mask of ``kernel.shape``.
  """
  if pattern == 'block':
    fn = pruning.rearranged_block_mask if rearrange else pruning.block_mask
    return fn(kernel, n, p, straddle_blocks=straddle_blocks, layer=layer)
  if pattern == 'weight':
    return pruning.weight_mask(kernel, p)
  if pattern == 'filter':
    return pruning.filter_mask(kernel, p)
  if pattern == 'random_block':
    if rng is None:
      raise ValueError('pattern random_block needs an rng key')
    return pruning.random_block_mask(kernel, n, p, rng, with_replacement=random_with_replacement,
                                     straddle_blocks=straddle_blocks, layer=layer)
  raise ValueError(f'unknown pattern {pattern!r}; allowed: {list(PATTERNS)}')


def mask_options(method) -> Dict[str, Any]:
  """The keyword arguments of :func:`model_masks` named by an experiment's ``config.method``.

  Args:
    method: ``config.method`` (a ConfigDict / mapping) with any of ``pattern``, ``sparsity``,
      ``block_size_n``, ``rearrange``, ``straddle_blocks``, ``prune_classifier``,
      ``random_with_replacement`` (missing fields take :func:`model_masks`' defaults).
  Returns:
    ``{'pattern', 'p', 'n', 'rearrange', 'straddle_blocks', 'prune_classifier',
    'random_with_replacement'}`` of the fields present.
  """
  fields = {'pattern': ('pattern', str), 'sparsity': ('p', float), 'block_size_n': ('n', None),
            'rearrange': ('rearrange', bool), 'straddle_blocks': ('straddle_blocks', bool),
            'prune_classifier': ('prune_classifier', bool),
            'random_with_replacement': ('random_with_replacement', bool)}
  out = {}
  for field, (arg, conv) in fields.items():
    if field in method:
      v = method[field]
      out[arg] = v if conv is None else conv(v)
  return out


def model_masks(params, specs: Sequence[Any], model_name: str, *, pattern: str = 'block',
                p: float = 0.5, n: int = 4, rearrange: bool = False,
                straddle_blocks: bool = False, prune_classifier: bool = False,
                random_with_replacement: bool = True,
                rng: Optional[jax.Array] = None) -> Dict[str, Any]:
  """Masks of every masked layer of a model, computed once from (pretrained) ``params``.

  The official ``imagenet.py: main`` of lmbxmu/1xN: per-layer rate list ``pr_cfg = [p] * L`` with
  the classifier at 0, each layer's ``get_mask(p)`` (or ``get_rearr_mask`` on the rearranged
  layers of :func:`rearranged_layers`) evaluated once before fine-tuning.

  Args:
    params: the model's parameter tree (kernels HWIO / ``[C_in, C_out]``).
    specs: the model's ``common.models.layer_specs`` (only paths, roles and kinds are used, so
      input size and class count do not matter).
    model_name: the ``common.models`` name (selects the rearrangement rule).
    pattern: one of ``PATTERNS`` (the official ``--conv_type``).
    p: per-layer pruning rate in [0, 1).
    n: block size N (block patterns).
    rearrange: L1 filter rearrangement on the layers of :func:`rearranged_layers`.
    straddle_blocks: the official flattened grouping where ``C_out % N != 0``.
    prune_classifier: prune the classifier at p too (the released ResNet-50 path).
    random_with_replacement: 'random_block' samples with replacement, as ``BlockRandomConv``.
    rng: PRNG key, required by 'random_block' (layer i uses ``fold_in(rng, i)``).
  Returns:
    a mask tree (``common.masks`` form): ``{...: {'kernel': bool array}}`` for every masked layer,
    the classifier included (all True at rate 0), so that ``common.masks.apply_masks`` and
    ``sparsity_report`` work on it.
  Raises:
    ValueError: unknown pattern, bad p / N, a missing rng for 'random_block', or a layer with
      ``C_out % N != 0`` (naming it) unless ``straddle_blocks``.
  """
  if pattern not in PATTERNS:
    raise ValueError(f'unknown mask pattern {pattern!r}; allowed: {list(PATTERNS)}')
  if pattern == 'random_block' and rng is None:
    raise ValueError("pattern 'random_block' needs rng (a PRNG key); got None")
  rates = layer_rates(specs, float(p), bool(prune_classifier))
  rearr = ({tuple(s.path) for s in rearranged_layers(model_name, specs)} if rearrange else set())
  flat_params = traverse_util.flatten_dict(params)
  out = {}
  for i, (path, rate) in enumerate(rates.items()):
    kpath = path + ('kernel',)
    if kpath not in flat_params:
      raise ValueError(f'layer spec {transforms.path_str(path)!r} has no kernel in params')
    kernel = flat_params[kpath]
    if rate == 0.0:
      # pr_cfg[-1] = 0: the official get_mask(0) keeps everything whatever the block grouping,
      # so a 1000-way classifier needs no N | C_out check.
      out[kpath] = jnp.ones(kernel.shape, bool)
      continue
    layer_rng = None if rng is None else jax.random.fold_in(rng, i)
    out[kpath] = layer_mask(kernel, pattern, rate, n, path in rearr, bool(straddle_blocks),
                            layer_rng, bool(random_with_replacement), layer=path)
  return traverse_util.unflatten_dict(out)


def effective_macs(specs: Sequence[Any], masks) -> Dict[str, int]:
  """Multiply-accumulates of conv/dense layers counting only kept weights (``thop.profile``'s
  convention, as ``common.flops``: ``H_out*W_out*C_out*C_in/groups*k*k`` per conv).

  A masked weight saves its ``H_out * W_out`` MACs only with a sparse kernel; this is the count the
  1xN kernel can realise, reported next to the dense count.

  Returns:
    ``{'dense': int, 'sparse': int}`` over all conv/dense layers (unmasked layers count fully).
  """
  flat = traverse_util.flatten_dict(masks) if masks else {}
  dense = sparse = 0
  for s in specs:
    if s.kind not in ('conv', 'dense'):
      continue
    hw = int(np.prod(s.out_hw)) if s.kind == 'conv' and s.out_hw else 1
    kk = int(np.prod(s.kernel)) if s.kind == 'conv' else 1
    n_w = kk * (s.in_ch // max(int(s.groups or 1), 1)) * s.out_ch
    m = flat.get(tuple(s.path) + ('kernel',))
    kept = int(np.count_nonzero(np.asarray(m))) if m is not None else n_w
    dense += hw * n_w
    sparse += hw * kept
  return {'dense': dense, 'sparse': sparse}
