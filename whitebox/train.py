"""White-Box channel pruning as one resumable staged run (zyxxmu/White-Box ``cifar.py: main``,
``imagenet.py: main``).

  python -m whitebox.train --config=whitebox/configs/vgg16_cifar10.py --workdir=runs/wb_vgg16
  python -m whitebox.train --config=whitebox/configs/digits.py --workdir=runs/wb_digits

Stages (``common.train.run_stages``; a killed run resumes inside its stage):

1. ``classwise/``: the class model (the zoo model with a class-wise mask ``M_l [K, C_l]`` at
   every masked tap site, ``whitebox.families``) trained from scratch at a *constant* lr
   (``method.classwise_lr``, ``method.classwise_epochs``) on ``CE + lambda * sum_l
   ||sum_k M_l||_2``; masks are ordinary params (momentum and coupled weight decay, unused ones
   included). Its per-epoch test accuracy uses the label-free gate ``sum_k M / 2`` (the code
   never evaluates the class model).
2. the vote, at the start of ``finetune/`` (host side, once): scores, global threshold lowered
   until ``method.flops_target``, the random layers (seeded by ``config.seed``), the compact
   widths and the inherited weights. Written to ``finetune/vote.json``: per-layer widths and kept
   ratios, the sign and size of the folded BN scales (negative ones counted and reported), the
   FLOPs reduction and the compact model's test accuracy right after surgery, before any
   fine-tuning. ``finetune/kept_ratio.png`` and ``finetune/class_masks.png`` plot them.
3. ``finetune/``: the compact model trained with a fresh optimizer (the config's optimizer and
   schedule, plain CE); the best epoch by ``config.best_metric`` (``test_top5`` for ImageNet, as
   the code keeps it; ``--config.best_metric=test_top1`` selects top-1).

Config fields (``config.method``): ``classwise_epochs``, ``classwise_lr``, ``sparse_lambda``,
``flops_target``, ``min_preserve``, ``random_layers``, ``bn_fold``, ``fold_unused``,
``fresh_shortcuts``, ``class_model_kwargs`` (the class model's architecture options where they
differ: MobileNet-V2's strides and ReLU), ``selection`` ('whitebox' | 'l1' | 'random': the
baselines at the vote's widths).
"""
from __future__ import annotations

import copy
import json
import os
from typing import Any, Dict

import jax
import jax.numpy as jnp
import numpy as np

from common import train
from common.losses import cross_entropy
from whitebox import compact as prune_lib, families, gate

SELECTIONS = ('whitebox', 'l1', 'random')


def _kwargs(cfg) -> Dict[str, Any]:
  kw = cfg.to_dict() if hasattr(cfg, 'to_dict') else dict(cfg or {})
  return {k: (tuple(v) if isinstance(v, list) else v) for k, v in kw.items()}


def make_plan(config) -> families.Plan:
  try:
    return families.Plan(config.model.name, config.model.widths,
                         random_layers=bool(config.method.get('random_layers', True)))
  except ValueError as e:
    raise train.UserError(str(e)) from e


class ClassWise(train.Method):
  """Stage 1: the class model with class-wise masks (``cifar.py: train_class``)."""

  name = 'whitebox_classwise'

  def __init__(self, config):
    super().__init__(config)
    self.plan = make_plan(config)
    lam = float(config.method.get('sparse_lambda', 0.0))
    if lam < 0:
      raise train.UserError(f'method.sparse_lambda must be >= 0; got {lam}')
    self.lam = lam
    self.sites, self.used = self.plan.forward_sites

  def model_kwargs(self):
    kw = super().model_kwargs()
    kw.update(_kwargs(self.config.method.get('class_model_kwargs', {})))
    return kw

  def init_variables(self, model, rng, images):
    v = super().init_variables(model, rng, images)
    params = dict(v['params'])
    params[prune_lib.MASKS] = prune_lib.init_masks(self.plan, self.num_classes)
    return {'params': params, 'batch_stats': v['batch_stats']}

  def forward(self, model, params, batch_stats, extra, batch, train_, rng):
    masks = params[prune_lib.MASKS]
    net = {k: v for k, v in params.items() if k != prune_lib.MASKS}
    used = [masks[self.plan.masks[i].name] for i in self.used]
    key = jax.random.fold_in(rng, 7) if train_ else None
    tap = gate.gate_tap(self.sites, used, batch['label'], key, train=train_)
    variables = {'params': net, 'batch_stats': batch_stats}
    if train_:
      logits, mut = model.apply(variables, batch['image'], train=True, tap=tap,
                                mutable=['batch_stats'])
      return logits, mut['batch_stats'], {}
    return model.apply(variables, batch['image'], train=False, tap=tap), batch_stats, {}

  def loss(self, logits, labels, aux, params, extra):
    ce = cross_entropy(logits, labels)
    reg = gate.mask_regularizer(params[prune_lib.MASKS].values(), self.lam)
    return ce + reg, {'ce': ce, 'mask_reg': reg}

  def flops_params(self, state):
    return None, None   # the class model is never deployed; the compact model's are reported

  def results(self, state):
    ms = prune_lib.mask_list(self.plan, state.params[prune_lib.MASKS])
    spread = [float(np.std(m, axis=0).mean()) for m in ms]
    return {'num_masks': len(ms), 'voting_masks': len(self.plan.pool),
            'mask_class_std_mean': float(np.mean(spread))}


def evaluate_top1(model, variables, dataset, batch_size: int) -> float:
  """Test top-1 of ``model`` (eval mode) over every example of ``dataset`` (a ``common.data``
  set), one jitted forward per batch."""
  fn = jax.jit(lambda v, x: jnp.argmax(model.apply(v, x, train=False), -1))
  correct = total = 0
  for batch in dataset.batches(batch_size, epoch=0, train=False, drop_remainder=False):
    pred = np.asarray(fn(variables, jnp.asarray(batch['image'])))
    correct += int((pred == np.asarray(batch['label'])).sum())
    total += int(pred.shape[0])
  return correct / max(total, 1)


def l1_order(kernel: np.ndarray) -> np.ndarray:
  """Output channels of an HWIO kernel by descending L1 norm (Li et al. 2017), stable."""
  return np.argsort(-np.abs(np.asarray(kernel)).sum((0, 1, 2)), kind='stable')


def reselect(plan: families.Plan, pruning: prune_lib.Pruning, params, selection: str,
             seed: int) -> prune_lib.Pruning:
  """The same per-layer widths with another channel choice: 'l1' (largest-L1 filters of the
  class model's producing conv, ascending order) or 'random' (seeded, sorted)."""
  if selection == 'whitebox':
    return pruning
  from common import transforms
  rng = np.random.default_rng(seed + 1000)
  keep = {}
  for i, k in pruning.keep.items():
    if selection == 'l1':
      kern = transforms.get_path(params, plan.producer(i) + ('kernel',))
      keep[i] = np.sort(l1_order(kern)[:len(k)])
    else:
      keep[i] = np.sort(rng.choice(plan.masks[i].width, len(k), replace=False))
  ridx = pruning.random_idx
  if ridx is not None and selection == 'l1':
    kern = transforms.get_path(params, plan.producer(None) + ('kernel',))
    ridx = np.sort(l1_order(kern)[:len(ridx)])
  return prune_lib.Pruning(widths=pruning.widths, keep=keep, random_idx=ridx,
                           scales=pruning.scales, vote=pruning.vote)


class FineTune(train.Method):
  """Stages 2 and 3: the vote and surgery (host, in ``setup``/``init_variables``), then plain
  fine-tuning of the compact model (``cifar.py: main`` after ``build_*_pruned_model``)."""

  name = 'whitebox'

  def __init__(self, config, classwise_dir: str = None):
    """``classwise_dir``: the stage-1 workdir (default: the previous stage's, ``info.previous``),
    so that several fine-tuning arms of one staged run can share one class model."""
    super().__init__(config)
    self.classwise_dir = classwise_dir
    self.plan = make_plan(config)
    self.pruning = None
    self.report: Dict[str, Any] = {}

  def setup(self, info):
    super().setup(info)
    source = self.classwise_dir or info.previous
    if source is None:
      raise train.UserError('whitebox fine-tuning needs the class-wise stage before it '
                            '(run python -m whitebox.train, which chains both)')
    m = self.config.method
    selection = self.choice('selection', 'whitebox', SELECTIONS)
    target = float(m.flops_target)
    mp = float(m.get('min_preserve', 0.3))
    self.cls = train.load_state(source, 'last')
    try:
      pr = prune_lib.prune(self.plan, self.cls['params'][prune_lib.MASKS], target,
                           input_hw=tuple(info.image_shape[:2]), num_classes=info.num_classes,
                           model_kwargs=self.model_kwargs(), min_preserve=mp,
                           seed=int(self.config.seed))
    except ValueError as e:
      raise train.UserError(f'method.flops_target={target}, method.min_preserve={mp}: {e}') from e
    self.pruning = reselect(self.plan, pr, self.cls['params'], selection, int(self.config.seed))

  def build_model(self):
    from common import models
    return models.get_model(self.config.model.name, self.num_classes,
                            widths=self.pruning.widths, **self.model_kwargs())

  def init_variables(self, model, rng, images):
    m = self.config.method
    fold_unused = bool(m.get('fold_unused', True))
    v = prune_lib.compact_variables(
        self.plan, self.pruning, self.cls['params'], self.cls['batch_stats'], model,
        tuple(images.shape[1:]), rng, bn_fold=bool(m.get('bn_fold', True)),
        fold_unused=fold_unused, fresh_shortcuts=bool(m.get('fresh_shortcuts', True)))
    report = prune_lib.layer_report(self.plan, self.pruning, fold_unused)
    path = os.path.join(self.info.workdir, 'vote.json') if self.info.workdir else None
    if path and os.path.exists(path):   # a resumed run: the surgery was evaluated already
      with open(path) as f:
        report['top1_after_surgery'] = json.load(f)['top1_after_surgery']
    else:
      report['top1_after_surgery'] = evaluate_top1(
          model, v, self.info.datasets['test'], int(self.config.dataset.eval_batch_size))
    report.update(widths=self.pruning.widths, selection=m.get('selection', 'whitebox'),
                  dense_widths=self.plan.widths)
    neg = report['folded_scales']['negative_total']
    if neg:
      print(f'whitebox: {neg} kept channels have a negative folded BN scale (sum_k M < 0): '
            f'their activations flip sign in the compact model', flush=True)
    print(f'whitebox: compact widths {self.pruning.widths}; FLOPs -{report["flops_reduction"]:.2%};'
          f' top-1 after surgery {report["top1_after_surgery"]:.4f}', flush=True)
    self.report = report
    if path and jax.process_index() == 0:
      train.write_json(path, report)
    return v

  def results(self, state):
    f_dense = prune_lib.dense_flops(self.plan, self.image_shape[:2], self.num_classes,
                                    self.model_kwargs())
    f, _ = self.flops_params(state)
    r = self.report
    return {'widths': self.pruning.widths, 'dense_flops': f_dense,
            'flops_reduction': 1 - f / f_dense, 'keep_ratio': r['keep_ratio'],
            'top1_after_surgery': r['top1_after_surgery'],
            'negative_folded_scales': r['folded_scales']['negative_total'],
            'folded_scale_min': r['folded_scales']['min'],
            'folded_scale_max': r['folded_scales']['max'],
            'selection': r['selection']}

  def flops_params(self, state):
    from common import flops
    f, p, _ = flops.count(self.config.model.name, self.pruning.widths,
                          tuple(self.image_shape[:2]), self.num_classes, **self.model_kwargs())
    return int(f), int(p)

  def export(self, state, workdir):
    from whitebox import plots
    paths = [plots.kept_ratio(self.report['layers'], os.path.join(workdir, 'kept_ratio.png')),
             plots.class_masks(prune_lib.mask_list(self.plan, self.cls['params'][prune_lib.MASKS]),
                               self.plan, os.path.join(workdir, 'class_masks.png'))]
    return {'plots': paths}


def stage_configs(config):
  """``(classwise config, finetune config)`` from one White-Box config: stage 1 runs
  ``method.classwise_epochs`` at the constant ``method.classwise_lr`` and selects by top-1."""
  m = config.method
  if int(m.classwise_epochs) <= 0:
    raise train.UserError(f'method.classwise_epochs must be positive; got {m.classwise_epochs}')
  c1 = copy.deepcopy(config)
  c1.num_epochs = int(m.classwise_epochs)
  c1.optimizer.learning_rate = float(m.classwise_lr)
  c1.schedule.name = 'constant'
  c1.schedule.warmup = 'none'
  c1.best_metric = 'test_top1'
  return c1, config


def validate(config) -> None:
  """Refuses bad ``config.method`` values before any training (one :class:`UserError` naming
  the value and what is allowed)."""
  m = config.method
  make_plan(config)
  if m.get('selection', 'whitebox') not in SELECTIONS:
    raise train.UserError(f'method.selection must be one of {list(SELECTIONS)}; got '
                          f'{m.selection!r}')
  if not 0.0 < float(m.flops_target) < 1.0:
    raise train.UserError(f'method.flops_target must be in (0, 1); got {m.flops_target!r}')
  if not 0.0 <= float(m.get('min_preserve', 0.3)) <= 1.0:
    raise train.UserError(f'method.min_preserve must be in [0, 1]; got {m.min_preserve!r}')
  if float(m.get('sparse_lambda', 0.0)) < 0:
    raise train.UserError(f'method.sparse_lambda must be >= 0; got {m.sparse_lambda!r}')


def run(config, workdir: str) -> Dict[str, Any]:
  """The staged run (module docstring) in ``workdir``; returns the top-level results."""
  validate(config)
  c1, c3 = stage_configs(config)
  return train.run_stages(workdir, [train.Stage('classwise', c1, ClassWise),
                                    train.Stage('finetune', c3, FineTune)])


main = train.cli(FineTune, default_config='whitebox/configs/digits.py', run_fn=run)

if __name__ == '__main__':
  main()
