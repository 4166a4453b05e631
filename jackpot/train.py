"""Search a lottery jackpot in a pretrained network (zyxxmu/lottery-jackpots ``cifar.py`` /
``imagenet.py: main``), optionally followed by weight tuning with the mask fixed ("+10T").

  python -m jackpot.train --config=jackpot/configs/digits.py --workdir=runs/jackpot_digits \\
      --config.init_checkpoint=runs/vgg_tiny_digits
  python -m jackpot.train --config=jackpot/configs/cifar.py:vgg19,cifar10,0.9,30 --workdir=DIR \\
      --config.init_checkpoint=PRETRAINED

The pretrained variables (``config.init_checkpoint``: a ``common.train`` workdir, or a ``.npz`` /
``.msgpack`` file from ``python -m common.convert``) are frozen: the params of the run are
``{'net': pretrained params, 'scores': score tree}`` and only ``scores`` is in the optimizer
(``freeze_model_weights`` freezes every weight and bias, BN affine included). BatchNorm running
statistics update in train mode, as in the official ``model.train()`` search. The binary masks
``b`` and the per-layer pruned counts ``k_l`` live in ``TrainState.extra``; the v2 pop-up
(``search.popup``) runs in ``post_step``, inside the jitted step, after the optimizer update.
``k_l`` is data (an int32 per layer), so one compiled step serves every sparsity.

The official HEAD ``cifar.py`` computes the layer rates on the pretrained model and then searches
on a *fresh, randomly initialised* model (``get_model`` re-instantiates it); this port searches on
the pretrained weights, as the April 2021 ``cifar.py``, ``imagenet.py`` and the paper do.

``method.tune.num_epochs > 0`` runs two stages in ``--workdir`` (``common.train.run_stages``):
``search/`` then ``tune/``, which loads the best searched model (``80sparsity30s10t.yaml``:
``jackpot_model: .../model_best.pt``) and trains weights and BN with the mask fixed.
"""
from __future__ import annotations

import copy
import os
from typing import Any, Dict, List, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from common import masks as common_masks
from common import train
from common import transforms
from common.pretrained import load_pretrained, save_variables_npz
from jackpot import export as jexport
from jackpot import search

Path = Tuple[str, ...]


def masked_paths(specs) -> Tuple[List[Path], List[Path]]:
  """``(every conv / dense kernel path, the classifier's kernel paths)`` from ``layer_specs``:
  the layers ``PretrainConv`` replaces (all convs and the 1x1-conv classifier)."""
  layers = [tuple(s.path) + ('kernel',) for s in specs if s.kind in ('conv', 'dense')]
  cls = [tuple(s.path) + ('kernel',) for s in specs
         if s.kind in ('conv', 'dense') and s.role == 'classifier']
  return layers, cls


def check_fits(model, rng, images, variables, name: str) -> None:
  """Raises ``UserError`` unless ``variables['params']`` has exactly the model's leaves and shapes."""
  shapes = jax.eval_shape(lambda: model.init({'params': rng, 'dropout': rng}, images, train=False))
  want = traverse_util.flatten_dict(shapes['params'])
  got = traverse_util.flatten_dict(variables['params'])
  bad = [transforms.path_str(k) for k in want
         if k not in got or tuple(got[k].shape) != tuple(want[k].shape)]
  extra = [transforms.path_str(k) for k in got if k not in want]
  if bad or extra:
    raise train.UserError(
        f'init_checkpoint does not fit model {name!r}: missing or mis-shaped '
        f'{bad[:4]}{" ..." if len(bad) > 4 else ""}, unexpected {extra[:4]} (pretrain it with '
        f'the same model.name, model.widths and model.kwargs)')


class Jackpot(train.Method):
  """``common.train`` hooks of the jackpot search (frozen weights, scores trained, pop-up)."""

  name = 'jackpot'

  def setup(self, info):
    super().setup(info)
    m = self.config.method
    self.variant = self.choice('variant', 'v2', search.VARIANTS)
    self.layerwise = self.choice('layerwise', 'l1', search.LAYERWISE)
    self.score_init = self.choice('score_init', 'magnitude', search.SCORE_INITS)
    p = float(m.get('sparsity', 0.9))
    if not 0.0 <= p < 1.0:
      raise train.UserError(f'method.sparsity must lie in [0, 1); got {p}')
    self.sparsity = p
    rate = float(m.get('swap_rate', 1.0))
    if not 0.0 < rate <= 1.0:
      raise train.UserError(f'method.swap_rate must lie in (0, 1]; got {rate}')
    self.swap_rate = rate
    from common import models
    self.specs = models.layer_specs(self.config.model.name, widths=self.config.model.widths,
                                    input_hw=tuple(self.image_shape[:2]),
                                    num_classes=self.num_classes, **self.model_kwargs())
    self.layers, self.classifier = masked_paths(self.specs)
    self._init = None

  # --- state ---------------------------------------------------------------------------------
  def init_variables(self, model, rng, images):
    """The pretrained variables plus the initial scores (``set_prune_rate``)."""
    v = load_pretrained(self.config.get('init_checkpoint', ''))
    check_fits(model, rng, images, v, self.config.model.name)
    return self.search_variables(v, rng)

  def search_variables(self, v, rng):
    """``{'params': {'net', 'scores'}, 'batch_stats'}`` from pretrained variables ``v``: layer
    rates, counts and initial scores / masks (the masks and counts go to :meth:`init_extra`)."""
    net = v['params']
    layer_set = set(self.layers)
    where = lambda path, leaf: path in layer_set
    try:
      self.rates = search.layer_rates(net, self.sparsity, self.classifier, mode=self.layerwise,
                                      where=where)
    except ValueError as e:
      raise train.UserError(str(e)) from e
    self.counts = search.pruned_counts(net, self.rates)
    scores, masks, ks = search.init_search(net, self.counts, variant=self.variant,
                                           score_init=self.score_init,
                                           rng=jax.random.fold_in(rng, 7))
    self._init = (masks, ks)
    return {'params': {'net': net, 'scores': scores}, 'batch_stats': v['batch_stats']}

  def init_extra(self, params, batch_stats, rng):
    masks, ks = self._init
    swaps = jax.tree.map(lambda k: jnp.zeros((), jnp.int32), ks)
    return {'masks': masks, 'counts': ks, 'swaps': swaps}

  def trainable_mask(self, params):
    """Only the scores are trained (``freeze_model_weights``)."""
    return jax.tree_util.tree_map_with_path(lambda kp, _: kp[0].key == 'scores', params)

  # --- pure hooks ----------------------------------------------------------------------------
  def effective_params(self, params, extra):
    return search.effective_params(params['net'], params['scores'], extra['masks'],
                                   extra['counts'], self.variant)

  def post_step(self, params, extra, step):
    """v2: the pop-up after the optimizer step (``cifar.py: train`` calls ``pop_up`` after
    ``optimizer.step()``). v1 derives its mask in the forward: nothing to do."""
    if self.variant != 'v2':
      return params, extra
    masks, swaps = search.popup_tree(params['scores'], extra['masks'], extra['counts'],
                                     self.swap_rate)
    total = jax.tree.map(jnp.add, extra['swaps'], swaps)
    return params, dict(extra, masks=masks, swaps=total)

  # --- host hooks ----------------------------------------------------------------------------
  def current_masks(self, state):
    """The mask the network computes with (v1: from ``|scores|``)."""
    if self.variant == 'v1':
      return jax.jit(search.v1_masks)(state.params['scores'], state.extra['counts'])
    return state.extra['masks']

  def magnitude_mask_tree(self, state):
    return search.magnitude_masks(state.params['net'], self.counts)

  def epoch_end(self, state, epoch):
    m = self.current_masks(state)
    return {'sparsity': jexport.sparsity_excluding(m, self.classifier),
            'iou_magnitude': jexport.mask_iou(m, self.magnitude_mask_tree(state), self.classifier),
            'mask_swaps': int(sum(int(np.asarray(q)) for q in
                                  jax.tree.leaves(state.extra['swaps'])))}

  def results(self, state) -> Dict[str, Any]:
    m = self.current_masks(state)
    rep = common_masks.sparsity_report(m)
    return {'variant': self.variant, 'layerwise': self.layerwise, 'score_init': self.score_init,
            'sparsity_target': self.sparsity,
            'sparsity': jexport.sparsity_excluding(m, self.classifier),
            'layer_rates': {transforms.path_str(k): v for k, v in self.rates.items()},
            'pruned_per_layer': {transforms.path_str(k): v for k, v in self.counts.items()},
            'kept_per_layer': {k: v['kept'] for k, v in rep['layers'].items()},
            'iou_magnitude': jexport.mask_iou(m, self.magnitude_mask_tree(state),
                                              self.classifier)}

  def flops_params(self, state):
    f, _ = super().flops_params(state)
    n = sum(int(np.asarray(x).size) for x in jax.tree.leaves(state.params['net']))
    return f, n

  def export(self, state, workdir: str) -> Dict[str, Any]:
    """``jackpot.npz``: the pretrained variables with ``W * b`` (loadable by any ``common.train``
    run as ``init_checkpoint``), its deviation from the searched model, and a per-layer
    sparsity plot."""
    return export_model(self, state.params['net'], state.batch_stats,
                        self.effective_params(state.params, state.extra),
                        self.current_masks(state), workdir)


def export_model(method: train.Method, net, batch_stats, effective, masks, workdir: str):
  """Writes ``jackpot.npz`` and ``layer_sparsity.png``; returns their paths, the nnz report and
  ``export_max_abs_diff`` (exported vs masked model logits on one batch of test images)."""
  exported, rep = jexport.export_sparse(net, masks)
  path = os.path.join(workdir, 'jackpot.npz')
  save_variables_npz(path, {'params': exported, 'batch_stats': batch_stats})
  model = method.build_model()
  batch = next(iter(method.info.datasets['test'].batches(64, epoch=0, train=False, drop_remainder=False)))
  x = jnp.asarray(batch['image'])
  f = jax.jit(lambda p: model.apply({'params': p, 'batch_stats': batch_stats}, x, train=False))
  diff = float(jnp.max(jnp.abs(f(exported) - f(effective))))
  plot = os.path.join(workdir, 'layer_sparsity.png')
  plot_layer_sparsity(rep, plot)
  return {'export': path, 'export_max_abs_diff': diff, 'export_kept': rep['kept'],
          'export_total': rep['total'], 'plots': [plot]}


def plot_layer_sparsity(report: Dict[str, Any], path: str) -> None:
  """Bar chart of each masked layer's sparsity (``common.masks.sparsity_report``)."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  names = list(report['layers'])
  vals = [report['layers'][n]['sparsity'] for n in names]
  fig, ax = plt.subplots(figsize=(max(4, 0.35 * len(names) + 2), 3.5))
  ax.bar(range(len(names)), vals)
  ax.set_xticks(range(len(names)))
  ax.set_xticklabels([n.rsplit('/', 1)[0] for n in names], rotation=60, ha='right', fontsize=7)
  ax.set_ylabel('sparsity')
  ax.set_ylim(0, 1)
  ax.set_title(f'jackpot: global sparsity {report["global_sparsity"]:.3f} (all masked layers)')
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


class JackpotTune(train.Method):
  """"+10T": the searched mask fixed, weights and BN trained (the v1-era ``imagenet-t.py``)."""

  name = 'jackpot_tune'

  def setup(self, info):
    super().setup(info)
    if not info.previous:
      raise train.UserError('the tune stage needs the search stage before it (run_stages)')
    self.search_method = Jackpot(self.config)
    self.search_method.setup(info)
    self._masks = None

  def init_variables(self, model, rng, images):
    """The best searched model of the previous stage: its frozen weights and its mask."""
    st = train.load_state(self.info.previous, 'best')
    sm = self.search_method
    if sm.variant == 'v1':
      masks = jax.jit(search.v1_masks)(st['params']['scores'], st['extra']['counts'])
    else:
      masks = st['extra']['masks']
    self._masks = jax.tree.map(lambda m: jnp.asarray(m, bool), masks)
    return {'params': st['params']['net'], 'batch_stats': st['batch_stats']}

  def init_extra(self, params, batch_stats, rng):
    return {'masks': self._masks}

  def effective_params(self, params, extra):
    return common_masks.apply_masks(params, extra['masks'])

  def results(self, state) -> Dict[str, Any]:
    return {'sparsity': jexport.sparsity_excluding(state.extra['masks'],
                                                   self.search_method.classifier)}

  def export(self, state, workdir: str) -> Dict[str, Any]:
    return export_model(self, state.params, state.batch_stats,
                        self.effective_params(state.params, state.extra), state.extra['masks'],
                        workdir)


def tune_config(config):
  """The "+10T" stage's config: ``method.tune``'s epochs, lr and weight decay (cosine, SGD
  momentum 0.9; ``80sparsity30s10t.yaml``: 10 epochs, lr 0.01, wd 0)."""
  c = copy.deepcopy(config)
  t = config.method.tune
  with c.unlocked():
    c.num_epochs = int(t.num_epochs)
    c.optimizer.learning_rate = float(t.learning_rate)
    c.optimizer.weight_decay = float(t.weight_decay)
    c.schedule.name = str(t.get('schedule', 'cosine'))
  return c


def run_config(config, workdir: str) -> Dict[str, Any]:
  """The search alone in ``workdir``, or ``search/`` + ``tune/`` stages when
  ``method.tune.num_epochs > 0``."""
  tune = config.method.get('tune', None)
  n = int(tune.num_epochs) if tune is not None else 0
  if n < 0:
    raise train.UserError(f'method.tune.num_epochs must be >= 0; got {n}')
  if n == 0:
    return train.run(config, workdir, Jackpot(config))
  return train.run_stages(workdir, [train.Stage('search', config, Jackpot),
                                    train.Stage('tune', tune_config(config), JackpotTune)])


main = train.cli(Jackpot, default_config='jackpot/configs/digits.py', run_fn=run_config)

if __name__ == '__main__':
  main()
