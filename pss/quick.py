"""PSS-Net quick experiment on digits (the ``common.reproduce`` contract: ``run`` returns rows,
plots, checks).

  python -c "from pss import quick; print(quick.run('runs/quick/pss'))"

The tiny MobileNet-V1 supernet of ``pss/configs/digits.py`` (6 per-layer multipliers in
[0.5, 1.0], resolutions {24, 28, 32}, FLOPs bins of 0.5 MFLOPs keeping 1.5..4.0, pools of 10,
15 epochs; selection among each pool's top 3 and BN recalibration on held-out / training data,
test top-1 reported). Arms, identical but for the sampler of the middle subnet:

* ``PSS``: p and T decay from 1 to 0.01 (prioritized sampling from the pools);
* ``uniform (p = 1)``: the same code with p == 1, so the middle subnet always comes from the
  FLOPs-conditioned prior (uniform sampling at equal FLOPs); pools are still kept for the final
  selection. The gap between the two is what prioritized sampling adds.

Per bin and run: the retained subnet's test top-1 and the median of 10 random prior subnets of
the bin (same weights, each BN-recalibrated). Rows: one per arm and seed with the mean over
bins, the max and min nets, and the share of bins where the pool's best beats the median
random subnet. On 1137 training images a 1-point gap is within the seed spread; the checks say
what happened.
"""
from __future__ import annotations

import json
import os
from typing import Dict, Optional, Sequence

import numpy as np

from common.compile_cache import persistent_compilation_cache as compilation_cache
from common import train
from pss.configs import digits as digits_config
from pss.train import PSS, plot_accuracy_vs_flops

EPOCHS = 15
SMOKE_EPOCHS = 2
M_PSS = 'PSS'
M_UNIFORM = 'uniform (p = 1)'
ARMS = {M_PSS: ('pss', {}), M_UNIFORM: ('uniform', {'p_start': 1.0, 'p_end': 1.0})}


def run_arm(workdir: str, label: str, seed: int, epochs: int, smoke: bool = False) -> Dict:
  """Trains one arm / seed with ``pss.train`` and returns its ``results.json`` dict (read back
  when the workdir already holds the finished run)."""
  done = os.path.join(workdir, 'results.json')
  if os.path.exists(done):
    with open(done) as f:
      res = json.load(f)
    if res.get('epochs') == epochs and 'pss_table' in res:
      return res
  c = digits_config.get_config()
  c.seed = seed
  c.num_epochs = epochs
  c.checkpoint_every_epochs = epochs   # one checkpoint at the end: the quick run never resumes
  for k, v in ARMS[label][1].items():
    c.method[k] = v
  if smoke:
    c.method.random_per_bin = 3
    c.method.valid_topk = 1
  return train.run(c, workdir, PSS(c))


def _row(label: str, seed: int, res: Dict) -> Dict:
  table = res['pss_table']
  wins = [r['top1'] > r['random_median_top1'] for r in table if 'random_median_top1' in r]
  return {'method': label, 'seed': seed, 'top1': res['mean_over_bins_top1'],
          'max_net_top1': res['max_net']['top1'], 'min_net_top1': res['min_net']['top1'],
          'bins': [r['budget'] for r in table], 'bin_top1': [r['top1'] for r in table],
          'bin_random_median_top1': [r.get('random_median_top1') for r in table],
          'bin_mflops': [r['flops'] / 1e6 for r in table],
          'share_bins_best_beats_random_median': float(np.mean(wins)) if wins else None,
          'seconds': res['seconds']}


def run(workdir: str, seeds: Sequence[int] = (0, 1, 2), smoke: bool = False,
        epochs: Optional[int] = None, arms: Optional[Sequence[str]] = None) -> Dict:
  """The quick experiment. Returns ``{'rows', 'plots', 'checks'}`` (contract in the module doc).

  ``smoke=True``: the first seed only, ``SMOKE_EPOCHS`` epochs, the PSS arm only. ``epochs``
  overrides the number of epochs (``EPOCHS``); ``arms`` runs a subset of ``ARMS`` (e.g. one arm
  per process; a later call over all arms reads the finished runs back).
  """
  os.makedirs(workdir, exist_ok=True)
  seeds = tuple(seeds)[:1] if smoke else tuple(seeds)
  if not seeds:
    raise ValueError('seeds must hold at least one seed')
  epochs = epochs or (SMOKE_EPOCHS if smoke else EPOCHS)
  arms = [M_PSS] if smoke else list(arms or ARMS)
  unknown = sorted(set(arms) - set(ARMS))
  if unknown:
    raise ValueError(f'unknown arms {unknown}; allowed: {list(ARMS)}')
  rows, tables = [], {}
  with compilation_cache(os.path.join(workdir, 'xla_cache')):
    for seed in seeds:
      for label in arms:
        wd = os.path.join(workdir, f'{ARMS[label][0]}_seed{seed}')
        res = run_arm(wd, label, seed, epochs, smoke)
        rows.append(_row(label, seed, res))
        tables.setdefault(label, []).append(res)

  plots = [os.path.join(workdir, 'pss_accuracy_vs_flops.png')]
  plot_accuracy_vs_flops({label: ts[0] for label, ts in tables.items()}, plots[0],
                         f'tiny MobileNet-V1 on digits, seed {seeds[0]}')
  checks = {}
  by = lambda label: [r for r in rows if r['method'] == label]
  for label in arms:
    wins = [w for r in by(label) for w in
            [a > b for a, b in zip(r['bin_top1'], r['bin_random_median_top1']) if b is not None]]
    checks[f'{label}: the pool best beats the median random subnet in >= 80% of bins'] = (
        bool(wins) and float(np.mean(wins)) >= 0.8)
  for label, ts in tables.items():
    ok = all(abs(r['metric_value'] - r['budget']) <= 0.25 + 1e-9 for t in ts
             for r in t['pss_table'])
    checks[f'{label}: every retained subnet lies in its FLOPs bin'] = ok
  if not smoke and len(arms) == len(ARMS):
    pss, uni = by(M_PSS), by(M_UNIFORM)
    wins = sum(p['top1'] >= u['top1'] for p, u in zip(pss, uni))
    checks['PSS mean-over-bins top-1 >= uniform arm in >= 2 of 3 seeds'] = wins >= min(2, len(pss))
    gap = np.mean([p['max_net_top1'] for p in pss]) - np.mean([u['max_net_top1'] for u in uni])
    checks['PSS max net no worse than the uniform arm by more than 0.5 points'] = bool(gap >= -0.005)
  elif smoke:
    checks['max net above chance (10%) by 10 points'] = rows[0]['max_net_top1'] > 0.2
  return {'rows': rows, 'plots': plots, 'checks': checks, 'summary': summarize(rows)}


def summarize(rows) -> Dict[str, Dict[str, float]]:
  """Mean and std over seeds of each arm's mean-over-bins, max-net and min-net top-1."""
  out = {}
  for label in sorted({r['method'] for r in rows}):
    rs = [r for r in rows if r['method'] == label]
    out[label] = {k: (float(np.mean([r[k] for r in rs])), float(np.std([r[k] for r in rs])))
                  for k in ('top1', 'max_net_top1', 'min_net_top1')}
  return out
