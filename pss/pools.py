"""Host-side subnet pools of PSS-Net (chenbong/PSS-Net ``train.py: train``, ``arch_pools``).

One pool per metric bin: a bounded map from the canonical subnet key ``(resolution, channel
tuple)`` to its performance metric (``-CE`` on a training batch, higher is better). Rules:

* a new key is inserted with its metric; a revisited key moves by an EMA,
  ``m <- lam * m + (1 - lam) * m_new`` (``metric_lambda`` 0.9);
* over capacity, the key with the smallest metric is evicted (possibly the one just inserted);
* sampling from a pool draws a key with probability ``softmax(metric / T)``.

Pools are plain Python state; :meth:`SubnetPools.to_json` / :meth:`from_json` round-trip them
exactly (floats through ``repr``), so they are saved with every checkpoint.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

Key = Tuple[int, Tuple[int, ...]]


def softmax_probs(metrics: Sequence[float], temperature: float) -> np.ndarray:
  """``softmax(m / T)`` (scipy's, as the official code calls it), max-subtracted for T -> 0."""
  if not temperature > 0:
    raise ValueError(f'temperature must be > 0; got {temperature!r}')
  z = np.asarray(metrics, np.float64) / temperature
  e = np.exp(z - z.max())
  return e / e.sum()


class SubnetPools:
  """Pools of ``capacity`` entries for the bins ``bins`` (floats, metric units)."""

  def __init__(self, bins: Sequence[float], capacity: int, metric_lambda: float = 0.9):
    if capacity < 1:
      raise ValueError(f'pool capacity must be >= 1; got {capacity}')
    if not 0.0 <= metric_lambda < 1.0:
      raise ValueError(f'metric_lambda must be in [0, 1); got {metric_lambda}')
    self.bins = [float(b) for b in bins]
    self.capacity = int(capacity)
    self.metric_lambda = float(metric_lambda)
    self.pools: List[Dict[Key, float]] = [dict() for _ in self.bins]

  def __len__(self) -> int:
    return len(self.bins)

  def size(self, b: int) -> int:
    return len(self.pools[b])

  def full(self, b: int) -> bool:
    return len(self.pools[b]) >= self.capacity

  def insert(self, b: int, key: Key, metric: float) -> Optional[Key]:
    """Inserts or EMA-updates ``key`` in pool ``b``; returns the evicted key (or None)."""
    pool = self.pools[b]
    if key in pool:
      pool[key] = pool[key] * self.metric_lambda + float(metric) * (1 - self.metric_lambda)
    else:
      pool[key] = float(metric)
    if len(pool) > self.capacity:
      worst = min(pool, key=pool.__getitem__)   # first minimum in insertion order, as min() does
      del pool[worst]
      return worst
    return None

  def sample(self, b: int, temperature: float, rng: np.random.Generator) -> Key:
    """A key of pool ``b`` drawn with probability ``softmax(metric / T)``."""
    keys = list(self.pools[b])
    if not keys:
      raise ValueError(f'pool {b} (bin {self.bins[b]}) is empty')
    p = softmax_probs([self.pools[b][k] for k in keys], temperature)
    return keys[int(np.searchsorted(np.cumsum(p), rng.random(), side='right').clip(0, len(keys) - 1))]

  def top(self, b: int, k: int = 1) -> List[Tuple[Key, float]]:
    """The ``k`` best ``(key, metric)`` of pool ``b``, best first."""
    return sorted(self.pools[b].items(), key=lambda kv: -kv[1])[:k]

  # --- serialisation -------------------------------------------------------------------------
  def to_json(self) -> Dict:
    return {'bins': [repr(b) for b in self.bins], 'capacity': self.capacity,
            'metric_lambda': repr(self.metric_lambda),
            'pools': [[[k[0], list(k[1]), repr(v)] for k, v in pool.items()]
                      for pool in self.pools]}

  @classmethod
  def from_json(cls, d: Dict) -> 'SubnetPools':
    p = cls([float(b) for b in d['bins']], int(d['capacity']), float(d['metric_lambda']))
    p.pools = [{(int(r), tuple(int(c) for c in ch)): float(v) for r, ch, v in pool}
               for pool in d['pools']]
    return p


def rng_state_to_json(rng: np.random.Generator) -> Dict:
  """JSON form of a numpy Generator's bit-generator state (big ints as strings)."""
  def enc(x):
    if isinstance(x, dict):
      return {k: enc(v) for k, v in x.items()}
    if isinstance(x, (int, np.integer)) and not isinstance(x, bool):
      return {'__int__': str(int(x))}
    return x
  return enc(rng.bit_generator.state)


def rng_from_json(d: Dict) -> np.random.Generator:
  """Inverse of :func:`rng_state_to_json`."""
  def dec(x):
    if isinstance(x, dict):
      if set(x) == {'__int__'}:
        return int(x['__int__'])
      return {k: dec(v) for k, v in x.items()}
    return x
  state = dec(d)
  bg = getattr(np.random, state['bit_generator'])()
  bg.state = state
  return np.random.Generator(bg)
