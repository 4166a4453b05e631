"""Train a binary network with SiMaN (lmbxmu/SiMaN), or its controls.

  python -m siman.train --config=siman/configs/resnet20_cifar10.py --workdir=runs/siman_r20
  python -m siman.train --config=siman/configs/digits.py --workdir=runs/siman_digits

The official loop (``cifar/main.py``, ``modules/binarized_modules.py``) mapped onto
``common.train``:

* **projection** (the in-place overwrite ``BinarizeConv2d.forward`` does before every forward):
  the stored binary kernels are always the projected ones. ``epoch_start`` sets
  ``extra['percent'] = 15 (1 - e/E)`` and projects; ``post_step`` projects after every optimizer
  update, so the next forward sees ``project(w)`` exactly as the official next forward computes
  it, the gradient is taken at the projected weights and momentum is not adjusted (the official
  overwrite writes ``.data`` outside autograd). The official validation forwards also project
  (and write) the weights, once per eval batch; ``epoch_start`` replays those ``K - 1`` extra
  projections with the previous epoch's percent before the new one (``method.eval_projections``;
  -1 = K = the number of eval batches).
* **code B**: the training forward computes ``B = 1[|w2| > median]`` from the stored (projected)
  weights and returns it as state next to the BN statistics (``batch_stats['binary_codes']``, the
  official non-trainable Parameter ``B``); the eval forward uses the stored B (stale by one
  optimizer step: the official ``B`` is written only by training forwards). The forward weight is
  ``2B - 1``; the backward is identity onto ``|w2|`` (``siman.siman.siman_binarize``).
* **weight decay**: none on the block binary convs and their alphas, decay on everything else,
  by the official name rules (``siman.siman.decay_mask``; ``method.decay_rule='all'`` decays
  all).
* activations are binarized inside the model (``model.kwargs.act_binarizer='siman'``:
  ``approx_sign((a - mean) / std)`` per sample, train and eval).

``method.weight_binarizer='sign_ste'`` is the plain BNN control (``sign(w)`` with identity STE,
no projection, no code, decay on everything by default), ``'centred_sign'`` keeps SiMaN's
training (projection, percent schedule, official decay rule, activations) but binarizes with
``sign(w - mean_c w)`` (identity STE onto the standardised weight) instead of the magnitude code,
and ``'none'`` is the full-precision ceiling (use it with ``model.kwargs.act_binarizer='none'``).

Config fields (``config.method``): ``weight_binarizer`` ('siman' | 'centred_sign' | 'sign_ste'
| 'none'), ``percent_max`` (15; 0 keeps only the per-channel centring), ``code_method`` ('median'
| 'sort'), ``decay_rule`` ('official': no decay on the block binary convs and their alphas
(``main.py`` name rule), the default for the SiMaN-trained arms | 'all': every parameter, the
default for the controls), ``eval_projections`` (-1 = one per eval batch | an explicit count),
``histogram`` (write ``weights_hist.png``).
"""
from __future__ import annotations

import os
from typing import Any, Dict

import jax
import jax.numpy as jnp

from common import binarize
from common import train
from common import transforms
from siman import accounting
from siman import siman

CODES = 'binary_codes'
WEIGHT_BINARIZERS = ('siman', 'centred_sign', 'sign_ste', 'none')
DECAY_RULES = ('official', 'all')
SIMAN_TRAINING = siman.SIMAN_TRAINING


class SiMaN(train.Method):
  """``common.train`` hooks of SiMaN and of its centred-sign / sign-STE / full-precision arms."""

  name = 'siman'

  def __init__(self, config):
    super().__init__(config)
    m = config.method
    self.mode = self.choice('weight_binarizer', 'siman', WEIGHT_BINARIZERS)
    self.name = 'full_precision' if self.mode == 'none' else self.mode
    self.projects = self.mode in SIMAN_TRAINING   # projection + percent schedule
    self.code_method = self.choice('code_method', 'median', siman.CODE_METHODS)
    self.decay_rule = self.choice('decay_rule', 'official' if self.projects else 'all',
                                  DECAY_RULES)
    self.percent_max = float(m.get('percent_max', siman.PERCENT_MAX))
    if not 0.0 <= self.percent_max <= 50.0:
      raise train.UserError(f'method.percent_max must lie in [0, 50]; got {self.percent_max}')
    self.eval_projections = int(m.get('eval_projections', -1))
    if self.eval_projections < -1:
      raise train.UserError('method.eval_projections must be -1 (one per eval batch, as the '
                            f'official validate loop) or >= 0; got {self.eval_projections}')
    self._project = jax.jit(siman.project_params)
    self._reproject = jax.jit(siman.reproject_params)
    self._eval_batches = None

  # --- variables -------------------------------------------------------------------------------
  def init_variables(self, model, rng, images):
    """The model's variables plus, for SiMaN, the code B of the initial weights."""
    v = super().init_variables(model, rng, images)
    bs = dict(v.get('batch_stats', {}))
    if self.projects and not siman.binary_kernel_paths(v['params']):
      raise train.UserError(f'model {self.config.model.name!r} has no binary convs (no '
                            "'alpha' leaf); use a siman_* model")
    if self.mode == 'siman':
      if CODES not in bs:
        bs[CODES] = siman.binary_codes(v['params'], self.code_method)
    return {'params': v['params'], 'batch_stats': bs}

  def init_extra(self, params, batch_stats, rng) -> Dict[str, Any]:
    if not self.projects:
      return {}
    # percent starts at 0 (the official buffer's init); epoch_start sets the epoch's value.
    extra = {'percent': jnp.zeros((), jnp.float32)}
    if self.mode == 'siman':
      extra['codes_epoch_start'] = batch_stats[CODES]
    return extra

  # --- pure hooks ----------------------------------------------------------------------------------
  def effective_params(self, params, extra):
    """What a *training* forward computes with: binary kernels replaced by their binarization
    (SiMaN: ``2B - 1`` with B recomputed from ``params``; centred sign: ``sign(w - mean_c w)``;
    sign-STE: ``sign(w)``)."""
    if self.mode == 'siman':
      return siman.binarize_params(params, siman.binary_codes(params, self.code_method))
    if self.mode == 'centred_sign':
      return transforms.map_kernels(siman.centred_sign_binarize, params,
                                    siman.is_binary_kernel(params))
    if self.mode == 'sign_ste':
      return transforms.map_kernels(binarize.sign_ste, params, siman.is_binary_kernel(params))
    return params

  def forward(self, model, params, batch_stats, extra, batch, train: bool, rng):
    """Training: B from the current (projected) weights, stored as state; eval: the stored B."""
    bn = {k: v for k, v in batch_stats.items() if k != CODES}
    codes = None
    if self.mode == 'siman':
      codes = (siman.binary_codes(params, self.code_method) if train else batch_stats[CODES])
      eff = siman.binarize_params(params, codes)
    else:
      eff = self.effective_params(params, extra)
    variables = {'params': eff, 'batch_stats': bn}
    if train:
      logits, mutated = model.apply(variables, batch['image'], train=True, mutable=['batch_stats'],
                                    rngs={'dropout': rng})
      new_bs = dict(mutated.get('batch_stats', bn))
    else:
      logits, new_bs = model.apply(variables, batch['image'], train=False), dict(bn)
    if codes is not None:
      new_bs[CODES] = jax.lax.stop_gradient(codes)
    return logits, new_bs, {}

  def decay_mask(self, params):
    """No decay on the block binary convs and their alphas (official rule), decay elsewhere."""
    if self.decay_rule == 'all':
      return None
    return siman.decay_mask(params, siman.decay_rule_for(self.config.model.name))

  def post_step(self, params, extra, step):
    """The next forward's overwrite ``w <- project(w, percent)`` (``BinarizeConv2d.forward``)."""
    if not self.projects:
      return params, extra
    return siman.project_params(params, extra['percent']), extra

  # --- host hooks ----------------------------------------------------------------------------------
  def _num_eval_batches(self) -> int:
    if self.eval_projections >= 0:
      return self.eval_projections
    if self._eval_batches is None:
      n = train.load_dataset(self.config, 'test').num_examples
      self._eval_batches = -(-n // int(self.config.dataset.eval_batch_size))
    return self._eval_batches

  def epoch_start(self, state, epoch: int):
    """Replays the last validation's projections, sets ``percent = 15 (1 - e/E)``, projects."""
    if not self.projects:
      return state
    num_epochs = int(self.config.num_epochs)
    params = state.params
    if epoch > 0:
      # post_step already applied the first of the K validation-forward projections.
      extra_proj = self._num_eval_batches() - 1
      if extra_proj > 0:
        prev = siman.percent_schedule(epoch - 1, num_epochs, self.percent_max)
        params = self._reproject(params, jnp.float32(prev), jnp.int32(extra_proj))
    p = jnp.float32(siman.percent_schedule(epoch, num_epochs, self.percent_max))
    params = self._project(params, p)
    extra = dict(state.extra, percent=p)
    if self.mode == 'siman':
      extra['codes_epoch_start'] = state.batch_stats[CODES]
    return state.replace(params=params, extra=extra)

  def epoch_end(self, state, epoch: int) -> Dict[str, Any]:
    """percent, code flip rate over the epoch and fraction of ones, the angle-optimal k*/N."""
    if not self.projects:
      return {}
    out = {'percent': float(state.extra['percent'])}
    if self.mode == 'siman':
      out.update(siman.code_stats(jax.device_get(state.batch_stats[CODES]),
                                  jax.device_get(state.extra['codes_epoch_start'])))
    out.update(siman.weight_stats(state.params))
    return out

  def flops_params(self, state):
    """FLOPs of the same network in full precision (thop convention) and the parameter count."""
    counts, _ = self._op_counts()
    return counts['flops'], sum(int(x.size) for x in jax.tree.leaves(state.params))

  def _op_counts(self):
    model = self.build_model()
    shape = self.image_shape
    return accounting.op_counts(model, shape)

  def results(self, state) -> Dict[str, Any]:
    counts, _ = self._op_counts()
    out = {'weight_binarizer': self.mode, 'decay_rule': self.decay_rule}
    out.update({k: counts[k] for k in ('fp_flops', 'bops', 'ops')})
    out.update(accounting.bits_summary(state.params))
    if self.projects:
      out.update(siman.weight_stats(state.params))
      out['percent_last'] = float(state.extra['percent'])
    return out

  def export(self, state, workdir: str) -> Dict[str, Any]:
    """The weight histogram with its Laplace fit; returns its path."""
    if self.mode == 'none' or not self.config.method.get('histogram', True):
      return {}
    from siman import plots
    path = os.path.join(workdir, 'weights_hist.png')
    plots.weight_histogram({f'{self.name}: {self.config.model.name}': state.params}, path)
    return {'plots': [path]}


main = train.cli(SiMaN, default_config='siman/configs/digits.py')

if __name__ == '__main__':
  main()
