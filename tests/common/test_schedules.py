"""Schedules and optimizer against the repos' closed forms (torch.optim.lr_scheduler and the repos' adjust_learning_rate functions)."""
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from common import schedules


def cfg(**kw):
  c = ml_collections.ConfigDict(dict(name='cosine', milestones=(), gamma=0.1, cosine_shift=0,
                                     warmup='none', warmup_epochs=0))
  c.update(kw)
  return c


def test_multistep_dcff_cifar():
  s = schedules.make_schedule(cfg(name='multistep', milestones=(150, 225)), 0.1, 300, 10)
  for e, want in [(0, 0.1), (149, 0.1), (150, 0.01), (224, 0.01), (225, 0.001), (299, 0.001)]:
    assert math.isclose(float(s(e * 10 + 3)), want, rel_tol=1e-6), e


def test_imagenet_step_rule():
  s = schedules.make_schedule(cfg(name='imagenet_step'), 0.1, 90, 7)
  for e, want in [(0, 0.1), (29, 0.1), (30, 0.01), (59, 0.01), (60, 1e-3), (79, 1e-3), (80, 1e-4),
                  (89, 1e-4)]:
    assert math.isclose(float(s(e * 7)), want, rel_tol=1e-5), e


def test_cosine_per_epoch_piecewise_constant():
  e_total, iters = 20, 5
  s = schedules.make_schedule(cfg(), 0.1, e_total, iters)
  for e in range(e_total):
    want = 0.5 * 0.1 * (1 + math.cos(math.pi * e / e_total))
    vals = [float(s(e * iters + i)) for i in range(iters)]
    np.testing.assert_allclose(vals, want, rtol=1e-5)


def test_recu_warmup_per_epoch_then_shifted_cosine():
  # ReCU / SiMaN warm-up then cosine: lr = lr0 (e+1)/5 for e < 5, then 0.5 lr0 (1 + cos(pi (e-4)/(E-4))).
  e_total = 12
  s = schedules.make_schedule(cfg(warmup='per_epoch', warmup_epochs=5, cosine_shift=4), 0.1,
                              e_total, 3)
  for e in range(e_total):
    want = 0.1 * (e + 1) / 5 if e < 5 else 0.05 * (1 + math.cos(math.pi * (e - 4) / (e_total - 4)))
    assert math.isclose(float(s(e * 3 + 1)), want, rel_tol=1e-5), e


def test_onexn_warmup_per_step():
  # lmbxmu/1xN: cosine 0.5 lr (1 + cos(pi (e-5)/(E-5))) per epoch, times (1+step+e*iters)/(5*iters).
  e_total, iters, lr0 = 10, 4, 0.01
  s = schedules.make_schedule(cfg(warmup='per_step', warmup_epochs=5, cosine_shift=5), lr0,
                              e_total, iters)
  for e in range(e_total):
    for i in range(iters):
      base = 0.5 * lr0 * (1 + math.cos(math.pi * (e - 5) / (e_total - 5)))
      want = base * (1 + i + e * iters) / (5 * iters) if e < 5 else base
      assert math.isclose(float(s(e * iters + i)), want, rel_tol=1e-5), (e, i)


def test_bad_names():
  with pytest.raises(ValueError, match='unknown schedule'):
    schedules.make_schedule(cfg(name='poly'), 0.1, 10, 1)
  with pytest.raises(ValueError, match='unknown warmup'):
    schedules.make_schedule(cfg(warmup='linear'), 0.1, 10, 1)


def test_sgd_coupled_weight_decay_matches_torch_formula():
  opt = ml_collections.ConfigDict(dict(name='sgd', momentum=0.9, nesterov=False, weight_decay=0.1))
  tx = schedules.make_optimizer(opt, lambda step: 0.5)
  p = {'w': jnp.array([1.0, -2.0])}
  state = tx.init(p)
  buf = np.zeros(2)
  pn = np.array([1.0, -2.0])
  for g in ([0.3, 0.1], [-0.2, 0.4]):
    upd, state = tx.update({'w': jnp.array(g)}, state, p)
    p = jax.tree.map(lambda a, b: a + b, p, upd)
    d = np.array(g) + 0.1 * pn           # torch: d = g + wd p; buf = m buf + d; p -= lr buf
    buf = 0.9 * buf + d
    pn = pn - 0.5 * buf
    np.testing.assert_allclose(np.asarray(p['w']), pn, rtol=1e-6)


def test_decay_and_trainable_masks():
  opt = ml_collections.ConfigDict(dict(name='sgd', momentum=0.0, nesterov=False, weight_decay=0.5))
  params = {'a': jnp.ones(2), 'b': jnp.ones(2), 'c': jnp.ones(2)}
  tx = schedules.make_optimizer(opt, lambda s: 1.0, decay_mask={'a': True, 'b': False, 'c': True},
                                trainable_mask={'a': True, 'b': True, 'c': False})
  state = tx.init(params)
  g = {k: jnp.full(2, 0.25) for k in params}
  upd, _ = tx.update(g, state, params)
  np.testing.assert_allclose(upd['a'], -(0.25 + 0.5))   # decayed
  np.testing.assert_allclose(upd['b'], -0.25)           # not decayed
  np.testing.assert_allclose(upd['c'], 0.0)             # frozen: no update, even from decay
