"""ReCU networks as bit-packed binary inference (``common.binary_export`` on ``xla_ext.binconv``).

    from recu import export_binary
    exported = export_binary(model, train.load_variables(workdir))
    logits = exported(images)                   # the binary convs run as XNOR-popcount

The weights are binarized as the simulated eval forward does (``recu.train.binarize_params``:
ReCU ``sign(clip(w1, -Q, Q)) = sign(w - mean_c w)``, or the ``sign_ste`` control's ``sign(w)``),
then packed one bit each; each binary conv's input is ReCU's activation binarizer in eval,
``sign(a)`` (z-hXu/ReCU ``modules/binarized_modules.py: BinarizeConv2d.forward``: the variance
scaling only runs in training), packed with 0 -> +1. The FP stem conv, the FP downsample convs
of the ImageNet ResNets and the classifier stay in float.
"""
from __future__ import annotations

from typing import Any, Dict

import flax.linen as nn

from common import binary_export
from recu import train as recu_train


def export_binary(model: nn.Module, variables: Dict[str, Any], *, tau: float = 1.0,
                  weight_binarizer: str = 'recu', backend: str = 'auto', isa: str = 'auto',
                  num_threads: int = 0) -> binary_export.BinaryExport:
  """Exports a trained ReCU network (any ``recu_*`` model built with ``binary=True``).

  Args:
    model: the flax module (``ReCU(config).build_model()`` or ``common.models.get_model``).
    variables: ``{'params', 'batch_stats'}`` of the trained run (the latent float weights,
      e.g. ``common.train.load_variables(workdir)``).
    tau: the clamp's tau. The forward ``sign(clip(w1, -Q, Q))`` equals ``sign(w - mean_c w)`` for
      every tau in [0.5, 1] (the clamp only changes the backward), so the packed weights do not
      depend on it.
    weight_binarizer: 'recu' or 'sign_ste', as the run's ``config.method.weight_binarizer``.
    backend, isa, num_threads: as ``common.binary_export.export``.
  Returns:
    a ``common.binary_export.BinaryExport``: ``exported(images [B, H, W, 3]) -> logits``.
  Raises:
    ValueError: weight_binarizer 'none' (nothing is binary) or unknown.
  """
  if weight_binarizer not in ('recu', 'sign_ste'):
    raise ValueError(f"export_binary: weight_binarizer must be 'recu' or 'sign_ste' (a binary "
                     f'run); got {weight_binarizer!r}')
  params = recu_train.binarize_params(variables['params'], tau, weight_binarizer)
  return binary_export.export(model, {'params': params,
                                      'batch_stats': variables.get('batch_stats', {})},
                              backend=backend, isa=isa, num_threads=num_threads)
