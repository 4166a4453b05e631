"""Dense FLOPs / params of every published White-Box model family equal the official counter's
figures on the official models (``fixtures/thop_flops.json``, written by
``fixtures/make_thop_fixture.py`` from zyxxmu/White-Box ``model/*.py``; no torch needed here)."""
import json
import os

import pytest

from common import flops

FIXTURE = json.load(open(os.path.join(os.path.dirname(__file__), 'fixtures', 'thop_flops.json')))


@pytest.mark.parametrize('name', sorted(FIXTURE['models']))
def test_dense_flops_equal_official_counter(name):
  ref = FIXTURE['models'][name]
  k = 1000 if name == 'resnet50' else 10
  f, p, _ = flops.count(name, None, (ref['input'], ref['input']), k)
  assert f == ref['flops']
  assert p == ref['params']
  # The installed thop (0.1) prints slightly more (4 * numel per affine BN, some activations).
  assert 0 <= ref['thop_raw'] - f < 0.03 * f


def test_readme_reference_values():
  # The thop-0.0.31 figures of the dense models (what the README reductions are relative to).
  m = FIXTURE['models']
  assert round(m['vgg16']['flops'] / 1e6, 2) == 314.03
  assert round(m['resnet56']['flops'] / 1e6, 2) == 126.55
  assert round(m['resnet110']['flops'] / 1e6, 2) == 254.98
  assert round(m['resnet50']['flops'] / 1e9, 3) == 4.111
