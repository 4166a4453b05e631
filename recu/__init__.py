"""ReCU: Reviving the Dead Weights in Binary Neural Networks (Xu et al., ICCV 2021), as the official
z-hXu/ReCU code does it (``modules/binarized_modules.py``, ``main.py``, ``models_*``).

Functional API; importing the package registers the ``recu_*`` networks with ``common.models``
(``recu/models.py``, built from ``common.models.bnn_layers``)::

    from recu import binarize_weight, tau_schedule
    tau = tau_schedule(epoch, num_epochs)            # 0.85 -> 0.99, exponential (per epoch)
    bw = binarize_weight(w, tau)                     # sign(clip(w1, -Q, Q)), identity STE

Training: ``python -m recu.train --config=recu/configs/<name>.py --workdir=DIR``.
"""
from recu.recu import (SCALE, TAU_MAX, TAU_MIN, binarize_weight, clamp_threshold, dead_fraction,
                       layer_diagnostics, quantization_error, recu_activation, recu_clamp,
                       sign_weight, standardize, tau_schedule, weight_entropy)
from recu import models  # noqa: F401  (registers the recu_* networks)

__all__ = ['SCALE', 'TAU_MAX', 'TAU_MIN', 'binarize_weight', 'clamp_threshold', 'dead_fraction',
           'layer_diagnostics', 'quantization_error', 'recu_activation', 'recu_clamp',
           'sign_weight', 'standardize', 'tau_schedule', 'weight_entropy']
from recu.export_binary import export_binary  # noqa: E402,F401  (bit-packed inference, xla_ext.binconv)
