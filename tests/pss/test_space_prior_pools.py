"""PSS-Net's host-side math against closed forms, brute force and the paper's fixtures."""
import math
import random

import numpy as np
import pytest

from common import flops
from pss import pools as P
from pss import prior as prior_lib
from pss.space import Space, make_divisible, subnet_flops

MBV1 = Space('mobilenet_v1')
MBV2 = Space('mobilenet_v2')
TINY = Space('mobilenet_v1_tiny', (0.5, 1.0), (24, 32), 4, 10)


def _make_divisible_ref(v, divisor=8, min_value=None):
  # slimmable_networks' rule written out in plain Python.
  min_value = divisor if min_value is None else min_value
  new = max(min_value, int(v + divisor / 2) // divisor * divisor)
  return new + divisor if new < 0.9 * v else new


def test_make_divisible_known_values():
  assert [make_divisible(v) for v in (24, 18, 12, 100, 0.75 * 32, 1, 3.9)] == \
      [24, 24, 16, 104, 24, 8, 8]
  v = np.random.default_rng(0).uniform(0.1, 2000, 5000)
  np.testing.assert_array_equal(make_divisible(v), [_make_divisible_ref(x) for x in v])
  assert set(MBV1.resolutions) == set(range(128, 225, 8))
  r, _ = MBV1.sample(np.random.default_rng(1), 4000)
  assert set(r.tolist()) == set(range(128, 225, 8))
  # Rounding a uniform value to the nearest grid point: the two ends get half the mass.
  counts = np.bincount((r - 128) // 8, minlength=13) / len(r)
  assert counts[0] < 0.7 * counts[6] and counts[-1] < 0.7 * counts[6]


@pytest.mark.parametrize('space,res,mult,ref', [
    (MBV1, 224, 1.0, 568.79), (MBV1, 128, 0.75, 106.78), (MBV1, 224, 0.75, 325.44),
    (MBV1, 128, 1.0, 186.42), (MBV2, 224, 1.0, 300.84), (MBV2, 128, 0.75, 69.15),
    (MBV2, 224, 0.75, 209.13), (MBV2, 128, 1.0, 99.09), (TINY, 32, 1.0, 4.60),
    (TINY, 24, 0.5, 0.78)])
def test_flops_fixtures(space, res, mult, ref):
  ch = space.channels_of(np.full((1, space.num_multipliers), mult))
  assert round(subnet_flops(space, [res], ch)[0] / 1e6, 2) == ref


@pytest.mark.parametrize('space', [MBV1, MBV2, TINY], ids=['v1', 'v2', 'tiny'])
def test_vectorised_flops_equal_common_flops(space):
  r, c = space.sample(np.random.default_rng(3), 12)
  got = subnet_flops(space, r, c)
  for i in range(len(r)):
    ref = flops.count(space.model, space.widths(c[i]), (int(r[i]), int(r[i])),
                      space.num_classes, convention='macs')[0]
    assert got[i] == ref


def test_flops_monotone_and_dead_mbv2_tail():
  rng = np.random.default_rng(4)
  for space in (MBV1, MBV2):
    mults = rng.uniform(0.75, 1.0, (50, space.num_multipliers))
    r = rng.choice(space.resolutions, 50)
    base = subnet_flops(space, r, space.channels_of(mults))
    for s in range(space.num_multipliers):
      up = mults.copy()
      up[:, s] = np.minimum(1.0, up[:, s] + 0.1)
      assert np.all(subnet_flops(space, r, space.channels_of(up)) >= base)
    assert np.all(subnet_flops(space, np.minimum(r + 8, 224), space.channels_of(mults)) >= base)
  m = rng.uniform(0.75, 1.0, (5, 9))
  m2 = m.copy()
  m2[:, 8] = 0.75
  np.testing.assert_array_equal(MBV2.channels_of(m), MBV2.channels_of(m2))


def test_canonical_keys_alias_multipliers():
  a = MBV1.channels_of(np.asarray([[0.751] * 14]))[0]
  b = MBV1.channels_of(np.asarray([[0.753] * 14]))[0]
  assert not np.array_equal(np.asarray([0.751] * 14), np.asarray([0.753] * 14))
  assert MBV1.key(224, a) == MBV1.key(224, b)
  assert MBV1.key(224, a) != MBV1.key(216, a)


def test_banker_rounding():
  assert prior_lib.round_metric(125, 10) == 120 and prior_lib.round_metric(135, 10) == 140
  assert prior_lib.round_metric(568.79, 10) == 570
  assert prior_lib.round_metric(1.25, 0.5) == 1.0 and prior_lib.round_metric(1.75, 0.5) == 2.0
  v = np.arange(0, 1000, 5)
  np.testing.assert_array_equal(prior_lib.round_metric(v, 10), [round(x / 10) * 10 for x in v])
  with pytest.raises(ValueError, match='step must be > 0'):
    prior_lib.round_metric(1.0, 0)


def test_schedules():
  e = 250
  assert prior_lib.exp_schedule(1.0, 0.01, 0, e) == 1.0
  assert math.isclose(prior_lib.exp_schedule(1.0, 0.01, e / 2, e), 0.1)
  assert math.isclose(prior_lib.exp_schedule(1.0, 0.01, e - 1, e), 0.01 ** ((e - 1) / e))


@pytest.fixture(scope='module')
def tiny_prior():
  metric = lambda r, c: prior_lib.to_mega(TINY.flops(r, c))
  return prior_lib.build_prior(TINY, metric, 20_000, 0.5, 1.0, 4.5,
                               np.random.default_rng(0)), metric


def test_prior_bins_and_marginals(tiny_prior):
  prior, metric = tiny_prior
  assert prior.bins.tolist() == [1.5, 2.0, 2.5, 3.0, 3.5, 4.0]
  # Marginals equal the counts of the generating samples (brute force over the samples).
  b = 2
  sel = prior.samples_bin == b
  for j, r in enumerate(prior.resolutions):
    assert math.isclose(prior.res_probs[b, j], np.mean(prior.samples_res[sel] == r))
  for s in range(len(TINY.base)):
    for j, v in enumerate(TINY.slot_values()[s]):
      assert math.isclose(prior.slot_probs[b, s, j], np.mean(prior.samples_ch[sel, s] == v))
  assert np.allclose(prior.res_probs.sum(1), 1) and np.allclose(prior.slot_probs.sum(2), 1)


def test_prior_samples_land_in_their_bin(tiny_prior):
  prior, metric = tiny_prior
  rng = np.random.default_rng(1)
  for b in range(len(prior.bins)):
    for _ in range(20):
      r, c = prior_lib.sample_prior(prior, metric, b, rng)
      assert prior_lib.round_metric(metric([r], [c])[0], 0.5) == prior.bins[b]


def test_pool_rules():
  pools = P.SubnetPools([1.0], capacity=3)
  keys = [(32, (i,)) for i in range(5)]
  for k, m in zip(keys[:3], (-1.0, -2.0, -0.5)):
    assert pools.insert(0, k, m) is None
  assert pools.size(0) == 3 and pools.full(0)
  assert pools.insert(0, keys[3], -0.1) == keys[1]          # the argmin goes
  assert pools.insert(0, keys[4], -9.0) == keys[4]          # a new worst entry evicts itself
  pools.insert(0, keys[0], -2.0)                            # revisit: EMA
  assert math.isclose(pools.pools[0][keys[0]], 0.9 * -1.0 + 0.1 * -2.0)
  assert [k for k, _ in pools.top(0, 3)] == [keys[3], keys[2], keys[0]]


def test_softmax_sampling_frequencies_chi_square():
  from scipy import stats
  pools = P.SubnetPools([1.0], capacity=4)
  metrics = [-1.0, -1.2, -1.5, -2.0]
  for i, m in enumerate(metrics):
    pools.insert(0, (32, (i,)), m)
  rng = np.random.default_rng(0)
  t = 0.5
  n = 10_000
  draws = [pools.sample(0, t, rng)[1][0] for _ in range(n)]
  obs = np.bincount(draws, minlength=4)
  z = np.exp(np.asarray(metrics) / t)
  exp = n * z / z.sum()
  assert stats.chisquare(obs, exp).pvalue > 1e-3
  # Equal metrics: uniform; T -> 0: the argmax.
  eq = P.SubnetPools([1.0], capacity=3)
  for i in range(3):
    eq.insert(0, (32, (i,)), -1.0)
  obs = np.bincount([eq.sample(0, 1.0, rng)[1][0] for _ in range(3000)], minlength=3)
  assert stats.chisquare(obs).pvalue > 1e-3
  assert all(pools.sample(0, 1e-4, rng) == (32, (0,)) for _ in range(200))


def test_pools_and_rng_round_trip_exactly():
  pools = P.SubnetPools([1.5, 2.0], capacity=3)
  rng = np.random.default_rng(0)
  for i in range(20):
    pools.insert(i % 2, (24 + 4 * (i % 3), (i, i + 1)), float(rng.normal()) / 3)
  d = P.rng_state_to_json(rng)
  import json
  back = P.SubnetPools.from_json(json.loads(json.dumps(pools.to_json())))
  assert back.pools == pools.pools and back.bins == pools.bins
  rng2 = P.rng_from_json(json.loads(json.dumps(d)))
  np.testing.assert_array_equal(rng.random(10), rng2.random(10))


def test_bad_space():
  with pytest.raises(ValueError, match='width_range'):
    Space('mobilenet_v1', (1.0, 0.5))
  with pytest.raises(ValueError, match="model must be one of"):
    Space('resnet50')
