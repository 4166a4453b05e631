"""Fine-tune a pretrained model with fixed 1xN (or baseline) masks, the official 1xN recipe (lmbxmu/1xN ``imagenet.py: main``).

  python -m onexn.train --config=onexn/configs/digits_dense.py --workdir=runs/mbv2_digits  # dense
  python -m onexn.train --config=onexn/configs/imagenet.py:mobilenet_v2,n=4,p=0.5,rearrange=1 \
      --workdir=DIR --config.init_checkpoint=PRETRAINED

Steps (``imagenet.py: main`` of lmbxmu/1xN): load the pretrained dense variables
(``config.init_checkpoint``: a ``common.train`` workdir, or a converted-weights ``.npz`` /
``.msgpack`` file); compute every layer's mask once from them (``onexn.model_masks``); fine-tune
with ``W * mask`` in the forward and the mask fixed (it lives in ``TrainState.extra``, never in the
optimizer); the biases of masked layers are frozen (``get_mask`` sets ``bias.requires_grad =
False``). ``results.json`` reports top-1 (best / last), the sparsity of every layer, dense and
kept-weight MACs, and, for block patterns, the exported sparse model's measured CPU latency next to
the dense model's (``onexn.export_sparse``); masked weights save no time in the training forward,
only the exported model is faster.
"""
from __future__ import annotations

from typing import Any, Dict

import jax
import jax.numpy as jnp
from flax import traverse_util

from common import masks as common_masks
from common import train
from common import transforms
from common.pretrained import load_pretrained
from onexn import layer_policy


class OneByN(train.Method):
  """``common.train`` hooks of 1xN fine-tuning (masks fixed, computed once; ``imagenet.py: main``)."""

  name = '1xn'

  def _specs(self):
    if getattr(self, '_layer_specs', None) is None:
      hw = tuple(self.image_shape[:2])
      from common import models
      self._layer_specs = models.layer_specs(
          self.config.model.name, widths=self.config.model.widths, input_hw=hw,
          num_classes=self.num_classes, **self.model_kwargs())
    return self._layer_specs

  def init_variables(self, model, rng, images):
    """The pretrained dense variables (1xN never starts from random weights)."""
    v = load_pretrained(self.config.get('init_checkpoint', ''))
    # Check the checkpoint fits the configured model before masks are computed from it.
    shapes = jax.eval_shape(lambda: model.init({'params': rng, 'dropout': rng}, images,
                                               train=False))
    want = traverse_util.flatten_dict(shapes['params'])
    got = traverse_util.flatten_dict(v['params'])
    bad = [transforms.path_str(k) for k in want
           if k not in got or tuple(got[k].shape) != tuple(want[k].shape)]
    if bad:
      raise train.UserError(f'init_checkpoint does not match model {self.config.model.name!r} '
                            f'(missing or mis-shaped: {bad[:5]}{" ..." if len(bad) > 5 else ""})')
    return v

  def init_extra(self, params, batch_stats, rng):
    """Masks computed once from the pretrained params (``get_mask``/``get_rearr_mask``)."""
    try:
      m = layer_policy.model_masks(params, self._specs(), self.config.model.name,
                                   rng=jax.random.fold_in(rng, 1),
                                   **layer_policy.mask_options(self.config.method))
    except ValueError as e:
      raise train.UserError(str(e)) from e
    return {'masks': m}

  def effective_params(self, params, extra):
    """``W * mask`` on masked layers (the ``BlockL1Conv.forward`` sparse weight)."""
    return common_masks.apply_masks(params, extra['masks'])

  def trainable_mask(self, params):
    """Freezes the biases of masked layers (official ``bias.requires_grad = False``)."""
    if not self.config.method.get('freeze_masked_biases', True):
      return None
    frozen = {tuple(s.path) + ('bias',) for s in layer_policy.masked_layers(self._specs())}
    return jax.tree_util.tree_map_with_path(
        lambda kp, _: transforms.path_tuple(kp) not in frozen, params)

  def results(self, state) -> Dict[str, Any]:
    rep = common_masks.sparsity_report(state.extra['masks'])
    specs = self._specs()
    pruned = {transforms.path_str(tuple(s.path) + ('kernel',))
              for s in layer_policy.masked_layers(specs) if s.role != 'classifier'}
    kept = sum(v['kept'] for k, v in rep['layers'].items() if k in pruned)
    total = sum(v['total'] for k, v in rep['layers'].items() if k in pruned)
    macs = layer_policy.effective_macs(specs, state.extra['masks'])
    out = {'sparsity_per_layer': {k: v['sparsity'] for k, v in rep['layers'].items()},
           'sparsity_masked_layers': rep['global_sparsity'],
           'sparsity_excl_classifier': 1.0 - kept / total if total else 0.0,
           'conv_macs_dense': macs['dense'], 'conv_macs_kept_weights': macs['sparse'],
           'pattern': self.config.method.pattern,
           'block_size_n': int(self.config.method.block_size_n),
           'rearrange': bool(self.config.method.rearrange)}
    return out

  def export(self, state, workdir: str) -> Dict[str, Any]:
    """Block patterns: the sparse export checked against the masked model, and its latency."""
    if self.config.method.get('export', True) and self.config.method.pattern in (
        'block', 'random_block'):
      return self._export_and_time(state)
    return {}

  def _export_and_time(self, state) -> Dict[str, Any]:
    """Sparse export, its deviation from the masked dense model, and CPU latencies (batch
    ``method.latency_batch``): the zoo model, the dense deployment graph, the sparse export."""
    from onexn import export, latency
    m = self.config.method
    model = self.build_model()
    kw = dict(n=int(m.block_size_n), num_classes=self.num_classes, specs=self._specs(),
              model=model)
    args = (state.params, state.batch_stats, state.extra['masks'], self.config.model)
    sm = export.export_sparse(*args, **kw)
    dm = export.export_sparse(*args, use_sparse_kernel=False, **kw)
    x = jax.random.normal(jax.random.PRNGKey(0),
                          (int(m.get('latency_batch', 1)),) + self.image_shape)
    masked = {'params': self.effective_params(state.params, state.extra),
              'batch_stats': state.batch_stats}
    zoo_fn = jax.jit(lambda v, x: model.apply(v, x, train=False))
    ref = zoo_fn(masked, x)
    reps = int(m.get('latency_repeats', 20))
    t_zoo = latency.time_fn(lambda: zoo_fn(masked, x), reps)
    t_dense = latency.time_fn(lambda: dm(x), reps)
    t_sparse = latency.time_fn(lambda: sm(x), reps)
    return {'export_max_abs_diff': float(jnp.max(jnp.abs(sm(x) - ref))),
            'export': sm.summary(),
            'latency_ms_zoo_dense': 1e3 * t_zoo, 'latency_ms_dense': 1e3 * t_dense,
            'latency_ms_sparse': 1e3 * t_sparse, 'latency_speedup': t_dense / t_sparse,
            'latency_batch': int(x.shape[0])}


def method_for(config) -> train.Method:
  """``method.pattern == 'dense'``: dense (pre)training; otherwise 1xN / baseline fine-tuning."""
  if config.method.get('pattern', 'block') == 'dense':
    return train.Method(config)
  return OneByN(config)


main = train.cli(method_for, default_config='onexn/configs/digits.py')

if __name__ == '__main__':
  main()
