"""DCFF on a whole network: the fusion plan, its state, the fused forward params and the export.

As lmbxmu/DCFF ``main_cifar.py`` and ``models/cifar/fuse_modules.py`` compute it. The network that runs is the
*compact* model of ``common.models`` (BN, next-layer inputs and FC already at the compact widths);
DCFF only changes the parameters it computes with:

* ``params``: the compact model's params, except that every fused conv holds its full bank of
  ``C`` original filters (kernel ``[k, k, C_in_compact, C]``, bias ``[C]``) initialised as the
  official ``FuseConv2d`` is (same scheme, fans of the full ``[C, C_in_compact, k, k]`` weight);
* ``state`` (``TrainState.extra``): per fused layer ``p_sel [m, C]`` (the buffer
  ``layeri_softmaxP``), the stored ``scores [C]`` and the ``selected [m]`` indices (slot order),
  plus ``scored`` (0 before the first scoring) and the epoch's ``temperature``;
* :func:`fused_params` (pure, traced into the step): every fused kernel/bias becomes
  ``P_sel . W`` — the params of the compact model;
* :func:`update_fusion_state` (host, once per epoch): the per-epoch update of ``main_cifar.py``, steps 1-7: distances, T(e), P, KL scores, finite-check, top-k, P_sel for every layer;
* :func:`export_compact`: the fused params *are* the compact model's params (exact by
  construction; the test checks outputs).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, List, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from common import models
from common.models import layers as model_layers
from dcff import cprate as cprate_lib
from dcff import fusion


@dataclasses.dataclass(frozen=True)
class FusionPlan:
  """Static description of a DCFF network (hashable, JSON-able through :meth:`model_config`).

  Attributes:
    model_name: ``common.models`` name of the dense architecture (e.g. 'resnet56').
    num_classes: classifier outputs.
    widths: the compact width config (``common.models`` format).
    model_kwargs: extra ``get_model`` kwargs (init, conv_bias, ...), as sorted ``(key, value)``.
    layers: the fused convs (:class:`dcff.cprate.FusedLayer`) in forward order.
    cprate: the flat per-model rate list.
  """
  model_name: str
  num_classes: int
  widths: Any
  model_kwargs: Tuple[Tuple[str, Any], ...]
  layers: Tuple[cprate_lib.FusedLayer, ...]
  cprate: Tuple[float, ...]

  def kwargs(self) -> Dict[str, Any]:
    return dict(self.model_kwargs)

  def model_config(self) -> Dict[str, Any]:
    """``{'name', 'num_classes', 'widths', 'kwargs'}`` of the compact model (JSON-serialisable)."""
    return {'name': self.model_name, 'num_classes': self.num_classes, 'widths': self.widths,
            'kwargs': self.kwargs()}

  def build(self):
    """The compact ``nn.Module`` (the network that runs during DCFF training and after export)."""
    return models.get_model(self.model_name, self.num_classes, widths=self.widths, **self.kwargs())


def make_plan(model_name: str, cprate, num_classes: int, input_hw=(32, 32),
              model_kwargs: Optional[Dict[str, Any]] = None) -> FusionPlan:
  """The :class:`FusionPlan` of ``model_name`` pruned with the official ``cprate`` (``utils/options.py``)."""
  kw = dict(model_kwargs or {})
  rates = cprate_lib.parse_cprate(cprate)
  layers = cprate_lib.fused_layers(model_name, rates, input_hw, num_classes, **kw)
  widths = cprate_lib.compact_widths(model_name, rates)
  return FusionPlan(model_name, int(num_classes), widths, tuple(sorted(kw.items())),
                    tuple(layers), tuple(rates))


def _flat(tree) -> Dict[Tuple[str, ...], Any]:
  return traverse_util.flatten_dict(dict(tree))


def init_scheme(model) -> str:
  """The conv init scheme of a built ``common.models`` module (its ``init_scheme`` field)."""
  scheme = getattr(model, 'init_scheme', None)
  if scheme is None:
    raise ValueError(f'{type(model).__name__} has no init_scheme field; DCFF needs it to '
                     'initialise the full filter banks as the model initialises its convs')
  return scheme


def init_bank(scheme: str, key, shape, bias: bool) -> Dict[str, Any]:
  """Full filter bank ``{'kernel' [k, k, C_in, C] (, 'bias' [C])}`` drawn with the model's scheme.

  The official ``FuseConv2d(in=C_in_compact, out=C)`` is initialised by the model's own rule on the
  full ``[C, C_in_compact, k, k]`` weight, so the fans are those of that shape (fan_in
  ``k*k*C_in``, fan_out ``k*k*C``), not of the compact ``[m, ...]`` one.
  """
  kh, kw, cin, _ = shape
  key_w, key_b = jax.random.split(key)
  out = {'kernel': model_layers.kernel_init(scheme)(key_w, tuple(shape), jnp.float32)}
  if bias:
    out['bias'] = model_layers.bias_init(scheme, kh * kw * cin)(key_b, (shape[-1],), jnp.float32)
  return out


def init_params(plan: FusionPlan, rng, image_shape=(32, 32, 3)) -> Dict[str, Any]:
  """``{'params', 'batch_stats'}``: compact model init with full-width fused filter banks.

  Compact BN / FC / downsample convs come from the compact model's own ``init``; every fused conv
  gets a full ``C``-filter bank from :func:`init_bank` (kaiming-normal fan_in for ResNet-CIFAR,
  PyTorch default for VGG, kaiming-normal fan_out for ResNet-50, as the official models).

  Args:
    plan: the fusion plan.
    rng: PRNG key.
    image_shape: ``(H, W, C)`` of one input.
  """
  model = plan.build()
  scheme = init_scheme(model)

  def init(rng):
    k_model, k_fused = jax.random.split(rng)
    sample = jnp.zeros((1,) + tuple(image_shape), jnp.float32)
    variables = model.init({'params': k_model, 'dropout': k_model}, sample, train=False)
    flat = _flat(variables['params'])
    for i, layer in enumerate(plan.layers):
      kh, kw, cin, m = flat[layer.path + ('kernel',)].shape
      if m != layer.m:
        raise ValueError(f'layer {"/".join(layer.path)}: compact kernel has {m} filters, '
                         f'plan {layer.m}')
      bank = init_bank(scheme, jax.random.fold_in(k_fused, i), (kh, kw, cin, layer.c),
                       layer.bias)
      for leaf, value in bank.items():
        flat[layer.path + (leaf,)] = value
    return {'params': traverse_util.unflatten_dict(flat),
            'batch_stats': variables.get('batch_stats', {})}

  # One compiled program instead of hundreds of eagerly dispatched initialiser ops.
  return jax.jit(init)(rng)


def init_fusion_state(plan: FusionPlan) -> Dict[str, Any]:
  """The state before the first scoring: zero ``p_sel`` (the official zero buffer), zero scores,
  ``selected = arange(m)`` placeholders, ``scored = 0``, ``temperature = 0``."""
  p_sel, scores, selected = {}, {}, {}
  for layer in plan.layers:
    p_sel[layer.path] = np.zeros((layer.m, layer.c), np.float32)
    scores[layer.path] = np.zeros((layer.c,), np.float32)
    selected[layer.path] = np.arange(layer.m, dtype=np.int32)
  return {'p_sel': traverse_util.unflatten_dict(p_sel),
          'scores': traverse_util.unflatten_dict(scores),
          'selected': traverse_util.unflatten_dict(selected),
          'scored': np.zeros((), np.int32), 'temperature': np.zeros((), np.float32)}


def update_fusion_state(params, state, plan: FusionPlan, epoch: int, num_epochs: int, *,
                        mode: str = 'faithful', score_temperature_cap: float = 1.0,
                        t_start: float = fusion.T_START, t_end: float = fusion.T_END,
                        t_k: float = fusion.T_K) -> Tuple[Dict[str, Any], Dict[str, Any]]:
  """Host-side per-epoch update of every fused layer (the per-epoch update of ``main_cifar.py``, steps 1-7: distances, T(e), P, KL scores, finite-check, top-k, P_sel).

  Args:
    params: current params (full filter banks), device or host arrays.
    state: the fusion state (``init_fusion_state`` layout).
    plan: the plan.
    epoch, num_epochs: e and E.
    mode, score_temperature_cap, t_start, t_end, t_k: see :func:`dcff.fusion.layer_update`.
  Returns:
    ``(new_state, stats)``; stats: ``temperature``, ``layers_scores_replaced``,
    ``layers_selection_changed``, ``filters_selection_changed``, ``boundary_ties``.
  """
  flat = _flat(params)
  first = int(np.asarray(state['scored'])) == 0
  prev_scores, prev_sel = _flat(state['scores']), _flat(state['selected'])
  p_sel, scores, selected = {}, {}, {}
  n_repl = n_layers_changed = n_changed = n_ties = 0
  t = None
  for layer in plan.layers:
    out = fusion.layer_update(
        np.asarray(flat[layer.path + ('kernel',)]), epoch, num_epochs, layer.m,
        prev_scores=None if first else np.asarray(prev_scores[layer.path]),
        prev_selected=None if first else np.asarray(prev_sel[layer.path]),
        mode=mode, score_temperature_cap=score_temperature_cap, t_start=t_start, t_end=t_end,
        k=t_k)
    t = out['temperature']
    p_sel[layer.path] = np.asarray(out['p_sel'], np.float32)
    scores[layer.path] = np.asarray(out['scores'], np.float32)
    selected[layer.path] = np.asarray(out['selected'], np.int32)
    n_repl += int(out['replaced'])
    n_layers_changed += int(out['changed'] > 0)
    n_changed += out['changed']
    n_ties += out['ties']
  new_state = {'p_sel': traverse_util.unflatten_dict(p_sel),
               'scores': traverse_util.unflatten_dict(scores),
               'selected': traverse_util.unflatten_dict(selected),
               'scored': np.ones((), np.int32), 'temperature': np.asarray(t, np.float32)}
  stats = {'temperature': t, 'layers_scores_replaced': n_repl,
           'layers_selection_changed': n_layers_changed,
           'filters_selection_changed': n_changed, 'boundary_ties': n_ties}
  return new_state, stats


def fused_params(params, state, plan: FusionPlan):
  """*Pure*. The compact model's params: ``kernel <- P_sel . W`` (and bias) on every fused conv.

  ``[k, k, C_in, C] -> [k, k, C_in, m]`` per layer (:func:`dcff.fusion.fuse`); all other leaves
  (BN, FC, unfused downsample convs) are returned unchanged. Traced into the jitted step.
  """
  flat = _flat(params)
  p_flat = _flat(state['p_sel'])
  for layer in plan.layers:
    p = p_flat[layer.path]
    flat[layer.path + ('kernel',)] = fusion.fuse(flat[layer.path + ('kernel',)], p)
    if layer.bias:
      flat[layer.path + ('bias',)] = fusion.fuse(flat[layer.path + ('bias',)], p)
  return traverse_util.unflatten_dict(flat)


def export_compact(params, state, plan: FusionPlan) -> Tuple[Dict[str, Any], Dict[str, Any]]:
  """The compact model (``test_compact_model.py``'s compact copy): ``(compact_model_cfg, compact_params)``.

  ``compact_params`` are the fused weights with the current ``P_sel`` and ``W`` (the official
  ``fused_weight`` buffers); BN statistics carry over unchanged (they are already compact).
  ``compact_model_cfg`` is :meth:`FusionPlan.model_config`: ``common.models.get_model(**cfg)``
  rebuilds the network.
  """
  if int(np.asarray(state['scored'])) == 0:
    raise ValueError('the fusion state was never scored (P_sel is the zero buffer); run '
                     'update_fusion_state before exporting')
  out = jax.jit(lambda p, s: fused_params(p, s, plan))(params, state)
  return plan.model_config(), jax.tree.map(np.asarray, out)


def selection_summary(state, plan: FusionPlan) -> Dict[str, List[int]]:
  """``{'layer/path': selected indices}`` (host lists) for logs and results."""
  sel = _flat(state['selected'])
  return {'/'.join(layer.path): np.asarray(sel[layer.path]).tolist() for layer in plan.layers}
