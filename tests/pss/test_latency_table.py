"""The latency table: keys cover every subnet, sums of block entries, a missing block is an error."""
import numpy as np
import pytest

from pss import latency_table as lt


@pytest.mark.parametrize('name', ['tiny', 'mbv2_imagenet'])
def test_enumerated_keys_cover_sampled_subnets(name):
  space = lt.SPACES[name]()
  keys = set(lt.all_block_keys(space))
  r, c = space.sample(np.random.default_rng(0), 200)
  for i in range(len(r)):
    for k in lt.block_keys(space, r[i], c[i]):
      assert k in keys


def test_metric_is_the_sum_of_block_entries_and_missing_is_an_error(tmp_path):
  space = lt.SPACES['tiny']()
  keys = lt.all_block_keys(space)
  entries = {k: float(i + 1) for i, k in enumerate(keys)}
  table = lt.LatencyTable(entries, 'test')
  table.save(str(tmp_path / 't.json'))
  table = lt.LatencyTable.load(str(tmp_path / 't.json'))
  r, c = space.sample(np.random.default_rng(1), 20)
  got = table.metric(space, r, c)
  want = [sum(entries[k] for k in lt.block_keys(space, r[i], c[i])) for i in range(20)]
  np.testing.assert_allclose(got, want)
  one = lt.block_keys(space, r[0], c[0])[2]
  del table.entries[one]
  with pytest.raises(KeyError, match='no entry for block'):
    table.metric(space, r[:1], c[:1])


def test_measure_times_real_blocks():
  t = lt.measure(['stem/24/8/1', 'dwpw/24/8/16/1', 'fc/8/64/10'], batch=1, repeats=2)
  assert set(t) == {'stem/24/8/1', 'dwpw/24/8/16/1', 'fc/8/64/10'}
  assert all(v > 0 for v in t.values())
