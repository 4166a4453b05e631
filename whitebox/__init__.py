"""White-Box channel pruning (Zhang et al., "Carrying out CNN Channel Pruning in a White Box",
TNNLS 2022; official code zyxxmu/White-Box), as the official code runs it.

Functional API (masks ``M [K, C]``; every function's docstring gives shapes and the code it
follows)::

  class_weights(key, labels, K)        u [B, K]: Uniform[0, 1), 1 at the true class
  class_gate(M, labels, key)           g = u M [B, C] (stage 1, every masked position)
  apply_gate(x, g)                     x [B, H, W, C] * g
  mask_regularizer(masks, lam)         lam * sum_l || sum_k M_l ||_2 over every allocated mask
  channel_scores(M, halve)             |sum_k M| (/2 for VGG, MobileNet-V2)
  folded_scales(M)                     m = sum_k M / 2, multiplied into BN gamma/beta
  global_vote(scores, flops_fn, target, min_preserve=0.3)   the keep-ratio loop from 0.9 by 0.01
  inherit(rules, params, batch_stats, fresh_params, fresh_batch_stats)   compact param tree

Per model family (``whitebox.families.Plan``): mask sites through the zoo's tap sites, which
widths a vote narrows, the random layers, and the surgery rules. Stage 2 end to end:
``whitebox.compact`` (``prune``, ``compact_variables``, ``layer_report``). Training (three stages
as one resumable staged run): ``python -m whitebox.train --config=whitebox/configs/<run>.py
--workdir=DIR``.
"""
from whitebox.families import CLASS_MODEL_KWARGS, MaskSite, Plan, Rule, family_of
from whitebox.gate import (apply_gate, channel_scores, class_gate, class_weights, folded_scales,
                           gate_tap, label_free_gate, mask_regularizer)
from whitebox.compact import (MASKS, Pruning, compact_variables, dense_flops, init_masks,
                            layer_report, prune, reduction_fn)
from whitebox.surgery import inherit, scale_report
from whitebox.vote import Vote, global_vote, select

__all__ = ['CLASS_MODEL_KWARGS', 'MASKS', 'MaskSite', 'Plan', 'Pruning', 'Rule', 'Vote',
           'apply_gate', 'channel_scores', 'class_gate', 'class_weights', 'compact_variables',
           'dense_flops', 'family_of', 'folded_scales', 'gate_tap', 'global_vote', 'inherit',
           'init_masks', 'label_free_gate', 'layer_report', 'mask_regularizer', 'prune',
           'reduction_fn', 'scale_report', 'select']
