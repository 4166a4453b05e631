"""cprate strings -> widths and FLOPs/params (lmbxmu/DCFF ``utils/options.py`` cprate rules; FLOPs/params in the thop 0.0.31 convention)."""
import pytest

from common import models
from dcff import cprate as C

R = C.README_CPRATES


def thop_count(name, widths, hw, nc):
  """Independent thop-convention count (thop 0.0.31: a conv counts k*k*C_in*C_out*H*W multiply-accumulates) from the analytic layer specs."""
  f = p = 0
  for s in models.layer_specs(name, widths, hw, nc):
    oh, ow = s.out_hw
    if s.kind == 'conv':
      f += oh * ow * s.out_ch * (s.in_ch // s.groups * s.kernel[0] * s.kernel[1] + int(s.bias))
    elif s.kind == 'dense':
      f += s.in_ch * s.out_ch
    else:
      f += 2 * s.out_ch * oh * ow
    p += s.num_params
  return f, p


def test_parse_official_strings():
  assert C.parse_cprate('[0.5]*2+[0.4]*2+[0.35]*3+[0.85]*6') == [0.5] * 2 + [0.4] * 2 + [0.35] * 3 \
      + [0.85] * 6
  assert C.parse_cprate('[0.0]+([0.5]*10+[0.5]*6)*2+[0.25]*3+[0.0]') == \
      [0.0] + ([0.5] * 10 + [0.5] * 6) * 2 + [0.25] * 3 + [0.0]
  assert C.parse_cprate([0.1, 0]) == [0.1, 0.0]
  lengths = {'vgg16': 13, 'resnet56': 30, 'resnet110': 57}
  for key, text in R.items():
    name = key.split('_')[0]
    assert len(C.parse_cprate(text)) == lengths.get(name, 37) == C.expected_length(name)


@pytest.mark.parametrize('bad', ["__import__('os').system('true')", '[0.5]*2.0', '[1.0]',
                                 '[-0.1]', '0.5', '[0.5]+0.1', '[0.5', "['a']"])
def test_parse_rejects(bad):
  with pytest.raises(ValueError, match='cprate'):
    C.parse_cprate(bad)


def test_vgg16_widths():
  assert C.compact_widths('vgg16', R['vgg16']) == [32, 32, 76, 76, 166, 166, 166] + [76] * 6


def test_resnet_cifar_widths_and_layer_wise_rates():
  w = C.compact_widths('resnet110', R['resnet110'])
  assert w['stages'] == [6, 25, 32] and w['stem'] == 6
  rates = C.parse_cprate(R['resnet110'])
  assert w['inner'][0][:4] == [int(16 * (1 - r)) for r in rates[:4]]
  lw = C.layer_wise_cprate('resnet56', R['resnet56'])
  r56 = C.parse_cprate(R['resnet56'])
  assert len(lw) == 55 and lw[0] == r56[-3]
  assert lw[1::2] == r56[:27]
  assert lw[2::2] == [r56[-3]] * 9 + [r56[-2]] * 9 + [r56[-1]] * 9


def test_resnet50_layer_wise_rates():
  rates = [0.0] + [0.1] * 16 + [0.2] * 16 + [0.3, 0.4, 0.5, 0.6]
  lw = C.layer_wise_cprate('resnet50', rates)
  assert len(lw) == 49 and lw[0] == 0.0
  assert lw[1::3] == [0.1] * 16 and lw[2::3] == [0.2] * 16
  assert lw[3::3] == [0.3] * 3 + [0.4] * 4 + [0.5] * 6 + [0.6] * 3
  w = C.compact_widths('resnet50', rates)
  assert w['stages'] == [int(256 * 0.7), int(512 * 0.6), int(1024 * 0.5), int(2048 * 0.4)]
  assert w['conv1'][3] == [int(512 * 0.9)] * 3 and w['conv2'][0] == [int(64 * 0.8)] * 3


def test_float64_truncation():
  # 512 * (1 - 0.85) = 76.8 -> 76; 64 * (1 - 0.7) = 19.200000000000003 -> 19.
  assert C.keep(512, 0.85) == 76 and C.keep(64, 0.7) == 19 and C.keep(16, 0.7) == 4
  with pytest.raises(ValueError, match='leaves no filter'):
    C.keep(4, 0.9)


@pytest.mark.parametrize('name,n', [('vgg16', 13), ('resnet56', 30), ('resnet110', 57),
                                    ('resnet50', 37)])
def test_wrong_length_names_expected(name, n):
  with pytest.raises(ValueError, match=f'must have {n} rates'):
    C.compact_widths(name, [0.1] * (n + 1))


def test_unsupported_models():
  for name in ('resnet18', 'mobilenet_v2'):
    with pytest.raises(ValueError, match='no cprate layout'):
      C.family(name)
  with pytest.raises(ValueError, match='unknown model'):
    C.family('alexnet')   # not in the zoo


def test_fused_layers():
  layers = C.fused_layers('resnet56', R['resnet56'])
  assert len(layers) == 55 and layers[0].path == ('conv1',) and layers[0].c == 16
  assert layers[1].path == ('layer1_0', 'conv1') and layers[1].m == 4
  assert all(not l.bias for l in layers)
  v = C.fused_layers('vgg16', R['vgg16'])
  assert [l.m for l in v] == C.compact_widths('vgg16', R['vgg16']) and all(l.bias for l in v)
  r50 = C.fused_layers('resnet50', R['resnet50_step_63.8'], (224, 224), 1000)
  assert len(r50) == 49 and not any('downsample' in '/'.join(l.path) for l in r50)
  assert r50[3].path == ('layer1_0', 'conv3') and r50[3].c == 256 and r50[3].m == 204


# thop 0.0.31 counts of the official compact models: FLOPs and params of the README compact models.
TABLE = [('vgg16', 'vgg16', 72.77e6, 0.005e6, 1.071e6, 0.0005e6),
         ('resnet56', 'resnet56', 55.83e6, 0.005e6, 0.384e6, 0.0005e6),
         ('resnet110', 'resnet110', 85.30e6, 0.005e6, 0.555e6, 0.0005e6),
         ('resnet50', 'resnet50_step_76.7', 0.958e9, 0.0005e9, 7.403e6, 0.0005e6),
         ('resnet50', 'resnet50_step_63.8', 1.4905e9, 0.00005e9, 10.582e6, 0.0005e6),
         ('resnet50', 'resnet50_step_45.3', 2.249e9, 0.0005e9, 15.164e6, 0.0005e6),
         ('resnet50', 'resnet50_cos_63.0', 1.523e9, 0.0005e9, 11.047e6, 0.0005e6),
         ('resnet50', 'resnet50_cos_66.7', 1.381e9, 0.0005e9, 11.814e6, 0.0005e6),
         ('resnet50', 'resnet50_cos_75.1', 1.023e9, 0.0005e9, 6.561e6, 0.0005e6)]


@pytest.mark.parametrize('name,key,flops,ftol,params,ptol', TABLE)
def test_readme_flops_params(name, key, flops, ftol, params, ptol):
  hw, nc = ((224, 224), 1000) if name == 'resnet50' else ((32, 32), 10)
  widths = C.compact_widths(name, R[key])
  f, p = thop_count(name, widths, hw, nc)
  assert abs(f - flops) <= ftol and abs(p - params) <= ptol
  try:
    from common import flops as flops_lib
  except ImportError:
    return
  f2, p2, _ = flops_lib.count(name, widths=widths, input_hw=hw, num_classes=nc)
  assert (f2, p2) == (f, p)
