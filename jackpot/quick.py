"""The Lottery-Jackpots quick experiment on digits (the ``common.reproduce`` contract: ``run``
returns rows, plots, checks).

  python -m common.reproduce --papers=jackpot [--smoke]

Setting: VGG-tiny in the official Jackpot layout (16,16,M,32,32,M,64,64,M; no conv bias, 1x1-conv
classifier; ``common/configs/jackpot_dense.py:vgg_tiny,digits``) is pretrained densely on digits
with ``common.train``, one model per seed. At p in {0.9, 0.95, 0.98} (global-magnitude layer rates,
classifier dense) four arms share that model:

* **dense**: the pretrained model (the ceiling);
* **magnitude** (the named baseline): global magnitude pruning without retraining, pretrained BN
  statistics; this is also the jackpot search's starting point (epoch 0 of its curve);
* **jackpot**: the v2 search for 10 epochs over the frozen weights (``jackpot/configs/digits.py``:
  batch 32, lr 0.0125 = the official 0.1 at batch 256 scaled linearly to the batch, cosine, wd
  5e-4 on the scores);
* **jackpot, random init** (the arm that switches off the paper's own idea, the magnitude
  initialisation): the same search from i.i.d. U[0, 1) scores and their top-k mask, same
  per-layer counts.

Top-1 of a search = best test top-1 over its epochs (the official ``validate`` keeps the best);
the last epoch is recorded too. Also recorded: the IoU of each searched mask with the magnitude
mask. One compiled step serves every search (the per-layer counts are data). Plots: test top-1 vs
search epoch, magnitude init vs random init, per sparsity (mean over seeds, min-max band).

Claims checked: jackpot beats magnitude pruning by at least 10 points at 95% and 98% in every seed;
at 90% the jackpot is within 2 points of dense (mean over seeds); the magnitude-initialised search
reaches the random-init search's final accuracy in fewer epochs (mean curves, every p).
"""
from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Sequence

import numpy as np

from common import train
from common.compile_cache import persistent_compilation_cache as compilation_cache
from common.configs import jackpot_dense
from jackpot import export as jexport
from jackpot.configs import digits as digits_config
from jackpot.train import Jackpot

SPARSITIES = (0.9, 0.95, 0.98)
M_DENSE, M_MAG, M_JP, M_RAND = 'dense', 'magnitude', 'jackpot', 'jackpot, random init'


def settings(smoke: bool) -> Dict[str, Any]:
  """Epoch budgets. The default searches for the recipe's 10 epochs (every arm alike) and needs
  about 15 minutes of an idle 2-core machine (2-3 times that on a shared one); smoke, 2 search
  epochs, about one."""
  if smoke:
    return {'pretrain_epochs': 5, 'search_epochs': 2, 'sparsities': (0.95,), 'random': False}
  return {'pretrain_epochs': 10, 'search_epochs': int(digits_config.get_config().num_epochs),
          'sparsities': SPARSITIES, 'random': True}


def pretrain(workdir: str, seed: int, epochs: int) -> Dict[str, Any]:
  """The dense VGG-tiny of one seed (a ``common.train`` workdir; rerunning resumes)."""
  c = jackpot_dense.get_config('vgg_tiny,digits')
  c.seed = seed
  c.num_epochs = epochs
  c.progress_bar = False
  c.checkpoint_every_epochs = epochs
  return train.run(c, workdir)


def search_curve(engine: train.Engine, method: Jackpot, seed: int, p: float, score_init: str,
                 train_ds) -> Dict[str, Any]:
  """One search from the engine's pretrained model: test top-1 before (epoch 0) and after each
  epoch, the mean training loss of each epoch, and the final mask's IoU with the magnitude mask."""
  method.sparsity, method.score_init = p, score_init
  state = engine.create_state(seed=seed)
  curve = [engine.evaluate(state)['test_top1']]
  losses = []
  for epoch in range(int(engine.config.num_epochs)):
    state, m = engine.train_epoch(state, epoch, dataset=train_ds)
    curve.append(engine.evaluate(state)['test_top1'])
    losses.append(m['loss'])
  masks = method.current_masks(state)
  return {'curve': curve, 'train_loss': losses, 'best': max(curve[1:]), 'last': curve[-1],
          'iou_magnitude': jexport.mask_iou(masks, method.magnitude_mask_tree(state),
                                            method.classifier),
          'sparsity': jexport.sparsity_excluding(masks, method.classifier)}


def run(workdir: str, seeds: Sequence[int] = (0, 1, 2), smoke: bool = False) -> Dict[str, Any]:
  """The quick experiment. Returns ``{'rows', 'plots', 'checks'}`` (contract in the module doc).

  ``smoke=True``: the first seed, p = 0.95, 2 search epochs, magnitude baseline and jackpot only.
  """
  os.makedirs(workdir, exist_ok=True)
  seeds = tuple(seeds)[:1] if smoke else tuple(seeds)
  if not seeds:
    raise ValueError('seeds must hold at least one seed')
  st = settings(smoke)
  rows: List[Dict[str, Any]] = []
  curves: Dict[tuple, List[List[float]]] = {}
  with compilation_cache(os.path.join(workdir, 'xla_cache')):
    for seed in seeds:
      pre_dir = os.path.join(workdir, f'dense_vgg_tiny_seed{seed}')
      pre = pretrain(pre_dir, seed, st['pretrain_epochs'])
      c = digits_config.get_config()
      c.seed = seed
      c.num_epochs = st['search_epochs']
      c.progress_bar = False
      c.init_checkpoint = pre_dir
      method = Jackpot(c)
      engine = train.Engine(c, method)
      train_ds = engine.train_ds
      # the search loads the best dense checkpoint (common.train.load_variables)
      rows.append({'method': M_DENSE, 'arm': M_DENSE, 'seed': seed, 'p': 0.0,
                   'top1': pre['top1_best']})
      for p in st['sparsities']:
        jp = search_curve(engine, method, seed, p, 'magnitude', train_ds)
        rows.append({'method': label(M_MAG, p), 'arm': M_MAG, 'seed': seed, 'p': p,
                     'top1': jp['curve'][0],
                     'sparsity': jp['sparsity'], 'iou_magnitude': 1.0})
        rows.append({'method': label(M_JP, p), 'arm': M_JP, 'seed': seed, 'p': p,
                     'top1': jp['best'],
                     'top1_last': jp['last'], 'sparsity': jp['sparsity'],
                     'iou_magnitude': jp['iou_magnitude'], 'curve': jp['curve'],
                     'train_loss': jp['train_loss']})
        curves.setdefault((M_JP, p), []).append(jp['curve'])
        if st['random']:
          rd = search_curve(engine, method, seed, p, 'random', train_ds)
          rows.append({'method': label(M_RAND, p), 'arm': M_RAND, 'seed': seed, 'p': p,
                       'top1': rd['best'],
                       'top1_last': rd['last'], 'sparsity': rd['sparsity'],
                       'iou_magnitude': rd['iou_magnitude'], 'curve': rd['curve'],
                       'train_loss': rd['train_loss']})
          curves.setdefault((M_RAND, p), []).append(rd['curve'])
        _log(workdir, [r for r in rows if r['seed'] == seed and r['p'] in (0.0, p)])

  plot = os.path.join(workdir, 'jackpot_top1_vs_search_epoch.png')
  plot_curves(curves, rows, plot)
  with open(os.path.join(workdir, 'rows.json'), 'w') as f:
    json.dump(rows, f, indent=1)
  return {'rows': rows, 'plots': [plot], 'checks': checks_of(rows, curves, st, seeds)}


def _log(workdir: str, rows: List[Dict[str, Any]]) -> None:
  """Appends finished rows to ``progress.jsonl`` and prints them (a long run shows progress)."""
  with open(os.path.join(workdir, 'progress.jsonl'), 'a') as f:
    for r in rows:
      f.write(json.dumps(r) + '\n')
  for r in rows:
    print(f"seed {r['seed']} p {r['p']} {r['method']}: top-1 {r['top1']:.4f}", flush=True)


def label(arm: str, p: float) -> str:
  """The row's ``method``: arm and sparsity (``common.reproduce`` groups rows by method)."""
  return f'{arm} p={p}'


def _get(rows, arm, p, seed=None, key='top1'):
  return [r[key] for r in rows if r['arm'] == arm and r['p'] == p
          and (seed is None or r['seed'] == seed)]


def epochs_to_reach(curve: Sequence[float], target: float) -> int:
  """First search epoch whose test top-1 is >= ``target`` (``len(curve)`` if none; epoch 0 is the
  starting mask)."""
  for e, v in enumerate(curve):
    if v >= target:
      return e
  return len(curve)


def checks_of(rows, curves, st, seeds) -> Dict[str, bool]:
  checks = {}
  dense = float(np.mean([r['top1'] for r in rows if r['arm'] == M_DENSE]))
  ps = st['sparsities']
  if len(ps) == 1:
    p = ps[0]
    checks[f'jackpot beats magnitude pruning by >= 10 points at p = {p} after '
           f'{st["search_epochs"]} search epochs'] = all(
               _get(rows, M_JP, p, s)[0] - _get(rows, M_MAG, p, s)[0] >= 0.10 for s in seeds)
    return checks
  checks['jackpot beats magnitude pruning by >= 10 points at 95% and 98% in every seed'] = all(
      _get(rows, M_JP, p, s)[0] - _get(rows, M_MAG, p, s)[0] >= 0.10
      for p in (0.95, 0.98) for s in seeds)
  checks['at 90% the jackpot is within 2 points of dense (mean over seeds)'] = (
      dense - float(np.mean(_get(rows, M_JP, 0.9))) <= 0.02)
  reach = []
  for p in ps:
    mag = np.mean(curves[(M_JP, p)], axis=0)
    rnd = np.mean(curves[(M_RAND, p)], axis=0)
    reach.append(epochs_to_reach(mag, rnd[-1]) < len(rnd) - 1)
  checks['magnitude-initialised search reaches the random-init final accuracy in fewer epochs '
         '(mean curves, every p)'] = all(reach)
  return checks


def plot_curves(curves, rows, path: str) -> None:
  """Test top-1 vs search epoch per sparsity: magnitude init vs random init (mean over seeds,
  min-max band), with the dense model and magnitude pruning as lines."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  ps = sorted({p for (_, p) in curves})
  fig, axes = plt.subplots(1, len(ps), figsize=(4.2 * len(ps), 3.6), squeeze=False)
  dense = np.mean([r['top1'] for r in rows if r['arm'] == M_DENSE])
  for ax, p in zip(axes[0], ps):
    for label in (M_JP, M_RAND):
      if (label, p) not in curves:
        continue
      a = np.asarray(curves[(label, p)])
      ep = np.arange(a.shape[1])
      ax.plot(ep, a.mean(0), marker='o', label=label + (' (magnitude init)' if label == M_JP
                                                        else ''))
      ax.fill_between(ep, a.min(0), a.max(0), alpha=0.2)
    ax.axhline(dense, color='k', ls='--', lw=1, label='dense')
    ax.axhline(np.mean(_get(rows, M_MAG, p)), color='gray', ls=':', lw=1,
               label='magnitude, no retraining')
    ax.set_title(f'p = {p}')
    ax.set_xlabel('search epoch (0 = initial mask)')
    ax.set_ylabel('test top-1')
    ax.set_ylim(0, 1.02)
  axes[0][0].legend(fontsize=7, loc='lower right')
  fig.suptitle('Lottery Jackpots on digits, VGG-tiny: frozen pretrained weights')
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


if __name__ == '__main__':
  import sys
  print(json.dumps(run(sys.argv[1] if len(sys.argv) > 1 else 'runs/quick/jackpot'), indent=1,
                   default=str))
