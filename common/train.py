"""The training engine every paper plugs into, and the dense-baseline trainer.

  python -m common.train --config=common/configs/resnet20_digits.py --workdir=runs/r20 \
      [--config.num_epochs=30 --config.optimizer.learning_rate=0.05 ...]

A paper supplies a :class:`Method` subclass: its model, the transform of the parameters the network
computes with (masks, fused filters, binarized weights), its loss, its per-step and per-epoch
hooks, and the fields it reports. The engine owns everything else: data, pmap over local devices
(``lax.pmean`` of gradients, metrics and BN statistics), optax SGD/Adam with coupled weight decay
(``common.schedules``), orbax checkpoints with resume from ``--workdir``, a progress bar,
``metrics.jsonl`` / ``results.json`` / ``metrics.png``, and a NaN guard that stops the run before a
bad state is saved.

Config layout (``common/configs/base.py``): ``seed``, ``num_epochs``, ``label_smoothing``,
``init_checkpoint``, ``dataset.{name, data_dir, batch_size, eval_batch_size, normalization,
augment}``, ``model.{name, num_classes, widths, kwargs}``, ``optimizer.{name, learning_rate,
momentum, nesterov, weight_decay}``, ``schedule.{name, milestones, gamma, cosine_shift, warmup,
warmup_epochs}``, ``checkpoint_every_epochs``, ``keep_checkpoints``, ``progress_bar``,
``distributed.*``, ``method`` (the paper's own fields).

Determinism: the data order is a function of (seed, epoch), the step RNG of (seed, step, device),
and checkpoints are taken at epoch boundaries, so a killed-and-resumed run reproduces an
uninterrupted one.
"""
from __future__ import annotations

import functools
import json
import math
import os
import sys
import time
from typing import Any, Dict, Optional, Tuple

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import jax_utils

from common import checkpoint as ckpt_lib
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
    opt_state: optax state.
    extra: method-owned, never trained: masks, scores, per-epoch scalars (tau, temperature, ...)
      kept as arrays so that changing them never recompiles the step.
    rng: PRNG key data (uint32[2]) of the run.
  """
  step: Array
  params: Any
  batch_stats: Any
  opt_state: Any
  extra: Any
  rng: Array


def cross_entropy(logits: Array, labels: Array, label_smoothing: float = 0.0) -> Array:
  """Mean softmax cross-entropy over the batch; ``logits [B, K]``, integer ``labels [B]``."""
  k = logits.shape[-1]
  onehot = jax.nn.one_hot(labels, k, dtype=logits.dtype)
  if label_smoothing:
    onehot = onehot * (1 - label_smoothing) + label_smoothing / k
  return jnp.mean(optax.softmax_cross_entropy(logits, onehot))


class Method:
  """Hooks of a compression method; every default is plain dense supervised training.

  Subclass and override what the paper changes. Hooks marked *pure* run inside the jitted,
  pmapped step and must be functions of their arguments; *host* hooks run between epochs.
  """

  name = 'dense'

  def __init__(self, config):
    self.config = config
    self.num_classes = None  # set by the engine from the dataset before build_model

  def choice(self, key: str, default: str, allowed) -> str:
    """``config.method[key]`` (``default`` when unset), checked against ``allowed``.

    Raises:
      UserError: naming the key, the allowed values and the value given.
    """
    value = self.config.get('method', {}).get(key, default)
    if value not in allowed:
      raise UserError(f'method.{key} must be one of {list(allowed)}; got {value!r}')
    return value

  # --- model and variables -------------------------------------------------------------------
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

  # --- pure hooks (inside the step) ----------------------------------------------------------
  def effective_params(self, params, extra):
    """*Pure*. The parameters the network computes with (default: ``params``)."""
    return params

  def forward(self, model, params, batch_stats, extra, images, train: bool, rng):
    """*Pure*. Returns ``(logits [B, K], new_batch_stats, aux: dict)``."""
    variables = {'params': self.effective_params(params, extra), 'batch_stats': batch_stats}
    if train:
      logits, mutated = model.apply(variables, images, train=True, mutable=['batch_stats'],
                                    rngs={'dropout': rng})
      return logits, mutated.get('batch_stats', batch_stats), {}
    return model.apply(variables, images, train=False), batch_stats, {}

  def loss(self, logits, labels, aux, params, extra) -> Tuple[Array, Dict[str, Array]]:
    """*Pure*. ``(scalar loss, metrics)``; default cross-entropy with label smoothing."""
    return cross_entropy(logits, labels, self.config.get('label_smoothing', 0.0)), {}

  def trainable_mask(self, params):
    """Bool pytree like ``params`` (False = frozen) or None (all trained)."""
    return None

  def decay_mask(self, params):
    """Bool pytree like ``params`` (True = L2-decayed) or None (all decayed, as PyTorch SGD)."""
    return None

  def post_step(self, params, extra, step):
    """*Pure*. Runs after each optimizer update (projections, score re-derivation)."""
    return params, extra

  # --- host hooks ----------------------------------------------------------------------------
  def epoch_start(self, state: TrainState, epoch: int) -> TrainState:
    """*Host*. Before the steps of ``epoch`` (also the first epoch after a resume)."""
    return state

  def epoch_end(self, state: TrainState, epoch: int) -> Dict[str, Any]:
    """*Host*. Extra JSON fields for this epoch's line of ``metrics.jsonl``."""
    return {}

  def results(self, state: TrainState) -> Dict[str, Any]:
    """*Host*. Method fields for ``results.json`` (sparsity, compact FLOPs, bits, ...)."""
    return {}

  def flops_params(self, state: TrainState) -> Tuple[Optional[int], Optional[int]]:
    """FLOPs and params of the network that runs (thop convention, ``common.flops``)."""
    try:
      from common import flops
    except ImportError:
      return None, None
    hw = tuple(self._image_shape[:2]) if getattr(self, '_image_shape', None) else (32, 32)
    f, p, _ = flops.count(self.config.model.name, widths=self.config.model.widths, input_hw=hw,
                          num_classes=self.num_classes, **self.model_kwargs())
    return int(f), int(p)

  def export(self, state: TrainState, workdir: str) -> None:
    """*Host*. Optional artifacts after training (compact model, plots)."""


# ---------------------------------------------------------------------------------------------
# Steps


def make_train_step(method: Method, model: nn.Module, tx: optax.GradientTransformation,
                    axis_name: Optional[str] = 'batch'):
  """The per-device train step ``(state, batch) -> (state, metrics)`` (pmapped by the caller).

  Gradients, BN statistics and metrics are averaged over ``axis_name`` (``lax.pmean``), the
  flax-examples recipe; with ``axis_name=None`` it is a single-device step.
  """

  def pmean(x):
    return jax.lax.pmean(x, axis_name) if axis_name else x

  def step_fn(state: TrainState, batch):
    rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
    if axis_name:
      rng = jax.random.fold_in(rng, jax.lax.axis_index(axis_name))

    def loss_fn(params):
      logits, new_bs, aux = method.forward(model, params, state.batch_stats, state.extra,
                                           batch['image'], True, rng)
      loss, metrics = method.loss(logits, batch['label'], aux, params, state.extra)
      return loss, (new_bs, metrics, logits)

    (loss, (new_bs, metrics, logits)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params)
    grads = pmean(grads)
    new_bs = pmean(new_bs)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    params, extra = method.post_step(params, state.extra, state.step)
    correct = jnp.mean((jnp.argmax(logits, -1) == batch['label']).astype(jnp.float32))
    metrics = dict(metrics, loss=loss, top1=correct)
    metrics = pmean(metrics)
    new_state = state.replace(step=state.step + 1, params=params, batch_stats=new_bs,
                              opt_state=opt_state, extra=extra)
    return new_state, metrics

  return step_fn


def make_eval_step(method: Method, model: nn.Module, axis_name: Optional[str] = 'batch'):
  """Per-device eval step: sums of correct predictions, loss and example weights (padding = 0)."""

  def psum(x):
    return jax.lax.psum(x, axis_name) if axis_name else x

  def step_fn(state: TrainState, batch):
    logits, _, _ = method.forward(model, state.params, state.batch_stats, state.extra,
                                  batch['image'], False, jax.random.wrap_key_data(state.rng))
    w = batch['weight']
    labels = batch['label']
    logp = jax.nn.log_softmax(logits.astype(jnp.float32))
    nll = -jnp.take_along_axis(logp, labels[:, None], axis=-1)[:, 0]
    correct = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
    return psum({'correct': jnp.sum(correct * w), 'loss': jnp.sum(nll * w), 'count': jnp.sum(w)})

  return step_fn


def first_replica(x):
  """Host copy of the first local replica of a pmapped output.

  Works for multi-process pmap too, where outputs span devices of other processes and cannot be
  converted with ``np.asarray`` (that would block on data this process cannot address).
  """
  if isinstance(x, jax.Array):
    return np.asarray(x.addressable_shards[0].data)[0]
  return np.asarray(x)[0]


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


def _write_json(path: str, obj) -> None:
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    json.dump(_to_py(obj), f, indent=2, sort_keys=True, default=str)
  os.replace(tmp, path)


def _read_metrics(path: str, upto_epoch: int):
  rows = []
  if os.path.exists(path):
    with open(path) as f:
      for line in f:
        line = line.strip()
        if line:
          row = json.loads(line)
          if row.get('epoch', -1) <= upto_epoch:
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
  ax[1].plot(ep, [r['test_top1'] for r in rows], label='test')
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
  if split != 'train' or not ds_cfg.get('augment', True):
    kwargs['augment'] = split == 'train' and ds_cfg.get('augment', True)
  opts = ds_cfg.get('options', None)
  # Per-data-set options of common.data.load (e.g. ImageNet crop_scale=(0.08, 1.25), lighting=0.1
  # for ReCU/1xN; CIFAR pad_mode), set by the paper configs.
  kwargs.update(opts.to_dict() if hasattr(opts, 'to_dict') else dict(opts or {}))
  try:
    return data.load(ds_cfg.name, split, data_dir=ds_cfg.get('data_dir', '') or None,
                     seed=config.seed, **kwargs)
  except (FileNotFoundError, ValueError, KeyError) as e:
    raise UserError(str(e)) from e


def run(config, workdir: str, method: Optional[Method] = None) -> Dict[str, Any]:
  """Trains (or resumes) the experiment described by ``config`` in ``workdir``.

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

  train_ds = load_dataset(config, 'train')
  test_ds = load_dataset(config, 'test')
  ndev = jax.local_device_count()
  nproc = jax.process_count()
  gbs = int(config.dataset.batch_size)
  if gbs <= 0 or gbs % (ndev * nproc):
    raise UserError(f'dataset.batch_size={gbs} must be a positive multiple of the number of '
                    f'devices ({ndev * nproc} = {nproc} hosts x {ndev} local devices)')
  steps_per_epoch = train_ds.steps_per_epoch(gbs, drop_remainder=True)
  if steps_per_epoch <= 0:
    raise UserError(f'dataset.batch_size={gbs} exceeds the {train_ds.num_examples} training '
                    f'examples of {config.dataset.name!r}')

  nc = int(config.model.num_classes)
  method.num_classes = train_ds.num_classes if nc <= 0 else nc
  method._image_shape = tuple(train_ds.image_shape)
  try:
    model = method.build_model()
  except (KeyError, ValueError, TypeError) as e:
    raise UserError(f'cannot build model {config.model.name!r}: {e}') from e

  root = jax.random.PRNGKey(config.seed)
  init_rng, extra_rng, run_rng = jax.random.split(root, 3)
  sample = jnp.zeros((1,) + tuple(train_ds.image_shape), jnp.float32)
  variables = method.init_variables(model, init_rng, sample)
  params, batch_stats = variables['params'], variables.get('batch_stats', {})
  extra = method.init_extra(params, batch_stats, extra_rng)

  schedule = schedules.make_schedule(config.schedule, float(config.optimizer.learning_rate),
                                     int(config.num_epochs), steps_per_epoch)
  tx = schedules.make_optimizer(config.optimizer, schedule, method.decay_mask(params),
                                method.trainable_mask(params))
  state = TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats,
                     opt_state=tx.init(params), extra=extra,
                     rng=run_rng)

  ckpt = ckpt_lib.Checkpointer(os.path.join(workdir, 'checkpoints'),
                               keep=int(config.get('keep_checkpoints', 2)))
  best_ckpt = ckpt_lib.Checkpointer(os.path.join(workdir, 'best'), keep=1)
  start_epoch, best_top1, elapsed = 0, -1.0, 0.0
  if ckpt.latest_step() is not None:
    state, meta = ckpt.restore(state)
    start_epoch = int(meta['epoch']) + 1
    best_top1 = float(meta['best_top1'])
    elapsed = float(meta.get('seconds', 0.0))
    if is_main:
      print(f'resuming {workdir} from epoch {start_epoch}', flush=True)

  if is_main:
    with open(os.path.join(workdir, 'config.json'), 'w') as f:
      f.write(config.to_json_best_effort(indent=2, sort_keys=True))
  metrics_path = os.path.join(workdir, 'metrics.jsonl')
  rows = _read_metrics(metrics_path, start_epoch - 1)
  if is_main:  # drop lines of an epoch that was logged but not checkpointed before a kill
    with open(metrics_path, 'w') as f:
      f.writelines(json.dumps(r) + '\n' for r in rows)

  p_train = jax.pmap(make_train_step(method, model, tx), axis_name='batch', donate_argnums=(0,))
  p_eval = jax.pmap(make_eval_step(method, model), axis_name='batch')
  ebs = int(config.dataset.eval_batch_size)
  if ebs <= 0 or ebs % nproc:
    raise UserError(f'dataset.eval_batch_size={ebs} must be a positive multiple of the number of '
                    f'processes ({nproc})')
  local_eval_rows = -(-(ebs // nproc) // ndev) * ndev

  def evaluate(rstate):
    sums = None
    for batch in test_ds.batches(ebs, epoch=0, train=False, drop_remainder=False,
                                 process_index=jax.process_index(), process_count=nproc):
      out = p_eval(rstate, shard(pad_batch(batch, local_eval_rows), ndev))
      sums = out if sums is None else jax.tree.map(jnp.add, sums, out)
    sums = jax.tree.map(lambda x: float(first_replica(x)), sums)
    return sums['correct'] / sums['count'], sums['loss'] / sums['count']

  use_bar = bool(config.get('progress_bar', True)) and is_main
  top1 = float('nan')
  for epoch in range(start_epoch, int(config.num_epochs)):
    t0 = time.time()
    state = method.epoch_start(state, epoch)
    rstate = jax_utils.replicate(state)
    step_metrics = []
    batches = train_ds.batches(gbs, epoch=epoch, train=True, drop_remainder=True,
                               process_index=jax.process_index(), process_count=nproc)
    if use_bar:
      from tqdm import tqdm
      batches = tqdm(batches, total=steps_per_epoch, desc=f'epoch {epoch + 1}/{config.num_epochs}',
                     leave=False, dynamic_ncols=True, file=sys.stderr)
    for batch in batches:
      rstate, m = p_train(rstate, shard(batch, ndev))
      step_metrics.append(m)  # device arrays: no host sync inside the epoch
    train_m = jax.tree.map(lambda *xs: float(np.mean([first_replica(x) for x in xs])),
                           *step_metrics)
    if not all(math.isfinite(v) for v in train_m.values()):
      ckpt.close()
      best_ckpt.close()
      raise FloatingPointError(
          f'non-finite training metrics at epoch {epoch}: {train_m}. Stopped; the last good '
          f'checkpoint in {workdir}/checkpoints is kept (lower the learning rate and rerun).')
    top1, test_loss = evaluate(rstate)
    state = unreplicate(rstate)
    seconds = time.time() - t0
    elapsed += seconds
    row = {'epoch': epoch, 'lr': float(schedule(epoch * steps_per_epoch)),
           'train_loss': train_m.pop('loss'), 'train_top1': train_m.pop('top1'),
           'test_top1': top1, 'test_loss': test_loss, 'seconds': seconds}
    row.update(train_m)
    row.update(_to_py(method.epoch_end(state, epoch)))
    rows.append(row)
    improved = top1 > best_top1
    best_top1 = max(best_top1, top1)
    if is_main:
      with open(metrics_path, 'a') as f:
        f.write(json.dumps(_to_py(row)) + '\n')
      print(f'epoch {epoch + 1}/{config.num_epochs} loss {row["train_loss"]:.4f} '
            f'train {row["train_top1"]:.4f} test {top1:.4f} ({seconds:.1f}s)', flush=True)
    meta = {'epoch': epoch, 'best_top1': best_top1, 'seconds': elapsed}
    # Multi-process: orbax cannot serialise process-local device arrays; every process holds the
    # same replicated values, so save host copies (orbax writes them from the primary process).
    saved = jax.tree.map(np.asarray, state) if nproc > 1 else state
    if improved:
      best_ckpt.save(epoch, {'params': saved.params, 'batch_stats': saved.batch_stats,
                             'extra': saved.extra}, meta)
    last = epoch == config.num_epochs - 1
    if last or (epoch + 1) % max(int(config.get('checkpoint_every_epochs', 1)), 1) == 0:
      ckpt.save(epoch, saved, meta)

  if not rows:
    raise UserError(f'{workdir} holds a finished run with no metrics.jsonl; use a fresh --workdir')
  flops, nparams = method.flops_params(state)
  results = {'top1_best': max(r['test_top1'] for r in rows), 'top1_last': rows[-1]['test_top1'],
             'epochs': len(rows), 'params': nparams, 'flops': flops, 'seconds': elapsed,
             'method': method.name, 'model': config.model.name, 'dataset': config.dataset.name}
  results.update(_to_py(method.results(state)))
  if is_main:
    _write_json(os.path.join(workdir, 'results.json'), results)
    plot_metrics(rows, os.path.join(workdir, 'metrics.png'),
                 f'{method.name}: {config.model.name} on {config.dataset.name}')
    method.export(state, workdir)
  ckpt.close()
  best_ckpt.close()
  return results


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
      raw, _ = ckpt_lib.Checkpointer(d).restore_raw()
      return {'params': raw['params'], 'batch_stats': raw.get('batch_stats', {})}
  raise UserError(f'no checkpoint found under {path} (looked in {candidates}); train one with '
                  f'`python -m common.train --config=... --workdir={path}`')


# ---------------------------------------------------------------------------------------------
# CLI


def cli(method_cls=Method, default_config: str = 'common/configs/resnet20_digits.py'):
  """Returns an absl ``main`` that runs ``method_cls`` with ``--config`` and ``--workdir``.

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
      results = run(config, flags_.workdir, method_cls(config))
    except (UserError, ckpt_lib.CheckpointError) as e:
      print(f'error: {e}', file=sys.stderr)
      sys.exit(2)
    except FloatingPointError as e:
      print(f'error: {e}', file=sys.stderr)
      sys.exit(1)
    print(json.dumps({k: results[k] for k in ('top1_best', 'top1_last', 'params', 'flops')}))

  def entry():
    try:
      app.run(main)
    except SystemExit:
      raise
    except Exception as e:  # config_flags errors surface here before main runs
      print(f'error: {type(e).__name__}: {e}', file=sys.stderr)
      sys.exit(2)

  return entry


if __name__ == '__main__':
  cli(Method)()
