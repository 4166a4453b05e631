"""1xN block sparsity (Lin et al., "1xN Pattern for Pruning Convolutional Neural Networks", TPAMI
2022; official code lmbxmu/1xN), as the official code does it (spec
``shared/papers/pruning-dcff-1xn-whitebox-jackpot.md`` §2; ``onexn/README.md``).

Functional API (pure functions on HWIO kernels and parameter trees)::

  block_scores(kernel, n)              L1 of every 1xN block               [C_in, C_out/N]
  block_mask(kernel, n, p)             prune int(#blocks * p) lowest-L1 blocks
  rearrange_permutation(kernel)        filters sorted by L1, ascending (official ``rearrange_w``)
  rearranged_block_mask(kernel, n, p)  block mask on the sorted filters, scattered back
  weight_mask / filter_mask / random_block_mask     the official baselines
  model_masks(params, cfg)             every layer of a model, with the official per-model rules
  absorb_plan / permute_pair           physical rearrangement (layer, BN, depthwise, consumer)
  export_sparse(params, batch_stats, masks, model_cfg, n=N)   sparse inference function
  end_to_end_latency()                 MobileNet-V2 224x224 batch 1: dense vs 1x4-sparse CPU time
  pack / unpack / sparse_matmul / sparse_conv    the BSR format and the xla_ext kernel
  sparse_matmul_cf                     channels-first kernel with fused bias/residual/ReLU(6)
"""
from onexn.layer_policy import (layer_mask, masked_layers, model_masks, official_alternating_rule,
                                rearranged_layers)
from onexn.permute import (AbsorbPlan, absorb_plan, block_permutation_from_mask, permute_pair)
from onexn.pruning import (block_mask, block_scores, filter_mask, inverse_permutation,
                           random_block_mask, rearrange_permutation, rearranged_block_mask,
                           weight_mask)
from onexn.export import SparseModel, end_to_end_latency, export_sparse
# The packed format and kernels (kernel engineer's ``onexn/sparse.py``).
from onexn.sparse import (PackedBlockSparse, pack, sparse_conv, sparse_matmul, sparse_matmul_cf,
                          unpack)
