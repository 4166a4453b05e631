"""FDDA quick experiment on digits (the ``common.reproduce`` contract: ``run`` returns rows, plots,
checks).

  python -c "from fdda import quick; print(quick.run('runs/quick/fdda'))"

A full-precision ResNet-8 (16/32/64, projection shortcut) is trained once on ``train[:1200]``
(``fdda/configs/digits_teacher.py``; shared by the seeds) and quantized to W3A3 (F3L3: first and
last layer 3-bit too) from 10 calibration images, one per class drawn by the seed from the
teacher's training slice (``fdda/configs/digits.py``, schedule shortened to ``EPOCHS`` epochs of
``ITERATIONS`` iterations, ``WARMUP`` of them generator-only). Arms, 3 seeds:

* ``full precision``: the teacher (the ceiling);
* ``PTQ only``: activation ranges from the 10 calibration images (the EMA of ``QuantAct`` run
  over them until it settles), no fine-tuning;
* ``calibration only``: KD fine-tuning (CE + alpha T^2 KL) on the 10 calibration images alone,
  for the same number of student updates as the generator arms (``EPOCHS - WARMUP`` epochs);
* ``plain BNS``: the GDFQ generator (CE + BNS, no class centres), real + synthetic fine-tuning;
* ``FDDA``: the generator with the centralized and distorted BNS losses of the deep half;
* ``PTQ only F8L8`` / ``FDDA F8L8``: the same with 8-bit first / last layers (the setting of the
  paper's ImageNet tables).

Why W3A3: at W4A4, PTQ alone already keeps most of the teacher's accuracy on digits, which leaves
the fine-tuned arms little to recover; the published ImageNet numbers (zysxmu/FDDA README) are
harder at lower bits too (ResNet-18: W5A5 70.56 -> W4A4 68.88, and 8-bit first / last layers
recover +0.87 at W4A4 against +0.31 at W5A5). :func:`ptq_bits_sweep` measures PTQ-only top-1 per bit
width; W3A3 is the highest equal-bit setting where PTQ alone loses a large part of the teacher's
accuracy (``fdda/README.md`` has the table). The bit width is the same for every arm.

The student learning rate is chosen once, before the seeds run, by a sweep over ``LR_GRID`` of the
calibration-only arm evaluated on the held-out ``train[1200:]`` (never on the test split); every
fine-tuned arm uses it. Rows report the last epoch's test top-1 (the code's best-epoch-on-test
selection is not repeated); the rows of the generator arms also carry
:func:`alignment_diagnostic` (distance of the synthetic images' BN statistics to the class
centres, inter-class separation) and ``top1_before_finetune`` (ranges calibrated on synthetic
images, no student update), the two places where FDDA's alignment can show before fine-tuning.
Plots: test top-1 per arm (mean and spread), synthetic images per
class for FDDA and plain BNS. On a task this small, gaps within one standard deviation of the
paired seed differences are reported as no effect.
"""
from __future__ import annotations

import json
import os
from typing import Dict, List, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from common import plots as plots_lib
from common import train
from common.compile_cache import persistent_compilation_cache as compilation_cache
from fdda.configs import digits as digits_config
from fdda.configs import digits_teacher
from fdda.generator import Generator
from fdda.teacher import Teacher
from fdda.train import FDDA, synthetic_per_class

TEACHER_EPOCHS = 12
WEIGHT_BITS, ACT_BITS = 3, 3
# (weight bits, activation bits) of ptq_bits_sweep: the equal-bit ladder and the mixed neighbours.
BITS_LADDER = ((4, 4), (4, 3), (3, 4), (3, 3), (2, 4))
# 5 generator-only epochs: the generator's teacher top-1 on its own images is ~0.5 after 3 (75
# steps), too little for its images to carry the classes into the student's batches.
EPOCHS, WARMUP, ITERATIONS = 10, 5, 25
# 20 iterations: the EMA ranges start at 0 (as QuantAct), after n steps they hold 1 - 0.9^n of the
# true range; 3 steps (27%) clip every activation and leave the student at chance.
SMOKE = dict(teacher_epochs=4, epochs=2, warmup=1, iterations=20)
LR_GRID = (1e-6, 1e-5, 1e-4)
PTQ_PASSES = 50

M_FP, M_PTQ, M_CAL, M_BNS, M_FDDA = ('full precision', 'PTQ only', 'calibration only',
                                     'plain BNS', 'FDDA')
M_PTQ8, M_FDDA8 = 'PTQ only F8L8', 'FDDA F8L8'
# label -> (workdir name, method.arm or None for no fine-tuning, first_last_bits)
ARMS = {M_PTQ: ('ptq', None, 0), M_CAL: ('calibration', 'calibration', 0),
        M_BNS: ('bns', 'bns', 0), M_FDDA: ('fdda', 'fdda', 0),
        M_PTQ8: ('ptq_f8l8', None, 8), M_FDDA8: ('fdda_f8l8', 'fdda', 8)}
ORDER = (M_FP, M_PTQ, M_CAL, M_BNS, M_FDDA, M_PTQ8, M_FDDA8)


def train_teacher(workdir: str, epochs: int) -> Dict:
  c = digits_teacher.get_config()
  c.num_epochs = epochs
  c.progress_bar = False
  c.checkpoint_every_epochs = epochs
  return train.run(c, workdir, Teacher(c))


def arm_config(teacher: str, seed: int, arm: str, first_last: int, lr: float, epochs: int,
               warmup: int, iterations: int, eval_split: str = 'test',
               bits=(WEIGHT_BITS, ACT_BITS)):
  """``fdda/configs/digits.py`` shortened to ``epochs`` x ``iterations`` (``warmup`` of them
  generator-only) for one arm and seed; ``bits`` = (weight bits, activation bits)."""
  c = digits_config.get_config()
  c.seed = seed
  c.num_epochs = epochs
  c.checkpoint_every_epochs = epochs
  c.optimizer.learning_rate = lr
  c.schedule.t_max = max(epochs - warmup, 1) * iterations   # one half-cosine over fine-tuning
  m = c.method
  m.teacher_checkpoint = teacher
  m.weight_bits, m.act_bits = int(bits[0]), int(bits[1])
  m.arm = arm
  m.first_last_bits = first_last
  m.calibration_seed = seed
  m.iterations = iterations
  m.warmup_epochs = warmup
  m.unfixed_epochs = min(2, warmup) if warmup else 1
  m.gen_milestones = (max(epochs - 2, 1),)
  m.eval_split = eval_split
  m.grid_classes = 10
  m.grid_images = 9
  return c


def ptq_only(config) -> Dict:
  """Top-1 of the quantized teacher with ranges from the calibration images, no fine-tuning:
  ``PTQ_PASSES`` EMA steps (``QuantAct``, beta 0.9, from 0) over the 10 images, so the ranges hold
  ``1 - 0.9^50`` (> 99.4%) of the calibration set's min/max. -> ``{'top1', 'bits'}``."""
  method = FDDA(config)
  engine = train.Engine(config, method)
  state = engine.create_state()
  cal = engine.datasets['calibration']
  x = jnp.asarray(next(cal.batches(cal.num_examples, epoch=0, train=False,
                                   drop_remainder=False))['image'])

  @jax.jit
  def calibrate(student, bs, lo, hi):
    def body(_, r):
      return method.quantized_logits(engine.model, student, bs, r[0], r[1], x, True)[1]
    return jax.lax.fori_loop(0, PTQ_PASSES, body, (lo, hi))

  lo, hi = calibrate(state.params['student'], state.batch_stats, state.extra['act_lo'],
                     state.extra['act_hi'])
  state = state.replace(extra=dict(state.extra, act_lo=lo, act_hi=hi))
  return {'top1': engine.evaluate(state)['test_top1'],
          'bits': method.summary(state.params)['compression_vs_fp32']}


def ptq_bits_sweep(workdir: str, seeds: Sequence[int] = (0, 1, 2),
                   ladder=BITS_LADDER) -> Dict[str, Dict[str, float]]:
  """PTQ-only test top-1 of the quick experiment's teacher for every (weight, activation) bit
  pair of ``ladder``, F{k}L{k} and F8L8, over ``seeds`` (calibration draws): the measurement
  behind the choice of ``WEIGHT_BITS, ACT_BITS``. Trains the teacher into ``workdir/teacher`` if
  it is not there (the same one ``run`` uses). Returns ``{'W3A3-F3L3': {'mean', 'std',
  'seeds': [...]}, ...}`` and writes it to ``workdir/ptq_bits_sweep.json``."""
  os.makedirs(workdir, exist_ok=True)
  out = {}
  with compilation_cache(os.path.join(workdir, 'xla_cache')):
    tdir = os.path.join(workdir, 'teacher')
    train_teacher(tdir, TEACHER_EPOCHS)
    for wb, ab in ladder:
      for fl in (0, 8):
        top1 = [ptq_only(arm_config(tdir, s, 'calibration', fl, 1e-5, EPOCHS, 0, ITERATIONS,
                                    bits=(wb, ab)))['top1'] for s in seeds]
        k = fl or wb
        out[f'W{wb}A{ab}-F{k}L{k}'] = {'mean': float(np.mean(top1)),
                                       'std': float(np.std(top1, ddof=1)) if len(top1) > 1
                                       else float('nan'), 'seeds': top1}
  with open(os.path.join(workdir, 'ptq_bits_sweep.json'), 'w') as f:
    json.dump(out, f, indent=1)
  return out


def run(workdir: str, seeds: Sequence[int] = (0, 1, 2), smoke: bool = False) -> Dict:
  """The quick experiment. Returns ``{'rows', 'plots', 'checks'}`` (contract in the module doc).

  ``smoke=True``: the first seed, a 4-epoch teacher, 2 epochs of 20 iterations, PTQ and FDDA only.
  """
  os.makedirs(workdir, exist_ok=True)
  seeds = tuple(seeds)[:1] if smoke else tuple(seeds)
  if not seeds:
    raise ValueError('seeds must hold at least one seed')
  if smoke:
    te, ep, wu, it = (SMOKE[k] for k in ('teacher_epochs', 'epochs', 'warmup', 'iterations'))
    arms, grid = (M_FP, M_PTQ, M_FDDA), (1e-5,)
  else:
    te, ep, wu, it = TEACHER_EPOCHS, EPOCHS, WARMUP, ITERATIONS
    arms, grid = ORDER, LR_GRID
  rows, curves, sweep = [], {}, {}
  with compilation_cache(os.path.join(workdir, 'xla_cache')):
    tdir = os.path.join(workdir, 'teacher')
    fp = train_teacher(tdir, te)['top1_last']
    # Learning-rate sweep on the held-out part of the training split (first seed).
    if len(grid) > 1:
      for lr in grid:
        c = arm_config(tdir, seeds[0], 'calibration', 0, lr, ep - wu, 0, it,
                       eval_split=digits_teacher.HELDOUT_SPLIT)
        try:
          r = train.run(c, os.path.join(workdir, f'sweep_lr{lr:g}'), FDDA(c))
          sweep[lr] = r['top1_last']
        except FloatingPointError:
          sweep[lr] = float('nan')
      lr = max((v, k) for k, v in sweep.items() if np.isfinite(v))[1]
    else:
      lr = grid[0]
    for label in arms:
      for seed in seeds:
        if label == M_FP:   # one teacher serves every seed
          rows.append({'method': label, 'seed': seed, 'top1': fp})
          continue
        name, arm, fl = ARMS[label]
        if arm is None:
          c = arm_config(tdir, seed, 'calibration', fl, lr, ep, 0, it)
          r = ptq_only(c)
          rows.append({'method': label, 'seed': seed, 'top1': r['top1'],
                       'compression_vs_fp32': r['bits']})
          continue
        # Every fine-tuned arm takes the same ep - wu epochs of student updates (one cosine);
        # the calibration arm has no generator to warm up, so it runs only those.
        c = (arm_config(tdir, seed, arm, fl, lr, ep - wu, 0, it) if arm == 'calibration' else
             arm_config(tdir, seed, arm, fl, lr, ep, wu, it))
        wd = os.path.join(workdir, f'{name}_seed{seed}')
        res = train.run(c, wd, FDDA(c))
        curves.setdefault(label, []).append([m['test_top1'] for m in train.read_metrics(wd)])
        row = {'method': label, 'seed': seed, 'top1': res['top1_last'],
               'top1_best': res['top1_best'], 'lr': lr,
               'top1_before_finetune': res.get('top1_before_finetune'),
               'compression_vs_fp32': res['bits_summary']['compression_vs_fp32'],
               'seconds': res['seconds']}
        if arm != 'calibration':
          row.update(alignment_diagnostic(wd, seed=seed))
        rows.append(row)
  plots = [plots_lib.accuracy_curves(curves, os.path.join(workdir, 'fdda_top1_vs_epoch.png'),
                                     title=f'FDDA W{WEIGHT_BITS}A{ACT_BITS} on digits, ResNet-8 (option B)')]
  plots += _plot_synthetic(workdir, seeds[0], [l for l in (M_BNS, M_FDDA) if l in arms])
  with open(os.path.join(workdir, 'lr_sweep.json'), 'w') as f:
    json.dump({'heldout_split': digits_teacher.HELDOUT_SPLIT, 'top1_last': sweep,
               'chosen': lr}, f, indent=1, default=str)

  def per_seed(label, key='top1'):
    return {r['seed']: r[key] for r in rows if r['method'] == label and r.get(key) is not None}

  def gap(a, b, key='top1'):
    pa, pb = per_seed(a, key), per_seed(b, key)
    d = np.asarray([pa[s] - pb[s] for s in seeds if s in pa and s in pb])
    return float(d.mean()), float(d.std(ddof=1)) if len(d) > 1 else float('nan')

  checks = {}
  if smoke:
    fp = np.mean(list(per_seed(M_FP).values()))
    checks['the teacher trains well above chance on digits (>= 0.5)'] = fp >= 0.5
    checks[f'W{WEIGHT_BITS}A{ACT_BITS} FDDA keeps top-1 well above chance (>= 0.3)'] = (
        np.mean(list(per_seed(M_FDDA).values())) >= 0.3)
  else:
    for a, b in ((M_FDDA, M_BNS), (M_BNS, M_CAL), (M_CAL, M_PTQ), (M_FDDA, M_PTQ),
                 (M_FDDA8, M_FDDA)):
      mu, sd = gap(a, b)
      checks[f'{a} > {b} by more than one std of the paired gap ({mu:+.4f} +- {sd:.4f})'] = bool(
          mu > sd)
    # The mechanism, before any student update: FDDA's per-class statistics nearer the real
    # centres than GDFQ's, and the activation ranges calibrated on its images.
    mu, sd = gap(M_BNS, M_FDDA, 'centre_distance')
    checks[f'FDDA synthetic BN statistics nearer the class centres than plain BNS ones (C_BNS '
           f'lower by {mu:+.4f} +- {sd:.4f})'] = bool(mu > sd)
    mu, sd = gap(M_FDDA, M_BNS, 'top1_before_finetune')
    checks[f'ranges calibrated on FDDA synthetic images beat plain BNS ones before fine-tuning '
           f'({mu:+.4f} +- {sd:.4f})'] = bool(mu > sd)
    checks['full precision is the ceiling'] = all(
        np.mean(list(per_seed(M_FP).values())) >= np.mean(list(per_seed(l).values()))
        for l in arms if l != M_FP)
  return {'rows': rows, 'plots': plots, 'checks': checks}



def alignment_diagnostic(workdir: str, per_class: int = 16, seed: int = 0) -> Dict[str, float]:
  """How close a finished generator arm's synthetic images come to the real per-class BN
  statistics (the quantity FDDA's C_BNS / D_BNS losses pull on, Sec. 3 of the paper), measured
  through the teacher in eval mode on ``per_class`` images of every class:

  * ``centre_distance``: mean over classes c of ``C_BNS`` (:func:`fdda.alignment.centralized_loss`)
    of class c's synthetic batch against class c's calibration-image centres, deep half
    (``l >= s``);
  * ``class_separation`` / ``class_separation_real``: the mean pairwise distance between classes of
    the deep-layer BN-input means (:func:`fdda.alignment.class_separation`) of the synthetic
    batches / of the real calibration images (the paper's inter-class separation).

  ``workdir``: a ``fdda.train`` run with a generator (arm 'fdda' or 'bns').
  """
  from common import models
  from fdda import alignment
  st = train.load_state(workdir)
  with open(os.path.join(workdir, 'config.json')) as f:
    cfg = json.load(f)
  m = cfg['method']
  k, size = 10, 32
  model = models.get_model(cfg['model']['name'], k, **cfg['model'].get('kwargs', {}))
  names = alignment.bn_names(model, (1, size, size, 3))
  start = alignment.deep_start(len(names))
  teacher = jax.tree.map(jnp.asarray, st['extra']['teacher'])
  cm = [np.asarray(a) for a in st['extra']['centre_mean']]
  cv = [np.asarray(a) for a in st['extra']['centre_var']]
  gen = Generator(k, img_size=size, latent_dim=m['latent_dim'], width=m['gen_width'])
  imgs = synthetic_per_class(gen, st['params']['generator'], st['extra']['gen_stats'], k,
                             m['latent_dim'], per_class, seed)
  dist, syn_means = [], [[] for _ in names]
  for c in range(k):
    _, mu, var = alignment.batch_stats_of_inputs(model, teacher, jnp.asarray(imgs[c]), names)
    dist.append(float(alignment.centralized_loss(mu, var, [a[c] for a in cm], [a[c] for a in cv],
                                                 start)))
    for l, x in enumerate(mu):
      syn_means[l].append(np.asarray(x))
  return {'centre_distance': float(np.mean(dist)),
          'class_separation': alignment.class_separation([np.stack(x) for x in syn_means], start),
          'class_separation_real': alignment.class_separation(cm, start)}


def _plot_synthetic(workdir: str, seed: int, labels) -> List[str]:
  """One row of synthetic images per class (4 each) for every generator arm of ``seed``."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  if not labels:
    return []
  fig, axes = plt.subplots(10, 4 * len(labels), figsize=(1.1 * 4 * len(labels), 11),
                           squeeze=False)
  titles = []
  for j, label in enumerate(labels):
    wd = os.path.join(workdir, f'{ARMS[label][0]}_seed{seed}')
    st = train.load_state(wd)
    with open(os.path.join(wd, 'config.json')) as f:
      m = json.load(f)['method']
    latent = m['latent_dim']
    gen = Generator(10, img_size=32, latent_dim=latent, width=m['gen_width'])
    imgs = synthetic_per_class(gen, st['params']['generator'], st['extra']['gen_stats'], 10,
                               latent, 4, seed)
    for c in range(10):
      for i in range(4):
        a = axes[c][4 * j + i]
        a.imshow(np.clip(imgs[c][i].mean(-1), -3, 3), cmap='gray')
        a.axis('off')
    titles.append(label)
  fig.suptitle(' | '.join(titles) + ' (rows: classes 0-9)')
  fig.tight_layout()
  path = os.path.join(workdir, 'fdda_synthetic_per_class.png')
  fig.savefig(path, dpi=80)
  plt.close(fig)
  return [path]


if __name__ == '__main__':
  import sys
  print(json.dumps(run(sys.argv[1] if len(sys.argv) > 1 else 'runs/quick/fdda'), indent=1,
                   default=str))
