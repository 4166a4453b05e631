"""SiMaN quick experiment on digits (the ``common.reproduce`` contract: ``run`` returns rows, plots,
checks).

  python -m siman.quick [WORKDIR]

VGG-Small 1w1a at 1/8 width (16-16-32-32-64-64; FP conv0 and classifier, everything else binary,
PReLU as the official VGG-Small), digits upsampled to 32x32, batch 128, SGD 0.1 momentum 0.9,
per-epoch cosine with a 2-epoch warm-up, ``EPOCHS`` epochs (``siman/configs/digits.py``). Arms on
the identical network:

* ``SiMaN``: the official method: per-forward projection with percent 15 (1 - e/E), median
  code, forward 2B - 1, identity backward onto |w2|, mean-centred activation binarizer, no weight
  decay on the binary convs and their alphas (5e-4 elsewhere);
* ``SiMaN training, centred-sign weights``: everything of the SiMaN arm (standardisation,
  projection schedule, decay rule, activation binarizer) except the weight binarizer, which is
  ``sign(w - mean_c w)`` (``siman.centred_sign_binarize``, identity STE onto the standardised
  weight) instead of the magnitude code ``2B - 1``; the gap between the two is what the
  sign-to-magnitude code itself adds;
* ``sign_ste``: plain ``sign(w)`` with identity STE and ``approx_sign(a)`` activations without
  normalisation; no projection, no code; weight decay on every parameter;
* ``full precision``: the same network without binarization (the ceiling);
* ablations, first seed only: ``SiMaN + wd on binary weights`` (the paper's claim is that removing
  l2 on the binary weights is what lets them leave the Laplacian shape that prevents entropy
  maximisation) and ``SiMaN without projection`` (percent 0: centring only).

Rows: best and last top-1, and for SiMaN the last epoch's angle-optimal ``k*/N`` (the code fixes
1/2), the code's flip rate over the last epoch and the mean |w2| (0.707 Laplacian, 0.798 Gaussian).
Plots: test top-1 vs epoch (mean and min-max band over seeds), SiMaN diagnostics vs epoch, and
the histograms of the standardised binary weights with their Laplace fits. On a task this small
the ordering is not guaranteed (a 1-2 point gap is within the spread over seeds); the checks say
what happened.
"""
from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Sequence

import numpy as np

from common.compile_cache import persistent_compilation_cache as compilation_cache
from common import train
from siman import plots as siman_plots
from siman.configs import digits as digits_config
from siman.siman import SIMAN_TRAINING
from siman.train import SiMaN

EPOCHS = digits_config.EPOCHS
SMOKE_EPOCHS = 2

M_SIMAN = 'SiMaN'
M_SIGN = 'sign_ste'
M_CSIGN = 'SiMaN training, centred-sign weights'
M_FP = 'full precision'
M_WD = 'SiMaN + wd on binary weights (ablation)'
M_NOPROJ = 'SiMaN without projection (ablation)'

# label -> (workdir name, weight_binarizer, act_binarizer, method overrides); the ALL_SEEDS arms
# run every seed, the ablations the first seed.
ARMS = {
    M_SIMAN: ('siman', 'siman', 'siman', {}),
    M_SIGN: ('sign_ste', 'sign_ste', 'plain', {}),
    M_FP: ('full_precision', 'none', 'none', {}),
    M_WD: ('siman_wd_all', 'siman', 'siman', {'decay_rule': 'all'}),
    M_NOPROJ: ('siman_no_projection', 'siman', 'siman', {'percent_max': 0.0}),
    M_CSIGN: ('centred_sign', 'centred_sign', 'siman', {}),
}
ALL_SEEDS = (M_SIMAN, M_SIGN, M_FP, M_CSIGN)


def arm_config(label: str, seed: int, epochs: int):
  """The digits config of one arm (module docstring)."""
  _, weight_binarizer, act, overrides = ARMS[label]
  c = digits_config.get_config()
  c.seed = int(seed)
  c.num_epochs = int(epochs)
  c.progress_bar = False
  c.checkpoint_every_epochs = int(epochs)   # one checkpoint at the end: quick runs never resume
  c.model.kwargs.act_binarizer = act
  c.method.weight_binarizer = weight_binarizer
  c.method.decay_rule = 'official' if weight_binarizer in SIMAN_TRAINING else 'all'
  c.method.histogram = False                # one combined histogram below
  for k, v in overrides.items():
    c.method[k] = v
  return c


def _metrics(workdir: str) -> List[Dict[str, Any]]:
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [json.loads(line) for line in f if line.strip()]


def run_arm(workdir: str, label: str, seed: int, epochs: int) -> Dict[str, Any]:
  """Trains one arm / seed; returns its row (with its per-epoch curves)."""
  c = arm_config(label, seed, epochs)
  res = train.run(c, workdir, SiMaN(c))
  m = _metrics(workdir)
  row = {'method': label, 'seed': int(seed), 'top1': float(res['top1_best']),
         'top1_last': float(res['top1_last']), 'params': res['params'],
         'bops': res.get('bops'), 'fp_flops': res.get('fp_flops'),
         'model_bits': res.get('model_bits'), 'seconds': float(res['seconds']),
         'curve': [r['test_top1'] for r in m]}
  if 'code_flip_rate' in m[-1]:
    row.update({'angle_k_fraction': m[-1]['angle_k_fraction'],
                'code_ones_fraction': m[-1]['code_ones_fraction'],
                'code_flip_rate_last': m[-1]['code_flip_rate'],
                'std_weight_mean_abs': m[-1]['std_weight_mean_abs'],
                'diagnostics': {k: [r[k] for r in m] for k in
                                ('percent', 'code_flip_rate', 'angle_k_fraction',
                                 'std_weight_mean_abs')}})
  return row


def plot_diagnostics(rows: List[Dict[str, Any]], path: str) -> str:
  """percent, code flip rate, angle-optimal k*/N and mean |w2| vs epoch (first seed per arm)."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  keys = (('percent', 'percent p(e)'), ('code_flip_rate', 'B entries flipped per epoch'),
          ('angle_k_fraction', 'angle-optimal k*/N (code: 1/2)'),
          ('std_weight_mean_abs', 'mean |w2| (Laplace .707, Gauss .798)'))
  fig, axes = plt.subplots(1, 4, figsize=(16, 3.4))
  seen = set()
  for r in rows:
    if 'diagnostics' not in r or r['method'] in seen:
      continue
    seen.add(r['method'])
    for ax, (k, title) in zip(axes, keys):
      v = r['diagnostics'][k]
      ax.plot(np.arange(len(v)), v, marker='.', label=r['method'])
      ax.set_title(title, fontsize=9)
      ax.set_xlabel('epoch')
  axes[2].axhline(0.5, color='k', lw=0.8, ls=':')
  axes[0].legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path


def _mean(rows, label, key='top1') -> float:
  v = [r[key] for r in rows if r['method'] == label and r.get(key) is not None]
  return float(np.mean(v)) if v else float('nan')


def run(workdir: str, seeds: Sequence[int] = (0, 1, 2), smoke: bool = False) -> Dict[str, Any]:
  """The quick experiment (module docstring). Returns ``{'rows', 'plots', 'checks'}``.

  ``smoke=True``: the first seed, ``SMOKE_EPOCHS`` epochs, the SiMaN arm only.
  """
  os.makedirs(workdir, exist_ok=True)
  seeds = tuple(int(s) for s in seeds)
  if not seeds:
    raise ValueError('seeds must hold at least one seed')
  if smoke:
    seeds = seeds[:1]
  epochs = SMOKE_EPOCHS if smoke else EPOCHS
  jobs = ([(M_SIMAN, seeds[0])] if smoke else
          [(label, s) for s in seeds for label in ALL_SEEDS] + [(M_WD, seeds[0]),
                                                                (M_NOPROJ, seeds[0])])
  rows, workdirs = [], {}
  with compilation_cache(os.path.join(workdir, 'xla_cache')):
    for label, seed in jobs:
      wd = os.path.join(workdir, f'{ARMS[label][0]}_seed{seed}')
      rows.append(run_arm(wd, label, seed, epochs))
      workdirs.setdefault(label, wd)

  plots = [siman_plots.accuracy_curves(
      {label: [r['curve'] for r in rows if r['method'] == label]
       for label in dict.fromkeys(r['method'] for r in rows)},
      os.path.join(workdir, 'siman_top1_vs_epoch.png'),
      'digits, VGG-Small 1/8: test top-1 vs epoch (mean, band = min..max over seeds)')]
  plots.append(plot_diagnostics(rows, os.path.join(workdir, 'siman_diagnostics.png')))
  panels = {label: train.load_variables(wd, which='last')['params']
            for label, wd in workdirs.items() if ARMS[label][1] != 'none'}
  plots.append(siman_plots.weight_histogram(
      panels, os.path.join(workdir, 'siman_weights_hist.png'),
      title='standardised binary weights at the end (first seed)'))

  siman_rows = [r for r in rows if r['method'] == M_SIMAN]
  checks = {
      'SiMaN code holds exactly N/2 ones per channel (even N, every run)':
          all(r['code_ones_fraction'] == 0.5 for r in siman_rows),
  }
  if smoke:
    checks[f'SiMaN trains above chance on digits (top-1 >= 0.3 after {epochs} epochs)'] = (
        _mean(rows, M_SIMAN) >= 0.3)
  else:
    checks.update({
        'SiMaN reaches >= 85% top-1 on digits (mean over seeds)': _mean(rows, M_SIMAN) >= 0.85,
        'SiMaN beats plain sign-STE by >= 1 point (mean over seeds)':
            _mean(rows, M_SIMAN) - _mean(rows, M_SIGN) >= 0.01,
        'full precision is the ceiling (mean >= SiMaN mean)':
            _mean(rows, M_FP) >= _mean(rows, M_SIMAN),
    })
  for r in rows:   # keep results.json small: the curves stay in each run's metrics.jsonl
    r.pop('diagnostics', None)
  return {'rows': rows, 'plots': plots, 'checks': checks}


if __name__ == '__main__':
  import sys
  out = run(sys.argv[1] if len(sys.argv) > 1 else 'runs/quick/siman')
  from common.reproduce import summarize
  for s in summarize(out['rows']):
    print(f"{s['method']:45s} {s['mean']:.4f} +- {s['std']:.4f} (n={s['n']})")
  print(json.dumps({'checks': out['checks'], 'plots': out['plots']}, indent=1))
