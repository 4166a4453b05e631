"""Train a compact CNN from scratch with Dynamic-Coded Filter Fusion (lmbxmu/DCFF ``main_cifar.py`` / ``main_imagenet.py``).

  python -m dcff.train --config=dcff/configs/resnet56_cifar10.py --workdir=runs/dcff_r56
  python -m dcff.train --config=dcff/configs/digits.py --workdir=runs/dcff_digits
  python -m dcff.evaluate --workdir=runs/dcff_digits        # the exported compact model alone

The official loop (``main_cifar.py`` / ``main_imagenet.py``), mapped onto ``common.train``:

* the network that runs is the compact model (``Method.build_model``); every fused conv keeps its
  ``C`` original filters as params (``init_variables``) and the epoch's ``P_sel`` in
  ``TrainState.extra``;
* ``epoch_start``: recompute distances / P / KL scores / selection for every fused layer, once
  per epoch (host side, ``dcff.network.update_fusion_state``);
* every step: ``effective_params`` fuses ``W_fused = P_sel . W`` inside the jitted step;
  plain cross-entropy, SGD with coupled weight decay on all params (including never-selected
  filters, as ``torch.optim.SGD`` does);
* after training: the best epoch's fused weights are exported as a plain compact model
  (``workdir/compact/``, official ``model_best_compact.pt``), re-evaluated alone, and its FLOPs /
  params (thop convention) are written into ``results.json``.

Config fields (``config.method``): ``cprate`` (official string), ``temperature_start`` /
``temperature_end`` / ``temperature_k`` (1, 1e4, 1), ``score_mode`` ('faithful' | 'dynamic'),
``score_temperature_cap`` (dynamic only), ``export`` (bool).
"""
from __future__ import annotations

import json
import os
from typing import Any, Dict


from common import train
from dcff import fusion
from dcff import network


class DCFF(train.Method):
  """``common.train`` hooks of DCFF (lmbxmu/DCFF ``main_cifar.py``)."""

  name = 'dcff'

  def __init__(self, config):
    super().__init__(config)
    self._plan = None
    self._last_stats: Dict[str, Any] = {}

  # --- static plan -----------------------------------------------------------------------------
  def _mcfg(self):
    return self.config.method

  def plan(self) -> network.FusionPlan:
    """The fusion plan of the configured model and cprate (built once)."""
    if self._plan is None:
      if self.config.model.get('widths', None) is not None:
        raise train.UserError('DCFF derives the compact widths from method.cprate; leave '
                              f'model.widths unset (got {self.config.model.widths!r})')
      m = self._mcfg()
      self.choice('score_mode', 'faithful', fusion.SCORE_MODES)
      if self.info is None:
        raise RuntimeError('DCFF.plan() needs setup(info) first (the engine calls it)')
      hw = tuple(self.image_shape[:2])
      nc = self.num_classes
      try:
        self._plan = network.make_plan(self.config.model.name, m.cprate, nc, hw,
                                       self.model_kwargs())
      except ValueError as e:
        raise train.UserError(str(e)) from e
    return self._plan

  # --- model and variables ---------------------------------------------------------------------
  def build_model(self):
    return self.plan().build()

  def init_variables(self, model, rng, images):
    """Compact BN/FC/downsample params + full ``C``-filter banks of the fused convs (the official ``topk(sorted=False)`` order is implementation-defined)."""
    if self.config.get('init_checkpoint', ''):
      raise train.UserError('DCFF trains from scratch (no pretrained model, as the README commands run it); '
                            'leave init_checkpoint empty')
    return network.init_params(self.plan(), rng, tuple(images.shape[1:]))

  def init_extra(self, params, batch_stats, rng):
    return network.init_fusion_state(self.plan())

  # --- pure hooks --------------------------------------------------------------------------------
  def effective_params(self, params, extra):
    """``W_fused = P_sel . W`` on every fused conv (the official ``FuseConv2d.forward``)."""
    return network.fused_params(params, extra, self.plan())

  # --- host hooks --------------------------------------------------------------------------------
  def epoch_start(self, state, epoch: int):
    """The per-epoch update of ``main_cifar.py`` (distances, T(e), P, KL scores, finite-check, top-k, P_sel) for every fused layer, before the epoch's first step."""
    m = self._mcfg()
    extra, stats = network.update_fusion_state(
        state.params, state.extra, self.plan(), epoch, int(self.config.num_epochs),
        mode=m.get('score_mode', 'faithful'),
        score_temperature_cap=float(m.get('score_temperature_cap', 1.0)),
        t_start=float(m.get('temperature_start', fusion.T_START)),
        t_end=float(m.get('temperature_end', fusion.T_END)),
        t_k=float(m.get('temperature_k', fusion.T_K)))
    self._last_stats = stats
    return state.replace(extra=extra)

  def epoch_end(self, state, epoch: int) -> Dict[str, Any]:
    return dict(self._last_stats)

  def flops_params(self, state):
    """FLOPs / params of the compact model (thop 0.0.31 convention)."""
    return compact_flops(self.plan(), self._hw())

  def _hw(self):
    return tuple(self.image_shape[:2])

  def results(self, state) -> Dict[str, Any]:
    plan = self.plan()
    out = {'cprate': list(plan.cprate), 'compact_widths': plan.widths,
           'score_mode': self._mcfg().get('score_mode', 'faithful'),
           'fused_layers': len(plan.layers),
           'selected_filters_last': network.selection_summary(state.extra, plan)}
    try:
      from common import flops as flops_lib
      f_dense, p_dense, _ = flops_lib.count(plan.model_name, widths=None, input_hw=self._hw(),
                                            num_classes=plan.num_classes, **plan.kwargs())
      f, p = compact_flops(plan, self._hw())
      out.update({'dense_flops': int(f_dense), 'dense_params': int(p_dense),
                  'flops_reduction': 1 - f / f_dense, 'params_reduction': 1 - p / p_dense})
    except ImportError:
      pass
    return out

  def export(self, state, workdir: str) -> Dict[str, Any]:
    """Exports the best epoch's compact model and evaluates it alone; returns its path, source
    epoch and top-1 for ``results.json``."""
    if not self._mcfg().get('export', True):
      return {}
    from dcff import evaluate
    plan = self.plan()
    best = load_best_extra(workdir)
    src = 'best' if best is not None else 'last'
    if best is None:
      best = {'params': state.params, 'batch_stats': state.batch_stats, 'extra': state.extra}
    path = evaluate.save_compact(workdir, plan, best['params'], best['batch_stats'],
                                 best['extra'], dataset=self.config.dataset.name,
                                 image_shape=self.image_shape, source=src)
    model, variables, _ = evaluate.load_compact(workdir)
    top1 = evaluate.evaluate_model(model, variables, self.info.datasets['test'],
                                   int(self.config.dataset.eval_batch_size))
    plot_fusion(train.read_metrics(workdir), os.path.join(workdir, 'fusion.png'))
    return {'compact_model': path, 'compact_source_epoch': src, 'compact_top1': top1}


def compact_flops(plan: network.FusionPlan, input_hw=(32, 32)):
  """``(flops, params)`` of the compact model with ``common.flops`` (thop 0.0.31 convention)."""
  from common import flops as flops_lib
  f, p, _ = flops_lib.count(plan.model_name, widths=plan.widths, input_hw=tuple(input_hw),
                            num_classes=plan.num_classes, **plan.kwargs())
  return int(f), int(p)


def load_best_extra(workdir: str):
  """``{'params', 'batch_stats', 'extra'}`` of the best checkpoint (``None`` if there is none)."""
  from common import checkpoint as ckpt_lib
  d = os.path.join(workdir, 'best')
  if not os.path.isdir(d) or not any(n.isdigit() for n in os.listdir(d)):
    return None
  c = ckpt_lib.Checkpointer(d, keep=1)
  try:
    raw, _ = c.restore_raw()
  finally:
    c.close()
  return {'params': raw['params'], 'batch_stats': raw.get('batch_stats', {}),
          'extra': raw['extra']}


def plot_fusion(rows, out_path: str) -> None:
  """T(e) (log scale) and the per-epoch selection-change counter from the ``metrics.jsonl``
  rows (``common.train.read_metrics``)."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  rows = [r for r in rows if 'temperature' in r]
  if not rows:
    return
  ep = [r['epoch'] for r in rows]
  fig, ax = plt.subplots(1, 2, figsize=(9, 3.2))
  ax[0].semilogy(ep, [r['temperature'] for r in rows], marker='.')
  ax[0].set_title('temperature T(e)')
  ax[1].plot(ep, [r['filters_selection_changed'] for r in rows], marker='.', label='filters')
  ax[1].plot(ep, [r['layers_scores_replaced'] for r in rows], marker='.',
             label='layers with finite (accepted) scores')
  ax[1].set_title('selection changes per epoch')
  ax[1].legend(fontsize=7)
  for a in ax:
    a.set_xlabel('epoch')
  fig.tight_layout()
  fig.savefig(out_path, dpi=100)
  plt.close(fig)


main = train.cli(DCFF, default_config='dcff/configs/digits.py')

if __name__ == '__main__':
  main()
