"""PSS-Net's subnet structure space: multipliers -> channel counts, resolutions, FLOPs.

chenbong/PSS-Net ``utils/subnet_sampler.py: SubnetGenerator.sample_subnet``: every multiplier slot
draws ``m ~ U(width_range)`` (kept to 3 decimals), its channel count is
``make_divisible(base * m)``; the resolution is ``make_divisible(U(resolution_range),
resolution_step, min_value=min(resolution_range))``. ``utils/comm.py: create_model_block_list``
maps the multipliers to layer widths:

* MobileNet-V1: 14 slots, the stem conv and the 13 pointwise convs (each depthwise conv keeps its
  input width).
* MobileNet-V2: 9 slots, the stem and the 7 stage outputs plus the 1280 tail, which is sampled
  but never applied (the tail conv and the classifier stay at 1280). The expansion width of a
  block is ``6 * c_in`` of its active input (``block_cmids = [cmid * 6 ...]``).

A subnet here is ``(resolution, channels)`` with ``channels`` the int vector of its *effective*
slots (MobileNet-V2 without the dead tail), so two multiplier vectors with the same channel counts
are the same subnet (the official code keys pools on the multiplier floats, which alias).

FLOPs are the analytic MACs of chenbong/PSS-Net ``utils/model_profiling.py`` as
``common.flops`` counts them (convention 'macs'), vectorised over many subnets.
"""
from __future__ import annotations

import dataclasses
from typing import Tuple

import numpy as np

from common.models import mobilenet_v1 as mbv1
from common.models import mobilenet_v2 as mbv2


def make_divisible(v, divisor: int = 8, min_value=None):
  """slimmable_networks / chenbong/PSS-Net ``utils/comm.py: make_divisible``, elementwise.

  ``new = max(min_value, floor(v + divisor / 2) // divisor * divisor)``, then ``+ divisor`` if
  ``new < 0.9 v`` (never round down by more than 10%). ``v``: scalar or array (> 0); returns int
  (scalar in, scalar out) or an int64 array. ``min_value`` None: ``divisor``.
  """
  if min_value is None:
    min_value = divisor
  a = np.asarray(v, np.float64)
  new = np.maximum(min_value, np.floor(a + divisor / 2) // divisor * divisor)
  new = np.where(new < 0.9 * a, new + divisor, new).astype(np.int64)
  return int(new) if np.ndim(v) == 0 else new


def _conv_out(h, stride: int):
  """Output side of a 3x3 conv with padding 1 (PyTorch ``(h + 2 - 3) // s + 1``)."""
  return (h - 1) // stride + 1


@dataclasses.dataclass(frozen=True)
class Space:
  """One supernet's structure space.

  Attributes:
    model: 'mobilenet_v1', 'mobilenet_v1_tiny' (the zoo's MobileNet-V1 layouts) or
      'mobilenet_v2'.
    width_range: (lo, hi) of the per-slot multipliers (official default (0.75, 1.0)).
    resolution_range: (lo, hi) of the input side (official (128, 224)).
    resolution_step: divisor of the resolution (official 8).
    num_classes: classifier outputs.
  """
  model: str = 'mobilenet_v1'
  width_range: Tuple[float, float] = (0.75, 1.0)
  resolution_range: Tuple[int, int] = (128, 224)
  resolution_step: int = 8
  num_classes: int = 1000

  def __post_init__(self):
    if self.model not in ('mobilenet_v1', 'mobilenet_v1_tiny', 'mobilenet_v2'):
      raise ValueError(f"model must be one of ['mobilenet_v1', 'mobilenet_v1_tiny', "
                       f"'mobilenet_v2']; got {self.model!r}")
    lo, hi = self.width_range
    if not 0 < lo <= hi:
      raise ValueError(f'width_range must be 0 < lo <= hi; got {tuple(self.width_range)}')
    rlo, rhi = self.resolution_range
    if not 0 < rlo <= rhi or self.resolution_step <= 0:
      raise ValueError(f'resolution_range must be 0 < lo <= hi with a positive step; got '
                       f'{tuple(self.resolution_range)}, step {self.resolution_step}')

  # --- layout --------------------------------------------------------------------------------
  @property
  def is_v2(self) -> bool:
    return self.model == 'mobilenet_v2'

  @property
  def base(self) -> Tuple[int, ...]:
    """Base channels of the effective multiplier slots."""
    if self.is_v2:
      return (32, 16, 24, 32, 64, 96, 160, 320)
    return tuple(mbv1.CONFIGS[self.model]['widths'])

  @property
  def num_multipliers(self) -> int:
    """Multipliers the official sampler draws (MobileNet-V2: 9, the last one dead)."""
    return 9 if self.is_v2 else len(self.base)

  @property
  def resolutions(self) -> Tuple[int, ...]:
    lo, hi = self.resolution_range
    return tuple(sorted(set(int(r) for r in make_divisible(
        np.linspace(lo, hi, 4001), self.resolution_step, lo))))

  @property
  def max_channels(self) -> np.ndarray:
    return self.channels_of(np.full((1, self.num_multipliers), self.width_range[1]))[0]

  @property
  def min_channels(self) -> np.ndarray:
    return self.channels_of(np.full((1, self.num_multipliers), self.width_range[0]))[0]

  def slot_values(self) -> Tuple[Tuple[int, ...], ...]:
    """The distinct channel counts each effective slot can take."""
    grid = np.linspace(self.width_range[0], self.width_range[1], 2001)
    return tuple(tuple(int(c) for c in np.unique(make_divisible(b * grid))) for b in self.base)

  def channels_of(self, mults) -> np.ndarray:
    """``[N, num_multipliers]`` multipliers -> ``[N, len(base)]`` int channel counts."""
    m = np.asarray(mults, np.float64)
    return make_divisible(np.asarray(self.base)[None] * m[:, :len(self.base)])

  # --- sampling ------------------------------------------------------------------------------
  def sample(self, rng: np.random.Generator, n: int) -> Tuple[np.ndarray, np.ndarray]:
    """``n`` uniform subnets ``(res [n], channels [n, S])`` (``SubnetGenerator.sample_subnet``)."""
    lo, hi = self.resolution_range
    res = make_divisible(rng.uniform(lo, hi, n), self.resolution_step, lo)
    mults = np.round(rng.uniform(*self.width_range, (n, self.num_multipliers)), 3)
    return res.astype(np.int64), self.channels_of(mults)

  # --- the zoo model of a subnet -------------------------------------------------------------
  def zoo_name(self) -> str:
    return self.model

  def strides(self) -> Tuple[int, ...]:
    return tuple(mbv2.STRIDES['imagenet']) if self.is_v2 else tuple(mbv1.CONFIGS[self.model]['strides'])

  def stem_stride(self) -> int:
    return 2 if self.is_v2 else mbv1.CONFIGS[self.model]['stem_stride']

  def widths(self, channels) -> object:
    """Zoo width config of one subnet (MobileNet-V1 list / MobileNet-V2 dict)."""
    c = [int(v) for v in channels]
    if not self.is_v2:
      return c
    stem, stages = c[0], c[1:]
    out = [stages[i] for i, n in enumerate((1, 2, 3, 4, 3, 3, 1)) for _ in range(n)]
    ins = [stem] + out[:-1]
    hidden = [stem] + [6 * v for v in ins[1:]]
    return {'stem': stem, 'hidden': hidden, 'out': out, 'last': 1280}

  def counts(self, channels) -> np.ndarray:
    """int32 ``counts`` of ``common.models.slimmable`` for one subnet."""
    from common.models.slimmable import counts_of
    return counts_of(self.model, self.widths(channels))

  def key(self, res, channels) -> Tuple[int, Tuple[int, ...]]:
    """Canonical pool key ``(resolution, channel tuple)``."""
    return int(res), tuple(int(v) for v in channels)

  # --- FLOPs ---------------------------------------------------------------------------------
  def flops(self, res, channels) -> np.ndarray:
    """MACs ``[N]`` (int64) of subnets ``res [N]``, ``channels [N, S]`` (see :func:`subnet_flops`)."""
    return subnet_flops(self, res, channels)


def subnet_flops(space: Space, res, channels) -> np.ndarray:
  """Vectorised MACs of many subnets, chenbong/PSS-Net's analytic rule (``common.flops`` 'macs').

  conv ``H_out W_out (C_out / groups) k^2 C_in``; global pool ``H W C``; classifier ``C K``.
  Args: ``res [N]`` ints, ``channels [N, S]`` effective slot channels. Returns ``[N]`` int64.
  """
  r = np.asarray(res, np.int64).reshape(-1)
  c = np.asarray(channels, np.int64).reshape(len(r), -1)
  k = space.num_classes
  h = _conv_out(r, space.stem_stride())
  if not space.is_v2:
    f = h * h * c[:, 0] * 27
    cin = c[:, 0]
    for i, s in enumerate(space.strides()):
      h = _conv_out(h, s)
      f = f + h * h * cin * 9 + h * h * c[:, i + 1] * cin
      cin = c[:, i + 1]
    return f + h * h * cin + cin * k
  stem = c[:, 0]
  out = [c[:, 1 + i] for i, n in enumerate((1, 2, 3, 4, 3, 3, 1)) for _ in range(n)]
  f = h * h * stem * 27
  cin = stem
  for i, (o, s) in enumerate(zip(out, space.strides())):
    hid = cin if i == 0 else 6 * cin
    if i:
      f = f + h * h * hid * cin
    ho = _conv_out(h, s)
    f = f + ho * ho * hid * 9 + ho * ho * o * hid
    h, cin = ho, o
  return f + h * h * 1280 * cin + h * h * 1280 + 1280 * k

