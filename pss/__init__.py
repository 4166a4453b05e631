"""PSS-Net: a resource-adaptive supernet trained by prioritized subnet sampling (Chen, Lin, Ji,
Cao; TPAMI 2023; official code chenbong/PSS-Net).

Functional API::

    from pss import Space, make_divisible, subnet_flops, round_metric, exp_schedule
    space = Space('mobilenet_v1')                         # 14 multipliers in [0.75, 1], 128..224
    flops = subnet_flops(space, res, channels)            # [N] MACs, vectorised
    prior = build_prior(space, metric, 100_000, 10, 110, 570, rng)
    res, ch = sample_prior(prior, metric, b, rng)         # a subnet of bin index b
    pools = SubnetPools(prior.bins, capacity=50)          # insert / EMA / evict the worst
    loss, (bs, metrics, logits) = pss_loss(apply_fn, params, bs, x, y, counts, res)
    stats = recalibrate_bn(batch_stats_fn, batches)       # exact BN post-statistics

``python -m pss.train`` trains, ``python -m pss.switch`` returns the best retained subnet under
a budget as a plain narrow model, ``python -m pss.latency_table`` measures the latency table,
``python -m pss.bench`` times the host-side pool work and counts compilations.
"""
from pss.pools import SubnetPools, softmax_probs
from pss.prior import Prior, build_prior, exp_schedule, round_metric, sample_prior
from pss.space import Space, make_divisible, subnet_flops
from pss.supernet import decay_mask, pss_loss, recalibrate_bn, resize

__all__ = ['Prior', 'Space', 'SubnetPools', 'build_prior', 'decay_mask', 'exp_schedule',
           'make_divisible', 'pss_loss', 'recalibrate_bn', 'resize', 'round_metric',
           'sample_prior', 'softmax_probs', 'subnet_flops']
