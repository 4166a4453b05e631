"""SiMaN (Lin et al., TPAMI 2022): sign-to-magnitude weight binarization, as the official code
lmbxmu/SiMaN does it (``modules/binarized_modules.py``, ``main.py``,
``models_*``). Importing the package registers the ``siman_*`` networks with ``common.models``
(``siman/models.py``, built from ``common.models.bnn_layers``).

    from siman import siman_binarize, binary_code, project, percent_schedule
    bw = siman_binarize(w)                  # {-1,+1}: +1 on the larger-|w| half of each channel
    w = project(w, percent_schedule(e, E))  # the per-forward centring + percentile clipping

Training: ``python -m siman.train --config=siman/configs/<name>.py --workdir=DIR``; the quick
experiment on digits: ``siman.quick.run``. See README.md for paper / code / port differences.
"""
from siman.siman import (CODE_METHODS, PERCENT_MAX, SIMAN_TRAINING, angle_alignment_k,
                         binarize_params, binary_code, centred_sign_binarize, binary_codes, binary_kernel_paths, decay_mask,
                         decay_rule_for, is_binary_kernel, laplace_fit, percent_schedule,
                         percentile_of_sorted, project, project_params, reproject_params,
                         siman_activation, siman_binarize, standardized_magnitude,
                         straight_through_code)
from siman import models  # noqa: F401  (registers the siman_* networks)

__all__ = ['CODE_METHODS', 'PERCENT_MAX', 'SIMAN_TRAINING', 'angle_alignment_k', 'binarize_params',
           'binary_code', 'centred_sign_binarize',
           'binary_codes', 'binary_kernel_paths', 'decay_mask', 'decay_rule_for',
           'is_binary_kernel', 'laplace_fit', 'percent_schedule', 'percentile_of_sorted',
           'project', 'project_params', 'reproject_params', 'siman_activation', 'siman_binarize',
           'standardized_magnitude', 'straight_through_code']
from siman.export_binary import export_binary  # noqa: E402,F401  (bit-packed inference, xla_ext.binconv)
