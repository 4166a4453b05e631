"""FDDA's math against closed forms, NumPy references and Monte Carlo; the two-update step."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from common import capture
from common import models
from common import pretrained
from common import train
from fdda import alignment as A
from fdda import distill
from fdda import generator as G

TINY = {'stem': 4, 'stages': [4, 8, 8], 'inner': [[4], [8], [8]]}


def _stats(r, shapes, scale=1.0):
  return [jnp.asarray(scale * r.randn(c), jnp.float32) for c in shapes]


# --- deep-half start, BN counts ------------------------------------------------------------------

@pytest.mark.parametrize('name,kw,hw,num_bn,start', [
    ('resnet18', {}, 64, 20, 8), ('mobilenet_v2', {}, 64, 52, 24),
    ('resnet8', {'shortcut': 'projection'}, 32, 9, 3)])
def test_deep_start_per_model(name, kw, hw, num_bn, start):
  names = A.bn_names(models.get_model(name, 10, **kw), (1, hw, hw, 3))
  assert len(names) == num_bn      # the code's BN_layer_num (resnet18: 20, mobilenetv2_w1: 52)
  assert A.deep_start(len(names)) == start
  assert A.deep_start(53) == 25     # regnetx_600m's 53 layers in the code
  with pytest.raises(ValueError, match='at least 3'):
    A.deep_start(2)


# --- losses ----------------------------------------------------------------------------------------

def test_bns_loss_matches_numpy():
  r = np.random.RandomState(0)
  shapes = [3, 5, 7]
  mu, var, rm, rv = (_stats(r, shapes) for _ in range(4))
  ref = np.mean([np.mean((np.asarray(a) - np.asarray(b)) ** 2) +
                 np.mean((np.asarray(c) - np.asarray(d)) ** 2)
                 for a, b, c, d in zip(mu, rm, var, rv)])
  np.testing.assert_allclose(float(A.bns_loss(mu, var, rm, rv)), ref, rtol=1e-6)


def test_centralized_zero_at_centres_and_deep_half_only():
  r = np.random.RandomState(1)
  shapes = [4, 6, 8, 8, 16]
  cm, cv = _stats(r, shapes), _stats(r, shapes)
  assert float(A.centralized_loss(cm, cv, cm, cv, start=2)) == 0.0
  # Layers below the start do not count; above it the mean over the L - s layers.
  mu = [m + (10.0 if l < 2 else 0.0) for l, m in enumerate(cm)]
  assert float(A.centralized_loss(mu, cv, cm, cv, start=2)) == 0.0
  mu = [m + (1.0 if l >= 2 else 0.0) for l, m in enumerate(cm)]
  np.testing.assert_allclose(float(A.centralized_loss(mu, cv, cm, cv, start=2)), 1.0, rtol=1e-6)


def test_distorted_expectation_is_centralized_plus_noise_variances():
  r = np.random.RandomState(2)
  shapes = [8, 16, 16, 32]
  mu, var, cm, cv = (_stats(r, shapes) for _ in range(4))
  c = float(A.centralized_loss(mu, var, cm, cv, 1))
  keys = jax.random.split(jax.random.PRNGKey(0), 4000)
  d = jax.vmap(lambda k: A.distorted_loss(mu, var, cm, cv, 1, k))(keys)
  # E[(x - c - e)^2] = (x - c)^2 + std^2, per channel: + 0.5^2 (means) + 1.0^2 (variances).
  se = float(jnp.std(d)) / np.sqrt(len(keys))
  assert abs(float(jnp.mean(d)) - (c + 0.25 + 1.0)) < 4 * se + 1e-3
  d2 = jax.vmap(lambda k: A.distorted_loss(mu, var, cm, cv, 1, k, 0.1, 0.2))(keys)
  assert abs(float(jnp.mean(d2)) - (c + 0.01 + 0.04)) < 4 * float(jnp.std(d2)) / 63 + 1e-3


def test_noise_target_branch_expectation():
  r = np.random.RandomState(3)
  shapes = [8, 16]
  mu, var = _stats(r, shapes), _stats(r, shapes)
  keys = jax.random.split(jax.random.PRNGKey(1), 4000)
  d = jax.vmap(lambda k: A.noise_target_loss(mu, var, k))(keys)
  # 2/L sum_l E[MSE(mu, n)] + E[MSE(var, n')] with n ~ N(0, 1): mean(x^2) + 1 per term.
  ref = 2.0 / 2 * sum(np.mean(np.asarray(m) ** 2) + 1 + np.mean(np.asarray(v) ** 2) + 1
                      for m, v in zip(mu, var))
  assert abs(float(jnp.mean(d)) - ref) < 4 * float(jnp.std(d)) / np.sqrt(4000) + 1e-3


def test_pick_class_restricted_to_correct():
  correct = jnp.asarray([False, True, False, True, False])
  picks = jax.vmap(lambda k: A.pick_class(k, correct, True))(jax.random.split(
      jax.random.PRNGKey(0), 500))
  assert set(np.asarray(picks).tolist()) == {1, 3}
  picks = jax.vmap(lambda k: A.pick_class(k, correct, False))(jax.random.split(
      jax.random.PRNGKey(0), 500))
  assert set(np.asarray(picks).tolist()) == {0, 1, 2, 3, 4}


def test_class_separation_is_mean_pairwise_distance_of_deep_layers():
  # Three classes at (0, 0), (3, 4), (0, 4) over two deep layers of one channel each: pairwise
  # distances 5, 3 and 4, mean 4. The shallow layer 0 (below start) must not count.
  shallow = np.asarray([[100.0], [-50.0], [7.0]])
  deep_a = np.asarray([[0.0], [3.0], [0.0]])
  deep_b = np.asarray([[0.0], [4.0], [4.0]])
  np.testing.assert_allclose(A.class_separation([shallow, deep_a, deep_b], start=1), 4.0,
                             rtol=1e-6)
  assert A.class_separation([deep_a, deep_a * 0.0, deep_b * 0.0], start=1) == 0.0


def test_student_kd_vanishes_when_student_equals_teacher():
  r = np.random.RandomState(4)
  s = jnp.asarray(r.randn(6, 10) * 3, jnp.float32)
  y = jnp.asarray(r.randint(0, 10, 6))
  loss, parts = distill.student_loss(s, s, y)
  assert abs(float(parts['kd'])) < 1e-6
  logp = np.log(np.exp(np.asarray(s)) / np.exp(np.asarray(s)).sum(-1, keepdims=True))
  ce = -np.mean(logp[np.arange(6), np.asarray(y)])
  np.testing.assert_allclose(float(loss), ce, rtol=1e-5)
  # Against a NumPy KL for a different teacher: alpha T^2 KL(p_t || p_s), batch mean, T = 20.
  t = jnp.asarray(r.randn(6, 10) * 3, jnp.float32)
  sm = lambda z: np.exp(z - z.max(-1, keepdims=True)) / np.exp(z - z.max(-1, keepdims=True)).sum(
      -1, keepdims=True)
  pt, ps = sm(np.asarray(t) / 20), sm(np.asarray(s) / 20)
  kl = np.mean(np.sum(pt * (np.log(pt) - np.log(ps)), -1))
  loss, parts = distill.student_loss(s, t, y)
  np.testing.assert_allclose(float(loss), ce + 20 * 400 * kl, rtol=1e-4)


# --- centres ---------------------------------------------------------------------------------------

@pytest.fixture(scope='module')
def tiny_teacher():
  m = models.get_model('resnet8', 4, widths=TINY, shortcut='projection')
  v = m.init(jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 3)), train=False)
  # Non-trivial running statistics, so that eval-mode BN is not the identity.
  v = {'params': v['params'], 'batch_stats': jax.tree.map(
      lambda a: a + 0.3 * jnp.abs(jax.random.normal(jax.random.PRNGKey(1), a.shape)),
      v['batch_stats'])}
  return m, v


def test_class_centres_are_single_image_spatial_moments(tiny_teacher):
  m, v = tiny_teacher
  names = A.bn_names(m, (1, 16, 16, 3))
  x = np.random.RandomState(5).randn(4, 16, 16, 3).astype(np.float32)
  labels = np.asarray([2, 0, 3, 1])
  cen = A.class_centres(m, v, x, labels, 4, names)
  for c in range(4):
    img = x[labels == c]
    _, stats = capture.bn_input_moments(m, v, jnp.asarray(img), train=False)
    for l, n in enumerate(names):
      np.testing.assert_allclose(np.asarray(cen['mean'][l][c]), np.asarray(stats[n][0]),
                                 rtol=1e-4, atol=1e-5)
      np.testing.assert_allclose(np.asarray(cen['var'][l][c]), np.asarray(stats[n][1]),
                                 rtol=1e-4, atol=1e-5)
    logits = m.apply(v, jnp.asarray(img), train=False)
    assert bool(cen['correct'][c]) == (int(np.argmax(logits)) == c)
  with pytest.raises(ValueError, match='exactly one image'):
    A.class_centres(m, v, x, np.asarray([0, 0, 1, 2]), 4, names)


# --- generator ---------------------------------------------------------------------------------------

def test_generator_output_statistics_and_conditioning():
  gen = G.Generator(5, img_size=16, latent_dim=8, width=16)
  v = G.init_generator(gen, jax.random.PRNGKey(0))
  z, y = G.sample_latent(jax.random.PRNGKey(1), 32, 8, 5)
  x = G.generate(gen, v['params'], v['batch_stats'], z, y)
  assert x.shape == (32, 16, 16, 3)
  # The final affine-free BN in training mode: per-channel batch mean 0, variance v / (v + eps)
  # with v the variance of the tanh output (small at init, so slightly below 1).
  np.testing.assert_allclose(np.asarray(x.mean((0, 1, 2))), 0.0, atol=1e-5)
  var = np.asarray(x.var((0, 1, 2)))
  assert np.all(var <= 1.0) and np.all(var > 0.99)
  # Initial tables (1, 0): conditioning does nothing, the labels do not matter.
  x2 = G.generate(gen, v['params'], v['batch_stats'], z, (y + 1) % 5)
  np.testing.assert_allclose(np.asarray(x2), np.asarray(x), atol=1e-5)
  # CondBN with init tables == affine-free BN (batch statistics, eps of the layer).
  h = jnp.asarray(np.random.RandomState(0).randn(8, 4, 4, 3), jnp.float32)
  cbn = G.ConditionalBatchNorm(5, 0.8)
  cv = cbn.init(jax.random.PRNGKey(0), h, jnp.zeros(8, jnp.int32))
  out, _ = cbn.apply(cv, h, jnp.zeros(8, jnp.int32), mutable=['batch_stats'])
  ref = (h - h.mean((0, 1, 2))) / np.sqrt(h.var((0, 1, 2)) + 0.8)
  np.testing.assert_allclose(np.asarray(out), np.asarray(ref), rtol=1e-4, atol=1e-5)
  # Different per-class rows: different labels, different images.
  p = jax.tree.map(lambda a: a, v['params'])
  p['cbn1']['gamma'] = p['cbn1']['gamma'].at[1].set(2.0)
  a = G.generate(gen, p, v['batch_stats'], z, jnp.zeros(32, jnp.int32))
  b = G.generate(gen, p, v['batch_stats'], z, jnp.ones(32, jnp.int32))
  assert float(jnp.max(jnp.abs(a - b))) > 1e-2


# --- the two-update step ----------------------------------------------------------------------------

@pytest.fixture(scope='module')
def engine(tmp_path_factory):
  from fdda.configs import digits
  from fdda.train import FDDA
  d = tmp_path_factory.mktemp('teacher')
  m = models.get_model('resnet8', 10, widths=TINY, shortcut='projection')
  v = m.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)), train=False)
  path = str(d / 'teacher.npz')
  pretrained.save_variables_npz(path, v)
  c = digits.get_config()
  c.model.widths = TINY
  c.method.teacher_checkpoint = path
  c.method.iterations = 2
  c.method.synthetic_batch = 4
  c.method.gen_width = 8
  c.method.latent_dim = 8
  c.dataset.batch_size = 4
  method = FDDA(c)
  e = train.Engine(c, method)
  return e, e.create_state()


def _same(a, b):
  return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_each_update_touches_only_its_parameters(engine):
  e, s = engine
  b = next(e.train_ds.batches(4, epoch=0, train=True))
  batch = dict(b, method={'epoch': np.int32(6)})
  gen_u, stu_u = e.updates
  for ups, changed, kept in (([gen_u], 'generator', 'student'),
                             ([stu_u], 'student', 'generator')):
    from common.train import init_opt_state
    st = s.replace(opt_state=init_opt_state(ups, s.params))
    step = jax.jit(train.make_train_step(e.method, e.model, ups, axis_name=None), static_argnums=2)
    out, _ = step(st, batch, (('joint', True),))
    assert _same(out.params[kept], s.params[kept])
    assert not _same(out.params[changed], s.params[changed])


def test_warmup_step_trains_only_the_generator_and_calibrates_ranges(engine):
  e, s = engine
  b = next(e.train_ds.batches(4, epoch=0, train=True))
  step = jax.jit(train.make_train_step(e.method, e.model, e.updates, axis_name=None),
                 static_argnums=2)
  out, m = step(s, dict(b, method={'epoch': np.int32(0)}), (('joint', False),))
  assert _same(out.params['student'], s.params['student'])
  assert not _same(out.params['generator'], s.params['generator'])
  # Unfixed (epoch 0 < unfixed_epochs): ranges moved from 0 by the EMA; BN statistics frozen.
  assert float(jnp.max(out.extra['act_hi'])) > 0.0
  assert _same(out.batch_stats, s.batch_stats)
  fixed, _ = step(out, dict(b, method={'epoch': np.int32(5)}), (('joint', False),))
  np.testing.assert_array_equal(fixed.extra['act_hi'], out.extra['act_hi'])
  assert {'generator_d_bns', 'generator_c_bns', 'student_kd'} <= set(m)
