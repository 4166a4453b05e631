"""The quick experiment at its smallest size (one seed, p = 0.95, 2 search epochs) checks a real
outcome: the searched jackpot far above magnitude pruning without retraining, at the target
sparsity, with its plot written."""
import os

from jackpot import quick


def test_quick_smoke(tmp_path):
  out = quick.run(str(tmp_path), seeds=(0,), smoke=True)
  assert out['checks'] and all(out['checks'].values()), out
  rows = {r['arm']: r for r in out['rows']}
  assert set(rows) == {quick.M_DENSE, quick.M_MAG, quick.M_JP}
  assert rows[quick.M_DENSE]['top1'] > 0.8
  assert abs(rows[quick.M_JP]['sparsity'] - 0.95) < 1e-3
  assert 0.0 < rows[quick.M_JP]['iou_magnitude'] < 1.0
  assert all(os.path.exists(p) for p in out['plots'])
