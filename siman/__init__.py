"""SiMaN (Lin et al., TPAMI 2022): sign-to-magnitude weight binarization, as the official code
lmbxmu/SiMaN does it (spec ``shared/papers/binary-recu-siman.md`` §2).

    from siman import siman_binarize, binary_code, project, percent_schedule
    bw = siman_binarize(w)                  # {-1,+1}: +1 on the larger-|w| half of each channel
    w = project(w, percent_schedule(e, E))  # the per-forward centring + percentile clipping

Training: ``python -m siman.train --config=siman/configs/<name>.py --workdir=DIR``; the quick
experiment on digits: ``siman.quick.run``. See README.md for paper / code / port differences.
"""
from siman.siman import (CODE_METHODS, PERCENT_MAX, angle_alignment_k, binarize_params,
                         binary_code, binary_codes, binary_kernel_paths, decay_mask,
                         decay_rule_for, is_binary_kernel, laplace_fit, percent_schedule,
                         percentile_of_sorted, project, project_params, reproject_params,
                         siman_binarize, standardized_magnitude, straight_through_code)

__all__ = ['CODE_METHODS', 'PERCENT_MAX', 'angle_alignment_k', 'binarize_params', 'binary_code',
           'binary_codes', 'binary_kernel_paths', 'decay_mask', 'decay_rule_for',
           'is_binary_kernel', 'laplace_fit', 'percent_schedule', 'percentile_of_sorted',
           'project', 'project_params', 'reproject_params', 'siman_binarize',
           'standardized_magnitude', 'straight_through_code']
