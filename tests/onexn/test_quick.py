"""End-to-end: the quick experiment at its smallest size (``onexn.quick.run(smoke=True)``).

Pretrains the narrow MobileNet-V2 on digits with common.train, prunes it at p = 0.75 with 1x4,
1x4 + rearrangement and filter pruning, fine-tunes one epoch, exports the 1x4+R model through the
xla_ext kernel. Checks real outcomes: the dense model learned, pruning is exact, 1x4 recovers far
better than filter pruning, and the sparse export equals the masked model.
(About a minute on 2 idle cores.)
"""
import json
import os

import numpy as np
import pytest

from onexn import quick


@pytest.mark.slow
def test_quick_smoke(tmp_path):
  out = quick.run(str(tmp_path), seeds=(0,), smoke=True)
  dense = out['dense_top1'][0]
  assert dense > 0.5                                    # 10 classes: chance is 0.1
  recs = {r['method']: r for r in out['records']}
  assert set(recs) == {'1x4', '1x4+R', 'filter'}
  for r in recs.values():
    assert r['p'] == 0.75
    # the classifier (128 x 10) stays dense: the masked layers' sparsity is slightly below p
    assert 0.70 < r['sparsity_masked_layers'] < 0.75
  assert recs['1x4']['top1'] > recs['filter']['top1'] + 0.1
  assert recs['1x4']['top1'] > 0.6
  exp = out['export']
  assert exp['max_abs_diff'] <= 1e-4 and exp['same_predictions'] and exp['sparse_layers'] == 10
  assert len(exp['absorbed']) == 5                      # 4 expansions + the last 1x1 conv
  claim = [c for c in out['checks'] if c.startswith('sparse export')]
  assert claim and out['checks'][claim[0]]
  assert all(os.path.exists(p) for p in out['plots'])
  rows = out['rows']
  assert {'method', 'seed', 'top1'} <= set(rows[0])
  with open(tmp_path / 'onexn_quick.json') as f:
    assert json.load(f)['checks'] == out['checks']
