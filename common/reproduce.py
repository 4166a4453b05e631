"""The main job: every landed paper's quick experiment on the embedded ``digits`` set.

  python -m common.reproduce [--papers=onexn,dcff] [--workdir=runs/quick] [--seeds=0,1,2] [--smoke]

Each paper package provides ``<paper>/quick.py`` with
``run(workdir, seeds=(0, 1, 2), smoke=False) -> {'rows': [...], 'plots': [...], 'checks': {...}}``
(rows: ``{'method', 'seed', 'top1', ...}``; checks: the paper's claims in words -> bool). The dense
ResNet-20 baseline (``common``) always runs. Writes ``<workdir>/RESULTS.md`` (mean +- std over seeds
per method, the checks, links to the plots) and ``<workdir>/results.json`` (papers run
earlier into the same workdir are kept, so papers can be run one at a time); exits 1 if an
experiment raised, and also if a check failed when ``--strict``. ``--papers=common`` runs only the
dense baseline.
"""
from __future__ import annotations

import importlib
import json
import os
import sys
import time
import traceback
from typing import Any, Dict, List, Sequence

import numpy as np

from common import cli

# Paper packages in the order of the project's table; those without quick.py are reported as
# "not landed" rather than failing.
PAPERS = ('dcff', 'onexn', 'whitebox', 'jackpot', 'pss', 'fdda', 'ffsd', 'recu', 'siman', 'lecnet')
# ``--smoke``: one epoch at batch 16 (90 steps: enough for BN running statistics to follow the
# weights; at batch 128 the 11 steps of one epoch leave the eval at chance), at the recipe's lr
# scaled linearly to the batch (0.1 * 16 / 128): at lr 0.1 and batch 16 the first steps blow the
# loss up to ~5 and where one epoch ends is float32-rounding noise (test top-1 0.15 or 0.84 for
# XLA's and oneDNN's convolutions of the same run). Its top-1 must be well above chance (0.1): a
# broken engine (no update, wrong labels or gradients) stays near it.
SMOKE_BATCH = 16
SMOKE_MIN_TOP1 = 0.25


def dense_baseline(workdir: str, seeds: Sequence[int] = (0, 1, 2), smoke: bool = False):
  """Dense ResNet-20 on digits with ``common/configs/resnet20_digits.py`` (the reference row)."""
  from common import train
  from common.configs import resnet20_digits
  rows, plots = [], []
  for seed in seeds:
    c = resnet20_digits.get_config()
    c.seed = seed
    c.progress_bar = False
    if smoke:
      c.num_epochs = 1
      c.optimizer.learning_rate *= SMOKE_BATCH / c.dataset.batch_size
      c.dataset.batch_size = SMOKE_BATCH
    wd = os.path.join(workdir, f'dense_resnet20_seed{seed}')
    res = train.run(c, wd)
    rows.append({'method': 'dense ResNet-20', 'seed': seed, 'top1': res['top1_best'],
                 'top1_last': res['top1_last'], 'params': res['params'], 'flops': res['flops'],
                 'seconds': res['seconds']})
    plots.append(os.path.join(wd, 'metrics.png'))
  if smoke:
    claim = (f'dense ResNet-20 reaches >= {SMOKE_MIN_TOP1} top-1 on digits after 1 epoch at '
             f'batch {SMOKE_BATCH} (chance 0.1; every seed)')
    checks = {claim: all(r['top1'] >= SMOKE_MIN_TOP1 for r in rows)}
  else:
    checks = {'dense ResNet-20 reaches >= 0.97 top-1 on digits (every seed)':
              all(r['top1'] >= 0.97 for r in rows)}
  return {'rows': rows, 'plots': plots[:1], 'checks': checks}


def summarize(rows: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
  """Mean and sample std of top-1 per method, in first-seen order."""
  by = {}
  for r in rows:
    by.setdefault(r['method'], []).append(float(r['top1']))
  out = []
  for m, v in by.items():
    v = np.asarray(v)
    out.append({'method': m, 'n': len(v), 'mean': float(v.mean()),
                'std': float(v.std(ddof=1)) if len(v) > 1 else 0.0,
                'min': float(v.min()), 'max': float(v.max())})
  return out


def write_report(workdir: str, outcomes: Dict[str, Dict[str, Any]]) -> str:
  """Writes RESULTS.md and results.json; returns the markdown text."""
  lines = ['# Quick experiments on digits', '',
           'Produced by `python -m common.reproduce`. Top-1 is the best test accuracy over epochs '
           '(as every official repo reports), mean +- sample std over seeds. Masked / fake-quantized '
           'models save no time by themselves; real speed is reported by each package\'s bench.', '']
  for paper, out in outcomes.items():
    lines.append(f'## {paper}')
    lines.append('')
    if out.get('status') == 'not landed':
      lines += ['not landed yet (no quick.py)', '']
      continue
    if out.get('status') == 'failed':
      lines += ['**FAILED**', '', '```', out['error'].strip()[-3000:], '```', '']
      continue
    lines += ['| method | top-1 mean | std | min | max | seeds |', '|---|---|---|---|---|---|']
    for s in summarize(out['rows']):
      lines.append(f"| {s['method']} | {s['mean']:.4f} | {s['std']:.4f} | {s['min']:.4f} | "
                   f"{s['max']:.4f} | {s['n']} |")
    lines.append('')
    for claim, ok in out.get('checks', {}).items():
      lines.append(f"- {'PASS' if ok else 'FAIL'}: {claim}")
    for p in out.get('plots', []):
      lines.append(f'\n![{os.path.basename(p)}]({os.path.relpath(p, workdir)})')
    lines.append(f"\n({out['seconds']:.0f} s)\n")
  text = '\n'.join(lines) + '\n'
  with open(os.path.join(workdir, 'RESULTS.md'), 'w') as f:
    f.write(text)
  with open(os.path.join(workdir, 'results.json'), 'w') as f:
    json.dump(outcomes, f, indent=2, default=str)
  return text


def main(argv=None) -> int:
  ap = cli.ArgumentParser(prog='python -m common.reproduce', description=__doc__.split('\n')[0])
  ap.add_argument('--papers', default='', help='comma-separated subset of: ' + ','.join(PAPERS))
  ap.add_argument('--workdir', default='runs/quick')
  ap.add_argument('--seeds', default='0,1,2')
  ap.add_argument('--smoke', action='store_true', help='smallest versions (what the tests run)')
  ap.add_argument('--strict', action='store_true', help='a failed check also fails the job')
  args = ap.parse_args(argv)
  papers = [p for p in args.papers.split(',') if p] or list(PAPERS)
  # Results of this run only decide the exit status.
  ran = set(papers) | ({'common'} if not args.papers else set())
  unknown = [p for p in papers if p not in PAPERS and p != 'common']
  if unknown:
    print(f'error: unknown paper(s) {unknown}; allowed: {list(PAPERS)}', file=sys.stderr)
    return 2
  try:
    seeds = [int(s) for s in args.seeds.split(',') if s]
  except ValueError:
    print(f'error: --seeds must be comma-separated integers; got {args.seeds!r}', file=sys.stderr)
    return 2
  os.makedirs(args.workdir, exist_ok=True)
  # Papers run earlier into the same workdir stay in the report (run them one at a time if you
  # like); the ones run now replace their previous entries.
  outcomes: Dict[str, Dict[str, Any]] = {}
  previous = os.path.join(args.workdir, 'results.json')
  if os.path.exists(previous):
    with open(previous) as f:
      outcomes.update({k: v for k, v in json.load(f).items() if v.get('status') == 'ok'})
  jobs = [('common', dense_baseline)] if 'common' in papers or not args.papers else []
  for p in papers:
    if p == 'common':
      continue
    try:
      mod = importlib.import_module(f'{p}.quick')
    except ModuleNotFoundError as e:
      if e.name in (p, f'{p}.quick'):
        outcomes[p] = {'status': 'not landed'}
        continue
      raise
    jobs.append((p, mod.run))
  for name, fn in jobs:
    t0 = time.time()
    print(f'== {name}', flush=True)
    try:
      out = fn(os.path.join(args.workdir, name), seeds=tuple(seeds), smoke=args.smoke)
      out = dict(out, status='ok', seconds=time.time() - t0)
    except Exception:  # one paper's failure must not hide the others' results
      out = {'status': 'failed', 'error': traceback.format_exc(), 'seconds': time.time() - t0}
      print(out['error'], file=sys.stderr)
    outcomes[name] = out
    write_report(args.workdir, outcomes)
  text = write_report(args.workdir, outcomes)
  print(text)
  failed = [n for n, o in outcomes.items() if o.get('status') == 'failed' and n in ran]
  bad_checks = [(n, c) for n, o in outcomes.items() if n in ran
                for c, ok in o.get('checks', {}).items() if not ok]
  if failed:
    print(f'error: experiments failed: {failed}', file=sys.stderr)
    return 1
  if bad_checks:
    print(f'{"error" if args.strict else "warning"}: checks failed: {bad_checks}',
          file=sys.stderr)
    if args.strict:
      return 1
  return 0


if __name__ == '__main__':
  sys.exit(main())
