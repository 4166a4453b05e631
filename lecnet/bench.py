"""What LEC-Net's compression buys at inference: the gated heads (every session's full
``F x N`` expansion branch, as ``OneModel`` runs them) against the compact heads that keep only
the active expanded nodes (``lecnet.export``), timed side by side in one run
(``common.timing.time_interleaved``).

  python -m lecnet.bench --features=512 --nodes=512 --sessions=10 --way=10 --active=0.1

Synthetic weights at the CUB-200 shape by default (ResNet-18 512-d features, N = 512, 10
sessions); ``--active`` is the fraction of expanded nodes whose gate is on (r = 0.1 is LEC's
budget). Prints the time per batch of each, their ratio, the parameter counts of the heads and
the largest logit difference.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys

import jax
import jax.numpy as jnp
import numpy as np

from common import cli, timing
from lecnet import lec
from lecnet.export import compact_branches, compact_logits


def build(features: int, nodes: int, base: int, way: int, sessions: int, active: float,
          seed: int = 0):
  """Random heads, binary-like stored gates with ``active`` of the nodes on; returns
  ``(params, gates)``."""
  r = np.random.RandomState(seed)
  p = {'node': r.randn(features, nodes).astype(np.float32) / np.sqrt(features),
       'head_0': r.randn(nodes, base).astype(np.float32)}
  gates = np.zeros((sessions + 1, nodes), np.float32)
  gates[0] = 1.0
  for j in range(1, sessions + 1):
    p[f'expand_{j}'] = r.randn(features, nodes).astype(np.float32) / np.sqrt(features)
    p[f'head_{j}'] = r.randn(nodes, way).astype(np.float32)
    on = r.permutation(nodes)[:int(round(active * nodes))]
    gates[j, on] = 1.0
  return p, gates


def main(argv=None) -> int:
  ap = cli.ArgumentParser(prog='python -m lecnet.bench', description=__doc__.split('\n')[0])
  ap.add_argument('--features', type=int, default=512)
  ap.add_argument('--nodes', type=int, default=512)
  ap.add_argument('--base', type=int, default=100)
  ap.add_argument('--way', type=int, default=10)
  ap.add_argument('--sessions', type=int, default=10)
  ap.add_argument('--active', type=float, default=0.1)
  ap.add_argument('--batch', type=int, default=256)
  ap.add_argument('--rounds', type=int, default=20)
  args = ap.parse_args(argv)
  for k in ('features', 'nodes', 'base', 'way', 'sessions', 'batch', 'rounds'):
    if getattr(args, k) < 1:
      cli.fail(f'--{k} must be >= 1; got {getattr(args, k)}')
  if not 0.0 <= args.active <= 1.0:
    cli.fail(f'--active must be in [0, 1]; got {args.active}')
  params, gates = build(args.features, args.nodes, args.base, args.way, args.sessions,
                        args.active)
  s = args.sessions
  x = jnp.asarray(np.random.RandomState(1).rand(args.batch, args.features).astype(np.float32))
  jp = jax.tree.map(jnp.asarray, params)
  jg = jnp.asarray(gates)

  @jax.jit
  def gated(x):
    u = x @ jp['node']
    a = [x @ jp[f'expand_{j}'] for j in range(1, s + 1)]
    return lec.session_logits(u, a, [jg[j] for j in range(1, s + 1)],
                              [jp[f'head_{j}'] for j in range(s + 1)])

  branches = compact_branches(params, gates, s)
  jb = [{k: (jnp.asarray(v) if k != 'dropped_max' else v) for k, v in b.items()}
        for b in branches]

  @jax.jit
  def compact(x):
    return compact_logits(x, jp, jb)

  diff = float(jnp.max(jnp.abs(gated(x) - compact(x))))
  times = timing.time_interleaved({'gated': lambda: gated(x).block_until_ready(),
                                   'compact': lambda: compact(x).block_until_ready()},
                                  repeats=args.rounds, min_seconds=0.05)
  dense_params = args.features * args.nodes * (s + 1) + args.nodes * (args.base + s * args.way)
  compact_params = (args.features * args.nodes + sum(b['kernel'].size for b in branches)
                    + args.nodes * (args.base + s * args.way))
  out = {'device': jax.devices()[0].device_kind, 'cpu': platform.processor() or platform.machine(),
         'batch': args.batch, 'active': args.active,
         'gated_ms': 1e3 * times['gated'].median, 'compact_ms': 1e3 * times['compact'].median,
         'speedup': times['gated'].median / times['compact'].median,
         'head_params_gated': dense_params, 'head_params_compact': int(compact_params),
         'max_logit_diff': diff}
  print(json.dumps(out, indent=1))
  return 0


if __name__ == '__main__':
  sys.exit(main())
