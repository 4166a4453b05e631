"""Global voting (zyxxmu/White-Box ``cifar.py: build_*_pruned_model``): a hand-traced case and
the invariants of the keep-ratio loop."""
import numpy as np
import pytest

import whitebox as wb
from whitebox import vote


def test_hand_traced_vote():
  # Two layers, N = 9 scores; FLOPs of a candidate = wA * wB + 10 (dense 30), target 0.5.
  a = np.asarray([0.9, 0.1, 0.5, 0.7])
  b = np.asarray([0.2, 0.8, 0.3, 0.6, 0.4])
  flops = lambda keep, prev: (30.0 - (keep[0].size * keep[1].size + 10.0)) / 30.0
  v = wb.global_vote([a, b], flops, 0.5, min_preserve=0.3)
  # rho = 0.9: n = int(8.1) = 8, tau = 0.2 -> A keeps {0, 2, 3}, B keeps all: 25 -> 1/6.
  rho0, tau0, red0 = v.history[0]
  assert rho0 == 0.9 and tau0 == 0.2 and red0 == pytest.approx(5 / 30)
  # n = 7 (tau 0.3): 3 x 4 -> 22; n = 6 (0.4): 3 x 3 -> 19; n = 5 (0.5): 3 x 2 -> 16 (0.467 <
  # 0.5); n = 4 (tau 0.6): A {0, 3}, B {1, 3}: 2 x 2 -> 14, reduction 16/30 >= 0.5: stop.
  assert [k.tolist() for k in v.keep] == [[0, 3], [1, 3]]
  assert v.threshold == 0.6 and v.reduction == pytest.approx(16 / 30)
  # n = int(9 rho) first reaches 4 at rho = 0.55: 36 iterations, rho accumulated by -0.01.
  assert len(v.history) == 36 and v.keep_ratio == pytest.approx(0.55)
  assert all(r < 0.5 for _, _, r in v.history[:-1])
  assert sorted({round(r, 6) for _, _, r in v.history}) == [round(x / 30, 6) for x in
                                                             (5, 8, 11, 14, 16)]


def test_min_preserve_takes_top_scores_in_score_order():
  hi = np.asarray([5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0, 12.0, 13.0, 14.0])
  lo = np.asarray([0.3, 0.1, 0.9, 0.2, 0.8, 0.05, 0.7, 0.0, 0.4, 0.6])
  keep, tau = vote.select([hi, lo], 0.5)
  assert tau == 5.0
  assert keep[0].tolist() == list(range(10))
  # Nothing of `lo` passes tau; it keeps int(10 * 0.3) = 3 channels, best first (topk order).
  assert keep[1].tolist() == [2, 4, 6]
  # A layer where int(C * 0.3) = 0 still keeps one channel (it could not be built empty).
  keep, _ = vote.select([hi, np.asarray([0.1, 0.2, 0.0])], 0.5)
  assert keep[1].tolist() == [1]


@pytest.fixture(scope='module')
def vgg_case():
  plan = wb.Plan('vgg16')
  rng = np.random.default_rng(1)
  masks = {m.name: rng.normal(1.0, 1.0, (10, m.width)) for m in plan.masks}
  scores = [wb.channel_scores(masks[plan.masks[i].name], True) for i in plan.pool]
  fn = wb.reduction_fn(plan, (32, 32), 10)
  return plan, scores, fn


def test_invariants_on_vgg16(vgg_case):
  plan, scores, fn = vgg_case
  target = 0.6
  v = wb.global_vote(scores, fn, target)
  assert v.reduction >= target
  # The first rho meeting the target: every earlier candidate was below it, so the overshoot is
  # below one rho step's worth of reduction.
  assert all(r < target for _, _, r in v.history[:-1])
  assert v.reduction - target < v.reduction - v.history[-2][2]
  rhos = [h[0] for h in v.history]
  assert rhos[0] == 0.9 and all(abs((p - q) - 0.01) < 1e-9 for p, q in zip(rhos, rhos[1:]))
  # min_preserve and the global count implied by tau.
  n = int(sum(s.size for s in scores) * v.keep_ratio)
  assert sum(k.size for k in v.keep) >= n
  for s, k in zip(scores, v.keep):
    assert k.size >= int(0.3 * s.size) and k.size >= 1
    assert len(set(k.tolist())) == k.size


def test_monotone_in_keep_ratio(vgg_case):
  plan, scores, fn = vgg_case
  prev_sets, prev_red = None, -1.0
  for rho in np.arange(0.9, 0.2, -0.05):
    keep, _ = vote.select(scores, float(rho))
    sets = [set(k.tolist()) for k in keep]
    if prev_sets is not None:
      assert all(s <= p for s, p in zip(sets, prev_sets))
    red = fn(keep, 0.0)
    assert red >= prev_red
    prev_sets, prev_red = sets, red


def test_bad_targets():
  with pytest.raises(ValueError, match='target must be in'):
    wb.global_vote([np.ones(4)], lambda k, p: 0.0, 1.5)
  with pytest.raises(ValueError, match='out of reach'):
    wb.global_vote([np.arange(4.0)], lambda k, p: 0.1, 0.5)
