"""Tests of ``common.flops`` against published reference values (the DCFF / 1xN / White-Box /
Jackpot READMEs, counted with ``thop.profile``; PSS-Net's analytic MACs of MobileNet-V1/V2) and
against FLOPs recomputed from the traced model's own parameter and activation shapes."""
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from common import flops, models
from common.models.specs import LayerSpec

IMNET = dict(input_hw=(224, 224), num_classes=1000)


def _mp(flops_, params):
  return round(flops_ / 1e6, 2), round(params / 1e6, 3)


# ------------------------------------------------------------------------------------------------
# Reference values (match to the printed digits)


@pytest.mark.parametrize('name,kw,ref_flops,ref_params', [
    ('resnet56', {}, 126.55, 0.853),
    ('resnet110', {}, 254.98, 1.728),
    ('vgg16', {}, 314.03, 14.73),
    ('resnet50', IMNET, 4111.41, 25.557),   # spec: 4.111B
])
def test_thop_reference_values(name, kw, ref_flops, ref_params):
  f, p, _ = flops.count(name, **kw)
  assert round(f / 1e6, 2) == ref_flops
  digits = len(str(ref_params).split('.')[1])
  assert round(p / 1e6, digits) == ref_params
  if name == 'resnet50':
    assert round(f / 1e9, 3) == 4.111


def test_dcff_vgg16_compact():
  # README cprate [0.5]*2+[0.4]*2+[0.35]*3+[0.85]*6 -> widths int(C*(1-r))
  # (DCFF's width rule, in Python float64: the kept channels of every layer).
  rates = [0.5] * 2 + [0.4] * 2 + [0.35] * 3 + [0.85] * 6
  base = [64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512]
  widths = [int(c * (1 - r)) for c, r in zip(base, rates)]
  assert widths == [32, 32, 76, 76, 166, 166, 166] + [76] * 6
  f, p, _ = flops.count('vgg16', widths)
  assert round(f / 1e6, 2) == 72.77 and round(p / 1e6, 3) == 1.071   # thop count (README prints 1.06M)


def _dcff_resnet_widths(cprate, n):
  """DCFF's ResNet-CIFAR cprate layout: 3n conv1 rates then 3 stage rates (stem = stage 1)."""
  stages = [int(c * (1 - r)) for c, r in zip((16, 32, 64), cprate[3 * n:])]
  inner = [[int(c * (1 - r)) for r in cprate[s * n:(s + 1) * n]]
           for s, c in enumerate((16, 32, 64))]
  return {'stem': stages[0], 'stages': stages, 'inner': inner}


def test_dcff_resnet_cifar_readme_2020():
  # ``lmbxmu/DCFF`` README at 73846b4 (Oct 2020 runs): ResNet-56 57.54M / 0.40M and
  # ResNet-110 88.59M / 0.58M for the cprates printed there.
  r56 = ([0.6, 0.7, 0.5, 0.5, 0.4, 0.2, 0.3, 0.4, 0.8] + [0.7, 0.6, 0.9, 0.8, 0.9, 0.8, 0.4, 0.2, 0.2]
         + [0.7, 0.3, 0.8, 0.4, 0.3, 0.7, 0.2, 0.4, 0.8] + [0.0, 0.0, 0.0])
  r110 = ([0.2, 0.0, 0.2, 0.3, 0.6, 0.7, 0.1, 0.3, 0.3, 0.4, 0.7, 0.7, 0.5, 0.1, 0.3, 0.0, 0.6, 0.0]
          + [0.2, 0.5, 0.0, 0.6, 0.7, 0.5, 0.7, 0.7, 0.3, 0.4, 0.0, 0.3, 0.1, 0.5, 0.0, 0.1, 0.0,
             0.7]
          + [0.0, 0.1, 0.3, 0.3, 0.3, 0.1, 0.2, 0.5, 0.7, 0.2, 0.4, 0.7, 0.5, 0.7, 0.7, 0.7, 0.5,
             0.1] + [0.6, 0.2, 0.5])
  w110 = _dcff_resnet_widths(r110, 18)
  assert w110['stages'] == [6, 25, 32]                     # int(c * (1 - r)) of the 3 stage rates
  f, p, _ = flops.count('resnet56', _dcff_resnet_widths(r56, 9))
  assert (round(f / 1e6, 2), round(p / 1e6, 2)) == (57.54, 0.40)
  f, p, _ = flops.count('resnet110', w110)
  assert (round(f / 1e6, 2), round(p / 1e6, 2)) == (88.59, 0.58)


def _make_divisible(v, divisor=8, min_value=8):
  """slimmable_networks' ``make_divisible`` (PSS-Net's widths): nearest multiple, +divisor if >10%
  below."""
  new = max(min_value, int(v + divisor / 2) // divisor * divisor)
  return new + divisor if new < 0.9 * v else new


def _pss_mbv1(mult):
  base = [32, 64, 128, 128, 256, 256, 512, 512, 512, 512, 512, 512, 1024, 1024]
  return [_make_divisible(c * mult) for c in base]


def _pss_mbv2(mult):
  outs = [16, 24, 24, 32, 32, 32, 64, 64, 64, 64, 96, 96, 96, 160, 160, 160, 320]
  stem = _make_divisible(32 * mult)
  out = [_make_divisible(c * mult) for c in outs]
  ins = [stem] + out[:-1]
  hidden = [stem] + [_make_divisible(6 * c) for c in ins[1:]]
  return {'stem': stem, 'hidden': hidden, 'out': out, 'last': 1280}   # tail fixed at 1280


@pytest.mark.parametrize('res,mult,v1,v2', [
    (224, 1.0, 568.79, 300.84), (128, 0.75, 106.78, 69.15),
    (224, 0.75, 325.44, 209.13), (128, 1.0, 186.42, 99.09)])
def test_pss_macs_reference_values(res, mult, v1, v2):
  f1, _, _ = flops.count('mobilenet_v1', _pss_mbv1(mult), (res, res), 1000, convention='macs')
  f2, _, _ = flops.count('mobilenet_v2', _pss_mbv2(mult), (res, res), 1000, convention='macs')
  assert round(f1 / 1e6, 2) == v1 and round(f2 / 1e6, 2) == v2


def test_default_mobilenet_macs():
  assert round(flops.count('mobilenet_v2', convention='macs', **IMNET)[0] / 1e6, 2) == 300.84
  assert round(flops.count('mobilenet_v1', convention='macs', **IMNET)[0] / 1e6, 2) == 568.79


# ------------------------------------------------------------------------------------------------
# Closed forms of single layers


def test_layer_flops_closed_forms():
  conv = LayerSpec(('c',), 'conv', 8, 12, (3, 3), 2, 4, True, (10, 10), (5, 5))
  assert flops.layer_flops(conv) == 5 * 5 * 12 * (8 // 4 * 9 + 1)
  assert flops.layer_flops(conv, 'macs') == 5 * 5 * (12 // 4) * 9 * 8
  bn = LayerSpec(('b',), 'bn', 12, 12, (1, 1), 1, 1, True, (5, 5), (5, 5))
  assert flops.layer_flops(bn) == 2 * 12 * 25 and flops.layer_flops(bn, 'macs') == 0
  fc = LayerSpec(('fc',), 'dense', 64, 10, bias=True, role='classifier', pool_in_hw=(4, 4))
  assert flops.layer_flops(fc) == 640
  assert flops.layer_flops(fc, 'macs') == 640 + 16 * 64
  assert conv.num_params == 3 * 3 * 2 * 12 + 12 and bn.num_params == 24 and fc.num_params == 650
  with pytest.raises(ValueError, match='convention'):
    flops.layer_flops(conv, 'flops')
  with pytest.raises(ValueError, match='convention'):
    flops.count('resnet20', convention='gmacs')


# ------------------------------------------------------------------------------------------------
# Independent recount from the traced model (param shapes + captured activation shapes)


def _traced_thop(name, widths, hw, **kw):
  model = models.get_model(name, 10, widths=widths, **kw)
  x = jnp.zeros((1,) + hw + (3,), jnp.float32)
  v = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x, train=False))
  _, inter = jax.eval_shape(lambda v: model.apply(v, x, train=False, capture_intermediates=True,
                                                  mutable=['intermediates']), v)
  total = 0
  params = 0

  def walk(p, it):
    nonlocal total, params
    for k, sub in p.items():
      if 'kernel' in sub or 'scale' in sub:
        out = it[k]['__call__'][0].shape
        n_out = int(np.prod(out[1:]))
        params += sum(int(np.prod(a.shape)) for a in sub.values())
        if 'scale' in sub:
          total += 2 * n_out
        elif sub['kernel'].ndim == 4:
          kh, kw_, cig, _ = sub['kernel'].shape
          total += n_out * (kh * kw_ * cig + (1 if 'bias' in sub else 0))
        else:
          total += sub['kernel'].shape[0] * sub['kernel'].shape[1]
      else:
        walk(sub, it[k])
  walk(v['params'], inter['intermediates'])
  return total, params


@pytest.mark.parametrize('name,widths,hw,kw', [
    ('resnet20', {'stem': 4, 'stages': [4, 6, 9], 'inner': [[3, 2, 4], [5, 6, 2], [7, 3, 9]]},
     (32, 32), {}),
    ('vgg_tiny', [3, 4, 5, 6, 7, 8], (32, 32), {'classifier_as_conv': True}),
    ('mobilenet_v2_cifar', {'stem': 4, 'hidden': [4, 6, 9, 12], 'out': [3, 5, 5, 8], 'last': 10},
     (32, 32), {'strides': [1, 2, 1, 2]}),
    ('mobilenet_v1', [4, 5, 6, 6, 7, 7, 8, 8, 8, 8, 8, 8, 9, 9], (64, 64), {}),
    ('resnet50', {'stem': 4, 'stages': [8, 12, 16, 20], 'conv1': [[2] * 3, [3] * 4, [4] * 6, [5] * 3],
                  'conv2': [[3] * 3, [2] * 4, [5] * 6, [4] * 3]}, (64, 64), {}),
])
def test_thop_equals_recount_from_traced_shapes(name, widths, hw, kw):
  f, p, table = flops.count(name, widths, hw, 10, **kw)
  assert (f, p) == _traced_thop(name, widths, hw, **kw)
  assert sum(r['flops'] for r in table) == f


# ------------------------------------------------------------------------------------------------
# CLI


def test_cli_last_line(capsys):
  assert flops.main(['--model=resnet56', '--dataset=cifar10']) == 0
  out = capsys.readouterr().out.strip().splitlines()
  assert out[-1] == 'params=853018 flops=126550656'
  assert any(line.startswith('layer3_8/conv2') for line in out)
  flops.main(['--model=mobilenet_v2', '--dataset=imagenet2012', '--convention=macs'])
  last = capsys.readouterr().out.strip().splitlines()[-1]
  m = re.fullmatch(r'params=(\d+) flops=(\d+)', last)
  assert m and round(int(m.group(2)) / 1e6, 2) == 300.84 and int(m.group(1)) == 3504872
  flops.main(['--model=vgg16', '--dataset=cifar10',
              '--widths=[32,32,76,76,166,166,166,76,76,76,76,76,76]'])
  assert capsys.readouterr().out.strip().splitlines()[-1] == 'params=1071248 flops=72771880'


def test_cli_subprocess():
  r = subprocess.run([sys.executable, '-m', 'common.flops', '--model=resnet20', '--dataset=digits'],
                     capture_output=True, text=True, check=True, timeout=120)
  assert r.stdout.strip().splitlines()[-1] == 'params=269722 flops=40927872'


def one_error_line(*args):
  """Runs the CLI on bad input: exit 2, no traceback, exactly one ``error:`` line, returned."""
  r = subprocess.run([sys.executable, '-m', 'common.flops', *args], capture_output=True,
                     text=True, timeout=120)
  lines = r.stderr.strip().splitlines()
  assert r.returncode == 2 and 'Traceback' not in r.stderr, r.stderr[-2000:]
  assert len(lines) == 1 and lines[0].startswith('error: '), r.stderr[-2000:]
  assert r.stdout == ''
  return lines[0]


@pytest.mark.parametrize('args,needles', [
    (['--model=resnet57', '--dataset=cifar10'], ["unknown model 'resnet57'", 'resnet56']),
    (['--model=resnet56', '--dataset=cifar11'], ['--dataset', "'cifar11'", 'cifar10']),
    (['--dataset=cifar10'], ['--model']),
    (['--model=resnet56', '--dataset=cifar10', '--widths=[1,2'], ['--widths', 'JSON', '[1,2']),
    (['--model=resnet56', '--dataset=cifar10', '--widths=[1,2]'], ['widths', "'stages'"]),
    (['--model=resnet56', '--dataset=cifar10', '--kwargs=[1]'], ['--kwargs', 'JSON object']),
    (['--model=resnet56', '--dataset=cifar10', '--kwargs={"foo": 1}'], ['foo', 'resnet56']),
    (['--model=resnet56', '--dataset=cifar10', '--input_size=-3'], ['input_hw', '-3']),
    (['--model=resnet56', '--dataset=cifar10', '--num_classes=x'], ['--num_classes', "'x'"]),
])
def test_cli_bad_input_is_one_error_line(args, needles):
  line = one_error_line(*args)
  for n in needles:
    assert n in line, line
