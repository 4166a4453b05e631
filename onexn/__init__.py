"""1xN block sparsity (Lin et al., "1xN Pattern for Pruning Convolutional Neural Networks", TPAMI
2022; official code lmbxmu/1xN), as the official code does it (``onexn/README.md``).

Functional API (pure functions on HWIO kernels and parameter trees)::

  block_scores(kernel, n)              L1 of every 1xN block               [C_in, C_out/N]
  block_mask(kernel, n, p)             prune int(#blocks * p) lowest-L1 blocks
  rearrange_permutation(kernel)        filters sorted by L1, ascending (official ``rearrange_w``)
  rearranged_block_mask(kernel, n, p)  block mask on the sorted filters, scattered back
  weight_mask / filter_mask / random_block_mask     the official baselines
  model_masks(params, specs, model_name, pattern=, p=, n=, rearrange=, ...)
                                       every layer of a model, with the official per-model rules
  absorb_plan / permute_pair           physical rearrangement (layer, BN, depthwise, consumer)
  export_sparse(params, batch_stats, masks, model_cfg, n=N)   sparse inference function
  end_to_end_latency()                 MobileNet-V2 224x224 batch 1: dense vs 1x4-sparse CPU time

Modules: ``block_sparse`` (the packed format: PackedBlockSparse, pack, unpack), ``ops``
(sparse_matmul, sparse_matmul_cf: the xla_ext kernel or the dense fallback), ``conv``
(sparse_conv: NHWC conv through im2col), ``export`` (export_sparse), ``latency``
(end_to_end_latency and the timing it uses).
"""
from onexn.layer_policy import (layer_mask, mask_options, masked_layers, model_masks,
                                official_alternating_rule, rearranged_layers)
from onexn.permute import (AbsorbPlan, absorb_plan, block_permutation_from_mask, permute_pair)
from onexn.pruning import (block_mask, block_scores, filter_mask, inverse_permutation,
                           random_block_mask, rearrange_permutation, rearranged_block_mask,
                           weight_mask)
from onexn.block_sparse import PackedBlockSparse, pack, unpack
from onexn.conv import sparse_conv
from onexn.export import SparseModel, export_sparse
from onexn.latency import end_to_end_latency
from onexn.ops import sparse_matmul, sparse_matmul_cf
