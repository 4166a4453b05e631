"""Train FFSD (SJLeo/FFSD) or its deep-mutual-learning baseline on ``common.train``.

  python -m ffsd.train --config=ffsd/configs/resnet32_cifar100.py --workdir=runs/ffsd_r32
  python -m ffsd.train --config=ffsd/configs/digits.py --workdir=runs/ffsd_digits

The official loop (``CIFARTrainer.py``) mapped onto the engine's hooks:

* ``build_model``: the zoo backbone (``config.model``) that every common student and the leader
  are; ``ffsd.networks.build`` adds the fusion module, the leader's trans-fusion head and the m
  self-distillation decoders. ``init_variables``: one params tree (``ffsd.networks``), the m
  students stacked on a leading axis;
* ``init_extra`` / ``epoch_start``: the warmed-up weights ``lam_div, lam_fus, lam_sd``
  (``ffsd.losses.lambda_warmup`` of the 1-based epoch, as ``lambda_warmup(epoch)`` is called with
  ``epoch in range(1, ...)``), arrays in ``TrainState.extra`` so that they never recompile;
* ``updates``: one engine update whose loss is ``ffsd.ffsd.total_loss`` of one forward of every
  network with the pre-update parameters (the official order: forward all, then step each), and
  whose optimizer is every network's own, side by side (``optax.multi_transform`` over the
  top-level keys): students, leader (+ trans-fusion head) SGD nesterov 0.9 with
  ``optimizer.weight_decay`` (1e-4); fusion module the same SGD with ``method.fusion_weight_decay``
  (1e-5); decoders Adam ``method.sd_learning_rate`` (1e-3) with coupled weight decay
  ``method.sd_weight_decay`` (1e-4) and their own multistep schedule
  (``method.sd_milestones``; the ImageNet trainer keeps the CIFAR ``[150, 225]`` for them). Since
  every cross-network input is detached, one backward of the sum hands each network exactly its own
  loss's gradient (``tests/ffsd`` checks it leaf by leaf); separate engine updates would re-run
  the later networks' forwards after the earlier ones had stepped, which the official code does not;
* evaluation: one pass runs every network once; ``test_top1`` is the deployed network's (the
  leader; student 0 for the DML baseline), ``test_<net>_top1`` the others' (``student<i>``,
  ``fusion``, ``ensemble``: the mean of the students' logits), via ``eval_metrics``;
* ``results``: best and last top-1 of every network (``top1_best_<net>``; the official code
  selects each network's best epoch); ``export``: the leader alone (``workdir/leader``), loadable
  with ``common.train.load_variables`` into ``config.model``, checked against the leader inside
  the trained system.

Config fields (``config.method``): ``variant`` ('ffsd' | 'dml'), ``num_students`` (m = 2),
``temperature`` (2), ``lambda_diversity`` (1e-5), ``lambda_fusion`` (10),
``lambda_self_distillation`` (1000), ``warmup_epochs`` (5), ``fusion_weight_decay``,
``sd_learning_rate``, ``sd_weight_decay``, ``sd_milestones``, ``decoder_channels`` (() = halving;
DenseNet / GoogLeNet list theirs), ``train_per_class`` (0 = the whole training split; N keeps the
first N training images of every class: the low-data quick runs), ``vectorize`` (True: the
stacked students and decoders run under ``jax.vmap``; False: one by one, the bench's baseline).
"""
from __future__ import annotations

import os
from typing import Any, Dict, List, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from common import checkpoint as ckpt_lib
from common import schedules
from common import train
from ffsd import ffsd as ffsd_lib
from ffsd import losses as F
from ffsd import networks

LAMBDAS = ('lam_div', 'lam_fus', 'lam_sd')


def per_class_subset(dataset, n: int):
  """The first ``n`` examples of every class of ``dataset`` (in its stored order).

  Raises:
    train.UserError: ``n`` exceeds the smallest class.
  """
  labels = np.asarray(dataset.labels())
  idx = []
  for c in range(dataset.num_classes):
    rows = np.flatnonzero(labels == c)
    if len(rows) < n:
      raise train.UserError(f'method.train_per_class={n} exceeds the {len(rows)} training '
                            f'images of class {c}')
    idx.extend(rows[:n].tolist())
  return dataset.subset(np.sort(np.asarray(idx)))


class FFSD(train.Method):
  """``common.train`` hooks of FFSD and of its DML baseline (``method.variant='dml'``)."""

  name = 'ffsd'

  def __init__(self, config):
    super().__init__(config)
    m = config.method
    self.variant = self.choice('variant', 'ffsd', networks.VARIANTS)
    if self.variant == 'dml':
      self.name = 'dml'
    self.num_students = m.get('num_students', 2)
    low = 2 if self.variant == 'ffsd' else 1
    if isinstance(self.num_students, bool) or not isinstance(self.num_students, int) or (
        self.num_students < low):
      raise train.UserError(f'method.num_students must be an int >= {low} for variant '
                            f'{self.variant!r}; got {self.num_students!r}')
    self.temperature = float(m.get('temperature', ffsd_lib.TEMPERATURE))
    if not self.temperature > 0:
      raise train.UserError(f'method.temperature must be > 0; got {self.temperature}')
    self.lambdas = {'lam_div': float(m.get('lambda_diversity', ffsd_lib.LAMBDA_DIVERSITY)),
                    'lam_fus': float(m.get('lambda_fusion', ffsd_lib.LAMBDA_FUSION)),
                    'lam_sd': float(m.get('lambda_self_distillation',
                                          ffsd_lib.LAMBDA_SELF_DISTILLATION))}
    bad = {k: v for k, v in self.lambdas.items() if v < 0}
    if bad:
      raise train.UserError(f'loss weights must be >= 0; got {bad}')
    self.warmup_epochs = int(m.get('warmup_epochs', F.WARMUP_EPOCHS))
    if self.warmup_epochs < 0:
      raise train.UserError(f'method.warmup_epochs must be >= 0; got {self.warmup_epochs}')
    self.train_per_class = int(m.get('train_per_class', 0))
    if self.train_per_class < 0:
      raise train.UserError(f'method.train_per_class must be >= 0; got {self.train_per_class}')
    self.nets: Optional[networks.FFSDNetworks] = None

  # --- data, model, variables ------------------------------------------------------------------
  def datasets(self):
    d = super().datasets()
    if self.train_per_class:
      d['train'] = per_class_subset(d['train'], self.train_per_class)
    return d

  def build_model(self):
    model = super().build_model()
    ch = tuple(self.config.method.get('decoder_channels', ()) or ()) or None
    try:
      self.nets = networks.build(model, self.config.model.name, self.image_shape,
                                 self.num_students, self.num_classes, self.variant, ch,
                                 self.model_kwargs().get('bn_axis_name'),
                                 bool(self.config.method.get('vectorize', True)))
    except ValueError as e:
      raise train.UserError(str(e)) from e
    return model

  def init_variables(self, model, rng, images):
    if self.config.get('init_checkpoint', ''):
      return train.load_variables(self.config.init_checkpoint)
    return self.nets.init(rng, images)

  def lambdas_at(self, epoch: int) -> Dict[str, float]:
    """The loss weights of 0-based ``epoch``: ``lambda_warmup`` of ``epoch + 1``."""
    if self.warmup_epochs == 0:
      return dict(self.lambdas)
    return {k: F.lambda_warmup(v, epoch + 1, self.warmup_epochs) for k, v in self.lambdas.items()}

  def init_extra(self, params, batch_stats, rng):
    return {k: jnp.asarray(v, jnp.float32) for k, v in self.lambdas_at(0).items()}

  def epoch_start(self, state, epoch):
    extra = {k: jnp.asarray(v, jnp.float32) for k, v in self.lambdas_at(epoch).items()}
    return state.replace(extra=extra)

  # --- the step --------------------------------------------------------------------------------
  def network_tx(self, params, schedule) -> optax.GradientTransformation:
    """Each network's own optimizer, by the top-level key of ``params`` (module docstring)."""
    c, m = self.config, self.config.method
    backbone = schedules.make_optimizer(c.optimizer, schedule)
    fusion_cfg = ml_collections.ConfigDict(c.optimizer.to_dict())
    fusion_cfg.weight_decay = float(m.get('fusion_weight_decay', 1e-5))
    sd_cfg = ml_collections.ConfigDict({'name': 'adam', 'weight_decay':
                                        float(m.get('sd_weight_decay', 1e-4))})
    sd_lr = float(m.get('sd_learning_rate', 1e-3))
    steps = self.info.steps_per_epoch if self.info else 1
    sd_sched = schedules.make_schedule(
        ml_collections.ConfigDict({'name': 'multistep', 'milestones': tuple(
            m.get('sd_milestones', (150, 225))), 'gamma': float(c.schedule.get('gamma', 0.1))}),
        sd_lr, int(c.num_epochs), steps)
    txs = {'backbone': backbone, 'fusion': schedules.make_optimizer(fusion_cfg, schedule),
           'sd': schedules.make_optimizer(sd_cfg, sd_sched)}
    group = {'students': 'backbone', 'leader': 'backbone', 'trans_fusion': 'backbone',
             'fusion': 'fusion', 'sd': 'sd'}
    labels = {k: jax.tree.map(lambda _, g=group[k]: g, v) for k, v in params.items()}
    return optax.multi_transform(txs, labels)

  def updates(self, params, schedule):
    return [train.Update('ffsd', self.network_tx(params, schedule), loss=self._train_loss)]

  def _train_loss(self, model, params, batch_stats, extra, batch, rng):
    out, new_bs = self.nets.train_outputs(params, batch_stats, batch['image'])
    loss, metrics = ffsd_lib.total_loss(out, batch['label'], extra, self.temperature)
    logits = out['l_logits'] if self.variant == 'ffsd' else out['s_logits'][0]
    return loss, (new_bs, None, metrics, logits)

  def forward(self, model, params, batch_stats, extra, batch, train_: bool, rng):
    if train_:
      raise RuntimeError('FFSD trains through its own update loss')
    logits = self.nets.eval_logits(params, batch_stats, batch['image'])
    return logits[self.deployed], batch_stats, {'logits': logits}

  def eval_metrics(self, logits, batch, aux):
    """Correct counts of every other network, from the same evaluation pass."""
    w, y = batch['weight'], batch['label']
    return {f'{n}_top1': jnp.sum((jnp.argmax(z, -1) == y).astype(jnp.float32) * w)
            for n, z in aux['logits'].items() if n != self.deployed}

  # --- evaluation and reports ------------------------------------------------------------------
  @property
  def deployed(self) -> str:
    return 'leader' if self.variant == 'ffsd' else 'student0'

  def network_keys(self) -> Dict[str, str]:
    """``{network: its metrics.jsonl key}``; the deployed network's is ``test_top1``."""
    names = self.nets.network_names() if self.nets else [self.deployed]
    return {n: 'test_top1' if n == self.deployed else f'test_{n}_top1' for n in names}

  def results(self, state):
    rows = train.read_metrics(self.info.workdir) if self.info and self.info.workdir else []
    out = {'deployed': self.deployed}
    for name, key in self.network_keys().items():
      vals = [r[key] for r in rows if key in r]
      if vals:
        out[f'top1_best_{name}'] = max(vals)
        out[f'top1_last_{name}'] = vals[-1]
    return out

  def export(self, state, workdir):
    """Writes the deployed network alone (``workdir/leader``, a ``common.train.load_variables``
    directory for ``config.model``) and returns its path and test top-1 measured from it."""
    key = 'leader' if self.variant == 'ffsd' else 'students'
    p, s = state.params[key], state.batch_stats[key]
    if key == 'students':
      p, s = jax.tree.map(lambda a: a[0], (p, s))
    variables = {'params': jax.tree.map(np.asarray, p), 'batch_stats': jax.tree.map(np.asarray, s)}
    path = os.path.join(workdir, 'leader')
    c = ckpt_lib.Checkpointer(path, keep=1)
    try:
      c.save(0, variables, {'model': self.config.model.name})
    finally:
      c.close()
    loaded = train.load_variables(path)
    top1 = evaluate_model(self.nets.backbone, loaded, self.info.datasets['test'],
                          int(self.config.dataset.eval_batch_size))
    plot = os.path.join(workdir, 'ffsd_networks.png')
    plot_networks(train.read_metrics(workdir), self.network_keys(), plot)
    return {'exported_leader': path, 'exported_leader_top1': top1, 'plots': [plot]}


def evaluate_model(model, variables, dataset, batch_size: int) -> float:
  """Test top-1 of a plain zoo ``model`` with ``variables`` (eval mode, jitted)."""
  fwd = jax.jit(lambda v, x: model.apply(v, x, train=False))
  correct = n = 0
  for b in dataset.batches(batch_size, epoch=0, train=False, drop_remainder=False):
    logits = fwd(variables, jnp.asarray(b['image']))
    correct += int(np.sum(np.argmax(np.asarray(logits), -1) == b['label']))
    n += len(b['label'])
  return correct / max(n, 1)


def plot_networks(rows, keys: Dict[str, str], path: str) -> None:
  """Test top-1 vs epoch of every network of one run; ``keys``: network -> metrics key."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(6, 4))
  for name, key in keys.items():
    pts = [(r['epoch'] + 1, r[key]) for r in rows if key in r]
    if pts:
      ax.plot(*zip(*pts), label=name)
  ax.set_xlabel('epoch')
  ax.set_ylabel('test top-1')
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


main = train.cli(FFSD, default_config='ffsd/configs/digits.py')

if __name__ == '__main__':
  main()
