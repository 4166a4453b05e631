"""Mask positions per model family through the zoo's tap sites, as the official model files put
them (zyxxmu/White-Box ``model/*.py``), and the vote's widths per family."""
import numpy as np
import pytest

import whitebox as wb
from common import models
from common.models import taps


def _sites(name, hw, **kw):
  m = models.get_model(name, 10, **kw)
  return dict(taps.tap_sites(m, (1,) + hw + (3,)))


@pytest.mark.parametrize('name,n_masks,n_used,n_vote', [
    ('vgg16', 13, 13, 12), ('resnet56', 55, 27, 55), ('resnet110', 109, 54, 109),
    ('mobilenet_v2_cifar', 17, 17, 17), ('resnet50', 48, 32, 48)])
def test_mask_layout(name, n_masks, n_used, n_vote):
  plan = wb.Plan(name)
  assert len(plan.masks) == n_masks and len(plan.pool) == n_vote
  sites, idx = plan.forward_sites
  assert len(sites) == n_used
  hw = (64, 64) if name == 'resnet50' else (32, 32)   # sites do not depend on the input size
  found = _sites(name, hw)
  for s, i in zip(sites, idx):
    assert s in found, s
    assert found[s][-1] == plan.masks[i].width, (s, found[s], plan.masks[i].width)


def test_resnet_cifar_mask_indices():
  # model/resnet_cifar.py: block b multiplies mask 2b+1 into conv1's output before bn1; mask 0
  # (stem width) and the masks 2b+2 (block-output width) are allocated but unused.
  plan = wb.Plan('resnet56')
  assert plan.masks[0].site is None and plan.masks[0].width == 16
  assert plan.masks[1].site == 'layer1_0/bn1_in' and plan.masks[19].site == 'layer2_0/bn1_in'
  assert [plan.masks[i].width for i in (2, 18, 20, 36, 38, 54)] == [16, 16, 32, 32, 64, 64]
  assert all(plan.masks[i].site is None for i in range(0, 55, 2))
  assert not plan.halve


def test_resnet50_mask_indices():
  plan = wb.Plan('resnet50')
  assert [m.site for m in plan.masks[:3]] == ['layer1_0/act1', 'layer1_0/act2', None]
  assert [m.width for m in plan.masks[:3]] == [64, 64, 256]
  assert plan.masks[-1].width == 2048 and plan.masks[-1].site is None


def test_mobilenet_v2_class_model_differs():
  # The class model (MobileNetV2_class) has ReLU and strides at blocks 3, 6, 13; the pruned one
  # ReLU6 and strides at 6, 13; the masks sit on the hidden channels of both.
  plan = wb.Plan('mobilenet_v2_cifar')
  kw = dict(wb.CLASS_MODEL_KWARGS['mobilenet_v2_cifar'])
  assert [i for i, s in enumerate(kw['strides']) if s == 2] == [3, 6, 13] and kw['act'] == 'relu'
  cls = _sites('mobilenet_v2_cifar', (32, 32), **kw)
  pruned = _sites('mobilenet_v2_cifar', (32, 32))
  assert cls['block16/dw_act'][1:3] == (4, 4) and pruned['block16/dw_act'][1:3] == (8, 8)
  for m in plan.masks:
    assert cls[m.site][-1] == pruned[m.site][-1] == m.width
  assert plan.halve


@pytest.mark.parametrize('name,target', [('vgg16', 0.75), ('resnet56', 0.55),
                                         ('mobilenet_v2_cifar', 0.29)])
def test_vote_widths_per_family(name, target):
  plan = wb.Plan(name)
  rng = np.random.default_rng(0)
  masks = {m.name: rng.uniform(0, 1, (10, m.width)) for m in plan.masks}
  pr = wb.prune(plan, masks, target, input_hw=(32, 32), num_classes=10, seed=3)
  w, dense = pr.widths, plan.widths
  assert pr.vote.reduction >= target
  if name == 'vgg16':
    # the 13th conv: a sorted random subset of int(512 (1 - previous reduction)) channels
    prev = pr.vote.history[-2][2]
    assert w[-1] == int(512 * (1 - prev)) == pr.random_idx.size
    assert np.all(np.diff(pr.random_idx) > 0)
  elif name == 'resnet56':
    assert w['stem'] == dense['stem'] and w['stages'] == dense['stages']   # block outputs full
    assert w['inner'] != dense['inner']
  else:
    assert w['last'] == 640 and w['out'] == dense['out'] and w['stem'] == dense['stem']
  again = wb.prune(plan, masks, target, input_hw=(32, 32), num_classes=10, seed=3)
  assert again.widths == w
  if pr.random_idx is not None:
    np.testing.assert_array_equal(again.random_idx, pr.random_idx)


def test_unknown_model():
  with pytest.raises(ValueError, match="no mask layout for model 'resnet18'"):
    wb.Plan('resnet18')
