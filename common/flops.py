"""Analytic FLOPs / params of zoo models from their ``layer_specs`` (no tracing).

Two conventions:

* ``'thop'`` — what ``thop`` 0.0.31 ``profile`` reports for one image, used by DCFF, 1xN,
  White-Box and Lottery Jackpots (their official repositories call ``thop.profile`` on one
  1x3x32x32 / 1x3x224x224 image; this count reproduces e.g. the DCFF README's 126.55M FLOPs of
  ResNet-56, checked in ``tests/common/test_flops.py``):
  conv ``H_out * W_out * C_out * (C_in/groups * k * k + [1 if bias])`` (MACs, not 2x);
  BatchNorm ``2 * numel(output)``; Linear ``in * out`` (bias not counted); ReLU / pooling 0.
* ``'macs'`` — PSS-Net's analytic rule (computed from the config, not profiled; MobileNet-V2 at
  224 px, all multipliers 1.0: 300.84M): conv
  ``H_out * W_out * (C_out/groups) * k * k * C_in`` (no bias), the global average pool ``H * W * C``,
  the classifier ``C_in * K``; BN, ReLU and residual adds 0.

Params (both conventions): every conv / dense weight and bias and the BN gamma / beta (running
statistics are buffers, not params).

CLI::

    python -m common.flops --model=resnet56 --dataset=cifar10 [--convention=thop|macs] \\
        [--widths=JSON] [--num_classes=K] [--input_size=H] [--kwargs=JSON]

prints a per-layer table and, as its last line, exactly ``params=<int> flops=<int>``. Bad input
(unknown model or data set, malformed JSON, a width config or option the model does not take)
is one ``error: ...`` line on stderr and exit status 2.
"""
from __future__ import annotations

import json
import sys
from typing import Dict, List, Sequence, Tuple

from common import cli

CONVENTIONS = ('thop', 'macs')

# Input size and classes of the data sets the papers report on (``common.data`` names).
DATASETS = {'cifar10': ((32, 32), 10), 'cifar100': ((32, 32), 100),
            'imagenet2012': ((224, 224), 1000), 'digits': ((32, 32), 10),
            'caltech_birds2011': ((224, 224), 200),
            # miniImageNet (FSCIL; read from an image folder by lecnet.protocol, not common.data).
            'mini_imagenet': ((84, 84), 100)}


def layer_flops(spec, convention: str = 'thop') -> int:
  """FLOPs of one ``LayerSpec`` under ``convention`` (module docstring; pools are counted on the
  classifier under 'macs')."""
  if convention not in CONVENTIONS:
    raise ValueError(f'unknown convention {convention!r}; allowed: {list(CONVENTIONS)}')
  ho, wo = spec.out_hw
  if convention == 'macs':
    if spec.role == 'classifier':
      ph, pw = spec.pool_in_hw or (1, 1)
      return ph * pw * spec.in_ch + spec.in_ch * spec.out_ch
    if spec.kind == 'conv':
      kh, kw = spec.kernel
      return ho * wo * (spec.out_ch // spec.groups) * kh * kw * spec.in_ch
    return 0
  if spec.kind == 'conv':
    kh, kw = spec.kernel
    return ho * wo * spec.out_ch * (spec.in_ch // spec.groups * kh * kw + (1 if spec.bias else 0))
  if spec.kind == 'dense':
    return spec.in_ch * spec.out_ch
  if spec.kind == 'bn':
    return 2 * spec.out_ch * ho * wo
  raise ValueError(f'unknown layer kind {spec.kind!r} at {spec.path}')


def count_specs(specs: Sequence, convention: str = 'thop') -> Tuple[int, int, List[Dict]]:
  """``(flops, params, table)`` of a list of ``LayerSpec``; one table row per layer."""
  table, flops, params = [], 0, 0
  for s in specs:
    f, p = layer_flops(s, convention), s.num_params
    flops += f
    params += p
    table.append({'path': '/'.join(s.path), 'kind': s.kind, 'role': s.role, 'in_ch': s.in_ch,
                  'out_ch': s.out_ch, 'kernel': s.kernel[0], 'stride': s.stride,
                  'groups': s.groups, 'out_hw': tuple(s.out_hw), 'flops': f, 'params': p})
  return flops, params, table


def count(name: str, widths=None, input_hw=(32, 32), num_classes: int = 10,
          convention: str = 'thop', **kwargs) -> Tuple[int, int, List[Dict]]:
  """FLOPs and params of zoo model ``name`` at ``widths`` (contract of ``common.flops``).

  Args:
    name: a ``common.models`` name; widths: its width config (None: paper default).
    input_hw: input (H, W) of one image; num_classes: classifier outputs.
    convention: 'thop' (``thop.profile``, module docstring) or 'macs' (PSS-Net's rule).
    **kwargs: model options that change the architecture (``classifier_as_conv``, ``conv_bias``,
      ``strides``...); initialiser options are accepted and ignored.
  Returns:
    ``(flops: int, params: int, table: list[dict])`` for one image.
  """
  from common import models
  if convention not in CONVENTIONS:
    raise ValueError(f'unknown convention {convention!r}; allowed: {list(CONVENTIONS)}')
  specs = models.layer_specs(name, widths=widths, input_hw=tuple(input_hw),
                             num_classes=num_classes, **kwargs)
  return count_specs(specs, convention)


def format_table(table: List[Dict]) -> str:
  """Fixed-width text of a ``count`` table."""
  head = f'{"layer":<34} {"kind":<5} {"role":<10} {"in":>5} {"out":>5} {"k":>2} {"s":>2} ' \
         f'{"g":>5} {"out_hw":>9} {"flops":>13} {"params":>10}'
  lines = [head, '-' * len(head)]
  for r in table:
    hw = f'{r["out_hw"][0]}x{r["out_hw"][1]}'
    lines.append(f'{r["path"]:<34} {r["kind"]:<5} {str(r["role"]):<10} {r["in_ch"]:>5} '
                 f'{r["out_ch"]:>5} {r["kernel"]:>2} {r["stride"]:>2} {r["groups"]:>5} {hw:>9} '
                 f'{r["flops"]:>13,} {r["params"]:>10,}')
  return '\n'.join(lines)


def main(argv=None) -> int:
  """CLI entry point (module docstring); returns the exit status."""
  p = cli.ArgumentParser(prog='python -m common.flops', description=__doc__.split('\n')[0])
  p.add_argument('--model', required=True)
  p.add_argument('--dataset', required=True, choices=sorted(DATASETS))
  p.add_argument('--convention', default='thop', choices=CONVENTIONS)
  p.add_argument('--widths', default=None, help='width config as JSON (default: paper widths)')
  p.add_argument('--num_classes', type=int, default=None, help='default: the data set classes')
  p.add_argument('--input_size', type=int, default=None, help='square input side (default: data '
                 'set: 32 CIFAR/digits, 224 ImageNet)')
  p.add_argument('--kwargs', default='{}', help='model options as a JSON object')
  a = p.parse_args(argv)
  hw, k = DATASETS[a.dataset]
  if a.input_size is not None:
    hw = (a.input_size, a.input_size)
  try:
    widths = json.loads(a.widths) if a.widths else None
  except ValueError as e:
    cli.fail(f'--widths is not valid JSON ({e}); got {a.widths!r}')
  try:
    kwargs = json.loads(a.kwargs)
  except ValueError as e:
    cli.fail(f'--kwargs is not valid JSON ({e}); got {a.kwargs!r}')
  if not isinstance(kwargs, dict):
    cli.fail(f'--kwargs must be a JSON object; got {a.kwargs!r}')
  try:
    flops, params, table = count(a.model, widths, hw, a.num_classes or k, a.convention, **kwargs)
  except (ValueError, KeyError) as e:
    cli.fail(str(e))
  except TypeError as e:  # an option the model's builder does not take
    cli.fail(f'--kwargs {a.kwargs!r} does not fit model {a.model!r}: {e}')
  print(format_table(table))
  print(f'# model={a.model} dataset={a.dataset} input={hw[0]}x{hw[1]} convention={a.convention} '
        f'flops={flops / 1e6:.2f}M params={params / 1e6:.3f}M')
  print(f'params={params} flops={flops}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
