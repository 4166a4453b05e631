"""FFSD quick experiment on digits (the ``common.reproduce`` contract: ``run`` returns rows, plots,
checks).

  python -m ffsd.quick runs/quick/ffsd [epochs] [splits]     # e.g. 'runs/quick/ffsd 40 low,full'

CIFAR ResNet-8 with the projection shortcut (``ffsd/configs/digits.py``, with the budget overrides
below: ``EPOCHS``, ``BATCH``, ``TEST_SIZE``), on the full training split and on a low-data split
(the first 30 training images of each class), three arms with the same schedule and seeds:

* ``alone``: one network, cross-entropy (``variant='dml', num_students=1``);
* ``DML``: two students, CE + T^2 KL at T = 2 (FFSD without fusion, leader, diversity and
  decoders): the named baseline and the arm that switches off FFSD's own mechanisms;
* ``FFSD``: two common students + leader + fusion module + two decoders; the leader is reported.

Rows carry each network's last-epoch and best-epoch test top-1 (the official code reports the best
epoch: a test-set selection, so the checks use the last epoch); DML's ``top1`` is the mean of its
two students. Check: leader >= DML mean >= alone on the low-data split, a gap under one standard
deviation over seeds (the larger of the two arms') counting as a tie, which meets >= and is
reported as no effect. Plots: test top-1 vs epoch per network and split, mean over seeds.
"""
from __future__ import annotations

import json
import os
import sys
from typing import Dict, List, Sequence

import numpy as np

from common.compile_cache import persistent_compilation_cache as compilation_cache
from common import train
from ffsd.configs import digits as digits_config
from ffsd.train import FFSD

# The digits recipe's schedule (40 epochs, x0.1 at 20 and 30, the code's 5-epoch loss-weight
# warm-up) with a smaller test set and batch: the digits set's default 1437 / 360 split, batch 32.
# On the low-data split (300 images) one FFSD epoch is 10 steps plus a 360-image evaluation of
# every network: 11 s on the 2-core Xeon under a load average of 13 (the first, compiling, 60 s).
EPOCHS = 40
MILESTONES = (20, 30)
WARMUP_EPOCHS = 5
BATCH = 32
TEST_SIZE = 360
SMOKE_EPOCHS = 2
LOW_PER_CLASS = 30
SPLITS = {'low': LOW_PER_CLASS, 'full': 0}
M_ALONE, M_DML, M_FFSD = 'alone', 'DML', 'FFSD'
# label -> (workdir name, method.variant, method.num_students)
ARMS = {M_ALONE: ('alone', 'dml', 1), M_DML: ('dml', 'dml', 2), M_FFSD: ('ffsd', 'ffsd', 2)}


def arm_config(label: str, split: str, seed: int, epochs: int, smoke: bool = False):
  """The digits config of one arm / split / seed."""
  _, variant, m = ARMS[label]
  c = digits_config.get_config()
  c.seed = seed
  c.num_epochs = epochs
  c.progress_bar = False
  c.checkpoint_every_epochs = epochs   # one checkpoint at the end: the quick run never resumes
  c.method.variant = variant
  c.method.num_students = m
  c.method.train_per_class = SPLITS[split]
  c.dataset.batch_size = BATCH
  c.dataset.options.test_size = TEST_SIZE
  c.dataset.eval_batch_size = TEST_SIZE
  c.schedule.milestones = tuple(m for m in MILESTONES if m < epochs)
  c.method.sd_milestones = c.schedule.milestones
  c.method.warmup_epochs = WARMUP_EPOCHS
  if smoke:
    c.method.train_per_class = 10
    c.dataset.batch_size = 50
    c.dataset.options.test_size = 200
    c.dataset.eval_batch_size = 200
  return c


def run_arm(workdir: str, label: str, split: str, seed: int, epochs: int, smoke: bool = False):
  """Trains one arm; returns ``(results.json dict, metrics rows)``."""
  c = arm_config(label, split, seed, epochs, smoke)
  res = train.run(c, workdir, FFSD(c))
  return res, train.read_metrics(workdir)


def _curve(rows, key):
  return [r[key] for r in rows if key in r]


def run(workdir: str, seeds: Sequence[int] = (0, 1, 2), smoke: bool = False,
        epochs: int = None, splits: Sequence[str] = ('low', 'full')) -> Dict:
  """The quick experiment (module docstring). ``smoke=True``: the FFSD arm only, one seed,
  ``SMOKE_EPOCHS`` epochs on 10 images per class."""
  os.makedirs(workdir, exist_ok=True)
  seeds = tuple(seeds)[:1] if smoke else tuple(seeds)
  if not seeds:
    raise ValueError('seeds must hold at least one seed')
  bad = [s for s in splits if s not in SPLITS]
  if bad:
    raise ValueError(f'unknown splits {bad}; allowed: {list(SPLITS)}')
  epochs = int(epochs or (SMOKE_EPOCHS if smoke else EPOCHS))
  arms = [M_FFSD] if smoke else list(ARMS)
  splits = ('low',) if smoke else tuple(splits)
  rows: List[Dict] = []
  curves: Dict = {}
  with compilation_cache(os.path.join(workdir, 'xla_cache')):
    for split in splits:
      for seed in seeds:
        for label in arms:
          wd = os.path.join(workdir, f'{split}_{ARMS[label][0]}_seed{seed}')
          res, m = run_arm(wd, label, split, seed, epochs, smoke)
          row = {'method': f'{label}, {split} split', 'arm': label, 'split': split, 'seed': seed, 'seconds': res['seconds'],
                 'params': res['params']}
          nets = [k[len('top1_last_'):] for k in res if k.startswith('top1_last_')]
          for n in nets:
            row[f'{n}_last'] = res[f'top1_last_{n}']
            row[f'{n}_best'] = res[f'top1_best_{n}']
            key = 'test_top1' if n == res['deployed'] else f'test_{n}_top1'
            curves.setdefault((split, label, n), []).append(_curve(m, key))
          students = [n for n in nets if n.startswith('student')]
          if label == M_FFSD:
            row['top1'], row['top1_best'] = row['leader_last'], row['leader_best']
            row['exported_leader_top1'] = res['exported_leader_top1']
          else:
            row['top1'] = float(np.mean([row[f'{n}_last'] for n in students]))
            row['top1_best'] = float(np.mean([row[f'{n}_best'] for n in students]))
          rows.append(row)
          print(json.dumps(row), flush=True)
  plots = []
  for split in splits:
    p = os.path.join(workdir, f'ffsd_{split}_top1_vs_epoch.png')
    plot_curves({k[1:]: v for k, v in curves.items() if k[0] == split}, p,
                f'digits, ResNet-8 (projection), {split} split, mean over {len(seeds)} seed(s)')
    plots.append(p)
  return {'rows': rows, 'plots': plots, 'checks': checks(rows, smoke, epochs)}


def summary(rows, split: str, label: str, key: str = 'top1'):
  """``(mean, std)`` over seeds of ``key`` for one arm and split (NaN when absent)."""
  v = [r[key] for r in rows if r['split'] == split and r['arm'] == label and key in r]
  return (float(np.mean(v)), float(np.std(v))) if v else (float('nan'), float('nan'))


def at_least(rows, split, a: str, b: str):
  """``(a >= b with ties, a tie?)``: a gap under the larger std over seeds is a tie."""
  (ma, sa), (mb, sb) = summary(rows, split, a), summary(rows, split, b)
  tie = abs(ma - mb) < max(sa, sb)
  return (ma >= mb) or tie, tie


def checks(rows, smoke: bool, epochs: int) -> Dict[str, bool]:
  out = {}
  ffsd_rows = [r for r in rows if r['arm'] == M_FFSD]
  out['the exported leader scores exactly what the leader inside the system scores'] = all(
      abs(r['exported_leader_top1'] - r['leader_last']) < 1e-9 for r in ffsd_rows)
  if smoke:
    return out
  for split in sorted({r['split'] for r in rows}):
    for a, b in ((M_FFSD, M_DML), (M_DML, M_ALONE)):
      ok, tie = at_least(rows, split, a, b)
      what = 'tie, no effect' if tie else 'gap > 1 std'
      out[f'{split} split: {a} {"leader" if a == M_FFSD else "mean"} >= {b} '
          f'(last epoch of {epochs}, mean over seeds; {what})'] = bool(ok)
  return out


def plot_curves(curves, path: str, title: str) -> None:
  """Test top-1 vs epoch, mean over seeds, one line per (arm, network)."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(7, 4.5))
  for (label, net), cs in sorted(curves.items()):
    a = np.asarray(cs)
    ep = np.arange(1, a.shape[1] + 1)
    style = '-' if net in ('leader',) or label == M_ALONE else ':'
    ax.plot(ep, a.mean(0), style, label=f'{label}: {net}')
  ax.set_xlabel('epoch')
  ax.set_ylabel('test top-1')
  ax.set_title(title, fontsize=9)
  ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


if __name__ == '__main__':
  args = sys.argv[1:]
  out = run(args[0] if args else 'runs/quick/ffsd',
            epochs=int(args[1]) if len(args) > 1 else None,
            splits=tuple(args[2].split(',')) if len(args) > 2 else ('low', 'full'))
  print(json.dumps({'checks': out['checks'], 'plots': out['plots']}, indent=1))
