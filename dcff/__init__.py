"""Dynamic-Coded Filter Fusion (Lin et al., "Training Compact CNNs for Image Classification using
Dynamic-coded Filter Fusion", TPAMI; official code lmbxmu/DCFF), as the official code does it
(Lin et al., TPAMI; official code lmbxmu/DCFF).

Functional API (per layer: HWIO kernels ``[k, k, C_in, C]``; see each docstring)::

  temperature(epoch, num_epochs, t_start=1, t_end=1e4, k=1)  T(e), the official schedule
  similarity_distribution(kernel, t)       P [C, C] = softmax(-D * T), float32 as the code
  kl_importance(p)                         s [C], s_j = sum_k mean_g P_jg log(P_jg / (P_kg + 1e-7))
  update_scores(previous, new)             keep the previous scores unless the new are all finite
  select_filters(scores, m)                the m highest scores (never silently index order)
  fuse(kernel, p_selected)                 W_fused = P_sel . W  ([..., C] -> [..., m], jnp)
  layer_update(kernel, epoch, E, m, ...)   one layer's per-epoch steps 1-7

Network level (``dcff.network``): ``make_plan(model, cprate, num_classes)``,
``init_params(plan, rng)``, ``init_fusion_state(plan)``,
``update_fusion_state(params, state, plan, epoch, E)``, ``fused_params(params, state, plan)``,
``export_compact(params, state, plan) -> (compact_model_cfg, compact_params)``. Official cprate
layouts: ``dcff.cprate`` (``parse_cprate``, ``compact_widths``, ``README_CPRATES``). Training:
``python -m dcff.train``; the compact model alone: ``python -m dcff.evaluate``.
"""
from dcff.cprate import README_CPRATES, compact_widths, layer_wise_cprate, parse_cprate
from dcff.fusion import (fuse, kl_importance, kl_matrix, layer_update, select_filters,
                         similarity_distribution, stable_slots, temperature, update_scores)
from dcff.network import (FusionPlan, export_compact, fused_params, init_fusion_state,
                          init_params, make_plan, update_fusion_state)

__all__ = ['README_CPRATES', 'FusionPlan', 'compact_widths', 'export_compact', 'fuse',
           'fused_params', 'init_fusion_state', 'init_params', 'kl_importance', 'kl_matrix',
           'layer_update', 'layer_wise_cprate', 'make_plan', 'parse_cprate', 'select_filters',
           'similarity_distribution', 'stable_slots', 'temperature', 'update_fusion_state',
           'update_scores']
