"""Lottery Jackpots Exist in Pre-trained Models (Zhang et al., TPAMI 2023;
zyxxmu/lottery-jackpots): search a sparse mask over frozen pretrained weights.

Functional API (pure functions over params / mask / score trees):

* ``layer_rates``, ``pruned_counts``: global-magnitude (or uniform) layer-wise rates and the
  per-layer pruned counts ``k_l = int(n_l r_l)`` (``generate_pr_cfg``, ``set_prune_rate``);
* ``magnitude_masks``, ``init_search``: the initial mask (global magnitude pruning) and scores
  (v2 1/0.99, v1 1/0.95, or random);
* ``masked_weight``, ``effective_params``: ``W * b`` with the straight-through gradient to scores;
* ``popup``, ``popup_tree``: the v2 equal-count mask update after each step; ``v1_mask``: v1's
  forward mask from ``|s|``; ``adjust_rate``: the official restriction-rate schedule;
* ``export_sparse``, ``mask_iou``: the jackpot as a dense ``W * b`` model, and mask overlap.

``python -m jackpot.train`` runs the search (and the optional weight tuning) on ``common.train``.
"""
from jackpot.export import export_sparse, mask_iou, sparsity_excluding
from jackpot.search import (adjust_rate, effective_params, init_search, layer_rates,
                            magnitude_masks, masked_weight, popup, popup_tree, pruned_counts,
                            v1_mask, v1_masks)
from jackpot.select import kth_smallest, lowest_k_among

__all__ = ['adjust_rate', 'effective_params', 'export_sparse', 'init_search', 'kth_smallest',
           'layer_rates', 'lowest_k_among', 'magnitude_masks', 'mask_iou', 'masked_weight',
           'popup', 'popup_tree', 'pruned_counts', 'sparsity_excluding', 'v1_mask', 'v1_masks']
