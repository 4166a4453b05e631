"""The quick experiment at its smallest size (one seed, 2 + 2 epochs) on digits."""
import pytest

from whitebox import quick


@pytest.fixture(scope='module')
def out(tmp_path_factory):
  return quick.run(str(tmp_path_factory.mktemp('wb_quick')), smoke=True)


def test_smoke_checks_hold(out):
  assert out['checks'] and all(out['checks'].values()), out['checks']
  methods = {r['method'] for r in out['rows']}
  assert methods == {'White-Box', 'random channels'}
  for r in out['rows']:
    assert r['flops_reduction'] >= quick.TARGET
    assert 0.0 <= r['top1_after_surgery'] <= 1.0
  assert all(p.endswith('.png') for p in out['plots']) and len(out['plots']) == 3
