"""SiMaN benchmark: binarized train / eval step time vs the same network in full precision.

  python -m siman.bench [--model=siman_vgg_small] [--widths='[16, 16, 32, 32, 64, 64]']
                        [--batch=128] [--hw=32] [--steps=20] [--repeats=3]

Both networks are built by ``common.models`` with the same widths and run through the *same*
engine step of ``siman.train.SiMaN`` (``common.train.make_train_step`` / ``make_eval_step``,
jitted, one device): the BNN with ``weight_binarizer='siman'`` and ``act_binarizer='siman'`` (the
training step includes the code B, the straight-through binarization and the ``post_step``
projection with its per-layer sort), the FP network with both ``'none'``. The timings interleave
the two (ABAB...) with ``recu.bench.time_interleaved``, the loop ``recu.bench`` uses, so both
papers' overheads are measured the same way. Prints one line per network and, last,
``bnn_over_fp_train=<ratio> bnn_over_fp_eval=<ratio>``.

Honest reading: in training, binarization is *simulated* in float32 (standardisation, the median
code, the projection and alpha are extra work on top of the same float convolutions), so the BNN
step is slower than the FP one. The deployment cost of a 1-bit network is reported by
``siman.accounting`` (``bops``, ``model_bits`` in results.json).

``python -m siman.bench --binary`` times inference on the bit-packed kernel instead
(``xla_ext.binconv``, ``siman.export_binary``), as ``recu.bench --binary`` does: per layer, the
binary conv against XLA's float32 conv on the ResNet-18 ImageNet, CIFAR ResNet-18 shortcut,
ResNet-20 and VGG-Small shapes at batch 1 and 8, on every SIMD ISA the CPU has (named on every
row); end to end, the exported ``siman_resnet18`` at 224x224 against the same graph in float32
and against the simulated network.
"""
from __future__ import annotations

import json

from typing import Sequence

import jax

from recu.bench import (add_binary_args, build_step, end_to_end_rows, parse_widths,
                        random_trained_variables, run_binary, time_interleaved, xla_conv_jit)
from siman import siman
from siman.configs import digits as digits_config
from siman.train import CODES, SiMaN


def _siman(model: str, widths, weight_binarizer: str, act_binarizer: str) -> SiMaN:
  c = digits_config.get_config()
  c.model.name = model
  c.model.widths = widths
  c.model.kwargs.act_binarizer = act_binarizer
  c.method.weight_binarizer = weight_binarizer
  c.method.decay_rule = 'official' if weight_binarizer in siman.SIMAN_TRAINING else 'all'
  return SiMaN(c)


def bench(model: str = 'siman_vgg_small', widths=None, batch: int = 128, hw: int = 32,
          steps: int = 20, repeats: int = 3):
  """Seconds per train and eval step of the SiMaN BNN and the FP network, and their ratios.

  ``widths``: the model's width config (None: the digits recipe's VGG-Small at 1/8).
  Returns ``{'bnn_train', 'fp_train', 'bnn_eval', 'fp_eval', 'bnn_over_fp_train',
  'bnn_over_fp_eval'}`` (medians over ``repeats`` interleaved rounds of ``steps`` steps).
  """
  if steps <= 0 or repeats <= 0 or batch <= 0:
    raise ValueError(f'steps, repeats and batch must be positive; got {steps}, {repeats}, {batch}')
  widths = list(digits_config.WIDTHS) if widths is None else widths
  # percent = 15: the first epoch's projection (every magnitude clipped), the costliest case.
  nets = {'bnn': build_step(_siman(model, widths, 'siman', 'siman'), batch, hw,
                            extra={'percent': siman.PERCENT_MAX}),
          'fp': build_step(_siman(model, widths, 'none', 'none'), batch, hw)}
  out = time_interleaved(nets, steps, repeats)
  out['bnn_over_fp_train'] = out['bnn_train'] / out['fp_train']
  out['bnn_over_fp_eval'] = out['bnn_eval'] / out['fp_eval']
  return out



def siman_end_to_end(model: str = 'siman_resnet18', widths=None, hw: int = 224,
                     batches: Sequence[int] = (1,), isa: str = 'auto', repeats: int = 5,
                     clock: str = 'wall'):
  """The exported binary SiMaN network against the same graph in full precision
  (``act_binarizer='none'`` and float kernels: plain float convs, alpha kept; with the default
  convs and with XLA's) and against the simulated binary network (``2B - 1`` kernels,
  centred-sign activations), side by side; ``clock`` as ``recu.bench.bench_binary_layers``.
  Returns ``recu.bench.end_to_end_rows``."""
  from common import models
  from siman.export_binary import export_binary
  shape = (hw, hw, 3)
  classes = 1000 if hw >= 128 else 10
  bnn = models.get_model(model, classes, widths=widths)
  fp = models.get_model(model, classes, widths=widths, act_binarizer='none')
  v = random_trained_variables(bnn, shape)
  codes = siman.binary_codes(v['params'], 'median')
  exported = export_binary(bnn, {'params': v['params'],
                                 'batch_stats': dict(v['batch_stats'], **{CODES: codes})},
                           isa=isa, num_threads=1 if clock == 'cpu' else 0)
  eff = {'params': siman.binarize_params(v['params'], codes), 'batch_stats': v['batch_stats']}
  fwd = lambda x: fp.apply(v, x, train=False)
  fns = {'float': jax.jit(fwd), 'float_xla': xla_conv_jit(fwd),
         'simulated': jax.jit(lambda x: bnn.apply(eff, x, train=False))}
  return end_to_end_rows(exported, fns, model, hw, batches, repeats, clock)


def main(argv=None):
  """Command line (module docstring): prints the two networks' step times and the ratios;
  returns the :func:`bench` dict."""
  import argparse
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--model', default='siman_vgg_small')
  p.add_argument('--widths', default=json.dumps(digits_config.WIDTHS), help='width config as JSON')
  p.add_argument('--batch', type=int, default=128)
  p.add_argument('--hw', type=int, default=32)
  p.add_argument('--steps', type=int, default=20)
  p.add_argument('--repeats', type=int, default=3)
  add_binary_args(p, 'siman_resnet18')
  a = p.parse_args(argv)
  try:
    widths = parse_widths(a.widths)
  except ValueError as e:
    p.error(str(e))
  if a.binary:
    return run_binary(p, a, siman_end_to_end)
  r = bench(a.model, widths, a.batch, a.hw, a.steps, a.repeats)
  for k in ('bnn', 'fp'):
    print(f'{k}: train {1e3 * r[k + "_train"]:.2f} ms/step, eval {1e3 * r[k + "_eval"]:.2f} '
          f'ms/step ({a.model}, widths {widths}, batch {a.batch}, {a.hw}x{a.hw})')
  print(f'bnn_over_fp_train={r["bnn_over_fp_train"]:.3f} '
        f'bnn_over_fp_eval={r["bnn_over_fp_eval"]:.3f}')
  return r


if __name__ == '__main__':
  main()
