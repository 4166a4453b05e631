"""Train a binary network with ReCU (z-hXu/ReCU), on ``common.train``.

  python -m recu.train --config=recu/configs/resnet20_cifar10.py --workdir=runs/recu_r20
  python -m recu.train --config=recu/configs/digits.py --workdir=runs/recu_digits

The official loop (``main.py``) mapped onto the engine's hooks:

* ``init_extra``: ``tau = 1`` (the official buffer's initial value; Q = inf);
* ``epoch_start``: ``tau = tau_schedule(epoch, E, tau_min, tau_max)``, stored in
  ``TrainState.extra['tau']`` as an array, so changing it never recompiles the step;
* ``effective_params``: every binary conv kernel (modules with ``kernel`` + ``alpha``) becomes
  ``binarize_weight(w, tau)`` inside the jitted step; the stem conv, the downsample convs
  and the classifier stay full precision; activations are binarized inside the model
  (``recu.recu.recu_activation``);
* ``decay_mask`` (``main.py``): ``'all'`` (CIFAR: every parameter, alpha and BN included) or
  ``'conv_fc'`` (ImageNet: only parameters whose name contains ``conv`` or ``fc`` -- stem conv,
  binary conv kernels *and alpha*, fc -- not BN, BN1d, nor the FP downsample conv);
* ``loss``: cross-entropy, or for the two-stage run the distillation loss
  ``mean_b(-sum_k softmax(t)_k log_softmax(s)_k)`` against a frozen teacher
  (``imagenet_two-stage/main.py``) whose variables come from ``method.teacher_checkpoint`` (a
  finished ``common.train`` workdir);
* ``epoch_end``: the paper's diagnostics averaged over the binary layers (dead-weight share
  ``|w1| > Q``, weight entropy, quantization error), in ``metrics.jsonl``; ``export`` plots them
  (``recu_diagnostics.png``) and the weight histogram (``recu_weights.png``).

Config fields (``config.method``): ``weight_binarizer`` ('recu' | 'sign_ste' (plain ``sign(w)``
identity-STE baseline) | 'none' (the same network in full precision)), ``tau_min`` (0.85),
``tau_max`` (0.99), ``decay_rule`` ('all' | 'conv_fc'), ``teacher_checkpoint`` ('' = no KD),
``teacher_model``, ``teacher_widths``, ``init_strict`` (False: stage-1 weights from
``init_checkpoint`` are loaded like ``load_state_dict(strict=False)``).
"""
from __future__ import annotations

import os
from typing import Any, Dict, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from common import binarize
from common import losses
from common import train
from common import transforms
from recu import recu

WEIGHT_BINARIZERS = ('recu', 'sign_ste', 'none')
DECAY_RULES = ('all', 'conv_fc')


def decay_mask_conv_fc(params):
  """ImageNet rule of the official ``imagenet/main.py``: decay iff the parameter's name contains
  ``conv`` or ``fc``. Bool pytree like ``params``."""
  def f(keypath, leaf):
    s = '.'.join(transforms.path_tuple(keypath))
    return ('conv' in s) or ('fc' in s)
  return jax.tree_util.tree_map_with_path(f, params)


def binarize_params(params, tau, weight_binarizer: str = 'recu'):
  """*Pure*. ``params`` with every binary-conv kernel binarized; other leaves unchanged.

  Args:
    params: the model's parameter tree.
    tau: scalar (array or float).
    weight_binarizer: 'recu' (``recu.binarize_weight``), 'sign_ste' (plain ``sign(w)`` STE) or
      'none'.
  """
  if weight_binarizer == 'none':
    return params
  where = binarize.binary_kernel_where(params)
  if weight_binarizer == 'recu':
    fn = lambda w: recu.binarize_weight(w, tau)
  elif weight_binarizer == 'sign_ste':
    fn = recu.sign_weight
  else:
    raise ValueError(f'unknown weight_binarizer {weight_binarizer!r}; allowed: '
                     f'{list(WEIGHT_BINARIZERS)}')
  return transforms.map_kernels(fn, params, where=where)


def kd_loss(student_logits, teacher_logits):
  """Two-stage distillation loss (z-hXu/ReCU ``imagenet_two-stage``, stage 2):
  ``mean_b(-sum_k softmax(t)_k log_softmax(s)_k)`` = ``common.losses.soft_cross_entropy`` at T = 1.

  ``[B, K], [B, K] -> scalar``; the teacher is a constant (no gradient).
  """
  return losses.soft_cross_entropy(student_logits, teacher_logits)


@jax.jit
def _diagnostics(kernels, tau):
  """Per-layer diagnostics of a list of binary kernels, stacked: dict of ``[L]`` arrays."""
  per = [recu.layer_diagnostics(w, tau) for w in kernels]
  out = {k: jnp.stack([p[k] for p in per]) for k in per[0]}
  out['size'] = jnp.asarray([w.size for w in kernels], jnp.float32)
  return out


def diagnostics(params, tau) -> Dict[str, float]:
  """Host side: the paper's diagnostics over all binary kernels of ``params`` at ``tau``.

  ``dead_fraction`` is weighted by layer size (share of all binary weights with ``|w1| > Q``);
  entropy and quantization error are means over layers. Empty dict when there is no binary layer.
  """
  paths = binarize.binary_kernel_paths(params)
  if not paths:
    return {}
  kernels = [transforms.get_path(params, p) for p in paths]
  d = jax.device_get(_diagnostics(kernels, jnp.float32(tau)))
  size = d['size']
  return {'dead_fraction': float(np.sum(d['dead_fraction'] * size) / np.sum(size)),
          'weight_entropy': float(np.mean(d['weight_entropy'])),
          'weight_entropy_min': float(np.min(d['weight_entropy'])),
          'quantization_error': float(np.mean(d['quantization_error']))}


def _overlay(base, loaded):
  """``load_state_dict(strict=False)``: leaves of ``loaded`` with the same path and shape win."""
  flat = {transforms.path_tuple(k): v for k, v in jax.tree_util.tree_leaves_with_path(loaded)}

  def f(keypath, leaf):
    v = flat.get(transforms.path_tuple(keypath))
    return jnp.asarray(v) if v is not None and np.shape(v) == np.shape(leaf) else leaf
  return jax.tree_util.tree_map_with_path(f, base)


class ReCU(train.Method):
  """``common.train`` hooks of ReCU and of its sign-STE / full-precision controls."""

  name = 'recu'

  def __init__(self, config):
    super().__init__(config)
    m = config.method
    self.weight_binarizer = self.choice('weight_binarizer', 'recu', WEIGHT_BINARIZERS)
    self.decay_rule = self.choice('decay_rule', 'all', DECAY_RULES)
    self.tau_min = float(m.get('tau_min', recu.TAU_MIN))
    self.tau_max = float(m.get('tau_max', recu.TAU_MAX))
    try:
      recu.tau_schedule(0, 1, self.tau_min, self.tau_max)
    except ValueError as e:
      raise train.UserError(str(e)) from e
    self.teacher_checkpoint = m.get('teacher_checkpoint', '')
    self._teacher = None
    if self.weight_binarizer != 'recu':
      self.name = {'sign_ste': 'sign_ste', 'none': 'full_precision'}[self.weight_binarizer]

  # --- model and variables -------------------------------------------------------------------
  def build_model(self):
    from common import models
    kw = self.model_kwargs()
    kw['binary'] = self.weight_binarizer != 'none'
    model = models.get_model(self.config.model.name, self.num_classes,
                             widths=self.config.model.widths, **kw)
    if self.teacher_checkpoint:
      m = self.config.method
      tw = m.get('teacher_widths', None)
      self._teacher = models.get_model(m.teacher_model, self.num_classes,
                                       widths=None if tw is None else tw)
    return model

  def init_variables(self, model, rng, images):
    path = self.config.get('init_checkpoint', '')
    variables = model.init({'params': rng, 'dropout': rng}, images, train=False)
    variables = {'params': variables['params'], 'batch_stats': variables.get('batch_stats', {})}
    if not path:
      return variables
    loaded = train.load_variables(path)
    if self.config.method.get('init_strict', False):
      return loaded
    # Two-stage: stage-1 weights are loaded with load_state_dict(strict=False).
    return {k: _overlay(variables[k], loaded.get(k, {})) for k in ('params', 'batch_stats')}

  def init_extra(self, params, batch_stats, rng):
    extra = {'tau': jnp.asarray(1.0, jnp.float32)}   # the official buffer starts at 1 (Q = inf)
    if self.teacher_checkpoint:
      extra['teacher'] = train.load_variables(self.teacher_checkpoint)
    return extra

  # --- pure hooks ----------------------------------------------------------------------------
  def effective_params(self, params, extra):
    return binarize_params(params, extra['tau'], self.weight_binarizer)

  def forward(self, model, params, batch_stats, extra, batch, train_: bool, rng):
    logits, new_bs, aux = super().forward(model, params, batch_stats, extra, batch, train_, rng)
    if train_ and self._teacher is not None:
      aux = dict(aux, teacher_logits=self._teacher.apply(extra['teacher'], batch['image'],
                                                         train=False))
    return logits, new_bs, aux

  def loss(self, logits, labels, aux, params, extra):
    if 'teacher_logits' in aux:
      return kd_loss(logits, aux['teacher_logits']), {}
    return super().loss(logits, labels, aux, params, extra)

  def decay_mask(self, params):
    return None if self.decay_rule == 'all' else decay_mask_conv_fc(params)

  # --- host hooks ----------------------------------------------------------------------------
  def epoch_start(self, state, epoch):
    tau = recu.tau_schedule(epoch, int(self.config.num_epochs), self.tau_min, self.tau_max)
    return state.replace(extra=dict(state.extra, tau=jnp.asarray(tau, jnp.float32)))

  def epoch_end(self, state, epoch):
    tau = float(state.extra['tau'])
    out = {'tau': tau}
    # Diagnostics at the tau of the epoch for every arm (sign-STE / FP included), so the dead-weight
    # share of the baselines is measured on the same standardised scale.
    out.update(diagnostics(state.params, tau))
    return out

  def results(self, state):
    paths = binarize.binary_kernel_paths(state.params)
    n_bin = int(sum(transforms.get_path(state.params, p).size for p in paths))
    n_all = int(sum(x.size for x in jax.tree.leaves(state.params)))
    out = {'tau_final': float(state.extra['tau']), 'binary_weights': n_bin,
           'fp_params': n_all - n_bin,
           # 1 bit per binary weight, 32 per FP parameter (alpha, BN, stem, fc, downsample).
           'model_bits': n_bin + 32 * (n_all - n_bin),
           'compression_vs_fp32': float(32 * n_all / max(n_bin + 32 * (n_all - n_bin), 1))}
    out.update({f'final_{k}': v for k, v in diagnostics(state.params, out['tau_final']).items()})
    return out

  def flops_params(self, state) -> Tuple[Any, int]:
    # The BNN variants register no layer_specs: report the parameter count only.
    return None, int(sum(x.size for x in jax.tree.leaves(state.params)))

  def export(self, state, workdir):
    """The per-epoch diagnostics and the final weight histogram; returns the two PNG paths."""
    diag = os.path.join(workdir, 'recu_diagnostics.png')
    hist = os.path.join(workdir, 'recu_weights.png')
    plot_diagnostics(train.read_metrics(workdir), diag, self.name)
    plot_weight_histogram({self.name: state.params}, float(state.extra['tau']), hist)
    return {'plots': [diag, hist]}


def standardized_weights(params) -> np.ndarray:
  """All binary kernels' standardised ``w1`` (``recu.standardize``), flattened, concatenated."""
  paths = binarize.binary_kernel_paths(params)
  if not paths:
    return np.zeros((0,), np.float32)
  return np.concatenate([np.asarray(recu.standardize(transforms.get_path(params, p))).ravel()
                         for p in paths])


def plot_diagnostics(rows, path: str, title: str = '') -> None:
  """tau, dead-weight share, weight entropy and quantization error against epoch (PNG)."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  rows = [r for r in rows if 'dead_fraction' in r]
  if not rows:
    return
  ep = [r['epoch'] for r in rows]
  keys = ['tau', 'dead_fraction', 'weight_entropy', 'quantization_error']
  fig, ax = plt.subplots(1, 4, figsize=(15, 3.2))
  for a, k in zip(ax, keys):
    a.plot(ep, [r[k] for r in rows])
    a.set_title(k)
    a.set_xlabel('epoch')
  fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def plot_weight_histogram(params_by_name: Dict[str, Any], tau: float, path: str) -> None:
  """Histograms of the standardised binary-conv weights ``w1`` with the clamp ``+-Q(tau)`` (PNG)."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  items = [(n, standardized_weights(p)) for n, p in params_by_name.items()]
  items = [(n, w) for n, w in items if w.size]
  if not items:
    return
  fig, ax = plt.subplots(1, len(items), figsize=(4.5 * len(items), 3.2), squeeze=False)
  for a, (n, w) in zip(ax[0], items):
    a.hist(w, bins=100, density=True)
    q = -np.mean(np.abs(w)) * np.log(max(2 - 2 * tau, 1e-30))
    if np.isfinite(q):
      for s in (-q, q):
        a.axvline(s, color='r', ls='--')
    a.set_title(f'{n}: w1, dead {np.mean(np.abs(w) > q):.3f} (tau {tau:.3f})')
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


main = train.cli(ReCU, default_config='recu/configs/digits.py')

if __name__ == '__main__':
  main()
