"""Post-training quantization with FDDA (zysxmu/FDDA), on ``common.train``.

  python -m fdda.teacher --config=fdda/configs/digits_teacher.py --workdir=runs/fdda_teacher
  python -m fdda.train --config=fdda/configs/digits.py --workdir=runs/fdda_digits \
      --config.method.teacher_checkpoint=runs/fdda_teacher

The official loop (``main_DBNS_CBNS.py`` + ``trainer_DBNS_CBNS.py``) mapped onto the engine:

* ``datasets``: one training image per class (seeded choice) is the calibration set. ``'train'``
  repeats it (with the data set's training augmentation) so that an epoch has
  ``method.iterations`` batches of ``dataset.batch_size`` (16) real images; ``'calibration'``
  holds it without augmentation (the code's test transform) for the BN centres.
* ``init_variables``: the student starts from the full-precision teacher
  (``method.teacher_checkpoint``: a finished ``common.train`` workdir or a ``common.convert``
  ``.npz``); ``params = {'student', 'generator'}``.
* ``init_extra``: the frozen teacher, the per-class BN centres and ``C_correct``
  (``fdda.alignment.class_centres``), the activation ranges (``[n_sites]`` min / max, 0 at the
  start as ``QuantAct``'s buffers) and the generator's (never read) BN buffers.
* ``updates``: two per step, in the code's order. ``'generator'`` (Adam, betas (0.5, 0.999), lr x
  ``gen_gamma`` at ``gen_milestones`` epochs) minimises ``0.5 CE + 0.2 BNS + 0.9 D_BNS + 0.01 C_BNS
  + 0.5 CE_c`` (``arm='fdda'``) or ``CE + 0.2 BNS`` (``arm='bns'``, GDFQ). ``'student'`` (Nesterov
  SGD, the periodic per-iteration cosine of ``config.schedule`` counted from the end of the
  warm-up) minimises ``CE + alpha T^2 KL`` against the teacher on 16 calibration + 16 synthetic
  images; L2 weight decay on every student parameter enters its loss (``torch.optim.SGD``'s
  coupled decay), so that the warm-up epochs leave the student exactly unchanged.
* ``before_step``: the epoch (an array: the epochs-0-4 branch, the class restriction and the
  unfixed-range flag never recompile) and the phase (static: generator-only warm-up or joint; two
  compilations in all).
* ``forward``: the quantized network (``common.quantize``: kernels per output channel, a
  per-tensor quantizer after every ReLU / ReLU6 tap site) in eval mode: BN running statistics
  frozen, BN scale / bias trained.
* ``results`` / ``export``: bits, calibration size, top-1 before fine-tuning (the last warm-up
  epoch: ranges calibrated, weights untouched) and after, the bits/memory summary (also printed),
  one PNG grid of synthetic images per class.

Config fields (``config.method``): ``arm`` ('fdda' | 'bns' | 'calibration': KD on the calibration
images only, no generator), ``weight_bits``, ``act_bits``, ``first_last_bits`` (0: same as the
others, F{k}L{k}; 8: F8L8), ``teacher_checkpoint``, ``calibration_per_class`` (1),
``calibration_seed``, ``calibration_split``, ``eval_split`` ('test'; a held-out slice of train for
learning-rate sweeps), ``iterations`` (200), ``synthetic_batch`` (16), ``warmup_epochs`` (50),
``unfixed_epochs`` (4), ``range_calibration`` ('synthetic': the code; 'real': EMA on the
calibration batches instead), ``early_epochs`` (5: epochs 0-4 take the code's N(0, 1) branch),
``latent_dim``, ``gen_width``, ``gen_lr``, ``gen_b1``, ``gen_b2``, ``gen_milestones``,
``gen_gamma``, ``bns_weight`` (0.2), ``d_bns_weight`` (0.9), ``c_bns_weight`` (0.01),
``ce_weight`` (0.5 with FDDA), ``ce_c_weight`` (0.5), ``noise_std_mean`` (0.5), ``noise_std_var``
(1.0), ``alpha`` (20), ``temperature`` (20), ``grid_classes``, ``grid_images``,
``float_student`` (False; True runs the same procedure without quantizers, the bench's reference).
"""
from __future__ import annotations

import os
from typing import Any, Dict

import jax
import jax.numpy as jnp
import numpy as np
import optax

from common import losses
from common import quantize
from common import schedules
from common import train
from fdda import alignment
from fdda import distill
from fdda import generator as gen_lib

ARMS = ('fdda', 'bns', 'calibration')
RANGE_CALIBRATIONS = ('synthetic', 'real')


def calibration_indices(labels, num_classes: int, per_class: int, seed: int) -> np.ndarray:
  """Positions of ``per_class`` images of every class, drawn without replacement by ``seed``
  (the code takes the first image of each class from a seed-0 shuffled loader), class-major.

  Raises:
    train.UserError: a class with fewer than ``per_class`` images.
  """
  labels = np.asarray(labels)
  r = np.random.RandomState(seed)
  out = []
  for c in range(num_classes):
    pos = np.flatnonzero(labels == c)
    if len(pos) < per_class:
      raise train.UserError(f'method.calibration_per_class={per_class} but class {c} has only '
                            f'{len(pos)} training images')
    out.extend(r.choice(pos, per_class, replace=False).tolist())
  return np.asarray(out, np.int64)


def load_teacher(path: str) -> Dict[str, Any]:
  """``{'params', 'batch_stats'}`` of the full-precision model: a ``common.train`` workdir (its best
  checkpoint) or a ``.npz`` written by ``common.convert``."""
  if not path:
    raise train.UserError('method.teacher_checkpoint is required: a finished common.train workdir '
                          'or a common.convert .npz of the full-precision model')
  if path.endswith('.npz'):
    from common import pretrained
    if not os.path.isfile(path):
      raise train.UserError(f'method.teacher_checkpoint={path!r}: no such file')
    v = pretrained.load_pretrained(path)
    return {'params': v['params'], 'batch_stats': v.get('batch_stats', {})}
  return train.load_variables(path)


def _sub(tree, key: str, value: bool):
  return {k: jax.tree.map(lambda _: value == (k == key), v) for k, v in tree.items()}


class FDDA(train.Method):
  """``common.train`` hooks of FDDA and of its plain-BNS and calibration-only arms."""

  name = 'fdda'

  def __init__(self, config):
    super().__init__(config)
    m = config.method
    self.arm = self.choice('arm', 'fdda', ARMS)
    self.range_calibration = self.choice('range_calibration', 'synthetic', RANGE_CALIBRATIONS)
    self.name = {'fdda': 'fdda', 'bns': 'gdfq_bns', 'calibration': 'calibration_kd'}[self.arm]
    try:
      self.w_bits = quantize._check_bits(int(m.get('weight_bits', 4)))
      self.a_bits = quantize._check_bits(int(m.get('act_bits', 4)))
      fl = int(m.get('first_last_bits', 0))
      self.fl_bits = None if fl == 0 else quantize._check_bits(fl)
    except ValueError as e:
      raise train.UserError(f'method.weight_bits / act_bits / first_last_bits: {e} '
                            f'(first_last_bits 0 means "same as the other layers")') from e
    self.m = m
    # The same network and step without any quantizer (fdda.bench's full-precision reference).
    self.float_student = bool(m.get('float_student', False))
    for key in ('iterations', 'synthetic_batch', 'calibration_per_class'):
      if int(m.get(key, 1)) <= 0:
        raise train.UserError(f'method.{key} must be a positive integer; got {m.get(key)}')
    self.warmup = 0 if self.arm == 'calibration' else int(m.get('warmup_epochs', 50))
    if not 0 <= self.warmup < int(config.num_epochs):
      raise train.UserError(f'method.warmup_epochs={self.warmup} must be in [0, num_epochs='
                            f'{config.num_epochs})')
    self.gen = None

  # --- data ----------------------------------------------------------------------------------
  def datasets(self):
    c, m = self.config, self.m
    full = train.load_dataset(c, str(m.get('calibration_split', 'train')))
    k = full.num_classes
    self.calib_idx = calibration_indices(full.labels(), k, int(m.get('calibration_per_class', 1)),
                                         int(m.get('calibration_seed', 0)))
    rows = int(m.get('iterations', 200)) * int(c.dataset.batch_size)
    reps = np.resize(np.arange(len(self.calib_idx)), rows)
    return {'train': full.subset(self.calib_idx[reps]),
            'test': train.load_dataset(c, str(m.get('eval_split', 'test'))),
            'calibration': full.subset(self.calib_idx)}

  # --- model and variables -------------------------------------------------------------------
  def build_model(self):
    model = super().build_model()
    self._model = model
    h, w, ch = self.image_shape
    if h != w:
      raise train.UserError(f'the generator makes square images; got image shape {self.image_shape}')
    self.gen = gen_lib.Generator(self.num_classes, img_size=h, latent_dim=int(self.m.latent_dim),
                                 channels=ch, width=int(self.m.gen_width))
    shape = (1,) + tuple(self.image_shape)
    self.bn_names = alignment.bn_names(model, shape)
    self.start = alignment.deep_start(len(self.bn_names))
    self.act_sites = quantize.activation_sites(model, shape)
    self.act_bit_map = ({} if self.float_student else
                        quantize.activation_bits(self.act_sites, self.a_bits, self.fl_bits))
    return model

  def init_variables(self, model, rng, images):
    self.teacher = load_teacher(self.m.get('teacher_checkpoint', ''))
    try:
      model.apply(self.teacher, images, train=False)
    except Exception as e:  # a checkpoint of another architecture / width / class count
      raise train.UserError(f'method.teacher_checkpoint does not fit model '
                            f'{self.config.model.name!r}: {str(e).splitlines()[0]}') from e
    g = gen_lib.init_generator(self.gen, rng)
    self._gen_stats = g['batch_stats']
    self.w_bit_map = ({} if self.float_student else
                      quantize.weight_bits(self.teacher['params'], self.w_bits, self.fl_bits,
                                           in_channels=self.image_shape[-1]))
    return {'params': {'student': self.teacher['params'], 'generator': g['params']},
            'batch_stats': self.teacher['batch_stats']}

  def init_extra(self, params, batch_stats, rng):
    cal = self.info.datasets['calibration']
    batch = next(cal.batches(cal.num_examples, epoch=0, train=False, drop_remainder=False))
    first = np.sort(np.unique(batch['label'], return_index=True)[1])
    cen = alignment.class_centres(self._model, self.teacher, batch['image'][first],
                                  batch['label'][first], self.num_classes, self.bn_names)
    n = len(self.act_bit_map)
    return {'teacher': self.teacher, 'centre_mean': cen['mean'], 'centre_var': cen['var'],
            'correct': cen['correct'], 'act_lo': jnp.zeros((n,), jnp.float32),
            'act_hi': jnp.zeros((n,), jnp.float32), 'gen_stats': self._gen_stats}

  # --- the quantized network ------------------------------------------------------------------
  def quantized_logits(self, model, student, batch_stats, lo, hi, x, update):
    """*Pure*. ``(logits, (lo, hi))`` of the fake-quantized student in eval mode; ``update``
    (bool array) moves the activation ranges by the EMA first (the code's unfixed mode)."""
    p = quantize.quantize_params(student, self.w_bit_map)
    if not self.act_bit_map:
      return model.apply({'params': p, 'batch_stats': batch_stats}, x, train=False), (lo, hi)
    tap, ranges = quantize.activation_quant_tap(self.act_bit_map, lo, hi, update=True)
    logits = model.apply({'params': p, 'batch_stats': batch_stats}, x, train=False, tap=tap)
    new_lo, new_hi = ranges()
    if update is True:
      return logits, (new_lo, new_hi)
    # Unfixed or fixed per step without recompiling: the EMA'd range is used only when `update`.
    return logits, (jnp.where(update, new_lo, lo), jnp.where(update, new_hi, hi))

  def forward(self, model, params, batch_stats, extra, batch, train_: bool, rng):
    p = quantize.quantize_params(params['student'], self.w_bit_map)
    tap = None
    if self.act_bit_map:
      tap, _ = quantize.activation_quant_tap(self.act_bit_map, extra['act_lo'], extra['act_hi'],
                                             update=False)
    return model.apply({'params': p, 'batch_stats': batch_stats}, batch['image'], train=False,
                       tap=tap), batch_stats, {}

  def _generate(self, gparams, extra, z, y):
    return gen_lib.generate(self.gen, gparams, extra['gen_stats'], z, y)

  # --- the two updates -----------------------------------------------------------------------
  def generator_loss(self, model, params, bs, extra, batch, rng):
    """*Pure*. The generator's loss (module docstring) -> ``(loss, (bs, None, metrics, None))``."""
    m, k = self.m, self.num_classes
    epoch = batch['method']['epoch']
    teacher = extra['teacher']
    run_m, run_v = alignment.running_stats(teacher['batch_stats'], self.bn_names)
    ka, kb, kc, kd, kn = jax.random.split(rng, 5)
    z, y = gen_lib.sample_latent(ka, int(m.synthetic_batch), int(m.latent_dim), k)
    x = self._generate(params['generator'], extra, z, y)
    t_logits, mu, var = alignment.batch_stats_of_inputs(model, teacher, x, self.bn_names)
    ce = losses.cross_entropy(t_logits, y)
    bns = alignment.bns_loss(mu, var, run_m, run_v)
    metrics = {'ce': ce, 'bns': bns,
               'teacher_top1': jnp.mean((jnp.argmax(t_logits, -1) == y).astype(jnp.float32))}
    if self.arm != 'fdda':
      return ce + float(m.bns_weight) * bns, (bs, None, metrics, None)
    correct = extra['correct']
    early = epoch < int(m.early_epochs)
    c = jnp.where(early, alignment.pick_class(kc, correct, False),
                  alignment.pick_class(kc, correct, True))
    zc = jax.random.normal(kb, z.shape, jnp.float32)
    yc = jnp.full((int(m.synthetic_batch),), c, jnp.int32)
    xc = self._generate(params['generator'], extra, zc, yc)
    tc_logits, mu_c, var_c = alignment.batch_stats_of_inputs(model, teacher, xc, self.bn_names)
    cm = [a[c] for a in extra['centre_mean']]
    cv = [a[c] for a in extra['centre_var']]
    c_bns = alignment.centralized_loss(mu_c, var_c, cm, cv, self.start)
    d_bns = alignment.distorted_loss(mu_c, var_c, cm, cv, self.start, kd,
                                     float(m.noise_std_mean), float(m.noise_std_var))
    # The code's epochs-0-4 branch for a class the teacher gets wrong: N(0, 1) targets, no C_BNS.
    odd = early & ~correct[c]
    d_bns = jnp.where(odd, alignment.noise_target_loss(mu_c, var_c, kn), d_bns)
    c_bns = jnp.where(odd, 0.0, c_bns)
    ce_c = losses.cross_entropy(tc_logits, yc)
    loss = (float(m.ce_weight) * ce + float(m.bns_weight) * bns + float(m.d_bns_weight) * d_bns
            + float(m.c_bns_weight) * c_bns + float(m.ce_c_weight) * ce_c)
    metrics.update(d_bns=d_bns, c_bns=c_bns, ce_c=ce_c)
    return loss, (bs, None, metrics, None)

  def student_loss(self, model, params, bs, extra, batch, rng):
    """*Pure*. ``CE + alpha T^2 KL`` of the quantized student on calibration + synthetic images
    (warm-up: the forward on synthetic images only, no gradient) ->
    ``(loss, (bs, extra, metrics, logits of the real images))``."""
    m, k = self.m, self.num_classes
    epoch = batch['method']['epoch']
    joint = dict(batch['static']).get('joint', True)
    teacher = extra['teacher']
    z, y = gen_lib.sample_latent(rng, int(m.synthetic_batch), int(m.latent_dim), k)
    real = batch['image']
    if self.arm == 'calibration':
      x, labels = real, batch['label']
    else:
      xg = jax.lax.stop_gradient(self._generate(params['generator'], extra, z, y))
      x, labels = (jnp.concatenate([real, xg]), jnp.concatenate([batch['label'], y])) if joint \
          else (xg, y)
    unfixed = epoch < int(m.unfixed_epochs)
    if self.range_calibration == 'real':
      # Variant: ranges from the calibration images only (the EMA sees no synthetic image).
      logits_r, (lo, hi) = self.quantized_logits(model, params['student'], bs, extra['act_lo'],
                                                 extra['act_hi'], real, unfixed)
      logits, _ = self.quantized_logits(model, params['student'], bs, lo, hi, x, False)
    else:
      logits, (lo, hi) = self.quantized_logits(model, params['student'], bs, extra['act_lo'],
                                               extra['act_hi'], x, unfixed)
    t_logits = jax.lax.stop_gradient(model.apply(teacher, x, train=False))
    loss, parts = distill.student_loss(logits, t_logits, labels, float(m.alpha),
                                       float(m.temperature))
    wd = float(self.config.optimizer.weight_decay)
    if wd:
      loss = loss + 0.5 * wd * sum(jnp.sum(jnp.square(v)) for v in
                                   jax.tree.leaves(params['student']))
    new_extra = dict(extra, act_lo=lo, act_hi=hi)
    if not joint:
      # Warm-up: the code runs this forward (it calibrates the ranges) but steps no optimizer.
      return jax.lax.stop_gradient(loss), (bs, new_extra, parts, None)
    return loss, (bs, new_extra, parts, logits[:real.shape[0]])

  def updates(self, params, schedule):
    m, spe = self.m, self.info.steps_per_epoch
    warm = self.warmup * spe
    student_lr = schedules.make_schedule(self.config.schedule,
                                         float(self.config.optimizer.learning_rate),
                                         int(self.config.num_epochs), spe)
    lr_s = lambda count: student_lr(jnp.maximum(count - warm, 0))
    opt = self.config.optimizer
    student = train.Update('student', optax.sgd(lr_s, momentum=float(opt.momentum) or None,
                                                nesterov=bool(opt.nesterov)),
                           mask=_sub(params, 'student', True), loss=self.student_loss)
    if self.arm == 'calibration':
      return [student]
    milestones = jnp.asarray(list(m.gen_milestones) or [10 ** 9], jnp.int32)
    gen_lr = lambda count: float(m.gen_lr) * float(m.gen_gamma) ** jnp.sum(
        (count // spe) >= milestones)
    g = train.Update('generator', optax.adam(gen_lr, b1=float(m.gen_b1), b2=float(m.gen_b2)),
                     mask=_sub(params, 'generator', True), loss=self.generator_loss)
    return [g, student]

  # --- host hooks ----------------------------------------------------------------------------
  def before_step(self, state, step):
    epoch = step // self.info.steps_per_epoch
    return {'epoch': np.int32(epoch), 'joint': epoch >= self.warmup}

  def eval_variants(self):
    return ('',)

  def summary(self, params):
    return quantize.bits_summary(params['student'], self.w_bit_map, self.act_sites,
                                 self.act_bit_map)

  def results(self, state):
    rows = train.read_metrics(self.info.workdir) if self.info.workdir else []
    before = [r['test_top1'] for r in rows if r['epoch'] == self.warmup - 1]
    s = self.summary(state.params)
    return {'weight_bits': self.w_bits, 'act_bits': self.a_bits,
            'first_last_bits': self.fl_bits or self.w_bits,
            'setting': f'W{self.w_bits}A{self.a_bits}-F{self.fl_bits or self.w_bits}'
                       f'L{self.fl_bits or self.w_bits}',
            'arm': self.arm, 'calibration_size': int(len(self.calib_idx)),
            'teacher_correct_classes': int(np.sum(np.asarray(state.extra['correct']))),
            'deep_start': self.start, 'bn_layers': len(self.bn_names),
            'top1_before_finetune': before[0] if before else None,
            'top1_after_finetune': rows[-1]['test_top1'] if rows else None,
            'act_ranges': {site: [float(a), float(b)] for site, a, b in
                           zip(self.act_bit_map, np.asarray(state.extra['act_lo']),
                               np.asarray(state.extra['act_hi']))},
            'bits_summary': s}

  def export(self, state, workdir):
    """Prints the bits/memory summary; writes one PNG grid of synthetic images per class."""
    print(quantize.format_bits_summary(self.summary(state.params)), flush=True)
    if self.arm == 'calibration':
      return {}
    mean, std = self.info.datasets['train'].normalization
    paths = save_class_grids(self.gen, state.params['generator'], state.extra['gen_stats'],
                             self.num_classes, int(self.m.latent_dim), workdir,
                             classes=int(self.m.grid_classes), per_class=int(self.m.grid_images),
                             mean=mean, std=std, seed=int(self.config.seed))
    return {'plots': paths}


def synthetic_per_class(gen, gparams, gen_stats, num_classes: int, latent_dim: int,
                        per_class: int, seed: int = 0, classes=None):
  """``{c: images [per_class, S, S, C]}`` from the trained generator (one batch per class)."""
  rng = jax.random.PRNGKey(seed)
  gparams, gen_stats = jax.tree.map(jnp.asarray, (gparams, gen_stats))
  fn = jax.jit(lambda z, y: gen_lib.generate(gen, gparams, gen_stats, z, y))
  out = {}
  for c in (range(num_classes) if classes is None else classes):
    z = jax.random.normal(jax.random.fold_in(rng, c), (per_class, latent_dim), jnp.float32)
    out[c] = np.asarray(fn(z, jnp.full((per_class,), c, jnp.int32)))
  return out


def save_class_grids(gen, gparams, gen_stats, num_classes, latent_dim, workdir, *, classes: int,
                     per_class: int, mean, std, seed: int = 0):
  """One PNG per class (``synthetic_class_<c>.png``, the first ``classes`` classes): a grid of
  ``per_class`` generated images, de-normalised with the data set's ``mean``/``std``."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  imgs = synthetic_per_class(gen, gparams, gen_stats, num_classes, latent_dim, per_class, seed,
                             range(min(classes, num_classes)))
  paths = []
  cols = int(np.ceil(np.sqrt(per_class)))
  rows = int(np.ceil(per_class / cols))
  for c, x in imgs.items():
    x = np.clip(x * np.asarray(std) + np.asarray(mean), 0.0, 1.0)
    fig, ax = plt.subplots(rows, cols, figsize=(1.2 * cols, 1.2 * rows), squeeze=False)
    for i, a in enumerate(ax.ravel()):
      a.axis('off')
      if i < len(x):
        a.imshow(x[i])
    fig.suptitle(f'class {c}')
    p = os.path.join(workdir, f'synthetic_class_{c}.png')
    fig.savefig(p, dpi=80)
    plt.close(fig)
    paths.append(p)
  return paths


main = train.cli(FDDA, default_config='fdda/configs/digits.py')

if __name__ == '__main__':
  main()
