"""``LayerSpec``: an analytic, trace-free description of every conv / dense / BN layer of a model.

``common.models.layer_specs(name, widths, input_hw, num_classes)`` returns one ``LayerSpec`` per
layer in forward order. It is the single source of truth for FLOPs/params (``common.flops``) and for
which layers a paper masks, fuses or rearranges (``role``, ``feeds_residual``, ``depthwise``,
``bn``). ``tests/common/test_models.py`` checks every spec against ``model.init`` params.
"""
from __future__ import annotations

import dataclasses
from typing import Dict, List, Optional, Tuple

Path = Tuple[str, ...]

KINDS = ('conv', 'dense', 'bn')
ROLES = ('stem', 'inner', 'block_out', 'shortcut', 'expand', 'project', 'pointwise', 'depthwise',
         'classifier')


@dataclasses.dataclass(frozen=True)
class LayerSpec:
  """One conv / dense / BN layer.

  Attributes:
    path: module path in the params tree, e.g. ``('layer1_0', 'conv1')``.
    kind: 'conv' | 'dense' | 'bn'.
    in_ch, out_ch: channels (for BN both are the normalised channel count).
    kernel: ``(k, k)`` (``(1, 1)`` for dense / BN).
    stride: conv stride (1 for dense / BN).
    groups: conv groups (``in_ch`` for a depthwise conv).
    bias: whether the layer has a bias leaf (BN: True, its beta).
    in_hw, out_hw: spatial size of the input / output (``(1, 1)`` for dense).
    bn: path of the BatchNorm that directly follows a conv, else None.
    feeds_residual: the layer's output (after its BN) is an operand of a residual sum, directly
      or through an identity / option-A shortcut of a later block; permuting its output channels
      would therefore also permute the residual stream.
    depthwise: a depthwise conv (``groups == in_ch == out_ch``, ``in_ch > 1``).
    role: 'stem' | 'inner' | 'block_out' | 'shortcut' | 'expand' | 'project' | 'pointwise' |
      'depthwise' | 'classifier'; a BN has the role of the conv it follows.
    pool_in_hw: classifier only: the spatial size that was global-average-pooled to feed it
      (PSS-Net's 'macs' convention counts ``H*W*C`` for that pool).
  """
  path: Path
  kind: str
  in_ch: int
  out_ch: int
  kernel: Tuple[int, int] = (1, 1)
  stride: int = 1
  groups: int = 1
  bias: bool = False
  in_hw: Tuple[int, int] = (1, 1)
  out_hw: Tuple[int, int] = (1, 1)
  bn: Optional[Path] = None
  feeds_residual: bool = False
  depthwise: bool = False
  role: Optional[str] = None
  pool_in_hw: Optional[Tuple[int, int]] = None

  def param_shapes(self) -> Dict[str, Tuple[int, ...]]:
    """Shapes of the layer's params leaves (Flax layout: HWIO conv kernel, ``[in, out]`` dense)."""
    if self.kind == 'conv':
      kh, kw = self.kernel
      shapes = {'kernel': (kh, kw, self.in_ch // self.groups, self.out_ch)}
    elif self.kind == 'dense':
      shapes = {'kernel': (self.in_ch, self.out_ch)}
    else:
      return {'scale': (self.out_ch,), 'bias': (self.out_ch,)}
    if self.bias:
      shapes['bias'] = (self.out_ch,)
    return shapes

  @property
  def num_params(self) -> int:
    """Number of parameters (conv/dense weights + bias; BN gamma + beta)."""
    n = 0
    for shape in self.param_shapes().values():
      k = 1
      for d in shape:
        k *= d
      n += k
    return n


def conv_out_hw(in_hw: Tuple[int, int], k: int, stride: int) -> Tuple[int, int]:
  """Output size of a conv with PyTorch padding ``k // 2``: ``(H + 2*(k//2) - k) // s + 1``."""
  p = k // 2
  return tuple((h + 2 * p - k) // stride + 1 for h in in_hw)


def pool_out_hw(in_hw: Tuple[int, int], k: int, stride: int, pad: int) -> Tuple[int, int]:
  """Output size of a (max) pool ``(H + 2*pad - k) // s + 1`` (floor mode, as PyTorch)."""
  return tuple((h + 2 * pad - k) // stride + 1 for h in in_hw)


class SpecBuilder:
  """Accumulates specs in forward order while tracking the spatial size."""

  def __init__(self, input_hw):
    if (not isinstance(input_hw, (tuple, list)) or len(input_hw) != 2
        or any(int(h) <= 0 for h in input_hw)):
      raise ValueError(f'input_hw must be (H, W) with positive ints; got {input_hw!r}')
    self.specs: List[LayerSpec] = []
    self.hw = tuple(int(h) for h in input_hw)

  def conv(self, path: Path, in_ch: int, out_ch: int, k: int, *, stride: int = 1, groups: int = 1,
           bias: bool = False, role: str, feeds_residual: bool = False,
           bn: Optional[Path] = None, in_hw=None) -> Tuple[int, int]:
    """Adds a conv (and its BN when ``bn`` is a path); returns the output spatial size.

    ``in_hw`` defaults to the running size; the running size becomes the output size unless an
    explicit ``in_hw`` was given (a shortcut branch that does not continue the main path).
    """
    branch = in_hw is not None
    in_hw = tuple(in_hw) if branch else self.hw
    out_hw = conv_out_hw(in_hw, k, stride)
    dw = groups > 1 and groups == in_ch == out_ch
    self.specs.append(LayerSpec(tuple(path), 'conv', in_ch, out_ch, (k, k), stride, groups, bias,
                                in_hw, out_hw, tuple(bn) if bn else None, feeds_residual, dw,
                                role))
    if bn:
      self.specs.append(LayerSpec(tuple(bn), 'bn', out_ch, out_ch, (1, 1), 1, 1, True, out_hw,
                                  out_hw, None, feeds_residual, False, role))
    if not branch:
      self.hw = out_hw
    return out_hw

  def pool(self, k: int, stride: int, pad: int = 0):
    """A parameter-free pooling that changes the running spatial size."""
    self.hw = pool_out_hw(self.hw, k, stride, pad)

  def classifier(self, in_ch: int, num_classes: int, as_conv: bool, path: Path = ('fc',)):
    """The classifier after global average pooling (dense, or 1x1 conv with bias)."""
    pooled = self.hw
    self.specs.append(LayerSpec(tuple(path), 'conv' if as_conv else 'dense', in_ch, num_classes,
                                (1, 1), 1, 1, True, (1, 1), (1, 1), None, False, False,
                                'classifier', pooled))
    self.hw = (1, 1)
