"""One test per engine hook, each with a small method that depends on it."""
import json
import math
import os
import signal
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from common import schedules, train
from tests.common.engine_fixtures import ToyData, ToyMethod, toy_config, use_toy_data

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


# --- setup(info) and datasets() ----------------------------------------------------------------


class HeldOut(ToyMethod):
  """Adds a held-out split and checks what setup() receives."""

  def datasets(self):
    d = super().datasets()
    d['heldout'] = ToyData(20, 7)
    return d

  def setup(self, info):
    super().setup(info)
    self.seen = info


def test_setup_receives_info_and_method_datasets(tmp_path, monkeypatch):
  use_toy_data(monkeypatch)
  c = toy_config(1)
  m = HeldOut(c)
  train.run(c, str(tmp_path), m)
  assert m.seen.num_classes == 2 and m.seen.image_shape == (8, 8, 3)
  assert m.seen.steps_per_epoch == 64 // 16
  assert set(m.seen.datasets) == {'train', 'test', 'heldout'}
  assert m.seen.datasets['heldout'].num_examples == 20
  assert m.seen.workdir == str(tmp_path)


def test_datasets_without_test_split_is_refused(monkeypatch):
  use_toy_data(monkeypatch)

  class NoTest(ToyMethod):
    def datasets(self):
      return {'train': ToyData(64, 0)}

  c = toy_config(1)
  with pytest.raises(train.UserError, match="missing \\['test'\\]"):
    train.Engine(c, NoTest(c))


# --- the whole batch in forward; aux updates extra; post_step sees it ---------------------------


class CountsLabels(ToyMethod):
  """forward reads the labels; aux['extra'] carries a running label count that post_step copies."""

  def init_extra(self, params, batch_stats, rng):
    return {'ones_seen': jnp.zeros((), jnp.float32), 'copied': jnp.zeros((), jnp.float32)}

  def forward(self, model, params, batch_stats, extra, batch, train_, rng):
    logits, bs, aux = super().forward(model, params, batch_stats, extra, batch, train_, rng)
    if train_:
      ones = jnp.sum(batch['label']).astype(jnp.float32)
      aux = dict(aux, extra=dict(extra, ones_seen=extra['ones_seen'] + ones))
    return logits, bs, aux

  def post_step(self, params, extra, step):
    return params, dict(extra, copied=extra['ones_seen'])


def test_forward_sees_labels_and_aux_updates_extra(monkeypatch):
  use_toy_data(monkeypatch)
  c = toy_config(2)
  engine = train.Engine(c, CountsLabels(c))
  state = engine.create_state()
  for epoch in range(2):
    state, _ = engine.train_epoch(state, epoch)
  expect = sum(int(b['label'].sum()) for e in range(2)
               for b in engine.train_ds.batches(16, epoch=e, train=True, drop_remainder=True))
  assert float(state.extra['ones_seen']) == expect
  assert float(state.extra['copied']) == expect   # post_step saw the updated extra


# --- several updates in one step ----------------------------------------------------------------


class TwoUpdates(ToyMethod):
  """conv1 trained by SGD on the CE loss, fc by Adam on the same loss: disjoint subsets."""

  def updates(self, params, schedule):
    conv = jax.tree_util.tree_map_with_path(lambda kp, _: kp[0].key == 'conv1', params)
    fc = jax.tree_util.tree_map_with_path(lambda kp, _: kp[0].key == 'fc', params)
    return [train.Update('conv', optax.sgd(0.1), mask=conv),
            train.Update('fc', optax.adam(0.01), mask=fc)]


def test_two_update_step_touches_disjoint_params_with_own_optimizers(monkeypatch):
  use_toy_data(monkeypatch)
  c = toy_config(1)
  method = TwoUpdates(c)
  engine = train.Engine(c, method)
  s0 = engine.create_state()
  assert set(s0.opt_state) == {'conv', 'fc'}
  step = jax.jit(train.make_train_step(method, engine.model, engine.updates, axis_name=None))
  batch = next(engine.train_ds.batches(16, epoch=0, train=True, drop_remainder=True))
  batch = jax.tree.map(jnp.asarray, batch)
  s1, m = step(s0, batch)
  assert {'conv_loss', 'fc_loss', 'loss', 'top1'} <= set(m)
  # BN was not in either update: unchanged.
  np.testing.assert_array_equal(s1.params['bn1']['scale'], s0.params['bn1']['scale'])

  # Reference: the two updates by hand, the second on the params and BN stats after the first.
  def loss_of(p, bs):
    logits, new_bs, _ = method.forward(engine.model, p, bs, {}, batch, True,
                                       jax.random.PRNGKey(0))
    return train.cross_entropy(logits, batch['label']), new_bs

  g1, bs1 = jax.grad(loss_of, has_aux=True)(s0.params, s0.batch_stats)
  p1 = dict(s0.params, conv1=jax.tree.map(lambda w, g: w - 0.1 * g, s0.params['conv1'],
                                          g1['conv1']))
  g2, _ = jax.grad(loss_of, has_aux=True)(p1, bs1)
  # Adam's first step moves each weight by lr * g / (|g| + eps) = lr * sign(g).
  fc_ref = jax.tree.map(lambda w, g: w - 0.01 * g / (jnp.abs(g) + 1e-8), p1['fc'], g2['fc'])
  np.testing.assert_allclose(s1.params['conv1']['kernel'], p1['conv1']['kernel'], atol=1e-6)
  np.testing.assert_allclose(s1.params['fc']['kernel'], fc_ref['kernel'], atol=1e-6)
  assert not np.allclose(s1.params['fc']['kernel'], s0.params['fc']['kernel'])


def test_two_update_run_trains_and_resumes(tmp_path, monkeypatch):
  use_toy_data(monkeypatch)
  c = toy_config(2)
  res = train.run(c, str(tmp_path), TwoUpdates(c))
  rows = train.read_metrics(str(tmp_path))
  assert {'conv_loss', 'fc_loss'} <= set(rows[0]) and len(rows) == 2
  assert res['top1_last'] == rows[-1]['test_top1']


# --- per-step inputs and host hooks -------------------------------------------------------------


class PerStepMasks(ToyMethod):
  """A channel mask of conv1 that changes every step (array input) and a static 'scale'."""

  def __init__(self, config, scales=(1,), vary=True):
    super().__init__(config)
    self.traces = 0
    self.scales, self.vary = scales, vary
    self.before, self.after = [], []

  def before_step(self, state, step):
    self.before.append(step)
    mask = np.ones(4, np.float32)
    mask[step % 4 if self.vary else 0] = 0.0
    return {'mask': mask, 'scale': self.scales[step % len(self.scales)]}

  def after_step(self, state, metrics, step):
    self.after.append(step)

  def forward(self, model, params, batch_stats, extra, batch, train_, rng):
    if train_:
      self.traces += 1   # Python side effect: runs once per compilation
      k = params['conv1']['kernel'] * batch['method']['mask']
      params = dict(params, conv1=dict(params['conv1'], kernel=k * batch['static']['scale']))
    return super().forward(model, params, batch_stats, extra, batch, train_, rng)


def _traces(method, epochs=2):
  engine = train.Engine(method.config, method)
  state = engine.create_state()
  for epoch in range(epochs):
    state, _ = engine.train_epoch(state, epoch)
  return method.traces


def test_per_step_inputs_change_without_recompiling(monkeypatch):
  use_toy_data(monkeypatch)
  c = toy_config(2)
  m = PerStepMasks(c)
  varied = _traces(m)
  assert m.before == m.after == list(range(8))          # host hooks once per step, in order
  assert varied == 1                                     # 8 different masks, one trace


def test_static_inputs_compile_once_per_value(monkeypatch):
  use_toy_data(monkeypatch)
  c = toy_config(2)
  one = _traces(PerStepMasks(c, scales=(1,)))
  two = _traces(PerStepMasks(c, scales=(1, 2)))
  three = _traces(PerStepMasks(c, scales=(1, 2, 3)))
  assert (one, two, three) == (1, 2, 3)                  # one trace per distinct static value


def test_masked_channel_gets_no_gradient_that_step(monkeypatch):
  use_toy_data(monkeypatch)
  c = toy_config(1)
  c.optimizer.weight_decay = 0.0
  c.optimizer.momentum = 0.0
  m = PerStepMasks(c)
  engine = train.Engine(c, m)
  state = engine.create_state()
  step = jax.jit(train.make_train_step(m, engine.model, engine.updates, axis_name=None),
                 static_argnums=(2,))
  batch = jax.tree.map(jnp.asarray, next(engine.train_ds.batches(16, epoch=0, train=True,
                                                                   drop_remainder=True)))
  mask = np.ones(4, np.float32)
  mask[2] = 0.0
  k0 = np.asarray(state.params['conv1']['kernel'])
  s1, _ = step(state, dict(batch, method={'mask': mask}), (('scale', 1),))
  k1 = np.asarray(s1.params['conv1']['kernel'])
  np.testing.assert_array_equal(k1[..., 2], k0[..., 2])
  assert not np.allclose(k1[..., 0], k0[..., 0])


# --- evaluation hooks ---------------------------------------------------------------------------


class EvalVariants(ToyMethod):
  """A summed eval metric (positive-class recall numerator) and two variants: the model and the
  model with its classifier negated (which flips every prediction of a 2-class net)."""

  def __init__(self, config):
    super().__init__(config)
    self.before_eval_calls = []

  def eval_metrics(self, logits, batch, aux):
    pred = jnp.argmax(logits, -1)
    return {'pos_hits': jnp.sum(((pred == 1) & (batch['label'] == 1)) * batch['weight'])}

  def eval_variants(self):
    return ('', 'flipped')

  def before_eval(self, state, variant):
    self.before_eval_calls.append(variant)
    if variant == 'flipped':
      return state, {'sign': np.float32(-1.0)}
    return state, {'sign': np.float32(1.0)}

  def forward(self, model, params, batch_stats, extra, batch, train_, rng):
    logits, bs, aux = super().forward(model, params, batch_stats, extra, batch, train_, rng)
    if not train_:
      logits = logits * batch['method']['sign']
    return logits, bs, aux


def test_eval_metrics_and_variants(tmp_path, monkeypatch):
  use_toy_data(monkeypatch)
  c = toy_config(2)
  c.best_metric = 'flipped/test_top1'
  m = EvalVariants(c)
  res = train.run(c, str(tmp_path), m)
  rows = train.read_metrics(str(tmp_path))
  r = rows[-1]
  assert m.before_eval_calls == ['', 'flipped'] * 2
  # Two classes: negated logits flip every (non-tied) prediction.
  assert r['test_top1'] + r['flipped/test_top1'] == pytest.approx(1.0)
  assert 0.0 <= r['test_pos_hits'] <= 1.0 and 'flipped/test_pos_hits' in r
  assert res['best_metric'] == 'flipped/test_top1'
  assert res['best_value'] == max(x['flipped/test_top1'] for x in rows)
  assert res['eval_last']['flipped/test_top1'] == r['flipped/test_top1']
  # pos_hits / count by hand from the final state
  st = train.load_state(str(tmp_path))
  test = ToyData(30, 1)
  logits = train.Engine(c, ToyMethod(c)).model.apply(
      {'params': st['params'], 'batch_stats': st['batch_stats']}, test.x, train=False)
  hits = np.mean((np.argmax(logits, -1) == 1) & (test.y == 1))
  assert r['test_pos_hits'] == pytest.approx(hits, abs=1e-6)


def test_best_metric_must_exist(tmp_path, monkeypatch):
  use_toy_data(monkeypatch)
  c = toy_config(1)
  c.best_metric = 'test_top7'
  with pytest.raises(train.UserError, match='test_top7.*available'):
    train.run(c, str(tmp_path), ToyMethod(c))


def test_topk_correct_counts_label_rank():
  logits = jnp.array([[0.1, 0.5, 0.3, 0.2], [0.9, 0.1, 0.0, 0.5]])
  labels = jnp.array([3, 2])
  np.testing.assert_array_equal(train.topk_correct(logits, labels, 3), [1.0, 0.0])
  np.testing.assert_array_equal(train.topk_correct(logits, labels, 4), [1.0, 1.0])


# --- results / export contract ------------------------------------------------------------------


class Exports(ToyMethod):
  def results(self, state):
    return {'reported': 1}

  def export(self, state, workdir):
    path = os.path.join(workdir, 'artifact.txt')
    with open(path, 'w') as f:
      f.write('x')
    return {'artifact': path}


def test_export_fields_recorded_once_in_results(tmp_path, monkeypatch):
  use_toy_data(monkeypatch)
  c = toy_config(1)
  res = train.run(c, str(tmp_path), Exports(c))
  with open(tmp_path / 'results.json') as f:
    on_disk = json.load(f)
  assert on_disk['artifact'] == res['artifact'] == str(tmp_path / 'artifact.txt')
  assert on_disk['reported'] == 1


# --- public pieces: the loop over Engine equals run ----------------------------------------------


def test_engine_pieces_reproduce_run(tmp_path, monkeypatch):
  use_toy_data(monkeypatch)
  c = toy_config(3)
  train.run(c, str(tmp_path), ToyMethod(c))
  rows = train.read_metrics(str(tmp_path))
  engine = train.Engine(c, ToyMethod(c))
  state = engine.create_state()
  for epoch in range(3):
    state, m = engine.train_epoch(state, epoch)
    ev = engine.evaluate(state)
    assert m['loss'] == rows[epoch]['train_loss']
    assert ev['test_top1'] == rows[epoch]['test_top1']


# --- periodic cosine ----------------------------------------------------------------------------


def test_periodic_cosine_follows_torch_recursion_past_t_max():
  lr0, t_max, eta_min = 0.1, 7, 0.001
  sched = schedules.periodic_cosine(lr0, t_max, eta_min)
  # torch.optim.lr_scheduler.CosineAnnealingLR.get_lr, the recursive form, stepped per iteration.
  lrs = [lr0]
  for t in range(1, 40):
    prev = lrs[-1]
    if (t - 1 - t_max) % (2 * t_max) == 0:
      lr = prev + (lr0 - eta_min) * (1 - math.cos(math.pi / t_max)) / 2
    else:
      lr = ((1 + math.cos(math.pi * t / t_max)) / (1 + math.cos(math.pi * (t - 1) / t_max))
            * (prev - eta_min) + eta_min)
    lrs.append(lr)
  got = [float(sched(t)) for t in range(40)]
  np.testing.assert_allclose(got, lrs, rtol=1e-5, atol=1e-7)
  assert got[2 * t_max] == pytest.approx(lr0)          # back up: a period, not a restart
  assert got[t_max] == pytest.approx(eta_min, abs=1e-7)


def test_periodic_cosine_from_config_and_bad_t_max():
  c = toy_config(1)
  c.schedule.name = 'cosine_periodic'
  c.schedule.t_max = 10
  s = schedules.make_schedule(c.schedule, 0.2, 1, 5)
  assert float(s(5)) == pytest.approx(0.1)
  c.schedule.t_max = 0
  with pytest.raises(ValueError, match='t_max'):
    schedules.make_schedule(c.schedule, 0.2, 1, 5)


# --- stages -------------------------------------------------------------------------------------


class FromPrevious(ToyMethod):
  """Second stage: starts from the first stage's last params, freezes conv1."""

  def init_variables(self, model, rng, images):
    prev = train.load_state(self.info.previous)
    return {'params': prev['params'], 'batch_stats': prev['batch_stats']}

  def trainable_mask(self, params):
    return jax.tree_util.tree_map_with_path(lambda kp, _: kp[0].key != 'conv1', params)


def stages(epochs1=2, epochs2=3):
  c1 = toy_config(epochs1)
  c2 = toy_config(epochs2)
  c2.optimizer.learning_rate = 0.01
  return [train.Stage('pretrain', c1, ToyMethod), train.Stage('finetune', c2, FromPrevious)]


def test_stages_chain_and_read_metrics(tmp_path, monkeypatch):
  use_toy_data(monkeypatch)
  res = train.run_stages(str(tmp_path), stages())
  rows = train.read_metrics(str(tmp_path))
  assert [(r['stage'], r['epoch']) for r in rows] == [
      ('pretrain', 0), ('pretrain', 1), ('finetune', 0), ('finetune', 1), ('finetune', 2)]
  assert set(res['stages']) == {'pretrain', 'finetune'}
  assert res['top1_last'] == rows[-1]['test_top1']
  first = train.load_state(str(tmp_path / 'pretrain'))
  second = train.load_state(str(tmp_path / 'finetune'))
  np.testing.assert_array_equal(first['params']['conv1']['kernel'],
                                second['params']['conv1']['kernel'])   # frozen in stage 2
  # A finished stage is not run again.
  again = train.run_stages(str(tmp_path), stages())
  assert again['stages'] == json.loads((tmp_path / 'results.json').read_text())['stages']


def test_stage_names_are_checked(tmp_path):
  c = toy_config(1)
  with pytest.raises(train.UserError, match='unique'):
    train.run_stages(str(tmp_path), [train.Stage('a', c, ToyMethod), train.Stage('a', c,
                                                                                  ToyMethod)])


STAGED_CHILD = r'''
import os, signal, sys
sys.path.insert(0, {root!r})
from common import train
from tests.common import engine_fixtures as ef
from tests.common.test_engine_hooks import stages, FromPrevious

class Killer(FromPrevious):
  def epoch_end(self, state, epoch):
    # Epoch 2: the background save of epoch 0 has finished (epoch 1's save waited for it).
    if epoch == 2 and os.environ.get('KILL_IN_STAGE2'):
      os.kill(os.getpid(), signal.SIGKILL)
    return {{}}

train.load_dataset = lambda config, split: ef.ToyData(64 if split == 'train' else 30,
                                                      0 if split == 'train' else 1)
s = stages()
s[1] = train.Stage('finetune', s[1].config, Killer)
res = train.run_stages(sys.argv[1], s)
print('TOP1', res['top1_last'])
'''


@pytest.mark.slow
def test_staged_run_killed_in_second_stage_resumes_to_same_metrics(tmp_path):
  script = tmp_path / 'child.py'
  script.write_text(STAGED_CHILD.format(root=ROOT))
  env = dict(os.environ, JAX_PLATFORMS='cpu')

  def go(wd, kill):
    e = dict(env, KILL_IN_STAGE2='1') if kill else env
    return subprocess.run([sys.executable, str(script), str(wd)], env=e, capture_output=True,
                          text=True, timeout=600, cwd=ROOT)

  ref = go(tmp_path / 'ref', kill=False)
  assert ref.returncode == 0, ref.stderr[-2000:]
  killed = go(tmp_path / 'run', kill=True)
  assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
  assert not (tmp_path / 'run' / 'finetune' / 'results.json').exists()
  resumed = go(tmp_path / 'run', kill=False)
  assert resumed.returncode == 0, resumed.stderr[-2000:]
  assert 'resuming' in resumed.stdout
  a = train.read_metrics(str(tmp_path / 'ref'))
  b = train.read_metrics(str(tmp_path / 'run'))
  assert [(r['stage'], r['epoch']) for r in a] == [(r['stage'], r['epoch']) for r in b]
  for ra, rb in zip(a, b):
    assert ra['train_loss'] == rb['train_loss'] and ra['test_top1'] == rb['test_top1']
  assert ref.stdout.split('TOP1')[-1] == resumed.stdout.split('TOP1')[-1]


def test_partial_eval_batch_padded_to_a_smaller_bucket_same_metrics(monkeypatch):
  use_toy_data(monkeypatch)
  c = toy_config(1)
  c.dataset.eval_batch_size = 256
  engine = train.Engine(c, ToyMethod(c))
  assert [engine._eval_rows(r) for r in (256, 200, 128, 30, 1)] == [256, 256, 128, 32, 1]
  state = engine.create_state()
  bucketed = engine.evaluate(state)
  engine._eval_rows = lambda rows: engine.local_eval_rows   # pad to the full batch, as before
  engine._p_eval = None
  full = engine.evaluate(state)
  assert bucketed.keys() == full.keys()
  for k in full:
    assert bucketed[k] == pytest.approx(full[k], abs=1e-6)
