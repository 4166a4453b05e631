"""The training engine every paper plugs into, and the dense-baseline trainer.

  python -m common.train --config=common/configs/resnet20_digits.py --workdir=runs/r20 \
      [--config.num_epochs=30 --config.optimizer.learning_rate=0.05 ...]

A paper supplies a :class:`Method` subclass: its model, the transform of the parameters the network
computes with (masks, fused filters, binarized weights), its loss, its per-step and per-epoch
hooks, and the fields it reports (the full contract is in ``docs/engine.md``). The engine owns
everything else: data, pmap over local devices (``lax.pmean`` of gradients, metrics and BN
statistics), optax SGD/Adam with coupled weight decay (``common.schedules``), orbax checkpoints
with resume from ``--workdir``, a progress bar, ``metrics.jsonl`` / ``results.json`` /
``metrics.png``, and a NaN guard that stops the run before a bad state is saved.

The pieces are public so that a notebook or a quick experiment can drive them without copying the
loop: :class:`Engine` (``create_state``, ``train_epoch``, ``evaluate``), :func:`make_train_step`,
:func:`make_eval_step`; :func:`run` is the loop over them, :func:`run_stages` chains several runs
(each its own method, optimizer and epochs) in one workdir.

Config layout (``common/configs/base.py``): ``seed``, ``num_epochs``, ``label_smoothing``,
``init_checkpoint``, ``best_metric``, ``dataset.{name, data_dir, batch_size, eval_batch_size,
normalization, augment}``, ``model.{name, num_classes, widths, kwargs}``, ``optimizer.{name,
learning_rate, momentum, nesterov, weight_decay}``, ``schedule.{name, milestones, gamma,
cosine_shift, warmup, warmup_epochs, t_max, eta_min}``, ``checkpoint_every_epochs``,
``keep_checkpoints``, ``progress_bar``, ``distributed.*``, ``method`` (the paper's own fields).

Determinism: the data order is a function of (seed, epoch), the step RNG of (seed, step, update,
device), and checkpoints are taken at epoch boundaries, so a killed-and-resumed run reproduces an
uninterrupted one.
"""
from __future__ import annotations

import dataclasses
import difflib
import functools
import json
import math
import os
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from common import checkpoint as ckpt_lib
from common.losses import cross_entropy  # re-exported: the engine's default loss
from common import schedules

Array = jax.Array


class UserError(ValueError):
  """Bad input from the user (config, paths, data): printed as one line by the CLI."""


@flax.struct.dataclass
class TrainState:
  """Everything that changes during training; one pytree so that pmap/orbax see it whole.

  Attributes:
    step: int32 scalar, global optimizer step.
    params: trained parameters (the method may hold more than the network computes with, e.g.
      DCFF's full filter banks).
    batch_stats: BatchNorm running statistics.
    opt_state: the optax state of the step's single :class:`Update`, or ``{update name: optax
      state}`` when the step runs several.
    extra: method-owned, never differentiated: masks, scores, per-epoch scalars (tau,
      temperature, ...) kept as arrays so that changing them never recompiles the step.
    rng: PRNG key data (uint32[2]) of the run.
  """
  step: Array
  params: Any
  batch_stats: Any
  opt_state: Any
  extra: Any
  rng: Array


@dataclasses.dataclass
class RunInfo:
  """What the engine knows of the run before the model exists; handed to :meth:`Method.setup`.

  Attributes:
    num_classes: K of the classifier (``model.num_classes``, or the training set's when <= 0).
    image_shape: ``(H, W, C)`` of the training images.
    steps_per_epoch: optimizer steps per epoch (global batch, remainder dropped).
    datasets: the data sets of :meth:`Method.datasets` by name (always 'train' and 'test').
    workdir: the run's directory (None when driven from a notebook).
    previous: the workdir of the previous stage in :func:`run_stages` (None otherwise).
  """
  num_classes: int
  image_shape: Tuple[int, ...]
  steps_per_epoch: int = 1
  datasets: Dict[str, Any] = dataclasses.field(default_factory=dict)
  workdir: Optional[str] = None
  previous: Optional[str] = None


@dataclasses.dataclass(frozen=True)
class Update:
  """One optimizer update of the train step (a step runs its updates in order).

  Attributes:
    name: key of its optimizer state in ``TrainState.opt_state`` and prefix of its metrics.
    tx: the optax transformation applied to the gradients of the leaves it trains.
    mask: bool pytree like ``params`` (True = trained by this update) or None (all params). The
      other leaves enter the loss through ``stop_gradient`` (their backward is never computed)
      and are left unchanged.
    loss: ``(model, params, batch_stats, extra, batch, rng) -> (loss, (batch_stats, extra,
      metrics, logits))`` or None for the method's ``forward`` + ``update_extra`` + ``loss``.
      ``extra`` may be None (unchanged), ``logits`` None (no top-1 for this update).
  """
  name: str
  tx: optax.GradientTransformation
  mask: Any = None
  loss: Optional[Callable] = None


def topk_correct(logits: Array, labels: Array, k: int) -> Array:
  """``[B]`` float 1.0 where ``labels`` is among the ``k`` largest ``logits [B, K]``.

  Ties count against the label (a strictly larger count of better logits than k - 1 misses), as
  ``torch.topk`` followed by ``eq`` does on distinct values.
  """
  true = jnp.take_along_axis(logits, labels[:, None], axis=-1)
  better = jnp.sum(logits > true, axis=-1)
  return (better < k).astype(jnp.float32)


class Method:
  """Hooks of a compression method; every default is plain dense supervised training.

  Subclass and override what the paper changes. *Pure* hooks run inside the jitted, pmapped step
  and must be functions of their arguments; *host* hooks run on the host between steps, epochs
  or evaluations. ``docs/engine.md`` lists which hook may do what.
  """

  name = 'dense'

  def __init__(self, config):
    self.config = config
    self.info: Optional[RunInfo] = None

  @property
  def num_classes(self) -> Optional[int]:
    return self.info.num_classes if self.info else None

  @property
  def image_shape(self) -> Optional[Tuple[int, ...]]:
    return tuple(self.info.image_shape) if self.info else None

  def choice(self, key: str, default: str, allowed) -> str:
    """``config.method[key]`` (``default`` when unset), checked against ``allowed``.

    Raises:
      UserError: naming the key, the allowed values and the value given.
    """
    value = self.config.get('method', {}).get(key, default)
    if value not in allowed:
      raise UserError(f'method.{key} must be one of {list(allowed)}; got {value!r}')
    return value

  # --- set-up (host, once) -------------------------------------------------------------------
  def datasets(self) -> Dict[str, Any]:
    """*Host*. The data sets of the run by name; 'train' and 'test' are required.

    Override to add splits or subsets (a calibration set, class-incremental sessions, a held-out
    part of train); they reach the method through ``self.info.datasets``.
    """
    return {'train': load_dataset(self.config, 'train'), 'test': load_dataset(self.config, 'test')}

  def setup(self, info: RunInfo) -> None:
    """*Host*. Called once with the run's :class:`RunInfo`, before :meth:`build_model`."""
    self.info = info

  def model_kwargs(self) -> Dict[str, Any]:
    kw = self.config.model.get('kwargs', None)
    return dict(kw.to_dict() if hasattr(kw, 'to_dict') else (kw or {}))

  def build_model(self) -> nn.Module:
    """The network that runs forward (default: ``common.models.get_model`` of the config)."""
    from common import models
    return models.get_model(self.config.model.name, self.num_classes,
                            widths=self.config.model.widths, **self.model_kwargs())

  def init_variables(self, model: nn.Module, rng: Array, images: Array) -> Dict[str, Any]:
    """``{'params', 'batch_stats'}``: the model's initialisers, or ``config.init_checkpoint``."""
    path = self.config.get('init_checkpoint', '')
    if path:
      return load_variables(path)
    variables = model.init({'params': rng, 'dropout': rng}, images, train=False)
    return {'params': variables['params'], 'batch_stats': variables.get('batch_stats', {})}

  def init_extra(self, params, batch_stats, rng: Array) -> Dict[str, Any]:
    """Method state that is not trained (masks, scores, scalars). Default: empty."""
    return {}

  def updates(self, params, schedule: Callable) -> Optional[List[Update]]:
    """The step's ordered updates, or None for one update with the config's optimizer.

    Args:
      params: the initial params (for masks over the tree).
      schedule: ``step -> lr`` of ``config.schedule`` and ``config.optimizer.learning_rate``.
    """
    return None

  # --- pure hooks (inside the step) ----------------------------------------------------------
  def effective_params(self, params, extra):
    """*Pure*. The parameters the network computes with (default: ``params``)."""
    return params

  def forward(self, model, params, batch_stats, extra, batch, train: bool, rng):
    """*Pure*. Returns ``(logits [B, K], new_batch_stats, aux: dict)``.

    ``batch`` holds ``image [B, H, W, C]``, ``label [B]`` (and ``weight [B]`` in evaluation), plus
    ``'method'``: the arrays of :meth:`before_step` / :meth:`before_eval` and ``'static'``: their
    Python values (fixed at trace time; one compilation per distinct value).
    """
    variables = {'params': self.effective_params(params, extra), 'batch_stats': batch_stats}
    images = batch['image']
    if train:
      logits, mutated = model.apply(variables, images, train=True, mutable=['batch_stats'],
                                    rngs={'dropout': rng})
      return logits, mutated.get('batch_stats', batch_stats), {}
    return model.apply(variables, images, train=False), batch_stats, {}

  def update_extra(self, extra, aux):
    """*Pure*. ``extra`` after a forward pass (running ranges, stored gates); default: ``aux['extra']``
    when the forward put one there, else unchanged. Never differentiated."""
    return aux['extra'] if isinstance(aux, dict) and 'extra' in aux else extra

  def loss(self, logits, labels, aux, params, extra) -> Tuple[Array, Dict[str, Array]]:
    """*Pure*. ``(scalar loss, metrics)``; default cross-entropy with label smoothing."""
    return cross_entropy(logits, labels, self.config.get('label_smoothing', 0.0)), {}

  def eval_metrics(self, logits, batch, aux) -> Dict[str, Array]:
    """*Pure*. Extra evaluation metrics as **sums** over the batch, weighted by
    ``batch['weight']`` (0 for padding); the engine divides by the example count."""
    return {}

  def trainable_mask(self, params):
    """Bool pytree like ``params`` (False = frozen) or None (all trained)."""
    return None

  def decay_mask(self, params):
    """Bool pytree like ``params`` (True = L2-decayed) or None (all decayed, as PyTorch SGD)."""
    return None

  def post_step(self, params, extra, step):
    """*Pure*. Runs after each step's updates (projections, score re-derivation)."""
    return params, extra

  # --- host hooks ----------------------------------------------------------------------------
  def before_step(self, state: TrainState, step: int) -> Optional[Dict[str, Any]]:
    """*Host*. Per-step inputs for the step about to run: arrays (no recompilation when they
    change) and Python scalars/tuples (static: one compilation per value). Default: none.

    ``state`` is the device-replicated state; reading it syncs with the device, so a method that
    needs it (e.g. a subnet pool) pays one host sync per step.
    """
    return None

  def after_step(self, state: TrainState, metrics, step: int) -> None:
    """*Host*. After each step with its (device, replicated) metrics; default does nothing and
    costs nothing. Converting ``metrics`` to host values syncs once per step."""

  def epoch_start(self, state: TrainState, epoch: int) -> TrainState:
    """*Host*. Before the steps of ``epoch`` (also the first epoch after a resume)."""
    return state

  def epoch_end(self, state: TrainState, epoch: int) -> Dict[str, Any]:
    """*Host*. Extra JSON fields for this epoch's line of ``metrics.jsonl``."""
    return {}

  def eval_variants(self) -> Sequence[str]:
    """*Host*. Names of the evaluations run after each epoch; '' is the plain one whose metrics
    are ``test_top1``, ``test_loss``...; variant ``v`` reports ``v/test_top1``..."""
    return ('',)

  def before_eval(self, state: TrainState, variant: str) -> Tuple[TrainState, Optional[Dict]]:
    """*Host*. ``(state to evaluate, per-variant inputs)`` for variant ``variant`` (e.g. a subnet
    with recalibrated BN statistics); ``state`` is the unreplicated state."""
    return state, None

  def results(self, state: TrainState) -> Dict[str, Any]:
    """*Host*. Method fields for ``results.json`` (sparsity, compact FLOPs, bits, ...). Only
    reports: no files, no timing."""
    return {}

  def flops_params(self, state: TrainState) -> Tuple[Optional[int], Optional[int]]:
    """FLOPs and params of the network that runs (thop convention, ``common.flops``)."""
    try:
      from common import flops
    except ImportError:
      return None, None
    f, p, _ = flops.count(self.config.model.name, widths=self.config.model.widths,
                          input_hw=tuple(self.image_shape[:2]), num_classes=self.num_classes,
                          **self.model_kwargs())
    return int(f), int(p)

  def export(self, state: TrainState, workdir: str) -> Dict[str, Any]:
    """*Host*. Artifacts after training (compact model, plots, measured latency). Returns the
    fields (artifact paths, figures) that the engine records once in ``results.json``."""
    return {}


# ---------------------------------------------------------------------------------------------
# Steps


def _split_inputs(inputs: Optional[Dict[str, Any]]) -> Tuple[Dict[str, Any], Tuple]:
  """Per-step inputs -> (arrays, static tuple of (key, value)); Python values are static."""
  arrays, static = {}, []
  for k, v in sorted((inputs or {}).items()):
    if isinstance(v, (np.ndarray, jax.Array, np.generic)):
      arrays[k] = v
    else:
      static.append((k, _hashable(v)))
  return arrays, tuple(static)


def _hashable(v):
  if isinstance(v, (list, tuple)):
    return tuple(_hashable(x) for x in v)
  if isinstance(v, dict):
    return tuple(sorted((k, _hashable(x)) for k, x in v.items()))
  return v


def default_update(method: Method, tx: optax.GradientTransformation) -> Update:
  """The single update of a plain step: the method's forward + loss, all params, ``tx``."""
  return Update('main', tx)


def _method_loss(method: Method):
  def loss_fn(model, params, batch_stats, extra, batch, rng):
    logits, new_bs, aux = method.forward(model, params, batch_stats, extra, batch, True, rng)
    updated = method.update_extra(extra, aux)
    # None tells the step that extra is unchanged (no cross-device average needed).
    new_extra = None if updated is extra else jax.tree.map(jax.lax.stop_gradient, updated)
    loss, metrics = method.loss(logits, batch['label'], aux, params, extra)
    return loss, (new_bs, new_extra, metrics, logits)
  return loss_fn


def _masked_tx(u: Update):
  if u.mask is None:
    return u.tx
  labels = jax.tree.map(lambda t: 'on' if t else 'off', u.mask)
  return optax.multi_transform({'on': u.tx, 'off': optax.set_to_zero()}, labels)


def make_train_step(method: Method, model: nn.Module, updates, axis_name: Optional[str] = 'batch'):
  """The per-device train step ``(state, batch[, static]) -> (state, metrics)``.

  Runs ``updates`` in order (an ``optax.GradientTransformation`` means one default update); each
  one differentiates its own loss with respect to its own leaves, steps its own optimizer state,
  and hands the new params, BN statistics and ``extra`` to the next. Gradients, BN statistics,
  float ``extra`` leaves and metrics are averaged over ``axis_name`` (``lax.pmean``), the
  flax-examples recipe; with ``axis_name=None`` it is a single-device step. Metrics of a
  multi-update step are prefixed ``<update name>_``; ``loss`` and ``top1`` are the last
  update's (``top1`` from the last update that returns logits).
  """
  if isinstance(updates, optax.GradientTransformation):
    updates = [default_update(method, updates)]
  updates = list(updates)
  default_loss = _method_loss(method)

  def pmean(x):
    return jax.lax.pmean(x, axis_name) if axis_name else x

  def pmean_floats(tree):
    return jax.tree.map(lambda v: pmean(v) if jnp.issubdtype(v.dtype, jnp.floating) else v, tree)

  def step_fn(state: TrainState, batch, static=()):
    batch = dict(batch, static=dict(static))
    base_rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
    if axis_name:
      base_rng = jax.random.fold_in(base_rng, jax.lax.axis_index(axis_name))
    params, bs, extra = state.params, state.batch_stats, state.extra
    single = len(updates) == 1
    opt_states = {updates[0].name: state.opt_state} if single else dict(state.opt_state)
    metrics, loss, top1 = {}, None, None
    for i, u in enumerate(updates):
      rng = base_rng if i == 0 else jax.random.fold_in(base_rng, 1000 + i)
      loss_fn = u.loss or default_loss

      def objective(p, loss_fn=loss_fn, mask=u.mask, rng=rng, bs=bs, extra=extra):
        if mask is not None:
          p = jax.tree.map(lambda v, m: v if m else jax.lax.stop_gradient(v), p, mask)
        return loss_fn(model, p, bs, extra, batch, rng)

      (loss, (bs, new_extra, m, logits)), grads = jax.value_and_grad(
          objective, has_aux=True)(params)
      grads = pmean(grads)
      bs = pmean(bs)
      if new_extra is not None:
        extra = pmean_floats(new_extra)
      upd, opt_states[u.name] = _masked_tx(u).update(grads, opt_states[u.name], params)
      params = optax.apply_updates(params, upd)
      if logits is not None:
        top1 = jnp.mean((jnp.argmax(logits, -1) == batch['label']).astype(jnp.float32))
      m = dict(m, loss=loss)
      if len(updates) > 1:
        m = {f'{u.name}_{k}': v for k, v in m.items()}
      metrics.update(m)
    params, extra = method.post_step(params, extra, state.step)
    metrics['loss'] = loss
    if top1 is not None:
      metrics['top1'] = top1
    metrics = pmean(metrics)
    new_state = state.replace(step=state.step + 1, params=params, batch_stats=bs,
                              opt_state=opt_states[updates[0].name] if single else opt_states,
                              extra=extra)
    return new_state, metrics

  return step_fn


def init_opt_state(updates: Sequence[Update], params):
  """``TrainState.opt_state``: the single update's optax state, or ``{name: state}``."""
  names = [u.name for u in updates]
  if len(set(names)) != len(names):
    raise UserError(f'update names must be unique; got {names}')
  if len(updates) == 1:
    return _masked_tx(updates[0]).init(params)
  return {u.name: _masked_tx(u).init(params) for u in updates}


def make_eval_step(method: Method, model: nn.Module, axis_name: Optional[str] = 'batch'):
  """Per-device eval step ``(state, batch[, static]) -> sums``: correct (top-1, and top-5 when
  K > 5), loss, example weights (padding = 0) and the method's ``eval_metrics``."""

  def psum(x):
    return jax.lax.psum(x, axis_name) if axis_name else x

  def step_fn(state: TrainState, batch, static=()):
    batch = dict(batch, static=dict(static))
    logits, _, aux = method.forward(model, state.params, state.batch_stats, state.extra,
                                    batch, False, jax.random.wrap_key_data(state.rng))
    w = batch['weight']
    labels = batch['label']
    logp = jax.nn.log_softmax(logits.astype(jnp.float32))
    nll = -jnp.take_along_axis(logp, labels[:, None], axis=-1)[:, 0]
    correct = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
    out = {'top1': jnp.sum(correct * w), 'loss': jnp.sum(nll * w), 'count': jnp.sum(w)}
    if logits.shape[-1] > 5:
      out['top5'] = jnp.sum(topk_correct(logits, labels, 5) * w)
    for k, v in method.eval_metrics(logits, batch, aux).items():
      if k in out:
        raise ValueError(f'eval_metrics key {k!r} clashes with a built-in metric {sorted(out)}')
      out[k] = v
    return psum(out)

  return step_fn


def first_replica(x):
  """Host copy of the first local replica of a pmapped output.

  Works for multi-process pmap too, where outputs span devices of other processes and cannot be
  converted with ``np.asarray`` (that would block on data this process cannot address).
  """
  if isinstance(x, jax.Array):
    return np.asarray(x.addressable_shards[0].data)[0]
  return np.asarray(x)[0]


@functools.lru_cache(maxsize=None)
def _identity_pmap():
  return jax.pmap(lambda x: x, axis_name='batch')


def replicate(tree):
  """One copy of ``tree`` per local device, laid out as the train step's outputs are.

  ``flax.jax_utils.replicate`` gives arrays whose sharding names another mesh axis than the
  step's ``'batch'`` outputs, so a step's second call would miss pmap's cache and compile again;
  an identity pmap over the same axis name yields the same sharding as the step's outputs.
  """
  n = jax.local_device_count()
  return _identity_pmap()(jax.tree.map(lambda x: np.broadcast_to(np.asarray(x),
                                                                 (n,) + np.shape(x)), tree))


def unreplicate(tree):
  """``flax.jax_utils.unreplicate`` that is safe in multi-process runs (see ``first_replica``)."""
  return jax.tree.map(lambda x: jnp.asarray(first_replica(x)), tree)


def shard(batch, n: int):
  """``[B, ...] -> [n, B/n, ...]`` for pmap; B must be divisible by n."""
  return jax.tree.map(lambda x: x.reshape((n, x.shape[0] // n) + x.shape[1:]), batch)


def pad_batch(batch, size: int):
  """Pads an eval batch to exactly ``size`` rows, adding ``weight`` (1 real, 0 padding).

  A fixed size means one compiled eval step (the last, partial batch does not recompile), and in
  multi-process runs every process runs the same collectives even when its slice of the last
  global batch is short or empty.
  """
  b = batch['label'].shape[0]
  if b > size:
    raise ValueError(f'eval batch of {b} rows exceeds the padded size {size}')
  pad = size - b
  out = {k: np.concatenate([v, np.zeros((pad,) + v.shape[1:], v.dtype)]) if pad else v
         for k, v in batch.items()}
  out['weight'] = np.concatenate([np.ones(b, np.float32), np.zeros(pad, np.float32)])
  return out


# ---------------------------------------------------------------------------------------------
# Engine: the run's pieces


def maybe_initialize_distributed(config) -> None:
  """``jax.distributed.initialize`` when a coordinator is configured (multi-host runs)."""
  d = config.get('distributed', None)
  if d is None or not d.get('coordinator_address', '') or int(d.num_processes) <= 1:
    return
  if jax.distributed.is_initialized():
    return
  # CPU collectives across processes need an implementation (gloo ships with jaxlib); the setting
  # only affects the CPU client, so it is harmless on GPU/TPU hosts.
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  jax.distributed.initialize(coordinator_address=d.coordinator_address,
                             num_processes=int(d.num_processes), process_id=int(d.process_id))


def load_dataset(config, split: str):
  """``common.data.load`` for the config's dataset, with a UserError on missing data."""
  from common import data
  ds_cfg = config.dataset
  kwargs = {}
  if ds_cfg.get('normalization', ''):
    kwargs['normalization'] = ds_cfg.normalization
  # A slice of the training split ('train[:1500]', 'train[90%:]') is still a training split: it
  # keeps the augmentation unless the config turns it off.
  is_train = str(split).replace(' ', '').split('[', 1)[0] == 'train'
  if not is_train or not ds_cfg.get('augment', True):
    kwargs['augment'] = is_train and ds_cfg.get('augment', True)
  opts = ds_cfg.get('options', None)
  # Per-data-set options of common.data.load (e.g. ImageNet crop_scale=(0.08, 1.25), lighting=0.1
  # for ReCU/1xN; CIFAR pad_mode), set by the paper configs.
  kwargs.update(opts.to_dict() if hasattr(opts, 'to_dict') else dict(opts or {}))
  try:
    return data.load(ds_cfg.name, split, data_dir=ds_cfg.get('data_dir', '') or None,
                     seed=config.seed, **kwargs)
  except (FileNotFoundError, ValueError, KeyError) as e:
    raise UserError(str(e)) from e


def _replicate_inputs(arrays: Dict[str, Any], ndev: int):
  return {k: np.broadcast_to(np.asarray(v), (ndev,) + np.shape(v)) for k, v in arrays.items()}


class Engine:
  """The compiled pieces of one run: data, model, updates, pmapped train and eval steps.

  ``Engine(config, method)`` loads the data sets (``method.datasets()``), calls
  ``method.setup(info)``, builds the model and the step's updates and compiles nothing until the
  first step. One engine serves any number of states (e.g. one fine-tune per pruning mask) with
  one compilation per static input.

  Args:
    config: the run's ``ml_collections`` config.
    method: the paper's :class:`Method`.
    workdir: recorded in ``RunInfo`` (None in a notebook).
    previous: workdir of the previous stage (see :func:`run_stages`).
  """

  def __init__(self, config, method: Method, *, workdir: Optional[str] = None,
               previous: Optional[str] = None):
    self.config, self.method = config, method
    self.ndev, self.nproc = jax.local_device_count(), jax.process_count()
    datasets = method.datasets()
    missing = {'train', 'test'} - set(datasets)
    if missing:
      raise UserError(f'{type(method).__name__}.datasets() must return the splits '
                      f"'train' and 'test'; missing {sorted(missing)}")
    self.datasets = datasets
    self.train_ds, self.test_ds = datasets['train'], datasets['test']
    self.batch_size = gbs = int(config.dataset.batch_size)
    if gbs <= 0 or gbs % (self.ndev * self.nproc):
      raise UserError(f'dataset.batch_size={gbs} must be a positive multiple of the number of '
                      f'devices ({self.ndev * self.nproc} = {self.nproc} hosts x {self.ndev} '
                      f'local devices)')
    self.steps_per_epoch = self.train_ds.steps_per_epoch(gbs, drop_remainder=True)
    if self.steps_per_epoch <= 0:
      raise UserError(f'dataset.batch_size={gbs} exceeds the {self.train_ds.num_examples} '
                      f'training examples of {config.dataset.name!r}')
    self.eval_batch_size = ebs = int(config.dataset.eval_batch_size)
    if ebs <= 0 or ebs % self.nproc:
      raise UserError(f'dataset.eval_batch_size={ebs} must be a positive multiple of the number '
                      f'of processes ({self.nproc})')
    self.local_eval_rows = -(-(ebs // self.nproc) // self.ndev) * self.ndev
    nc = int(config.model.num_classes)
    self.info = RunInfo(num_classes=self.train_ds.num_classes if nc <= 0 else nc,
                        image_shape=tuple(self.train_ds.image_shape),
                        steps_per_epoch=self.steps_per_epoch, datasets=datasets,
                        workdir=workdir, previous=previous)
    method.setup(self.info)
    try:
      self.model = method.build_model()
    except (KeyError, ValueError, TypeError) as e:
      if isinstance(e, UserError):
        raise
      raise UserError(f'cannot build model {config.model.name!r}: {e}') from e
    self.schedule = schedules.make_schedule(config.schedule, float(config.optimizer.learning_rate),
                                            int(config.num_epochs), self.steps_per_epoch)
    self.updates: Optional[List[Update]] = None
    self._p_train = self._p_eval = None

  # --- state ---------------------------------------------------------------------------------
  def _make_updates(self, params) -> List[Update]:
    ups = self.method.updates(params, self.schedule)
    if ups is None:
      tx = schedules.make_optimizer(self.config.optimizer, self.schedule,
                                    self.method.decay_mask(params),
                                    self.method.trainable_mask(params))
      ups = [default_update(self.method, tx)]
    if not ups:
      raise UserError(f'{type(self.method).__name__}.updates() returned no update')
    return list(ups)

  def create_state(self, variables: Optional[Dict[str, Any]] = None, extra=None,
                   seed: Optional[int] = None) -> TrainState:
    """A fresh :class:`TrainState` (host arrays, unreplicated).

    Args:
      variables: ``{'params', 'batch_stats'}`` to start from (default: ``method.init_variables``).
      extra: method state (default: ``method.init_extra``).
      seed: RNG seed (default ``config.seed``).
    """
    seed = int(self.config.seed if seed is None else seed)
    init_rng, extra_rng, run_rng = jax.random.split(jax.random.PRNGKey(seed), 3)
    if variables is None:
      sample = jnp.zeros((1,) + tuple(self.info.image_shape), jnp.float32)
      variables = self.method.init_variables(self.model, init_rng, sample)
    # Fresh buffers: the compiled step donates its input state.
    params = jax.tree.map(jnp.array, variables['params'])
    batch_stats = jax.tree.map(jnp.array, variables.get('batch_stats', {}))
    if extra is None:
      extra = self.method.init_extra(params, batch_stats, extra_rng)
    extra = jax.tree.map(jnp.array, extra)
    if self.updates is None:
      self.updates = self._make_updates(params)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats,
                      opt_state=init_opt_state(self.updates, params), extra=extra, rng=run_rng)

  # --- steps ---------------------------------------------------------------------------------
  def train_step_fn(self):
    """The pmapped train step ``(rstate, sharded batch, static) -> (rstate, metrics)``."""
    if self._p_train is None:
      if self.updates is None:
        raise RuntimeError('create_state() must run before the first step')
      self._p_train = jax.pmap(make_train_step(self.method, self.model, self.updates),
                               axis_name='batch', donate_argnums=(0,),
                               static_broadcasted_argnums=(2,))
    return self._p_train

  def eval_step_fn(self):
    if self._p_eval is None:
      self._p_eval = jax.pmap(make_eval_step(self.method, self.model), axis_name='batch',
                              static_broadcasted_argnums=(2,))
    return self._p_eval

  def train_epoch(self, state: TrainState, epoch: int, *, dataset=None, progress: bool = False):
    """Runs one epoch of steps from the unreplicated ``state``.

    Calls ``method.epoch_start`` first and ``before_step`` / ``after_step`` around every step.
    ``dataset`` replaces the run's training set (same batch size; e.g. another seed's order).
    Returns ``(state, metrics)``: the unreplicated state and the epoch mean of each step metric
    (host floats; the only host sync of the epoch besides what the method's hooks do).
    """
    state = self.method.epoch_start(state, epoch)
    rstate = replicate(state)
    rstate, step_metrics = self._steps(rstate, epoch, progress,
                                       self.train_ds if dataset is None else dataset)
    state = unreplicate(rstate)
    if not step_metrics:
      return state, {}
    means = jax.tree.map(lambda *xs: float(np.mean([first_replica(x) for x in xs])),
                         *step_metrics)
    return state, means

  def _steps(self, rstate, epoch: int, progress: bool, dataset):
    p_train = self.train_step_fn()
    method = self.method
    batches = dataset.batches(self.batch_size, epoch=epoch, train=True,
                                    drop_remainder=True, process_index=jax.process_index(),
                                    process_count=self.nproc)
    if progress:
      from tqdm import tqdm
      batches = tqdm(batches, total=self.steps_per_epoch,
                     desc=f'epoch {epoch + 1}/{self.config.num_epochs}', leave=False,
                     dynamic_ncols=True, file=sys.stderr)
    step = epoch * self.steps_per_epoch
    step_metrics = []
    for batch in batches:
      arrays, static = _split_inputs(method.before_step(rstate, step))
      batch = shard(batch, self.ndev)
      if arrays:
        batch['method'] = _replicate_inputs(arrays, self.ndev)
      rstate, m = p_train(rstate, batch, static)
      method.after_step(rstate, m, step)
      step_metrics.append(m)  # device arrays: no host sync inside the epoch
      step += 1
    return rstate, step_metrics

  def evaluate(self, state: TrainState, dataset=None) -> Dict[str, float]:
    """Test metrics of the unreplicated ``state``, one set per ``method.eval_variants()``.

    Returns:
      ``{'test_top1', 'test_loss', ['test_top5'], 'test_<eval_metrics key>'...}`` for the
      variant '' and the same keys prefixed ``'<variant>/'`` for the others.
    """
    dataset = self.test_ds if dataset is None else dataset
    out = {}
    for variant in self.method.eval_variants():
      vstate, inputs = self.method.before_eval(state, variant)
      sums = self._eval_sums(replicate(vstate), dataset, inputs)
      prefix = f'{variant}/' if variant else ''
      count = sums.pop('count')
      for k, v in sums.items():
        out[f'{prefix}test_{k}'] = v / count
    return out

  def _eval_rows(self, rows: int) -> int:
    """Padded size of an eval batch of ``rows`` rows: the full size, or for the last, partial
    batch of a single-process run the smallest ``full / 2^k`` (a multiple of the device count)
    that holds it, so that padding wastes at most half a batch of compute at the cost of one more
    compilation per size. Multi-process runs keep one size, so that every process runs the same
    collectives."""
    size = self.local_eval_rows
    if self.nproc > 1:
      return size
    while size % 2 == 0 and (size // 2) % self.ndev == 0 and size // 2 >= max(rows, 1):
      size //= 2
    return size

  def _eval_sums(self, rstate, dataset, inputs):
    p_eval = self.eval_step_fn()
    arrays, static = _split_inputs(inputs)
    sums = None
    for batch in dataset.batches(self.eval_batch_size, epoch=0, train=False, drop_remainder=False,
                                 process_index=jax.process_index(), process_count=self.nproc):
      b = shard(pad_batch(batch, self._eval_rows(len(batch['label']))), self.ndev)
      if arrays:
        b['method'] = _replicate_inputs(arrays, self.ndev)
      out = p_eval(rstate, b, static)
      sums = out if sums is None else jax.tree.map(jnp.add, sums, out)
    return {k: float(first_replica(v)) for k, v in sums.items()}


# ---------------------------------------------------------------------------------------------
# Run


def _to_py(x):
  if isinstance(x, (np.ndarray, jax.Array)):
    x = np.asarray(x)
    return x.item() if x.size == 1 else x.tolist()
  if isinstance(x, (np.floating, np.integer)):
    return x.item()
  if isinstance(x, dict):
    return {k: _to_py(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_to_py(v) for v in x]
  return x


def write_json(path: str, obj) -> None:
  """Writes ``obj`` as JSON atomically (temporary file + rename): never a half-written file."""
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    json.dump(_to_py(obj), f, indent=2, sort_keys=True, default=str)
  os.replace(tmp, path)


def read_metrics(workdir: str, upto_epoch: Optional[int] = None) -> List[Dict[str, Any]]:
  """The rows of ``workdir/metrics.jsonl`` (one dict per epoch), in order.

  For a staged run (:func:`run_stages`) the rows of every finished or started stage, each with a
  ``'stage'`` field. ``upto_epoch`` keeps the rows with ``epoch <= upto_epoch`` (single runs).
  """
  stages_path = os.path.join(workdir, 'stages.json')
  if os.path.exists(stages_path):
    with open(stages_path) as f:
      names = json.load(f)['stages']
    rows = []
    for name in names:
      for r in read_metrics(os.path.join(workdir, name)):
        rows.append(dict(r, stage=name))
    return rows
  rows = []
  path = os.path.join(workdir, 'metrics.jsonl')
  if os.path.exists(path):
    with open(path) as f:
      for line in f:
        line = line.strip()
        if line:
          row = json.loads(line)
          if upto_epoch is None or row.get('epoch', -1) <= upto_epoch:
            rows.append(row)
  return rows


def plot_metrics(rows, path: str, title: str = '') -> None:
  """Train loss, test top-1 and learning rate against epoch (matplotlib PNG)."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  if not rows:
    return
  ep = [r['epoch'] for r in rows]
  fig, ax = plt.subplots(1, 3, figsize=(12, 3.2))
  ax[0].plot(ep, [r['train_loss'] for r in rows])
  ax[0].set_title('train loss')
  if all('test_top1' in r for r in rows):
    ax[1].plot(ep, [r['test_top1'] for r in rows], label='test')
  if all('train_top1' in r for r in rows):
    ax[1].plot(ep, [r['train_top1'] for r in rows], label='train')
  ax[1].legend()
  ax[1].set_title('top-1')
  ax[2].plot(ep, [r['lr'] for r in rows])
  ax[2].set_title('learning rate')
  for a in ax:
    a.set_xlabel('epoch')
  fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def run(config, workdir: str, method: Optional[Method] = None, *,
        previous: Optional[str] = None) -> Dict[str, Any]:
  """Trains (or resumes) the experiment described by ``config`` in ``workdir``.

  The loop over :class:`Engine`: ``create_state``, then per epoch ``train_epoch``, ``evaluate``,
  a ``metrics.jsonl`` row, the best checkpoint by ``config.best_metric`` (default ``test_top1``)
  and the epoch checkpoint; at the end ``results.json`` (the method's ``results()`` and the
  fields its ``export()`` returns) and ``metrics.png``.

  Returns:
    the results dict also written to ``workdir/results.json``.
  Raises:
    UserError: bad config values, missing data, unknown model.
    FloatingPointError: the training loss became NaN/Inf (last good checkpoint kept).
    common.checkpoint.CheckpointError: an existing checkpoint cannot be restored.
  """
  method = method if method is not None else Method(config)
  maybe_initialize_distributed(config)
  os.makedirs(workdir, exist_ok=True)
  is_main = jax.process_index() == 0
  if config.num_epochs <= 0:
    raise UserError(f'num_epochs must be positive; got {config.num_epochs}')
  engine = Engine(config, method, workdir=workdir, previous=previous)
  state = engine.create_state()
  best_metric = str(config.get('best_metric', 'test_top1'))

  ckpt = ckpt_lib.Checkpointer(os.path.join(workdir, 'checkpoints'),
                               keep=int(config.get('keep_checkpoints', 2)))
  best_ckpt = ckpt_lib.Checkpointer(os.path.join(workdir, 'best'), keep=1)
  start_epoch, best_value, elapsed = 0, -math.inf, 0.0
  if ckpt.latest_step() is not None:
    state, meta = ckpt.restore(state)
    start_epoch = int(meta['epoch']) + 1
    best_value = float(meta.get('best_value', meta.get('best_top1', -math.inf)))
    elapsed = float(meta.get('seconds', 0.0))
    if is_main:
      print(f'resuming {workdir} from epoch {start_epoch}', flush=True)

  if is_main:
    with open(os.path.join(workdir, 'config.json'), 'w') as f:
      f.write(config.to_json_best_effort(indent=2, sort_keys=True))
  metrics_path = os.path.join(workdir, 'metrics.jsonl')
  rows = read_metrics(workdir, start_epoch - 1)
  if is_main:  # drop lines of an epoch that was logged but not checkpointed before a kill
    with open(metrics_path + '.tmp', 'w') as f:
      f.writelines(json.dumps(r) + '\n' for r in rows)
    os.replace(metrics_path + '.tmp', metrics_path)

  use_bar = bool(config.get('progress_bar', True)) and is_main
  saver = _Saver(background=engine.nproc == 1)
  try:
    for epoch in range(start_epoch, int(config.num_epochs)):
      t0 = time.time()
      state, train_m = engine.train_epoch(state, epoch, progress=use_bar)
      if not all(math.isfinite(v) for v in train_m.values()):
        raise FloatingPointError(
            f'non-finite training metrics at epoch {epoch}: {train_m}. Stopped; the last good '
            f'checkpoint in {workdir}/checkpoints is kept (lower the learning rate and rerun).')
      test_m = engine.evaluate(state)
      if best_metric not in test_m:
        raise UserError(f'best_metric={best_metric!r} is not an evaluation metric; '
                        f'available: {sorted(test_m)}')
      seconds = time.time() - t0
      elapsed += seconds
      row = {'epoch': epoch, 'lr': float(engine.schedule(epoch * engine.steps_per_epoch)),
             'train_loss': train_m.pop('loss')}
      if 'top1' in train_m:
        row['train_top1'] = train_m.pop('top1')
      row.update(test_m)
      row['seconds'] = seconds
      row.update(train_m)
      row.update(_to_py(method.epoch_end(state, epoch)))
      rows.append(row)
      value = float(test_m[best_metric])
      improved = value > best_value
      best_value = max(best_value, value)
      if is_main:
        with open(metrics_path, 'a') as f:
          f.write(json.dumps(_to_py(row)) + '\n')
        shown = ' '.join(f'{k[:-len("test_top1")] or ""}test {v:.4f}' for k, v in test_m.items()
                         if k.endswith('test_top1'))
        print(f'epoch {epoch + 1}/{config.num_epochs} loss {row["train_loss"]:.4f} '
              f'train {row.get("train_top1", float("nan")):.4f} {shown} ({seconds:.1f}s)',
              flush=True)
      meta = {'epoch': epoch, 'best_value': best_value, 'best_metric': best_metric,
              'seconds': elapsed}
      last = epoch == config.num_epochs - 1
      periodic = last or (epoch + 1) % max(int(config.get('checkpoint_every_epochs', 1)), 1) == 0
      if improved or periodic:
        # Host copies: the saves never see buffers a later step reuses, and multi-process orbax
        # cannot serialise process-local device arrays (every process holds the same values).
        saved = jax.tree.map(np.asarray, state)
        saver.submit(_save_epoch, ckpt, best_ckpt, epoch, saved, meta, improved, periodic)

    saver.wait()   # the final checkpoints exist before results.json says the run is finished
    if not rows:
      raise UserError(f'{workdir} holds a finished run with no metrics.jsonl; use a fresh '
                      f'--workdir')
    flops, nparams = method.flops_params(state)
    last_row = rows[-1]
    results = {'epochs': len(rows), 'params': nparams, 'flops': flops, 'seconds': elapsed,
               'method': method.name, 'model': config.model.name,
               'dataset': config.dataset.name, 'best_metric': best_metric,
               'best_value': max(r[best_metric] for r in rows)}
    if 'test_top1' in last_row:
      results.update(top1_best=max(r['test_top1'] for r in rows), top1_last=last_row['test_top1'])
    results['eval_last'] = {k: v for k, v in last_row.items() if 'test_' in k}
    results.update(_to_py(method.results(state)))
    if is_main:
      results.update(_to_py(method.export(state, workdir) or {}))
      write_json(os.path.join(workdir, 'results.json'), results)
      plot_metrics(rows, os.path.join(workdir, 'metrics.png'),
                   f'{method.name}: {config.model.name} on {config.dataset.name}')
  finally:
    saver.close()
    ckpt.close()
    best_ckpt.close()
  return results


def _save_epoch(ckpt, best_ckpt, epoch, saved, meta, improved: bool, periodic: bool) -> None:
  if improved:
    best_ckpt.save(epoch, {'params': saved.params, 'batch_stats': saved.batch_stats,
                           'extra': saved.extra}, meta)
  if periodic:
    ckpt.save(epoch, saved, meta)


class _Saver:
  """Runs epoch checkpoint saves on one background thread, so that they overlap the next
  epoch's steps instead of adding to its wall time (single-process runs; multi-process orbax
  saves synchronise all processes and stay on the main thread).

  At most one save is in flight: a new one first waits for the previous (and re-raises its
  error), so checkpoints are written in epoch order; ``close`` waits for the last. A kill during
  a save leaves an unfinished step that restore ignores (``common.checkpoint``), and the resumed
  run repeats the epochs after the last complete checkpoint.
  """

  def __init__(self, background: bool):
    self._pool = None
    if background:
      from concurrent.futures import ThreadPoolExecutor
      self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix='checkpoint')
    self._pending = None

  def submit(self, fn, *args) -> None:
    self.wait()
    if self._pool is None:
      fn(*args)
    else:
      self._pending = self._pool.submit(fn, *args)

  def wait(self) -> None:
    pending, self._pending = self._pending, None
    if pending is not None:
      pending.result()

  def close(self) -> None:
    try:
      self.wait()
    finally:
      if self._pool is not None:
        self._pool.shutdown(wait=True)


@dataclasses.dataclass
class Stage:
  """One stage of :func:`run_stages`: its name (the sub-directory), config and method factory.

  ``method`` is called with the stage's config; the method reads the previous stage's final state
  from ``self.info.previous`` (e.g. with :func:`load_state`) in ``init_variables`` /
  ``init_extra``.
  """
  name: str
  config: Any
  method: Callable[[Any], Method]


def run_stages(workdir: str, stages: Sequence[Stage]) -> Dict[str, Any]:
  """Runs ``stages`` in order, each as a :func:`run` in ``workdir/<stage name>``.

  A stage whose ``results.json`` exists is finished and skipped; a killed run resumes inside the
  stage where it stopped (from that stage's last epoch checkpoint). ``workdir/stages.json`` lists
  the stages (what :func:`read_metrics` reads), ``workdir/results.json`` holds every stage's
  results under ``'stages'`` and the last stage's fields at the top level.
  """
  names = [s.name for s in stages]
  if not stages or len(set(names)) != len(names):
    raise UserError(f'stages need unique names; got {names}')
  bad = [n for n in names if not n or os.sep in n or n in ('checkpoints', 'best')]
  if bad:
    raise UserError(f'stage names must be plain directory names; got {bad}')
  os.makedirs(workdir, exist_ok=True)
  if jax.process_index() == 0:
    write_json(os.path.join(workdir, 'stages.json'), {'stages': names})
  all_results, previous = {}, None
  for s in stages:
    sub = os.path.join(workdir, s.name)
    done = os.path.join(sub, 'results.json')
    if os.path.exists(done):
      with open(done) as f:
        res = json.load(f)
    else:
      res = run(s.config, sub, s.method(s.config), previous=previous)
    all_results[s.name] = res
    previous = sub
  out = dict(all_results[names[-1]], stages=all_results)
  if jax.process_index() == 0:
    write_json(os.path.join(workdir, 'results.json'), out)
  return out


def load_state(workdir: str, which: str = 'last') -> Dict[str, Any]:
  """``{'params', 'batch_stats', 'extra'}`` of a finished or running ``run`` workdir.

  Args:
    workdir: a :func:`run` directory (a stage's directory in a staged run).
    which: 'last' (the newest epoch checkpoint) or 'best' (the best by ``best_metric``).
  Raises:
    UserError: when no checkpoint exists there.
  """
  if which not in ('last', 'best'):
    raise UserError(f"which must be 'last' or 'best'; got {which!r}")
  d = os.path.join(os.path.abspath(workdir), 'checkpoints' if which == 'last' else 'best')
  if not (os.path.isdir(d) and any(n.isdigit() for n in os.listdir(d))):
    raise UserError(f'no {which} checkpoint in {workdir} (looked in {d})')
  c = ckpt_lib.Checkpointer(d)
  try:
    raw, _ = c.restore_raw()
  finally:
    c.close()
  return {'params': raw['params'], 'batch_stats': raw.get('batch_stats', {}),
          'extra': raw.get('extra', {})}


def load_variables(path: str, which: str = 'best') -> Dict[str, Any]:
  """Loads ``{'params', 'batch_stats'}`` from a finished ``common.train`` workdir.

  Args:
    path: a workdir (uses ``best/`` or ``checkpoints/``) or a checkpoints directory.
    which: 'best' (highest test top-1, what the repos save as model_best) or 'last'.
  Raises:
    UserError: when no checkpoint exists there.
  """
  path = os.path.abspath(path)
  candidates = ([os.path.join(path, 'best'), os.path.join(path, 'checkpoints')] if which == 'best'
                else [os.path.join(path, 'checkpoints')]) + [path]
  for d in candidates:
    if os.path.isdir(d) and any(n.isdigit() for n in os.listdir(d)):
      c = ckpt_lib.Checkpointer(d)
      try:
        raw, _ = c.restore_raw()
      finally:
        c.close()
      return {'params': raw['params'], 'batch_stats': raw.get('batch_stats', {})}
  raise UserError(f'no checkpoint found under {path} (looked in {candidates}); train one with '
                  f'`python -m common.train --config=... --workdir={path}`')


# ---------------------------------------------------------------------------------------------
# CLI


def config_error_line(e: Exception) -> str:
  """One readable line for an ``ml_collections`` override error (mistyped key or bad value).

  ``--config.optimizer.learnin_rate=0.1`` gives
  ``unknown config key optimizer.learnin_rate (did you mean learning_rate?)``.
  """
  msg = str(e)
  args = getattr(e, 'args', ())
  if isinstance(e, (AttributeError, KeyError)) or 'Did you mean' in msg:
    key = None
    for a in sys.argv[1:]:
      if a.startswith('--config.'):
        key = a[len('--config.'):].split('=', 1)[0]
        if _config_key_missing(key):
          break
        key = None
    if key is not None:
      parts = key.split('.')
      # The first component that does not exist is the mistyped one.
      i = next((j for j in range(len(parts))
                if _config_key_missing('.'.join(parts[:j + 1]))), len(parts) - 1)
      leaf, parent = parts[i], '.'.join(parts[:i])
      choices = _config_children(parent)
      close = difflib.get_close_matches(leaf, choices, n=1)
      hint = f' (did you mean {close[0]}?)' if close else (
          f' (keys of {parent or "config"}: {", ".join(sorted(choices))})' if choices else '')
      return f'unknown config key {key}{hint}'
  first = (args[0] if args and isinstance(args[0], str) else msg).strip().splitlines()
  return f'{type(e).__name__}: {first[0] if first else type(e).__name__}'


_CONFIG_FOR_ERRORS: List[Any] = []


def _config_children(path: str):
  if not _CONFIG_FOR_ERRORS:
    return []
  node = _CONFIG_FOR_ERRORS[0]
  for part in [p for p in path.split('.') if p]:
    try:
      node = node[part]
    except (KeyError, TypeError, AttributeError):
      return []
  return list(node.keys()) if hasattr(node, 'keys') else []


def _config_key_missing(key: str) -> bool:
  if not _CONFIG_FOR_ERRORS:
    return True
  node = _CONFIG_FOR_ERRORS[0]
  for part in key.split('.'):
    if not hasattr(node, 'keys') or part not in node.keys():
      return True
    node = node[part]
  return False


def _load_config_file(path: str):
  """The config a ``--config=path[:args]`` flag names, for error messages only (None if unread)."""
  import importlib.util
  file_, _, arg = path.partition(':')
  try:
    spec = importlib.util.spec_from_file_location('_config_for_errors', file_)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg) if arg else module.get_config()
  except Exception:  # pylint: disable=broad-except
    return None


def cli(method_cls=Method, default_config: str = 'common/configs/resnet20_digits.py',
        runner: Optional[Callable[[Any, str], Dict[str, Any]]] = None):
  """Returns an absl ``main`` that runs ``method_cls`` with ``--config`` and ``--workdir``.

  ``runner(config, workdir) -> results`` replaces ``run(config, workdir, method_cls(config))``
  for a method that trains in several stages (e.g. one :func:`run_stages` call).

  Bad input (unknown config key or value, missing data, unreadable checkpoint, NaN loss) prints one
  line ``error: ...`` on stderr and exits with status 2 (1 for a NaN stop).
  """
  from absl import app, flags
  from ml_collections import config_flags

  flags_ = flags.FLAGS
  if 'config' not in flags_:
    config_flags.DEFINE_config_file('config', default_config, 'experiment config file',
                                    lock_config=True)
    flags.DEFINE_string('workdir', None, 'output directory (resumes if it holds a run)')
    flags.mark_flags_as_required(['workdir'])

  def main(argv):
    from absl import logging
    logging.set_verbosity(logging.WARNING)   # orbax logs every save at INFO
    if len(argv) > 1:
      raise app.UsageError(f'unexpected arguments: {argv[1:]}')
    config = flags_.config
    try:
      if runner is not None:
        results = runner(config, flags_.workdir)
      else:
        results = run(config, flags_.workdir, method_cls(config))
    except (UserError, ckpt_lib.CheckpointError) as e:
      print(f'error: {e}', file=sys.stderr)
      sys.exit(2)
    except FloatingPointError as e:
      print(f'error: {e}', file=sys.stderr)
      sys.exit(1)
    shown = ('top1_best', 'top1_last', 'params', 'flops', 'best_metric', 'best_value')
    print(json.dumps({k: results[k] for k in shown if k in results}))

  def entry():
    try:
      app.run(main)
    except SystemExit:
      raise
    except Exception as e:  # config_flags errors surface here before main runs
      cfg_arg = next((a.split('=', 1)[1] for a in sys.argv[1:] if a.startswith('--config=')),
                     default_config)
      cfg = _load_config_file(cfg_arg)
      _CONFIG_FOR_ERRORS[:] = [cfg] if cfg is not None else []
      print(f'error: {config_error_line(e)}', file=sys.stderr)
      sys.exit(2)

  return entry


if __name__ == '__main__':
  cli(Method)()
