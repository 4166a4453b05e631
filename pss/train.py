"""Train a PSS-Net supernet (chenbong/PSS-Net ``train.py``) on the ``common.train`` engine.

  python -m pss.train --config=pss/configs/digits.py --workdir=runs/pss_digits
  python -m pss.train --config=pss/configs/mbv1_flops_imagenet.py --workdir=runs/pss_mbv1_f
  python -m pss.switch --workdir=runs/pss_digits --budget=2.6e6   # a deployable narrow model

The official loop mapped onto the engine:

* the model is the masked slimmable supernet (``common.models.slimmable``); a subnet is data
  (an int vector of active widths), its resolution is a static input (one compilation per
  resolution);
* ``setup``: the structure space, the per-bin prior (:func:`pss.prior.build_prior`) and empty
  pools; a numpy host RNG (the official ``random``) drives the bin, the coin and the candidate;
* ``before_step`` (host): bin ``b`` uniform over the pools, coin ``u``; if ``u < p`` or pool ``b``
  is not full, a prior sample of bin ``b``, else ``softmax(metric / T)`` over the pool;
* the step (one jitted update, :func:`pss.supernet.pss_loss`): ``CE(max) + KL(mid) + KL(min)``,
  returning ``-CE(mid)`` measured with the pre-update parameters;
* ``after_step`` (host, one device read per step): insert / EMA-update the candidate in pool
  ``b``, evict the worst;
* evaluation: each evaluated subnet (max net, min net, the retained subnets) gets its own BN
  recalibration (:func:`pss.supernet.recalibrate_bn`) on ``recal_batches`` training batches;
* end of run (``results``): per bin, the pool's ``valid_topk`` best keys by metric are
  recalibrated and scored on the held-out split, the best is kept and its test top-1 reported,
  beside ``random_per_bin`` random prior subnets of the same bin; ``export`` writes each kept
  subnet as a plain narrow zoo model (``subnets/``) and the accuracy-vs-FLOPs plot.

Pools and the host RNG state are saved in every checkpoint (``host_state``), so a killed run
resumes exactly.
"""
from __future__ import annotations

import functools
import json
import os
from typing import Any, Dict, List, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from common import schedules
from common import train
from pss import pools as pools_lib
from pss import prior as prior_lib
from pss import supernet
from pss.space import Space

SLIM_TO_ZOO = {'slim_mobilenet_v1': 'mobilenet_v1', 'slim_mobilenet_v1_tiny': 'mobilenet_v1_tiny',
               'slim_mobilenet_v2': 'mobilenet_v2'}
METRICS = ('flops', 'latency')


class PSS(train.Method):
  """``common.train`` hooks of PSS-Net (chenbong/PSS-Net ``train.py: train``)."""

  name = 'pss'

  def __init__(self, config):
    super().__init__(config)
    self.space: Optional[Space] = None
    self.prior: Optional[prior_lib.Prior] = None
    self.pools: Optional[pools_lib.SubnetPools] = None
    self.rng: Optional[np.random.Generator] = None
    self._pending: Optional[Tuple[int, Tuple]] = None
    self._metric_fn = None
    self._jit: Dict[Tuple, Any] = {}
    self._recal_cache = None
    self._final: Optional[Dict] = None

  # --- set-up ----------------------------------------------------------------------------------
  def _m(self):
    return self.config.method

  def datasets(self):
    m = self._m()
    out = {'train': train.load_dataset(self.config, m.train_split),
           'test': train.load_dataset(self.config, 'test')}
    if m.heldout_split:
      out['heldout'] = train.load_dataset(self._no_augment_config(), m.heldout_split)
    return out

  def _no_augment_config(self):
    c = self.config.copy_and_resolve_references()
    with c.unlocked():
      c.dataset.augment = False
    return c

  def setup(self, info):
    super().setup(info)
    m, c = self._m(), self.config
    if c.model.name not in SLIM_TO_ZOO:
      raise train.UserError(f'model.name must be one of {sorted(SLIM_TO_ZOO)}; got '
                            f'{c.model.name!r}')
    if c.model.get('widths', None) is not None:
      raise train.UserError('PSS-Net trains the max-width supernet of its space; leave '
                            f'model.widths unset (got {c.model.widths!r})')
    metric = self.choice('metric', 'flops', METRICS)
    try:
      self.space = Space(SLIM_TO_ZOO[c.model.name], tuple(m.width_range),
                         tuple(int(r) for r in m.resolution_range), int(m.resolution_step),
                         info.num_classes)
    except ValueError as e:
      raise train.UserError(str(e)) from e
    hw = tuple(info.image_shape[:2])
    if hw != (self.space.resolution_range[1],) * 2:
      raise train.UserError(f'the training images are {hw[0]}x{hw[1]} but '
                            f'method.resolution_range ends at {self.space.resolution_range[1]}; '
                            f'the loader must produce the max resolution')
    if metric == 'flops':
      self._metric_fn = lambda r, ch: prior_lib.to_mega(self.space.flops(r, ch))
    else:
      from pss import latency_table
      if not m.latency_table:
        raise train.UserError('method.metric=latency needs method.latency_table (a JSON file '
                              'written by python -m pss.latency_table)')
      try:
        table = latency_table.LatencyTable.load(m.latency_table)
      except (OSError, ValueError, KeyError) as e:
        raise train.UserError(f'cannot read method.latency_table={m.latency_table!r}: {e}') from e
      self._metric_fn = functools.partial(table.metric, self.space)
    for k in ('pool_size', 'prior_size', 'recal_batches'):
      if int(m[k]) < 1:
        raise train.UserError(f'method.{k} must be >= 1; got {m[k]}')
    try:
      self.prior = prior_lib.build_prior(self.space, self._metric_fn, int(m.prior_size),
                                         float(m.target_step), float(m.target_start),
                                         float(m.target_stop),
                                         np.random.default_rng([int(c.seed), 1]),
                                         float(m.target_offset))
      self.pools = pools_lib.SubnetPools(self.prior.bins, int(m.pool_size),
                                         float(m.metric_lambda))
    except ValueError as e:
      raise train.UserError(str(e)) from e
    self.rng = np.random.default_rng([int(c.seed), 2])

  def build_model(self):
    from common import models
    return models.get_model(self.config.model.name, self.num_classes, **self.model_kwargs())

  # --- fixed subnets ---------------------------------------------------------------------------
  @property
  def max_subnet(self):
    return self.space.resolution_range[1], self.space.max_channels

  @property
  def min_subnet(self):
    return self.space.resolution_range[0], self.space.min_channels

  def subnet_metric(self, res, channels) -> float:
    return float(self._metric_fn(np.asarray([res]), np.asarray([channels]))[0])

  # --- optimizer -------------------------------------------------------------------------------
  def decay_mask(self, params):
    return supernet.decay_mask(params)

  def updates(self, params, schedule):
    m = self._m()
    if m.lr_per_step_cosine:
      # chenbong/PSS-Net steps CosineAnnealingLR(T_max = epochs * iters) once per iteration.
      schedule = schedules.periodic_cosine(float(self.config.optimizer.learning_rate),
                                           int(self.config.num_epochs) * self.info.steps_per_epoch)
    tx = schedules.make_optimizer(self.config.optimizer, schedule, self.decay_mask(params))
    return [train.Update('pss', tx, loss=self._loss)]

  def _apply_train(self, model):
    def apply_fn(params, bs, x, counts):
      y, mut = model.apply({'params': params, 'batch_stats': bs}, x, train=True, counts=counts,
                           mutable=['batch_stats'])
      return y, mut['batch_stats']
    return apply_fn

  def _loss(self, model, params, batch_stats, extra, batch, rng):
    mb, st = batch['method'], batch['static']
    counts = {'max': mb['max_counts'], 'mid': mb['mid_counts'], 'min': mb['min_counts']}
    res = {'max': st['max_res'], 'mid': st['mid_res'], 'min': st['min_res']}
    loss, (bs, metrics, logits) = supernet.pss_loss(self._apply_train(model), params, batch_stats,
                                                   batch['image'], batch['label'], counts, res)
    return loss, (bs, None, metrics, logits)

  # --- host hooks ------------------------------------------------------------------------------
  def schedule_values(self, epoch: int) -> Tuple[float, float]:
    """``(p, T)`` of ``epoch`` (``supernet_p_range``, ``pool_softmax_t_range``)."""
    m, e = self._m(), int(self.config.num_epochs)
    return (float(prior_lib.exp_schedule(m.p_start, m.p_end, epoch, e)),
            float(prior_lib.exp_schedule(m.t_start, m.t_end, epoch, e)))

  def choose_candidate(self, epoch: int) -> Tuple[int, Tuple[int, Tuple[int, ...]]]:
    """Host: ``(bin index, key)`` of the next middle subnet (chenbong/PSS-Net ``train.py``
    order of draws: bin, coin, then prior or pool)."""
    p, t = self.schedule_values(epoch)
    b = int(self.rng.integers(len(self.pools)))
    u = self.rng.random()
    if u < p or not self.pools.full(b):
      res, ch = prior_lib.sample_prior(self.prior, self._metric_fn, b, self.rng)
      return b, self.space.key(res, ch)
    return b, self.pools.sample(b, t, self.rng)

  def before_step(self, state, step):
    epoch = step // self.info.steps_per_epoch
    b, key = self.choose_candidate(epoch)
    self._pending = (b, key)
    (rmax, cmax), (rmin, cmin) = self.max_subnet, self.min_subnet
    return {'max_counts': self.space.counts(cmax), 'min_counts': self.space.counts(cmin),
            'mid_counts': self.space.counts(key[1]), 'max_res': int(rmax), 'min_res': int(rmin),
            'mid_res': int(key[0])}

  def after_step(self, state, metrics, step):
    b, key = self._pending
    self.pools.insert(b, key, float(train.first_replica(metrics['cand_metric'])))
    self._pending = None

  def epoch_end(self, state, epoch):
    p, t = self.schedule_values(epoch)
    sizes = [self.pools.size(b) for b in range(len(self.pools))]
    best = [self.pools.top(b)[0][1] for b in range(len(self.pools)) if sizes[b]]
    return {'p': p, 'T': t, 'pool_sizes': sizes,
            'pool_best_metric_mean': float(np.mean(best)) if best else None}

  def host_state(self):
    return {'pools': self.pools.to_json(), 'rng': pools_lib.rng_state_to_json(self.rng)}

  def load_host_state(self, host):
    self.pools = pools_lib.SubnetPools.from_json(host['pools'])
    self.rng = pools_lib.rng_from_json(host['rng'])

  # --- evaluation ------------------------------------------------------------------------------
  def forward(self, model, params, batch_stats, extra, batch, train_mode, rng):
    if train_mode:
      raise RuntimeError('PSS trains through its own update loss')
    x = supernet.resize(batch['image'], batch['static']['res'])
    y = model.apply({'params': params, 'batch_stats': batch_stats}, x, train=False,
                    counts=batch['method']['counts'])
    return y, batch_stats, {}

  def eval_variants(self):
    return ('', 'min')

  def before_eval(self, state, variant):
    res, ch = self.max_subnet if variant == '' else self.min_subnet
    bs = self.recalibrate(state.params, state.batch_stats, res, ch)
    return state.replace(batch_stats=bs), {'counts': self.space.counts(ch), 'res': int(res)}

  def _model(self):
    from common import models
    if 'model' not in self._jit:
      self._jit['model'] = self.build_model()
    return self._jit['model']

  def _stats_fn(self, res: int):
    k = ('stats', res)
    if k not in self._jit:
      model = self._model()

      def f(params, bs, x, counts):
        _, mut = model.apply({'params': params, 'batch_stats': bs}, supernet.resize(x, res),
                             train=True, counts=counts, mutable=['batch_stats', 'bn_batch'])
        return mut['bn_batch']
      self._jit[k] = jax.jit(f)
    return self._jit[k]

  def _logits_fn(self, res: int):
    k = ('logits', res)
    if k not in self._jit:
      model = self._model()

      def f(params, bs, x, counts):
        return model.apply({'params': params, 'batch_stats': bs}, supernet.resize(x, res),
                           train=False, counts=counts)
      self._jit[k] = jax.jit(f)
    return self._jit[k]

  def _recal_batches(self):
    if self._recal_cache is None:
      ds = self.info.datasets['train']
      n = int(self._m().recal_batches)
      out = []
      for i, b in enumerate(ds.batches(int(self.config.dataset.batch_size), epoch=0, train=True,
                                       drop_remainder=True)):
        if i >= n:
          break
        out.append(np.asarray(b['image']))
      self._recal_cache = out
    return self._recal_cache

  def recalibrate(self, params, batch_stats, res: int, channels):
    """BN statistics of subnet ``(res, channels)``: exact averages over ``recal_batches``
    training batches (``ComputePostBN``)."""
    fn = self._stats_fn(int(res))
    counts = jnp.asarray(self.space.counts(channels))
    return supernet.recalibrate_bn(lambda x: fn(params, batch_stats, x, counts),
                                   self._recal_batches())

  def accuracy(self, params, batch_stats, res: int, channels, dataset) -> float:
    """Top-1 of subnet ``(res, channels)`` with ``batch_stats`` on ``dataset``."""
    fn = self._logits_fn(int(res))
    counts = jnp.asarray(self.space.counts(channels))
    correct, n = 0, 0
    for b in dataset.batches(int(self.config.dataset.eval_batch_size), epoch=0, train=False,
                             drop_remainder=False):
      y = fn(params, batch_stats, jnp.asarray(b['image']), counts)
      correct += int(jnp.sum(jnp.argmax(y, -1) == jnp.asarray(b['label'])))
      n += len(b['label'])
    return correct / max(n, 1)

  def final_table(self, state) -> Dict[str, Any]:
    """Per bin: the retained subnet (best held-out top-1 among the pool's ``valid_topk`` best
    by metric, each after its own BN recalibration), its test top-1, and ``random_per_bin``
    random prior subnets of the bin with the same weights."""
    if self._final is not None:
      return self._final
    m = self._m()
    params, bs0 = state.params, state.batch_stats
    test = self.info.datasets['test']
    select = self.info.datasets.get('heldout', test)
    rng = np.random.default_rng([int(self.config.seed), 3])
    rows = []
    for b, target in enumerate(self.pools.bins):
      if not self.pools.size(b):
        continue
      cands = []
      for (res, ch), metric in self.pools.top(b, int(m.valid_topk)):
        bs = self.recalibrate(params, bs0, res, ch)
        cands.append((self.accuracy(params, bs, res, ch, select), res, ch, metric, bs))
      sel, res, ch, metric, bs = max(cands, key=lambda t: t[0])
      row = {'budget': target, 'resolution': int(res), 'channels': list(ch),
             'widths': self.space.widths(ch), 'flops': int(self.space.flops([res], [ch])[0]),
             'metric_value': self.subnet_metric(res, ch), 'pool_metric': metric,
             'heldout_top1': sel, 'top1': self.accuracy(params, bs, res, ch, test)}
      rand = []
      for _ in range(int(m.random_per_bin)):
        rr, rc = prior_lib.sample_prior(self.prior, self._metric_fn, b, rng)
        rbs = self.recalibrate(params, bs0, rr, rc)
        rand.append({'resolution': int(rr), 'channels': [int(v) for v in rc],
                     'flops': int(self.space.flops([rr], [rc])[0]),
                     'top1': self.accuracy(params, rbs, rr, rc, test)})
      if rand:
        row['random'] = rand
        row['random_median_top1'] = float(np.median([r['top1'] for r in rand]))
      rows.append(row)
      self._kept_bn = getattr(self, '_kept_bn', {})
      self._kept_bn[target] = bs
    ends = {}
    for name, (res, ch) in (('max', self.max_subnet), ('min', self.min_subnet)):
      bs = self.recalibrate(params, bs0, res, ch)
      ends[name] = {'resolution': int(res), 'channels': [int(v) for v in ch],
                    'flops': int(self.space.flops([res], [ch])[0]),
                    'top1': self.accuracy(params, bs, res, ch, test)}
    self._final = {'pss_table': rows, 'max_net': ends['max'], 'min_net': ends['min'],
                   'mean_over_bins_top1': float(np.mean([r['top1'] for r in rows])) if rows
                   else None,
                   'metric': self._m().metric}
    return self._final

  def results(self, state):
    return self.final_table(state)

  def flops_params(self, state):
    from common import flops
    f, p, _ = flops.count(self.space.model, self.space.widths(self.space.max_channels),
                          (self.space.resolution_range[1],) * 2, self.num_classes,
                          convention='macs', act='relu6')
    return int(f), int(p)

  def export(self, state, workdir):
    from pss import switch
    table = self.final_table(state)
    paths = switch.export_subnets(self, state, workdir)
    plot = os.path.join(workdir, 'pss_accuracy_vs_flops.png')
    plot_accuracy_vs_flops({'PSS': table}, plot, f'{self.config.model.name} on '
                                                  f'{self.config.dataset.name}')
    return {'subnets_dir': paths, 'plot': plot}


def plot_accuracy_vs_flops(tables: Dict[str, Dict], path: str, title: str = '') -> None:
  """Test top-1 vs MFLOPs of each run's retained subnets (line) and its random prior subnets
  (dots), one colour per run (matplotlib PNG). ``tables``: label -> ``final_table`` dict."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(6, 4))
  for i, (label, t) in enumerate(tables.items()):
    color = f'C{i}'
    rows = t['pss_table']
    ax.plot([r['flops'] / 1e6 for r in rows], [100 * r['top1'] for r in rows], 'o-',
            color=color, label=f'{label}: pool best per bin')
    rx = [x['flops'] / 1e6 for r in rows for x in r.get('random', [])]
    ry = [100 * x['top1'] for r in rows for x in r.get('random', [])]
    if rx:
      ax.scatter(rx, ry, s=8, alpha=0.35, color=color, label=f'{label}: random prior subnets')
  ax.set_xlabel('MFLOPs (MACs)')
  ax.set_ylabel('test top-1 (%)')
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7)
  ax.set_title(title)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


main = train.cli(PSS, default_config='pss/configs/digits.py')

if __name__ == '__main__':
  main()
