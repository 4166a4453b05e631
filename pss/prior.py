"""Metric bins, the FLOPs-conditioned structure prior, and the p / T schedules of PSS-Net.

chenbong/PSS-Net ``utils/comm.py: round_metric, exp`` and ``utils/subnet_sampler.py:
ArchSampler`` (``build_trasition_prob_matrix``, ``sample_model_cfgs_according_to_prob``);
``train.py: gen_map_worker`` generates the prior's samples.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Tuple

import numpy as np

from pss.space import Space

MetricFn = Callable[[np.ndarray, np.ndarray], np.ndarray]   # (res [N], channels [N, S]) -> [N]


def round_metric(v, step: float, offset: float = 0.0):
  """``round((v - offset) / step) * step + offset`` with Python's banker's rounding (half to even),
  as chenbong/PSS-Net ``utils/comm.py: round_metric`` (e.g. 125 -> 120 and 135 -> 140 at step 10).

  ``v``: scalar or array; returns float (array). The official code truncates the result to
  ``int``; bins here stay floats so that sub-unit steps (0.5 MFLOPs) work, and integer steps give
  the same integers.
  """
  if not step > 0:
    raise ValueError(f'step must be > 0; got {step!r}')
  q = np.round((np.asarray(v, np.float64) - offset) / step) * step + offset  # np.round: half-even
  return float(q) if np.ndim(v) == 0 else q


def exp_schedule(start: float, end: float, epoch, epochs: int):
  """``start * (end / start) ** (epoch / epochs)``: the per-epoch p and T decay of
  chenbong/PSS-Net ``utils/comm.py: exp`` (``supernet_p_range``, ``pool_softmax_t_range``)."""
  if epochs <= 0 or not start > 0 or not end > 0:
    raise ValueError(f'need epochs > 0 and positive start/end; got {epochs}, {start}, {end}')
  return start * (end / start) ** (np.asarray(epoch, np.float64) / epochs)


def to_mega(v) -> np.ndarray:
  return np.asarray(v, np.float64) / 1e6


@dataclasses.dataclass
class Prior:
  """Per-bin factorised categorical prior over (resolution, slot channels).

  Attributes:
    bins: ``[B]`` float bin centres (metric units), ascending.
    resolutions: ``[R]`` int values; ``res_probs [B, R]``.
    slot_values: ``[S, V]`` int channel values per slot (zero padded); ``slot_probs [B, S, V]``.
    samples_res ``[N]``, samples_ch ``[N, S]``, samples_bin ``[N]`` (bin index): the generating
      samples (the fallback of :func:`sample_prior`).
    step, offset: the bin grid.
  """
  bins: np.ndarray
  resolutions: np.ndarray
  res_probs: np.ndarray
  slot_values: np.ndarray
  slot_probs: np.ndarray
  samples_res: np.ndarray
  samples_ch: np.ndarray
  samples_bin: np.ndarray
  step: float
  offset: float

  def bin_index(self, b: float) -> int:
    i = int(np.argmin(np.abs(self.bins - b)))
    if abs(self.bins[i] - b) > 1e-9 * max(1.0, abs(b)):
      raise ValueError(f'{b} is not a bin of the prior; bins: {self.bins.tolist()}')
    return i


def build_prior(space: Space, metric: MetricFn, n: int, step: float, start: float, stop: float,
                rng: np.random.Generator, offset: float = 0.0, chunk: int = 8192) -> Prior:
  """The structure prior of chenbong/PSS-Net ``train.py: gen_map_worker`` + ``ArchSampler``.

  Draws uniform subnets (:meth:`Space.sample`), keeps the ones whose rounded metric lies in the
  interior bins ``start + step .. stop - step`` until ``n`` are kept, and builds per bin the
  empirical marginals of the resolution and of every slot's channel count. Vectorised numpy (the
  official code spreads the loop over 64 processes).

  Args:
    metric: ``(res [N], channels [N, S]) -> [N]`` in bin units (MFLOPs, us).
    n: prior samples to keep; step, start, stop, offset: the bin grid.
  """
  if n <= 0:
    raise ValueError(f'prior size must be positive; got {n}')
  lo, hi = start + step, stop - step
  if lo > hi:
    raise ValueError(f'no interior bin between start={start} + step and stop={stop} - step '
                     f'(step={step})')
  kept_r, kept_c, kept_b, drawn = [], [], [], 0
  total = 0
  while total < n:
    r, c = space.sample(rng, chunk)
    b = round_metric(metric(r, c), step, offset)
    ok = (b >= lo - 1e-9) & (b <= hi + 1e-9)
    kept_r.append(r[ok]), kept_c.append(c[ok]), kept_b.append(b[ok])
    total += int(ok.sum())
    drawn += chunk
    if drawn > 1000 * max(n, chunk) and total == 0:
      raise ValueError(f'no subnet of the space falls in the bins {lo}..{hi}')
  r = np.concatenate(kept_r)[:n]
  c = np.concatenate(kept_c)[:n]
  b = np.concatenate(kept_b)[:n]
  bins = np.unique(b)
  bi = np.searchsorted(bins, b)
  resolutions = np.asarray(space.resolutions, np.int64)
  values = space.slot_values()
  vmax = max(len(v) for v in values)
  slot_values = np.zeros((len(values), vmax), np.int64)
  for s, v in enumerate(values):
    slot_values[s, :len(v)] = v
  res_counts = np.zeros((len(bins), len(resolutions)))
  np.add.at(res_counts, (bi, np.searchsorted(resolutions, r)), 1)
  slot_counts = np.zeros((len(bins), len(values), vmax))
  for s, v in enumerate(values):
    np.add.at(slot_counts[:, s], (bi, np.searchsorted(np.asarray(v), c[:, s])), 1)
  return Prior(bins=bins, resolutions=resolutions,
               res_probs=res_counts / res_counts.sum(1, keepdims=True),
               slot_values=slot_values,
               slot_probs=slot_counts / slot_counts.sum(2, keepdims=True),
               samples_res=r, samples_ch=c, samples_bin=bi, step=float(step),
               offset=float(offset))


def _categorical(rng: np.random.Generator, probs: np.ndarray, k: int) -> np.ndarray:
  """``k`` draws from each row of ``probs [..., V]`` -> ``[k, ...]`` indices (inverse CDF)."""
  cdf = np.cumsum(probs, -1)
  u = rng.random((k,) + probs.shape[:-1])
  return np.minimum((cdf[None] <= u[..., None]).sum(-1), probs.shape[-1] - 1)


def sample_prior(prior: Prior, space_metric: MetricFn, b: int, rng: np.random.Generator,
                 max_tries: int = 10_000, chunk: int = 32) -> Tuple[int, np.ndarray]:
  """One subnet of bin index ``b`` from the prior, by rejection (``ArchSampler.
  sample_model_cfgs_according_to_prob``): draw the resolution and every slot independently from
  bin ``b``'s marginals until the rounded metric equals the bin.

  Candidates are drawn ``chunk`` at a time (vectorised) and the first that lands is taken. The
  official loop is unbounded; after ``max_tries`` draws this falls back to a random generating
  sample of the bin. Returns ``(res, channels [S])``.
  """
  target = prior.bins[b]
  tries = 0
  while tries < max_tries:
    ri = _categorical(rng, prior.res_probs[b], chunk)
    ci = _categorical(rng, prior.slot_probs[b], chunk)                     # [chunk, S]
    res = prior.resolutions[ri]
    ch = np.take_along_axis(prior.slot_values[None], ci[..., None], -1)[..., 0]
    got = round_metric(space_metric(res, ch), prior.step, prior.offset)
    hit = np.flatnonzero(np.abs(got - target) < 1e-9 * max(1.0, abs(target)))
    if hit.size:
      return int(res[hit[0]]), ch[hit[0]]
    tries += chunk
  idx = np.flatnonzero(prior.samples_bin == b)
  j = idx[rng.integers(len(idx))]
  return int(prior.samples_res[j]), prior.samples_ch[j]
