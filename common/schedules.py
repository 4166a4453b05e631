"""Learning-rate schedules exactly as the official repositories compute them, and the optimizer.

The repos step their schedulers once per *epoch*, so every schedule here is piecewise constant per
epoch (the repos call ``scheduler.step()`` once per epoch; a per-step cosine would be another schedule); only the linear warm-up of
DCFF / 1xN is per iteration. A schedule is an optax-style function ``step -> lr`` built from the
number of steps per epoch, so it runs inside the jitted step without host syncs.

Config fields (``config.schedule``):
  name: 'constant' | 'multistep' | 'cosine' | 'imagenet_step'
  milestones, gamma: multistep epochs and factor (PyTorch ``MultiStepLR``).
  cosine_shift: s in ``lr(e) = lr0/2 * (1 + cos(pi (e - s) / (E - s)))`` (1xN/DCFF use s=5 with
    their warm-up, ReCU/SiMaN use s=4 with theirs, plain cosine s=0).
  warmup: 'none' | 'per_step' | 'per_epoch'
    per_step  (DCFF, 1xN):  for e < W, lr *= (1 + step) / (W * iters), step = global iteration.
    per_epoch (ReCU, SiMaN): for e < W, lr = lr0 * (e + 1) / W.
  warmup_epochs: W.
  t_max, eta_min: 'cosine_periodic' only (per *iteration*, not per epoch): PyTorch's
    ``CosineAnnealingLR(T_max, eta_min)`` stepped once per iteration,
    ``lr(t) = eta_min + (lr0 - eta_min) (1 + cos(pi t / T_max)) / 2`` for every t, also past
    T_max, where it keeps following the cosine with period 2 T_max (it does not restart). FDDA's
    student (zysxmu/FDDA ``main_DBNS_CBNS.py``: T_max 20,000 iterations over 70,000 steps).
"""
from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp
import optax

SCHEDULES = ('constant', 'multistep', 'cosine', 'imagenet_step', 'cosine_periodic')
WARMUPS = ('none', 'per_step', 'per_epoch')


def epoch_lr(epoch, lr0: float, num_epochs: int, name: str, *, milestones=(), gamma: float = 0.1,
             cosine_shift: int = 0):
  """The per-epoch learning rate before warm-up (works on python ints and jnp arrays).

  Args:
    epoch: integer epoch index e (0-based).
    lr0: base learning rate.
    num_epochs: E.
    name: schedule name, see module docstring.
  Returns:
    lr(e), a scalar of the input's kind.
  """
  xp = jnp if not isinstance(epoch, (int, float)) else math
  if name == 'constant':
    return lr0 * (epoch * 0 + 1)
  if name == 'multistep':
    count = sum((epoch >= m) * 1 for m in milestones) if milestones else epoch * 0
    return lr0 * gamma ** count
  if name == 'cosine':
    denom = max(num_epochs - cosine_shift, 1)
    return 0.5 * lr0 * (1 + xp.cos(math.pi * (epoch - cosine_shift) / denom))
  if name == 'imagenet_step':
    # ImageNet rule of the DCFF / White-Box code: 0.1 ** (e // 30), one more factor from epoch 80.
    return lr0 * 0.1 ** (epoch // 30 + (epoch >= 80) * 1)
  raise ValueError(f'unknown schedule {name!r}; allowed: {list(SCHEDULES)}')


def make_schedule(sched_cfg, lr0: float, num_epochs: int, steps_per_epoch: int) -> Callable:
  """Builds ``step -> lr`` from ``config.schedule`` (see module docstring for the formulas)."""
  name = sched_cfg.name
  warmup = sched_cfg.get('warmup', 'none')
  w = int(sched_cfg.get('warmup_epochs', 0))
  if name not in SCHEDULES:
    raise ValueError(f'unknown schedule {name!r}; allowed: {list(SCHEDULES)}')
  if warmup not in WARMUPS:
    raise ValueError(f'unknown warmup {warmup!r}; allowed: {list(WARMUPS)}')
  if steps_per_epoch <= 0:
    raise ValueError(f'steps_per_epoch must be positive; got {steps_per_epoch}')
  milestones = tuple(int(m) for m in sched_cfg.get('milestones', ()) or ())
  gamma = float(sched_cfg.get('gamma', 0.1))
  shift = int(sched_cfg.get('cosine_shift', 0))

  if name == 'cosine_periodic':
    return periodic_cosine(lr0, int(sched_cfg.get('t_max', 0)),
                           float(sched_cfg.get('eta_min', 0.0)))

  def schedule(step):
    step = jnp.asarray(step)
    epoch = step // steps_per_epoch
    lr = epoch_lr(epoch, lr0, num_epochs, name, milestones=milestones, gamma=gamma,
                  cosine_shift=shift)
    if warmup == 'per_step' and w > 0:
      lr = jnp.where(epoch < w, lr * (1.0 + step) / (w * steps_per_epoch), lr)
    elif warmup == 'per_epoch' and w > 0:
      lr = jnp.where(epoch < w, lr0 * (epoch + 1.0) / w, lr)
    return jnp.asarray(lr, jnp.float32)

  return schedule


def periodic_cosine(lr0: float, t_max: int, eta_min: float = 0.0) -> Callable:
  """``step -> lr`` of PyTorch's ``CosineAnnealingLR`` stepped per iteration, past ``t_max`` too.

  ``lr(t) = eta_min + (lr0 - eta_min) * (1 + cos(pi * t / t_max)) / 2``: the closed form of
  ``torch.optim.lr_scheduler.CosineAnnealingLR``; its recursive update follows the same curve when
  ``t`` exceeds ``t_max`` (back up to ``lr0`` at ``2 t_max``), it never restarts.

  Raises:
    ValueError: ``t_max`` not positive.
  """
  if t_max <= 0:
    raise ValueError(f'schedule.t_max must be a positive number of iterations; got {t_max}')

  def schedule(step):
    t = jnp.asarray(step, jnp.float32)
    return jnp.asarray(eta_min + (lr0 - eta_min) * 0.5 * (1 + jnp.cos(jnp.pi * t / t_max)),
                       jnp.float32)

  return schedule


def make_optimizer(opt_cfg, schedule: Callable, decay_mask=None, trainable_mask=None):
  """SGD / Adam with *coupled* L2 weight decay, as ``torch.optim`` does.

  ``d = g + wd * p; buf = m * buf + d; p -= lr * buf`` is ``chain(add_decayed_weights(wd), sgd)``.

  Args:
    opt_cfg: ``config.optimizer`` with name ('sgd' | 'adam'), momentum, nesterov, weight_decay,
      and for adam b1, b2, eps.
    schedule: ``step -> lr``.
    decay_mask: bool pytree (True = decayed) or None (decay everything).
    trainable_mask: bool pytree (False = frozen: zero update, no optimizer state) or None.
  Returns:
    an ``optax.GradientTransformation``.
  """
  name = opt_cfg.name
  wd = float(opt_cfg.get('weight_decay', 0.0))
  if wd < 0:
    raise ValueError(f'weight_decay must be >= 0; got {wd}')
  parts = []
  if wd > 0:
    parts.append(optax.add_decayed_weights(wd, mask=decay_mask))
  if name == 'sgd':
    momentum = float(opt_cfg.get('momentum', 0.0))
    parts.append(optax.sgd(schedule, momentum=momentum or None,
                           nesterov=bool(opt_cfg.get('nesterov', False))))
  elif name == 'adam':
    parts.append(optax.adam(schedule, b1=float(opt_cfg.get('b1', 0.9)),
                            b2=float(opt_cfg.get('b2', 0.999)), eps=float(opt_cfg.get('eps', 1e-8))))
  else:
    raise ValueError(f"unknown optimizer {name!r}; allowed: ['sgd', 'adam']")
  tx = optax.chain(*parts)
  if trainable_mask is not None:
    labels = jax.tree.map(lambda t: 'train' if t else 'freeze', trainable_mask)
    tx = optax.multi_transform({'train': tx, 'freeze': optax.set_to_zero()}, labels)
  return tx

