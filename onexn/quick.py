"""The 1xN quick experiment on digits: accuracy vs pruning rate per method (the paper's Fig. 4 in miniature).

  python -m common.reproduce --papers=onexn [--smoke]

Setting: a narrow MobileNet-V2 (1xN / torchvision layout, six blocks,
``onexn/configs/digits_dense.py``) is pretrained densely on digits with ``common.train`` (one model
per seed, shared by every method). It is then pruned once at p in {0.5, 0.75} with the official
patterns: **weight** (unstructured), **1x4**, **1x4 + filter rearrangement**, **1x8**, and the
named baseline **filter** (L1) pruning; classifier dense. Each pruned model is evaluated right after
pruning, with its BN statistics re-estimated on the training set (no weight update: on this narrow
net the pretrained statistics, which the official code's first ``validate`` uses, collapse every
pruned model to chance at p = 0.75; that number is recorded too as ``top1_pruned_pretrained_bn``),
and after a short fine-tune with the masks fixed (``onexn/configs/digits.py``: SGD 0.01, cosine,
wd 4e-5; top-1 = best over its epochs). One jitted step serves every fine-tune (masks are data in
``TrainState.extra``). The fine-tuned
1x4 + rearrangement model at the highest p is exported with ``onexn.export_sparse`` and must equal
the masked dense model through the ``xla_ext`` kernel; its batch-1 CPU latency is reported next to
the dense deployment graph's (a 32x32 toy: kernel-launch overheads dominate, no speedup expected
here; ``onexn.end_to_end_latency`` measures MobileNet-V2 224x224).

Claims checked (the paper's headline, Fig. 4: 1xN above filter pruning at equal p): 1x4 beats
filter pruning at p = 0.75 in every seed, before and after fine-tuning; the export matches the
masked model.
"""
from __future__ import annotations

import functools
import json
import os
import time
from typing import Any, Dict, List, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from common import data as common_data
from common import pretrained
from common import train
from onexn import export, latency, layer_policy
from onexn.configs import digits as digits_config
from onexn.configs import digits_dense
from onexn.train import OneByN

# (label, method fields); the order is the plot legend's.
METHODS = (
    ('weight', dict(pattern='weight')),
    ('1x4', dict(pattern='block', block_size_n=4, rearrange=False)),
    ('1x4+R', dict(pattern='block', block_size_n=4, rearrange=True)),
    ('1x8', dict(pattern='block', block_size_n=8, rearrange=False)),
    ('filter', dict(pattern='filter')),
)
SPARSITIES = (0.5, 0.75)
SMOKE_METHODS = ('1x4', '1x4+R', 'filter')   # smoke: p = 0.75 only


def settings(smoke: bool) -> Dict[str, Any]:
  """Epoch budgets: the default finishes in a few minutes on 2 cores, smoke in about one."""
  if smoke:
    return {'pretrain_epochs': 6, 'finetune_epochs': 2}
  return {'pretrain_epochs': 10, 'finetune_epochs': 2}


def make_engine(config) -> train.Engine:
  """One engine (one compiled train / eval step) for every (seed, p, method) fine-tune: the masks
  are data in ``TrainState.extra``, so changing them recompiles nothing."""
  return train.Engine(config, OneByN(config))


def finetune(engine: train.Engine, state: train.TrainState, train_ds, test_ds):
  """Trains ``config.num_epochs`` epochs; returns (state, best test top-1 over its epochs)."""
  best = 0.0
  for epoch in range(int(engine.config.num_epochs)):
    state, _ = engine.train_epoch(state, epoch, dataset=train_ds)
    best = max(best, engine.evaluate(state, test_ds)['test_top1'])
  return state, best


@functools.lru_cache(maxsize=None)
def _bn_forward(engine: train.Engine):
  """A train-mode forward returning the new BN statistics (one object per engine, so the
  recalibration step compiles once)."""

  def forward(params_extra, batch_stats, images):
    params, extra = params_extra
    _, new_bs, _ = engine.method.forward(engine.model, params, batch_stats, extra,
                                         {'image': images}, True, jax.random.PRNGKey(0))
    return new_bs

  return forward


def recalibrate_bn(engine: train.Engine, state: train.TrainState, train_ds) -> train.TrainState:
  """BN running statistics re-estimated on the training set, no weight update.

  Exact averages of the per-batch moments (``common.pretrained.recalibrate_batch_stats``), so
  that "right after pruning" measures the pruned weights rather than the pretrained statistics'
  mismatch with them.
  """
  images = (b['image'] for b in train_ds.batches(engine.batch_size, epoch=0, train=False,
                                                   drop_remainder=True))
  bs = pretrained.recalibrate_batch_stats_iter(_bn_forward(engine), (state.params, state.extra),
                                               state.batch_stats, images)
  return state.replace(batch_stats=bs)


def _method_config(seed: int, p: float, fields: Dict[str, Any], epochs: int):
  c = digits_config.get_config()
  c.seed = seed
  c.num_epochs = epochs
  c.progress_bar = False
  c.method.sparsity = float(p)
  c.method.rearrange = False
  for k, v in fields.items():
    c.method[k] = v
  return c


def pretrain(workdir: str, seed: int, epochs: int) -> Dict[str, Any]:
  """Dense narrow MobileNet-V2 on digits with ``common.train`` (resumes if ``workdir`` holds it)."""
  c = digits_dense.get_config()
  c.seed = seed
  c.num_epochs = epochs
  c.progress_bar = False
  res = train.run(c, workdir, train.Method(c))
  return {'variables': train.load_variables(workdir), 'top1': res['top1_best'],
          'metrics_png': os.path.join(workdir, 'metrics.png')}


def plot(records: List[Dict[str, Any]], dense: Dict[int, float], path: str) -> None:
  """Top-1 vs p per method, before and after fine-tuning (mean +- std over seeds; p=0: dense)."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  dense_mean = float(np.mean(list(dense.values())))
  fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), sharey=True)
  for ax, key, title in ((axes[0], 'top1_pruned', 'right after pruning (BN re-estimated)'),
                         (axes[1], 'top1', 'after fine-tuning')):
    for label in sorted({r['method'] for r in records}, key=[m[0] for m in METHODS].index):
      ps = sorted({r['p'] for r in records if r['method'] == label})
      sel = lambda p: [r[key] for r in records if r['method'] == label and r['p'] == p]
      mean = [np.mean(sel(p)) for p in ps]
      std = [np.std(sel(p)) for p in ps]
      ax.errorbar([0.0] + ps, [dense_mean] + mean, yerr=[0.0] + std, marker='o', capsize=3,
                  label=label)
    ax.set_title(title)
    ax.set_xlabel('pruning rate p (per layer)')
    ax.grid(alpha=0.3)
  axes[0].set_ylabel('digits test top-1')
  axes[1].legend(fontsize=8)
  fig.suptitle('1xN vs weight / filter pruning, narrow MobileNet-V2 on digits (cf. paper Fig. 4)')
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def run(workdir: str, seeds: Sequence[int] = (0, 1, 2), smoke: bool = False) -> Dict[str, Any]:
  """The quick experiment (module docstring); ``common.reproduce`` contract.

  Returns:
    ``{'rows': [{'method': '<label> p=<p> <phase>', 'seed', 'top1', ...}], 'plots': [png],
    'checks': {claim: bool}, 'export': {...}, 'records': [{'method', 'seed', 'p', 'top1',
    'top1_pruned', 'sparsity_masked_layers'}]}`` (top-1 after fine-tuning = best over its
    epochs, as the official code reports); also written to ``workdir/onexn_quick.json``.
  """
  t0 = time.time()
  os.makedirs(workdir, exist_ok=True)
  s = settings(smoke)
  records, dense, export_info, engine = [], {}, {}, None
  methods = METHODS if not smoke else tuple(m for m in METHODS if m[0] in SMOKE_METHODS)
  sparsities = SPARSITIES if not smoke else (0.75,)
  for seed in seeds:
    pre = pretrain(os.path.join(workdir, f'onexn_dense_mbv2_seed{seed}'), seed,
                   s['pretrain_epochs'])
    dense[seed] = pre['top1']
    variables = pre['variables']
    train_ds = common_data.load('digits', 'train', seed=seed)
    test_ds = common_data.load('digits', 'test', seed=seed)
    if engine is None:
      base = _method_config(seed, SPARSITIES[0], dict(METHODS[0][1]), s['finetune_epochs'])
      engine = make_engine(base)
      specs = engine.method._specs()
    for p in sparsities:
      for label, fields in methods:
        c = _method_config(seed, p, dict(fields), s['finetune_epochs'])
        masks = layer_policy.model_masks(variables['params'], specs, c.model.name,
                                         **layer_policy.mask_options(c.method))
        kept = sum(int(np.count_nonzero(np.asarray(m))) for m in jax.tree.leaves(masks))
        total = sum(int(np.size(m)) for m in jax.tree.leaves(masks))
        state = engine.create_state(variables, extra={'masks': masks}, seed=seed)
        raw = engine.evaluate(state, test_ds)['test_top1']
        before = engine.evaluate(recalibrate_bn(engine, state, train_ds), test_ds)['test_top1']
        state, after = finetune(engine, state, train_ds, test_ds)
        records.append({'method': label, 'seed': seed, 'p': p, 'top1': after,
                        'top1_pruned': before, 'top1_pruned_pretrained_bn': raw,
                        'sparsity_masked_layers': 1.0 - kept / total})
        if label == '1x4+R' and p == sparsities[-1] and seed == seeds[0]:
          export_info = _check_export(engine, c, state, test_ds)
  plots = [os.path.join(workdir, 'onexn_accuracy_vs_p.png')]
  plot(records, dense, plots[0])

  def beats(a, b, key, p=0.75):
    by = {(r['method'], r['seed']): r[key] for r in records if r['p'] == p}
    return all(by[(a, sd)] > by[(b, sd)] for sd in seeds)

  def mean(m, key, p=0.75):
    return float(np.mean([r[key] for r in records if r['method'] == m and r['p'] == p]))

  checks = {
      '1x4 beats filter pruning at p=0.75 in every seed, right after pruning (BN re-estimated, '
      'no weight update)': beats('1x4', 'filter', 'top1_pruned'),
      '1x4 beats filter pruning at p=0.75 in every seed, after fine-tuning':
          beats('1x4', 'filter', 'top1'),
      'sparse export (xla_ext kernel) of the fine-tuned 1x4+R MobileNet-V2 == masked dense model '
      '(atol 1e-4)': export_info.get('max_abs_diff', 1.0) <= 1e-4,
  }
  if not smoke:
    checks['weight >= 1x4 and 1x8 > filter at p=0.75 right after pruning (mean over seeds)'] = (
        mean('weight', 'top1_pruned') >= mean('1x4', 'top1_pruned') and
        mean('1x8', 'top1_pruned') > mean('filter', 'top1_pruned'))
    checks['dense narrow MobileNet-V2 reaches >= 0.9 top-1 on digits (every seed)'] = all(
        v >= 0.9 for v in dense.values())
  # rows for common.reproduce (summarised per method name over seeds)
  rows = [{'method': 'dense narrow MobileNet-V2', 'seed': sd, 'top1': t} for sd, t in dense.items()]
  for p in sparsities:
    for phase, key in (('pruned (BN re-estimated)', 'top1_pruned'), ('fine-tuned', 'top1')):
      for label, _ in methods:
        rows += [{'method': f'{label} p={p} {phase}', 'seed': r['seed'], 'top1': r[key], 'p': p,
                  'sparsity_masked_layers': r['sparsity_masked_layers']}
                 for r in records if r['method'] == label and r['p'] == p]
  out = {'rows': rows, 'plots': plots, 'checks': checks, 'export': export_info,
         'records': records, 'dense_top1': dense, 'seconds': time.time() - t0}
  with open(os.path.join(workdir, 'onexn_quick.json'), 'w') as f:
    json.dump(out, f, indent=2, default=float)
  return out


def _check_export(engine: train.Engine, config, state, test_ds) -> Dict[str, Any]:
  """Exports the fine-tuned model, compares logits on the test set, times batch 1 (toy size)."""
  n = int(config.method.block_size_n)
  method, model = engine.method, engine.model
  kw = dict(n=n, num_classes=method.num_classes, specs=method._specs(), model=model)
  args = (state.params, state.batch_stats, state.extra['masks'], config.model)
  sm = export.export_sparse(*args, **kw)
  dm = export.export_sparse(*args, use_sparse_kernel=False, **kw)
  batch = next(test_ds.batches(int(config.dataset.eval_batch_size), epoch=0, train=False,
                               drop_remainder=False))
  x = jnp.asarray(batch['image'])
  masked = {'params': method.effective_params(state.params, state.extra),
            'batch_stats': state.batch_stats}
  ref = jax.jit(lambda v, x: model.apply(v, x, train=False))(masked, x)
  y = sm(x)
  x1 = x[:1]
  return {'max_abs_diff': float(jnp.max(jnp.abs(y - ref))),
          'same_predictions': bool(jnp.all(jnp.argmax(y, -1) == jnp.argmax(ref, -1))),
          'sparse_layers': len(sm.packed), 'absorbed': [list(p) for p in sm.absorbed],
          'latency_ms_dense_batch1': 1e3 * latency.time_fn(lambda: dm(x1), 10),
          'latency_ms_sparse_batch1': 1e3 * latency.time_fn(lambda: sm(x1), 10)}
