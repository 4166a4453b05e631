"""ReCU: Reviving the Dead Weights in Binary Neural Networks (Xu et al., ICCV 2021), as the official
z-hXu/ReCU code does it (spec ``shared/papers/binary-recu-siman.md`` §1).

Functional API; the models are ``common.models`` ``recu_*`` (``common/models/bnn_recu.py``)::

    from recu import binarize_weight, tau_schedule
    tau = tau_schedule(epoch, num_epochs)            # 0.85 -> 0.99, exponential (§1.3)
    bw = binarize_weight(w, tau)                     # sign(clip(w1, -Q, Q)), identity STE (§1.1)

Training: ``python -m recu.train --config=recu/configs/<name>.py --workdir=DIR``.
"""
from recu.recu import (SCALE, TAU_MAX, TAU_MIN, binarize_weight, clamp_threshold, dead_fraction,
                       layer_diagnostics, quantization_error, recu_clamp, sign_weight, standardize,
                       tau_schedule, weight_entropy)

__all__ = ['SCALE', 'TAU_MAX', 'TAU_MIN', 'binarize_weight', 'clamp_threshold', 'dead_fraction',
           'layer_diagnostics', 'quantization_error', 'recu_clamp', 'sign_weight', 'standardize',
           'tau_schedule', 'weight_entropy']
