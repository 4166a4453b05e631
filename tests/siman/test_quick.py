"""End-to-end: ``siman.quick.run(smoke=True)`` trains SiMaN on digits through ``common.train`` and its
outcome is checked against independent facts: accuracy well above chance (0.1), the logged percent
equals 15 (1 - e/E), the stored code has exactly N/2 ones per output channel, the stored binary
kernels carry the last projection's clipping (p% of each layer's magnitudes exactly at L and at H),
the plots are PNGs."""
import json
import os

import numpy as np
import pytest

from common import train
from common import transforms
from siman import quick
from siman import siman


@pytest.fixture(scope='module')
def out(tmp_path_factory):
  wd = str(tmp_path_factory.mktemp('siman_quick'))
  return wd, quick.run(wd, seeds=(0,), smoke=True)


def test_contract_and_accuracy(out):
  _, res = out
  assert set(res) >= {'rows', 'plots', 'checks'}
  rows = [r for r in res['rows'] if r['method'] == quick.M_SIMAN]
  assert len(rows) == 1 and rows[0]['seed'] == 0
  assert rows[0]['top1'] >= 0.3            # chance is 0.1 on the 10 digit classes
  assert res['checks'] and all(res['checks'].values()), res['checks']
  for p in res['plots']:
    with open(p, 'rb') as f:
      assert f.read(8) == b'\x89PNG\r\n\x1a\n', p


def test_logged_percent_follows_the_schedule(out):
  wd, res = out
  run_dir = os.path.join(wd, 'siman_seed0')
  with open(os.path.join(run_dir, 'metrics.jsonl')) as f:
    m = [json.loads(l) for l in f if l.strip()]
  e = len(m)
  np.testing.assert_allclose([r['percent'] for r in m], 15.0 * (1 - np.arange(e) / e), rtol=1e-6)


def test_stored_state_is_siman_state(out):
  wd, _ = out
  v = train.load_variables(os.path.join(wd, 'siman_seed0'), which='last')
  params, codes = v['params'], v['batch_stats']['binary_codes']
  p_last = siman.percent_schedule(quick.SMOKE_EPOCHS - 1, quick.SMOKE_EPOCHS)
  kernels = transforms.select(params, siman.is_binary_kernel(params))
  assert kernels and set(codes) == {transforms.path_str(p[:-1]) for p in kernels}
  for p, w in kernels.items():
    w = np.asarray(w, np.float64)
    b = np.asarray(codes[transforms.path_str(p[:-1])]).reshape(-1, w.shape[-1])
    n = b.shape[0]
    assert set(np.unique(b)) <= {0.0, 1.0}
    np.testing.assert_array_equal(b.sum(0), n // 2)          # exactly half ones (even N)
    # The stored weights are the last post_step projection with p = 15 (1 - (E-1)/E): every
    # |w| lies in [L, H] and the p% smallest / largest magnitudes of the layer sit exactly at L / H.
    mag = np.abs(w).ravel()
    lo, hi = mag.min(), mag.max()
    frac_lo = np.mean(np.isclose(mag, lo, rtol=1e-6, atol=0))
    frac_hi = np.mean(np.isclose(mag, hi, rtol=1e-6, atol=0))
    assert abs(frac_lo - p_last / 100) < 0.01 and abs(frac_hi - p_last / 100) < 0.01, (
        p, frac_lo, frac_hi, p_last)
