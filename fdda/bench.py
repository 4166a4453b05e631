"""FDDA benchmark: synthetic images per second of the generation loop, and the fake-quantized
student step over the same step in full precision, side by side in one run.

  python -m fdda.bench [--widths='{"stem": 16, "stages": [16, 32, 64], "inner": [[16], [32], [64]]}']
                       [--batch=16] [--gen_width=32] [--latent=32] [--repeats=5]

Everything runs through the engine's own step (``common.train.make_train_step`` of
``fdda.train.FDDA``, jitted, one device) on the digits ResNet-8 (projection shortcut, 32x32), with
a randomly initialised teacher written to a temporary ``.npz``:

* ``generate``: the conditional generator's forward alone (``batch`` images);
* ``generator step``: one warm-up step (the generator update: two generator batches of ``batch``
  images through the teacher with BN-statistic taps, its backward, Adam; plus the quantized
  student's range-calibration forward); images/s counts the ``2 x batch`` images it generates;
* ``student W4A4`` vs ``student FP``: the student update alone (``batch`` calibration + ``batch``
  synthetic images, teacher logits, CE + alpha T^2 KL, backward, Nesterov SGD), with and without
  the fake quantizers (``method.float_student``).

Timings interleave the candidates (``common.timing.time_interleaved``) so load drift hits them
alike. Honest reading: fake quantization computes in float32, so the quantized step is *slower*
than the float one (per-channel min/max, rounding and clamping on every kernel and ReLU output);
the memory a packed integer model would need is the bits/memory summary of ``fdda.train``.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile

import jax
import jax.numpy as jnp
import numpy as np

from common import models
from common import pretrained
from common import timing
from common import train
from fdda import generator as gen_lib
from fdda.configs import digits as digits_config
from fdda.train import FDDA

DEFAULT_WIDTHS = {'stem': 16, 'stages': [16, 32, 64], 'inner': [[16], [32], [64]]}


def _engine(teacher: str, widths, batch: int, gen_width: int, latent: int, float_student: bool):
  c = digits_config.get_config()
  c.model.widths = widths
  c.dataset.batch_size = batch
  c.method.synthetic_batch = batch
  c.method.gen_width = gen_width
  c.method.latent_dim = latent
  c.method.iterations = 2
  c.method.teacher_checkpoint = teacher
  c.method.float_student = float_student
  method = FDDA(c)
  e = train.Engine(c, method)
  return e, e.create_state()


def bench(widths=None, batch: int = 16, gen_width: int = 32, latent: int = 32,
          repeats: int = 5, calls: int = 3):
  """Returns ``{'cpu', 'generate_images_per_s', 'generator_step_images_per_s',
  'student_w4a4_s', 'student_fp_s', 'quantized_over_fp'}`` (median seconds per call)."""
  widths = widths or DEFAULT_WIDTHS
  with tempfile.TemporaryDirectory() as d:
    m = models.get_model('resnet8', 10, widths=widths, shortcut='projection')
    v = m.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)), train=False)
    path = os.path.join(d, 'teacher.npz')
    pretrained.save_variables_npz(path, v)
    eq, sq = _engine(path, widths, batch, gen_width, latent, False)
    ef, sf = _engine(path, widths, batch, gen_width, latent, True)
  b = next(eq.train_ds.batches(batch, epoch=0, train=True))
  late = dict(b, method={'epoch': np.int32(10)})
  warm = dict(b, method={'epoch': np.int32(0)})

  def step_of(e, ups):
    return jax.jit(train.make_train_step(e.method, e.model, ups, axis_name=None),
                   static_argnums=2)

  gen_step = step_of(eq, eq.updates)
  stu_q = step_of(eq, eq.updates[1:])
  stu_f = step_of(ef, ef.updates[1:])
  from common.train import init_opt_state
  sq1 = sq.replace(opt_state=init_opt_state(eq.updates[1:], sq.params))
  sf1 = sf.replace(opt_state=init_opt_state(ef.updates[1:], sf.params))
  gen, gp, gs = eq.method.gen, sq.params['generator'], sq.extra['gen_stats']
  z, y = gen_lib.sample_latent(jax.random.PRNGKey(0), batch, latent, 10)
  generate = jax.jit(lambda z, y: gen_lib.generate(gen, gp, gs, z, y))
  # Each candidate reruns from the same state (no donation): one compiled step, same inputs.
  fns = {'generate': lambda: generate(z, y),
         'generator step': lambda: gen_step(sq, warm, (('joint', False),))[1],
         'student W4A4': lambda: stu_q(sq1, late, (('joint', True),))[1],
         'student FP': lambda: stu_f(sf1, late, (('joint', True),))[1]}
  t = timing.time_interleaved(fns, repeats=repeats, warmup=2, calls=calls)
  out = {'cpu': timing.cpu_name(), 'devices': jax.device_count(), 'batch': batch,
         'generate_images_per_s': batch / t['generate'].median,
         'generator_step_images_per_s': 2 * batch / t['generator step'].median,
         'generator_step_s': t['generator step'].median,
         'student_w4a4_s': t['student W4A4'].median, 'student_fp_s': t['student FP'].median,
         'quantized_over_fp': t['student W4A4'].median / t['student FP'].median}
  return out


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--widths', default='', help='resnet8 width JSON (default 16/32/64)')
  p.add_argument('--batch', type=int, default=16)
  p.add_argument('--gen_width', type=int, default=32)
  p.add_argument('--latent', type=int, default=32)
  p.add_argument('--repeats', type=int, default=5)
  a = p.parse_args(argv)
  for k in ('batch', 'gen_width', 'latent', 'repeats'):
    if getattr(a, k) <= 0:
      print(f'error: --{k} must be a positive integer; got {getattr(a, k)}')
      return 2
  try:
    widths = json.loads(a.widths) if a.widths else None
  except json.JSONDecodeError as e:
    print(f'error: --widths is not JSON ({e}); e.g. {json.dumps(DEFAULT_WIDTHS)}')
    return 2
  try:
    out = bench(widths, a.batch, a.gen_width, a.latent, a.repeats)
  except (train.UserError, ValueError) as e:
    print(f'error: {str(e).splitlines()[0]}')
    return 2
  print(f'CPU: {out["cpu"]}')
  print(f'generate: {out["generate_images_per_s"]:.1f} images/s; generator step (2 x '
        f'{out["batch"]} images): {out["generator_step_images_per_s"]:.1f} images/s')
  print(f'student step W4A4 {out["student_w4a4_s"] * 1e3:.1f} ms, FP '
        f'{out["student_fp_s"] * 1e3:.1f} ms; quantized_over_fp={out["quantized_over_fp"]:.2f}')
  print(json.dumps(out))
  return 0


if __name__ == '__main__':
  raise SystemExit(main())
