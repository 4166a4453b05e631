"""Where each model family carries its class-wise masks, which widths a vote narrows, and how the
compact model inherits the class model's weights.

One :class:`Plan` per family, as the official model files allocate the masks
(zyxxmu/White-Box ``model/*.py``, ``self.mask = nn.ParameterList(...)``) and as
``cifar.py`` / ``imagenet.py: build_*_pruned_model`` narrow and copy:

* VGG (``vgg16``, any ``vgg*`` of the zoo): one mask per conv after its ReLU (site ``act{i}``);
  the first ``n - 1`` masks vote and narrow their conv; the last conv keeps a seeded random
  sorted subset of ``int(C * (1 - previous iteration's reduction))`` channels (its mask is used in
  the forward and regularised, never voted; ``random_layers=False`` lets it vote instead).
* CIFAR ResNets (``resnet20/56/110``...): ``6n + 1`` masks. Mask ``2b + 1`` multiplies block b's
  conv1 output before bn1 (site ``layer{s}_{j}/bn1_in``); mask 0 (stem width) and masks
  ``2b + 2`` (block-output width) are never used in the forward but vote (they move the
  threshold) and their folded scale multiplies the stem bn1 / block bn2. Only the conv1 (inner)
  widths are narrowed.
* ``mobilenet_v2_cifar``: one mask per block on the hidden channels after the depthwise
  conv + BN + act (site ``block{i}/dw_act``), all 17 vote and narrow the block's hidden width.
  The class model differs from the pruned one (``CLASS_MODEL_KWARGS``: ReLU, strides 2 at blocks
  3, 6, 13; the pruned model: ReLU6, strides at 6, 13). ``conv_last`` keeps a random sorted half
  (640 of 1280).
* ``resnet50``: three masks per bottleneck: after ``act1`` and ``act2`` (sites
  ``layer{s}_{j}/act1``, ``/act2``) and a third of block-output width, unused in the forward, that
  still votes. conv1 / conv2 widths are narrowed; block outputs stay full.

Scores are ``|sum_k M|/2`` for VGG and MobileNet-V2, ``|sum_k M|`` for the ResNets.
"""
from __future__ import annotations

import copy
import dataclasses
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

# zyxxmu/White-Box model/mobilenet_v2.py: MobileNetV2_class (kuangliu's CIFAR strides, F.relu).
MBV2_CLASS_STRIDES = (1, 1, 1, 2, 1, 1, 2, 1, 1, 1, 1, 1, 1, 2, 1, 1, 1)
CLASS_MODEL_KWARGS = {'mobilenet_v2_cifar': {'strides': MBV2_CLASS_STRIDES, 'act': 'relu'}}

Path = Tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class MaskSite:
  """One allocated mask ``[K, width]``: its param name, width, tap site (None: allocated but
  unused in the forward) and whether it takes part in the vote."""
  name: str
  width: int
  site: Optional[str]
  votes: bool = True


@dataclasses.dataclass(frozen=True)
class Rule:
  """How a compact module takes its leaves from the class model's.

  ``out``: kept output channels (conv / BN / dense outputs) or None (all); ``inp``: kept input
  channels of a conv or dense or None; ``scale``: per kept output channel, the factor for BN
  gamma and beta (None: copied); ``fresh``: take the compact model's own initialisation.
  """
  out: Optional[np.ndarray] = None
  inp: Optional[np.ndarray] = None
  scale: Optional[np.ndarray] = None
  fresh: bool = False


def family_of(model_name: str) -> str:
  """'vgg' | 'resnet_cifar' | 'mobilenet_v2_cifar' | 'resnet50' for a zoo name White-Box prunes.

  Raises:
    ValueError: naming the model and the supported ones.
  """
  from common.models import resnet_cifar, vgg
  if model_name in vgg.CFGS:
    return 'vgg'
  if model_name in [f'resnet{d}' for d in resnet_cifar.DEPTHS]:
    return 'resnet_cifar'
  if model_name in ('mobilenet_v2_cifar', 'resnet50'):
    return model_name
  raise ValueError(f'White-Box has no mask layout for model {model_name!r}; supported: '
                   f'{sorted(vgg.CFGS)}, resnet{list(resnet_cifar.DEPTHS)}, '
                   f'mobilenet_v2_cifar, resnet50')


class Plan:
  """The mask layout and surgery of one family at dense ``widths`` (module docstring).

  Args:
    model_name: a zoo name (``family_of``).
    widths: the dense width config (None: the zoo default).
    random_layers: narrow VGG's last conv / MobileNet-V2's ``conv_last`` at random, as the code
      does (False: VGG's last conv votes like the others, MobileNet-V2's ``conv_last`` stays full).
  """

  def __init__(self, model_name: str, widths=None, random_layers: bool = True):
    from common import models
    self.model_name = model_name
    self.family = family_of(model_name)
    self.widths = models.registry.canonical_widths(
        models.default_widths(model_name) if widths is None else widths)
    self.random_layers = bool(random_layers)
    self.halve = self.family in ('vgg', 'mobilenet_v2_cifar')
    self.masks = self._masks()

  # --- layout ---------------------------------------------------------------------------------
  def _blocks(self):
    """``[(stage s from 1, block j, global block index b)]`` of the ResNets."""
    key = 'inner' if self.family == 'resnet_cifar' else 'conv1'
    out, b = [], 0
    for s, stage in enumerate(self.widths[key]):
      for j in range(len(stage)):
        out.append((s + 1, j, b))
        b += 1
    return out

  def _masks(self) -> List[MaskSite]:
    w = self.widths
    name = lambda i: f'mask{i:03d}'
    if self.family == 'vgg':
      n = len(w)
      return [MaskSite(name(i), int(c), f'act{i}', votes=(i < n - 1 or not self.random_layers))
              for i, c in enumerate(w)]
    if self.family == 'resnet_cifar':
      out = [MaskSite(name(0), int(w['stem']), None)]
      for s, j, b in self._blocks():
        out.append(MaskSite(name(2 * b + 1), int(w['inner'][s - 1][j]), f'layer{s}_{j}/bn1_in'))
        out.append(MaskSite(name(2 * b + 2), int(w['stages'][s - 1]), None))
      return out
    if self.family == 'mobilenet_v2_cifar':
      return [MaskSite(name(i), int(c), f'block{i}/dw_act') for i, c in enumerate(w['hidden'])]
    out = []
    for s, j, b in self._blocks():
      out.append(MaskSite(name(3 * b), int(w['conv1'][s - 1][j]), f'layer{s}_{j}/act1'))
      out.append(MaskSite(name(3 * b + 1), int(w['conv2'][s - 1][j]), f'layer{s}_{j}/act2'))
      out.append(MaskSite(name(3 * b + 2), int(w['stages'][s - 1]), None))
    return out

  @property
  def pool(self) -> List[int]:
    """Indices (into ``masks``) of the masks that vote, in the code's order."""
    return [i for i, m in enumerate(self.masks) if m.votes]

  @property
  def forward_sites(self) -> Tuple[List[str], List[int]]:
    """``(tap sites, mask indices)`` of the masks used in the forward."""
    used = [(m.site, i) for i, m in enumerate(self.masks) if m.site is not None]
    return [s for s, _ in used], [i for _, i in used]

  def random_width(self, prev_reduction: float) -> Optional[int]:
    """Width of the randomly narrowed layer for a candidate (None: the family has none)."""
    if not self.random_layers:
      return None
    if self.family == 'vgg':
      return int(self.widths[-1] * (1 - prev_reduction))
    if self.family == 'mobilenet_v2_cifar':
      return int(self.widths['last']) // 2   # the code's fixed 640 of 1280
    return None

  def random_source_width(self) -> Optional[int]:
    if self.family == 'vgg':
      return int(self.widths[-1])
    if self.family == 'mobilenet_v2_cifar':
      return int(self.widths['last'])
    return None

  def compact_widths(self, keep: Dict[int, np.ndarray], random_width: Optional[int]):
    """The compact width config from ``keep`` (mask index -> kept channels of narrowed layers)."""
    w = copy.deepcopy(self.widths)
    if self.family == 'vgg':
      for i in range(len(w)):
        if i in keep:
          w[i] = int(len(keep[i]))
      if random_width is not None:
        w[-1] = max(int(random_width), 1)
      return w
    if self.family == 'resnet_cifar':
      for s, j, b in self._blocks():
        w['inner'][s - 1][j] = int(len(keep[2 * b + 1]))
      return w
    if self.family == 'mobilenet_v2_cifar':
      w['hidden'] = [int(len(keep[i])) for i in range(len(w['hidden']))]
      if random_width is not None:
        w['last'] = int(random_width)
      return w
    for s, j, b in self._blocks():
      w['conv1'][s - 1][j] = int(len(keep[3 * b]))
      w['conv2'][s - 1][j] = int(len(keep[3 * b + 1]))
    return w

  def narrowed(self) -> List[int]:
    """Mask indices whose vote narrows a layer (the others only move the threshold)."""
    if self.family == 'vgg':
      return [i for i in range(len(self.masks)) if self.masks[i].votes]
    if self.family == 'resnet_cifar':
      return [2 * b + 1 for _, _, b in self._blocks()]
    if self.family == 'mobilenet_v2_cifar':
      return list(range(len(self.masks)))
    return [i for _, _, b in self._blocks() for i in (3 * b, 3 * b + 1)]

  def producer(self, i: Optional[int]) -> Path:
    """Module path of the conv whose output channels mask ``i`` selects (``None``: the randomly
    narrowed layer), for selection criteria on weights (the L1 baseline)."""
    if i is None:
      return (f'conv{len(self.widths) - 1}',) if self.family == 'vgg' else ('conv_last',)
    if self.family == 'vgg':
      return (f'conv{i}',)
    if self.family == 'mobilenet_v2_cifar':
      return (f'block{i}', 'expand_conv')
    blocks = {b: (s, j) for s, j, b in self._blocks()}
    if self.family == 'resnet_cifar':
      s, j = blocks[(i - 1) // 2]
      return (f'layer{s}_{j}', 'conv1')
    s, j = blocks[i // 3]
    return (f'layer{s}_{j}', 'conv1' if i % 3 == 0 else 'conv2')

  def folded(self, fold_unused: bool = True) -> List[int]:
    """Mask indices whose ``m`` the surgery multiplies into a BN (``bn_fold=True``)."""
    if self.family == 'resnet_cifar' and fold_unused:
      return list(range(len(self.masks)))
    return self.narrowed()

  # --- surgery --------------------------------------------------------------------------------
  def rules(self, keep: Dict[int, np.ndarray], random_idx: Optional[np.ndarray],
            scales: Sequence[np.ndarray], *, bn_fold: bool = True,
            fold_unused: bool = True, fresh_shortcuts: bool = True) -> Dict[Path, Rule]:
    """Per module path of the compact model, its :class:`Rule` (unlisted modules are copied).

    Args:
      keep: mask index -> kept channels, for every narrowed mask.
      random_idx: the sorted random subset of the randomly narrowed layer (or None).
      scales: per mask, the signed folded scale ``m = sum_k M / 2`` ``[C]``.
      bn_fold: multiply BN gamma/beta by ``m`` where the code does.
      fold_unused: also fold the ResNet masks that are unused in the forward (stem bn1 and block
        bn2 of the CIFAR ResNets), as the code does.
      fresh_shortcuts: ResNet-50 downsample conv + BN and MobileNet-V2 shortcut conv + BN start
        from the compact model's initialisation, as the code's state dict leaves them.
    """
    sc = lambda i, idx=None: (None if not bn_fold else
                              np.asarray(scales[i])[idx] if idx is not None else
                              np.asarray(scales[i]))
    r: Dict[Path, Rule] = {}
    if self.family == 'vgg':
      n = len(self.widths)
      prev = None
      for i in range(n):
        if i in keep:
          out, s = keep[i], sc(i, keep[i])
        elif random_idx is not None and i == n - 1:
          out, s = random_idx, None     # the code copies the 13th BN unscaled
        else:
          out, s = None, None
        r[(f'conv{i}',)] = Rule(out=out, inp=prev)
        r[(f'bn{i}',)] = Rule(out=out, scale=s)
        prev = out
      r[('fc',)] = Rule(inp=prev)
      return r
    if self.family == 'resnet_cifar':
      if fold_unused:
        r[('bn1',)] = Rule(scale=sc(0))
      for s_, j, b in self._blocks():
        p = f'layer{s_}_{j}'
        k = keep[2 * b + 1]
        r[(p, 'conv1')] = Rule(out=k)
        r[(p, 'bn1')] = Rule(out=k, scale=sc(2 * b + 1, k))
        r[(p, 'conv2')] = Rule(inp=k)
        if fold_unused:
          r[(p, 'bn2')] = Rule(scale=sc(2 * b + 2))
      return r
    if self.family == 'mobilenet_v2_cifar':
      for i in range(len(self.widths['hidden'])):
        p, k = f'block{i}', keep[i]
        # The code multiplies the mask into bn1 (expand) and bn2 (depthwise) alike.
        r[(p, 'expand_conv')] = Rule(out=k)
        r[(p, 'expand_bn')] = Rule(out=k, scale=sc(i, k))
        r[(p, 'dw_conv')] = Rule(out=k)
        r[(p, 'dw_bn')] = Rule(out=k, scale=sc(i, k))
        r[(p, 'project_conv')] = Rule(inp=k)
        if fresh_shortcuts:
          r[(p, 'shortcut_conv')] = Rule(fresh=True)
          r[(p, 'shortcut_bn')] = Rule(fresh=True)
      if random_idx is not None:
        r[('conv_last',)] = Rule(out=random_idx)
        r[('bn_last',)] = Rule(out=random_idx)
        r[('fc',)] = Rule(inp=random_idx)
      return r
    for s_, j, b in self._blocks():
      p = f'layer{s_}_{j}'
      k1, k2 = keep[3 * b], keep[3 * b + 1]
      r[(p, 'conv1')] = Rule(out=k1)
      r[(p, 'bn1')] = Rule(out=k1, scale=sc(3 * b, k1))
      r[(p, 'conv2')] = Rule(out=k2, inp=k1)
      r[(p, 'bn2')] = Rule(out=k2, scale=sc(3 * b + 1, k2))
      r[(p, 'conv3')] = Rule(inp=k2)
      if fresh_shortcuts:
        r[(p, 'downsample_conv')] = Rule(fresh=True)
        r[(p, 'downsample_bn')] = Rule(fresh=True)
    return r
