"""LEC-Net quick experiment on digits (the ``common.reproduce`` contract: ``run`` returns rows,
plots, checks).

  python -c "from lecnet import quick; print(quick.run('runs/quick/lecnet'))"

The digits FSCIL protocol (``lecnet/configs/digits.py``): digits 0-3 as the base session on all
their training images, then 3 sessions of 2-way 5-shot (4-5, 6-7, 8-9; shots drawn by the seed),
tested after every session on every test image of the seen classes. ResNet-8 backbone (64-d
feature), N = 64 nodes, r = 0.1; one base session per seed shared by every arm; 100 full-batch
LEC epochs per session (gate slope annealed from epoch 20), Adam lr 5e-3. Arms:

* ``LEC-Net``: expansion branch + self-activation gate + compression penalty + KD (the method);
* ``LEC-Net, no compression penalty``: the same without ``0.1 R`` (isolates the compression);
* ``LEC-Net, no gate (alpha = 1)``: plain expansion (isolates the gate);
* ``Ft-CNN``: fine-tune the whole network on the shots (TOPIC's named baseline);
* ``prototype cosine (CEC decoupled)``: frozen backbone + class-mean cosine classifier.

Rows: one per arm and seed with the joint accuracy of every session (``acc_s<k>``), ``top1`` = the
last session's, the last session's base / old / new-class accuracy, PD and the active-gate
fraction of the stored gates ``A[s] > 0.5`` (mean over sessions). The checks are the claims of the
tiny-scale experiment; they say what happened, they are not tuned to pass.
"""
from __future__ import annotations

import json
import os
from typing import Dict, List, Sequence

import numpy as np

from common.compile_cache import persistent_compilation_cache as compilation_cache
from lecnet import train as lec_train
from lecnet.configs import digits as digits_config

ARMS = ('lec', 'lec_no_penalty', 'lec_no_gate', 'finetune', 'prototype')
SMOKE_ARMS = ('lec', 'finetune')


def config_for(seed: int, smoke: bool):
  """The digits config of one seed (``smoke``: 1 incremental session, shorter runs)."""
  c = digits_config.get_config()
  c.seed = int(seed)
  if smoke:
    c.num_epochs = 6
    c.schedule.milestones = (4, 5)
    c.method.sessions = 1
    c.method.session_epochs = 50
    c.method.arms = ','.join(SMOKE_ARMS)
  else:
    c.method.arms = ','.join(ARMS)
  return c


def run(workdir: str, seeds: Sequence[int] = (0, 1, 2), smoke: bool = False) -> Dict:
  """The quick experiment. Returns ``{'rows', 'plots', 'checks'}`` (contract in the module doc).

  ``smoke=True``: the first seed, one incremental session, LEC-Net and Ft-CNN only.
  """
  from common import train as _t  # noqa: F401  (engine import before the cache is set)
  os.makedirs(workdir, exist_ok=True)
  seeds = tuple(seeds)[:1] if smoke else tuple(seeds)
  if not seeds:
    raise ValueError('seeds must hold at least one seed')
  rows: List[Dict] = []
  tables = {}
  with compilation_cache(os.path.join(workdir, 'xla_cache')):
    for seed in seeds:
      c = config_for(seed, smoke)
      out = lec_train.run(c, os.path.join(workdir, f'seed{seed}'))
      tables[seed] = out['table']
      for arm, sess in out['table'].items():
        last = sess[-1]
        row = {'method': lec_train.ARM_LABELS[arm], 'arm': arm, 'seed': seed,
               'top1': last['acc_joint'], 'acc_weighted_last': last['acc_weighted'],
               'base_last': last['acc_base'], 'old_last': last['acc_old'],
               'new_last': last['acc_new'], 'pd': last['pd'], 'acc_s0': sess[0]['acc_joint']}
        for r in sess[1:]:
          row[f'acc_s{r["session"]}'] = r['acc_joint']
        fr = [r['active_fraction'] for r in sess if 'active_fraction' in r]
        if fr and arm != 'lec_no_gate':
          row['active_fraction'] = float(np.mean(fr))
          row['active_fraction_max'] = float(np.max(fr))
        rows.append(row)

  arms = SMOKE_ARMS if smoke else ARMS
  plots = []
  p = os.path.join(workdir, 'lecnet_accuracy_vs_session.png')
  lec_train.plot_sessions({a: [[r['acc_joint'] for r in tables[s][a]] for s in seeds]
                           for a in arms}, p,
                          f'digits FSCIL, ResNet-8, {len(seeds)} seed(s) (mean, min-max)')
  plots.append(p)
  if not smoke:
    p = os.path.join(workdir, 'lecnet_active_gates.png')
    _plot_gates(tables, seeds, p, r_budget=float(config_for(seeds[0], smoke).method.r))
    plots.append(p)

  def mean(arm, key='top1'):
    v = [r[key] for r in rows if r['arm'] == arm and key in r]
    return float(np.mean(v)) if v else float('nan')

  checks = {}
  if smoke:
    checks['LEC-Net beats Ft-CNN after the incremental session (joint accuracy)'] = (
        mean('lec') > mean('finetune'))
    checks['the base session learns the base digits (joint accuracy >= 0.8; chance 0.25)'] = (
        mean('lec', 'acc_s0') >= 0.8)
  else:
    r_budget = float(config_for(seeds[0], smoke).method.r)
    checks["LEC-Net's last-session accuracy beats Ft-CNN's by >= 15 points (mean over seeds)"] = (
        mean('lec') - mean('finetune') >= 0.15)
    checks["LEC-Net's old-class accuracy (last session) stays within 10 points of the base "
           "accuracy (mean over seeds)"] = mean('lec', 'acc_s0') - mean('lec', 'old_last') <= 0.10
    checks[f'LEC-Net: active-gate fraction of the stored gates <= r + 0.05 = {r_budget + 0.05:.2f}'
           ' (every session, every seed)'] = all(
               r['active_fraction_max'] <= r_budget + 0.05 for r in rows if r['arm'] == 'lec')
    checks['the compression penalty lowers the active-gate fraction (LEC-Net vs no penalty, '
           'mean)'] = mean('lec', 'active_fraction') < mean('lec_no_penalty', 'active_fraction')
    checks['the gate helps: LEC-Net beats the no-gate arm on the last session (mean)'] = (
        mean('lec') > mean('lec_no_gate'))
    checks['LEC-Net does not beat the prototype cosine baseline (as CEC\'s published CUB numbers '
           'predict)'] = mean('lec') <= mean('prototype')
  with open(os.path.join(workdir, 'lecnet_rows.json'), 'w') as f:
    json.dump({'rows': rows, 'checks': checks}, f, indent=1)
  return {'rows': rows, 'plots': plots, 'checks': checks}


def _plot_gates(tables, seeds, path: str, r_budget: float) -> None:
  """Active-gate fraction of the stored gates per session (mean over seeds) for the gated arms."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(6, 4))
  for arm in ('lec', 'lec_no_penalty'):
    a = np.asarray([[r['active_fraction'] for r in tables[s][arm] if 'active_fraction' in r]
                    for s in seeds])
    x = np.arange(1, a.shape[1] + 1)
    ax.plot(x, a.mean(0), marker='o', label=lec_train.ARM_LABELS[arm])
    ax.fill_between(x, a.min(0), a.max(0), alpha=0.2)
  ax.axhline(r_budget, color='k', ls='--', lw=1, label=f'budget r = {r_budget}')
  ax.axhline(r_budget + 0.05, color='gray', ls=':', lw=1, label='r + 0.05')
  ax.set_xlabel('session')
  ax.set_ylabel('fraction of expanded nodes with A[s] > 0.5')
  ax.set_ylim(0, 1)
  ax.set_xticks(range(1, a.shape[1] + 1))
  ax.set_title('LEC-Net gates after compression (digits, N = 64)')
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


if __name__ == '__main__':
  import sys
  print(json.dumps(run(sys.argv[1] if len(sys.argv) > 1 else 'runs/quick/lecnet'), indent=1,
                   default=str))
