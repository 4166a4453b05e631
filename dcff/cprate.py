"""``cprate`` strings and the compact widths they give, as the official DCFF scripts compute them.

The official ``cprate`` rules (``main_cifar.py`` / ``main_imagenet.py``):

* the ``--cprate`` string is a Python list expression such as ``'[0.5]*2+[0.4]*2+[0.85]*6'``
  that the code ``eval``-s; :func:`parse_cprate` evaluates the same grammar (number lists, ``+``,
  ``*`` by an int, parentheses) without ``eval``;
* **VGG** (13 rates for VGG-16): one rate per conv, used directly;
* **ResNet-CIFAR** (``3n + 3`` rates; 30 for ResNet-56, 57 for ResNet-110): the first ``3n`` rate
  each block's conv1 (inner width), the last 3 are per-stage rates used by every block's conv2
  *and* (stage 1's) by the stem; layer-wise ``[stage1] + interleave(conv1 rates, stage rate)``;
* **ResNet-50** (37 rates): ``[stem] + 16 x conv1 + 16 x conv2 + 4 x stage``; the stage rate
  applies to every conv3 of the stage and to its downsample conv (a plain, unfused conv).

Widths are ``int(C * (1 - r))`` in Python float64 (``512 * (1 - 0.85) = 76.8 -> 76``), as the
code's ``int(x*(1-cprate[i]))`` / ``(cout * (1-cprate)).astype(int)``.

GoogLeNet (64 rates) is not supported: ``common.models`` has no CIFAR GoogLeNet.
"""
from __future__ import annotations

import ast
import dataclasses
import numbers
from typing import List, Sequence, Tuple, Union

from common import models

# The README cprate of every published run (README commands).
README_CPRATES = {
    'vgg16': '[0.5]*2+[0.4]*2+[0.35]*3+[0.85]*6',
    'resnet56': ('[0.7]*2+[0.5]*3+[0.3]*2+[0.4]+[0.8]+ [0.7]*2+[0.8]*4+[0.4]+[0.2]*2+[0.7]+[0.3]'
                 '+[0.8]+[0.4]*2+[0.7]+[0.3]+[0.4]+[0.8]+ [0.0]*3'),
    'resnet110': ('[0.2]+[0.0]+[0.2]+[0.3]+[0.7]*2+[0.1]+[0.3]*2+[0.4]+[0.7]*2+[0.5]+[0.1]+[0.3]'
                  '+[0.0]+[0.6]+[0.0]+[0.2]+[0.5]+[0.0]+[0.7]*2+[0.5]+[0.7]*2+[0.4]*2+[0.0]+[0.3]'
                  '+[0.1]+[0.5]+[0.1]*3+[0.7]+ [0.1]*2+[0.3]*5+[0.5]+[0.7]+[0.2]+[0.4]+[0.7]*5'
                  '+[0.5]+[0.1]+ [0.6]+[0.2]+[0.5]'),
    'resnet50_step_76.7': '[0.0]+[0.8]*10+[0.7]*6+[0.6]*10+[0.4]*6+[0.3]*4',
    'resnet50_step_63.8': '[0.0]+[0.6]*10+[0.5]*6+[0.5]*10+[0.4]*6+[0.2]*4',
    'resnet50_step_45.3': '[0.0]+[0.35]*10+[0.3]*6+[0.4]*10+[0.3]*6+[0.1]*4',
    'resnet50_cos_63.0': '[0.0]+([0.5]*10+[0.5]*6)*2+[0.25]*3+[0.0]',
    'resnet50_cos_66.7': '[0.0]+([0.7]*7+[0.45]*9)*2+[0.24]*3+[0.0]',
    'resnet50_cos_75.1': '[0.0]+([0.43]*7+[0.73]*9)*2+[0.45]*3+[0.0]',
}

Rates = Union[str, Sequence[float]]


def _eval_node(node, text):
  if isinstance(node, ast.Expression):
    return _eval_node(node.body, text)
  if isinstance(node, ast.List) or isinstance(node, ast.Tuple):
    return [_eval_node(e, text) for e in node.elts]
  if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) \
      and not isinstance(node.value, bool):
    return node.value
  if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
    v = _eval_node(node.operand, text)
    if isinstance(v, list):
      raise ValueError(f'cprate {text!r}: unary sign applied to a list')
    return -v if isinstance(node.op, ast.USub) else v
  if isinstance(node, ast.BinOp):
    a, b = _eval_node(node.left, text), _eval_node(node.right, text)
    if isinstance(node.op, ast.Add):
      if isinstance(a, list) != isinstance(b, list):
        raise ValueError(f'cprate {text!r}: cannot add a list and a number')
      return a + b
    if isinstance(node.op, ast.Mult):
      if isinstance(a, list) and isinstance(b, int):
        return a * b
      if isinstance(b, list) and isinstance(a, int):
        return b * a
      if not isinstance(a, list) and not isinstance(b, list):
        return a * b
      raise ValueError(f'cprate {text!r}: a list can only be repeated by an int')
  raise ValueError(f'cprate {text!r}: unsupported syntax {ast.dump(node)[:80]}; allowed: number '
                   'lists, +, * by an int, parentheses (e.g. "[0.5]*2+[0.4]*11")')


def parse_cprate(cprate: Rates) -> List[float]:
  """The flat list of rates of an official ``--cprate`` string (or a list, validated).

  Evaluates what the code's ``eval(args.cprate)`` evaluates for the README strings, without
  ``eval``. Every rate must be a number in ``[0, 1)``.

  Raises:
    ValueError: naming the string and the offending part.
  """
  if isinstance(cprate, str):
    try:
      tree = ast.parse(cprate.strip(), mode='eval')
    except SyntaxError as e:
      raise ValueError(f'cprate {cprate!r} is not a list expression: {e.msg}') from e
    value = _eval_node(tree, cprate)
  else:
    value = list(cprate)
  if not isinstance(value, list):
    raise ValueError(f'cprate {cprate!r} must evaluate to a list of rates; got {value!r}')
  out = []
  for r in value:
    if isinstance(r, bool) or not isinstance(r, numbers.Real) or not 0 <= float(r) < 1:
      raise ValueError(f'cprate {cprate!r}: every rate must be a number in [0, 1); got {r!r}')
    out.append(float(r))
  return out


def keep(c: int, r: float) -> int:
  """``int(C * (1 - r))`` in Python float64, the official width rule (at least 1 is enforced)."""
  m = int(c * (1 - float(r)))
  if m < 1:
    raise ValueError(f'rate {r!r} leaves no filter of {c} (int({c} * (1 - {r})) = {m})')
  return m


def family(name: str) -> str:
  """The official cprate layout of model ``name``: 'vgg' | 'resnet_cifar' | 'resnet50'.

  Raises:
    ValueError: a model the official code has no layout for (GoogLeNet: no CIFAR GoogLeNet in
      ``common.models``; ResNet-18/34: ``main_imagenet.py`` only builds ResNet-50).
  """
  from common.models import resnet_cifar
  models.default_widths(name)  # unknown names raise the registry's error
  if name.startswith('vgg'):
    return 'vgg'
  if name in {f'resnet{d}' for d in resnet_cifar.DEPTHS} | {'resnet32_wide'}:
    return 'resnet_cifar'
  if name == 'resnet50':
    return 'resnet50'
  raise ValueError(f'DCFF has no cprate layout for model {name!r}; supported: vgg* (one rate per '
                   'conv), CIFAR ResNets resnet8..110 (3n + 3 rates), resnet50 (37 rates)')


def _layout(name: str):
  """``(family, dense widths, expected length, description)``."""
  fam = family(name)
  w = models.default_widths(name)
  if fam == 'vgg':
    return fam, w, len(w), 'one rate per conv'
  if fam == 'resnet_cifar':
    nb = sum(len(v) for v in w['inner'])
    s = len(w['stages'])
    return fam, w, nb + s, f'{nb} block conv1 rates + {s} stage rates'
  nb = sum(len(v) for v in w['conv1'])
  return (fam, w, 1 + 2 * nb + len(w['stages']),
          f'1 stem + {nb} conv1 + {nb} conv2 + {len(w["stages"])} stage rates')


def expected_length(name: str) -> int:
  """Number of rates in the official cprate of model ``name`` (VGG-16 13, ResNet-56 30,
  ResNet-110 57, ResNet-50 37)."""
  return _layout(name)[2]


def _rates(name: str, cprate: Rates):
  rates = parse_cprate(cprate)
  fam, w, n, desc = _layout(name)
  if len(rates) != n:
    raise ValueError(f'{name} cprate must have {n} rates ({desc}); got {len(rates)}')
  return fam, w, rates


def layer_wise_cprate(name: str, cprate: Rates) -> List[float]:
  """Per-fused-conv rates in forward order (the official ``layer_wise_cprate``)."""
  fam, w, rates = _rates(name, cprate)
  if fam == 'vgg':
    return rates
  if fam == 'resnet_cifar':
    nblocks = [len(v) for v in w['inner']]
    s = len(nblocks)
    # main_cifar.py: [stage1] + interleave(conv1 rates, stage rate of the block's stage).
    conv2 = [rates[-s + st] for st, n in enumerate(nblocks) for _ in range(n)]
    out = [rates[-s]]
    for a, b in zip(rates[:-s], conv2):
      out += [a, b]
    return out
  # main_imagenet.py: [stem] + per block (conv1, conv2, conv3 = stage rate).
  nblocks = [len(v) for v in w['conv1']]
  total = sum(nblocks)
  c1, c2 = rates[1:1 + total], rates[1 + total:1 + 2 * total]
  c3 = [rates[-len(nblocks) + st] for st, n in enumerate(nblocks) for _ in range(n)]
  out = [rates[0]]
  for a, b, c in zip(c1, c2, c3):
    out += [a, b, c]
  return out


def compact_widths(name: str, cprate: Rates):
  """The compact model's width config (``common.models`` format) for ``cprate``."""
  fam, w, rates = _rates(name, cprate)
  if fam == 'vgg':
    return [keep(c, r) for c, r in zip(w, rates)]

  def per_block(dense, flat):
    out, i = [], 0
    for stage in dense:
      out.append([keep(c, flat[i + b]) for b, c in enumerate(stage)])
      i += len(stage)
    return out

  if fam == 'resnet_cifar':
    s = len(w['stages'])
    stage_rates = rates[-s:]
    return {'stem': keep(w['stem'], stage_rates[0]),
            'stages': [keep(c, r) for c, r in zip(w['stages'], stage_rates)],
            'inner': per_block(w['inner'], rates[:-s])}
  nb = sum(len(v) for v in w['conv1'])
  s = len(w['stages'])
  return {'stem': keep(w['stem'], rates[0]),
          'stages': [keep(c, r) for c, r in zip(w['stages'], rates[-s:])],
          'conv1': per_block(w['conv1'], rates[1:1 + nb]),
          'conv2': per_block(w['conv2'], rates[1 + nb:1 + 2 * nb])}


@dataclasses.dataclass(frozen=True)
class FusedLayer:
  """One fused conv: module ``path``, ``c`` original filters, ``m`` kept, conv ``bias``."""
  path: Tuple[str, ...]
  c: int
  m: int
  bias: bool
  rate: float


def fused_layers(name: str, cprate: Rates, input_hw=(32, 32), num_classes: int = 10,
                 **model_kwargs) -> List[FusedLayer]:
  """The fused convs of the compact model, in forward order, with their full and kept widths.

  Every conv except downsample shortcuts (plain convs at compact widths, ResNet-50) and the
  classifier is fused (the stem too). Widths come from ``layer_specs`` of the dense and the compact
  model and are checked against the layer-wise rates (``m == int(C * (1 - r))``).
  """
  lw = layer_wise_cprate(name, cprate)
  widths = compact_widths(name, cprate)
  dense = {s.path: s for s in models.layer_specs(name, None, input_hw, num_classes,
                                                 **model_kwargs)}
  out = []
  for s in models.layer_specs(name, widths, input_hw, num_classes, **model_kwargs):
    if s.kind != 'conv' or s.role in ('shortcut', 'classifier'):
      continue
    out.append(FusedLayer(tuple(s.path), dense[s.path].out_ch, s.out_ch, s.bias, 0.0))
  if len(out) != len(lw):
    raise ValueError(f'{name}: {len(out)} fusable convs but {len(lw)} layer-wise rates')
  if family(name) == 'resnet50':
    # The official model has a downsample conv exactly where the *dense* widths need one.
    n_ds = sum(s.role == 'shortcut' for s in dense.values())
    n_cs = sum(s.role == 'shortcut' for s in models.layer_specs(name, widths, input_hw,
                                                                num_classes, **model_kwargs))
    if n_ds != n_cs:
      raise ValueError(f'{name} cprate {cprate!r}: the compact widths give {n_cs} downsample '
                       f'convs where the official model has {n_ds} (a stage input and output '
                       'width coincide); choose rates that keep them different')
  res = []
  for f, r in zip(out, lw):
    if keep(f.c, r) != f.m:
      raise ValueError(f'{name} layer {"/".join(f.path)}: compact width {f.m} != '
                       f'int({f.c} * (1 - {r})) = {keep(f.c, r)}')
    res.append(dataclasses.replace(f, rate=r))
  return res
