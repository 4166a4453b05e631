"""Per-block latency lookup table measured on this machine (the latency metric of PSS-Net).

  python -m pss.latency_table --space=tiny --out=runs/latency/tiny.json [--repeats=5]

chenbong/PSS-Net ``utils/comm.py: create_model_block_list`` describes a subnet as a list of
blocks ``BlockCfg(block_type, in_size, cin, cout, cmid, kernel, stride, padding)`` and its
latency as the sum of their entries in a pickled table (``scripts/lut/mbv{1,2}_{cpu,gpu}.pkl``,
measured on the authors' devices; a missing entry is an error). This module enumerates every
block a space can produce, times each one here (jitted, eval mode, batch ``--batch``, median of
interleaved rounds, ``common.timing``), and writes a JSON table. Keys:

* MobileNet-V1: ``stem/<in>/<cout>/<stride>``, ``dwpw/<in>/<cin>/<cout>/<stride>``,
  ``fc/<in>/<cin>/<classes>`` (global pool + classifier);
* MobileNet-V2: ``stem/...``, ``ir/<in>/<cin>/<cout>/<cmid>/<stride>``,
  ``last/<in>/<cin>`` (1x1 conv to 1280 + BN + ReLU6), ``fc/<in>/1280/<classes>``.

``LatencyTable.metric`` sums a subnet's entries (in microseconds) and can replace FLOPs as the
metric of the bins (``--config.method.metric=latency --config.method.latency_table=FILE``).
"""
from __future__ import annotations

import json
import os
import sys
from typing import Dict, Iterable, List, Tuple

import numpy as np

from common import cli, timing
from pss.space import Space, _conv_out

SPACES = {
    'tiny': lambda: Space('mobilenet_v1_tiny', (0.5, 1.0), (24, 32), 4, 10),
    'mbv1_imagenet': lambda: Space('mobilenet_v1'),
    'mbv2_imagenet': lambda: Space('mobilenet_v2'),
}

V2_STAGES = (1, 2, 3, 4, 3, 3, 1)


def block_keys(space: Space, res: int, channels) -> List[str]:
  """The table keys of one subnet's blocks, in forward order."""
  c = [int(v) for v in channels]
  h = int(res)
  keys = [f'stem/{h}/{c[0]}/{space.stem_stride()}']
  h = _conv_out(h, space.stem_stride())
  if not space.is_v2:
    for i, s in enumerate(space.strides()):
      keys.append(f'dwpw/{h}/{c[i]}/{c[i + 1]}/{s}')
      h = _conv_out(h, s)
    return keys + [f'fc/{h}/{c[-1]}/{space.num_classes}']
  w = space.widths(c)
  cin = w['stem']
  for o, hid, s in zip(w['out'], w['hidden'], space.strides()):
    keys.append(f'ir/{h}/{cin}/{o}/{hid}/{s}')
    h, cin = _conv_out(h, s), o
  return keys + [f'last/{h}/{cin}', f'fc/{h}/1280/{space.num_classes}']


def all_block_keys(space: Space) -> List[str]:
  """Every key any subnet of ``space`` can need (over all resolutions and slot values)."""
  vals = space.slot_values()
  keys = set()
  for r in space.resolutions:
    h = _conv_out(r, space.stem_stride())
    for c0 in vals[0]:
      keys.add(f'stem/{r}/{c0}/{space.stem_stride()}')
    if not space.is_v2:
      for i, s in enumerate(space.strides()):
        for a in vals[i]:
          for b in vals[i + 1]:
            keys.add(f'dwpw/{h}/{a}/{b}/{s}')
        h = _conv_out(h, s)
      for a in vals[-1]:
        keys.add(f'fc/{h}/{a}/{space.num_classes}')
      continue
    stage_of = [j for j, n in enumerate(V2_STAGES) for _ in range(n)]
    prev_vals = vals[0]
    for i, s in enumerate(space.strides()):
      cur = vals[1 + stage_of[i]]
      for a in prev_vals:
        for b in cur:
          keys.add(f'ir/{h}/{a}/{b}/{a if i == 0 else 6 * a}/{s}')
      prev_vals = cur
      h = _conv_out(h, s)
    for a in prev_vals:
      keys.add(f'last/{h}/{a}')
    keys.add(f'fc/{h}/1280/{space.num_classes}')
  return sorted(keys)


class LatencyTable:
  """A measured table ``key -> microseconds`` with the device it was measured on."""

  def __init__(self, entries: Dict[str, float], device: str = ''):
    self.entries = dict(entries)
    self.device = device

  @classmethod
  def load(cls, path: str) -> 'LatencyTable':
    with open(path) as f:
      d = json.load(f)
    return cls(d['entries'], d.get('device', ''))

  def save(self, path: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, 'w') as f:
      json.dump({'device': self.device, 'unit': 'us', 'entries': self.entries}, f, indent=1,
                sort_keys=True)

  def metric(self, space: Space, res, channels) -> np.ndarray:
    """``[N]`` latencies (us) of subnets ``res [N]``, ``channels [N, S]``: the sum of their
    blocks' entries. Raises KeyError naming a block the table lacks."""
    out = np.zeros(len(res))
    for n, (r, c) in enumerate(zip(np.asarray(res), np.asarray(channels))):
      total = 0.0
      for k in block_keys(space, int(r), c):
        if k not in self.entries:
          raise KeyError(f'latency table has no entry for block {k!r} (measure the table for '
                         f'this space with python -m pss.latency_table)')
        total += self.entries[k]
      out[n] = total
    return out


def _block_fn(key: str, batch: int):
  """``(jitted fn, input)`` computing one block in eval mode with random weights."""
  import flax.linen as nn
  import jax
  import jax.numpy as jnp
  from common.models import layers as L

  kind, *f = key.split('/')
  f = [int(v) for v in f]

  class Block(nn.Module):
    @nn.compact
    def __call__(self, x):
      bn = lambda n: L.batch_norm(False, n)
      act = nn.relu6
      if kind == 'stem':
        _, cout, s = f
        return act(bn('bn')(L.conv(cout, 3, in_ch=3, stride=s, name='c')(x)))
      if kind == 'dwpw':
        _, cin, cout, s = f
        x = act(bn('b1')(L.conv(cin, 3, in_ch=cin, stride=s, groups=cin, name='dw')(x)))
        return act(bn('b2')(L.conv(cout, 1, in_ch=cin, name='pw')(x)))
      if kind == 'ir':
        _, cin, cout, cmid, s = f
        y = x
        if cmid != cin:   # block 0 (t = 1) has no expansion conv
          y = act(bn('b0')(L.conv(cmid, 1, in_ch=cin, name='e')(y)))
        y = act(bn('b1')(L.conv(cmid, 3, in_ch=cmid, stride=s, groups=cmid, name='dw')(y)))
        y = bn('b2')(L.conv(cout, 1, in_ch=cmid, name='p')(y))
        return y + x if (s == 1 and cin == cout) else y
      if kind == 'last':
        _, cin = f
        return act(bn('b')(L.conv(1280, 1, in_ch=cin, name='c')(x)))
      _, cin, k = f   # global pool over the last feature map + classifier
      return nn.Dense(k, name='fc')(jnp.mean(x, axis=(1, 2)))

  h = f[0]
  cin = 3 if kind == 'stem' else f[1]
  x = jnp.ones((batch, h, h, cin), jnp.float32)
  m = Block()
  v = m.init(jax.random.PRNGKey(0), x)
  fn = jax.jit(lambda v, x: m.apply(v, x))
  return (lambda: fn(v, x))


def measure(keys: Iterable[str], batch: int = 1, repeats: int = 5) -> Dict[str, float]:
  """Median microseconds per call of each block (``common.timing.time_interleaved`` over small
  groups, so that a drifting load touches all of a group alike)."""
  from common import timing
  keys = list(keys)
  out = {}
  group = 16
  for g in range(0, len(keys), group):
    fns = {k: _block_fn(k, batch) for k in keys[g:g + group]}
    t = timing.time_interleaved(fns, repeats=repeats)
    out.update({k: t[k].median * 1e6 for k in fns})
  return out



def main(argv=None) -> int:
  p = cli.ArgumentParser(prog='python -m pss.latency_table', description=__doc__.split('\n')[0])
  p.add_argument('--space', required=True, choices=sorted(SPACES))
  p.add_argument('--out', required=True, help='JSON file to write')
  p.add_argument('--batch', type=int, default=1)
  p.add_argument('--repeats', type=int, default=5)
  a = p.parse_args(argv)
  if a.batch < 1 or a.repeats < 1:
    cli.fail(f'--batch and --repeats must be >= 1; got {a.batch}, {a.repeats}')
  space = SPACES[a.space]()
  keys = all_block_keys(space)
  print(f'measuring {len(keys)} blocks of {a.space} on {timing.cpu_name()}', flush=True)
  table = LatencyTable(measure(keys, a.batch, a.repeats), device=timing.cpu_name())
  table.save(a.out)
  r, c = space.sample(np.random.default_rng(0), 1000)
  lat = table.metric(space, r, c)
  print(json.dumps({'out': a.out, 'entries': len(keys), 'device': table.device,
                    'subnet_latency_us_min_median_max': [float(lat.min()), float(np.median(lat)),
                                                         float(lat.max())]}))
  return 0


if __name__ == '__main__':
  sys.exit(main())
