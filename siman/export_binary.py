"""SiMaN networks as bit-packed binary inference (``common.binary_export`` on ``xla_ext.binconv``).

    from siman import export_binary
    exported = export_binary(model, train.load_variables(workdir))
    logits = exported(images)                   # the binary convs run as XNOR-popcount

The weights are binarized as the simulated eval forward does: SiMaN's stored code B
(``batch_stats['binary_codes']``, the eval forward's *stale* B of the last training batch,
lmbxmu/SiMaN ``modules/binarized_modules.py``), ``2B - 1``; the ``centred_sign`` / ``sign_ste``
arms' ``sign(w - mean_c w)`` / ``sign(w)``. Each binary conv's input is SiMaN's activation
binarizer, ``sign((a - mean) / std)`` per sample in train *and* eval, packed with 0 -> +1 as the
sign of ``a - mean`` (:func:`centred_per_sample`: the same bits without the variance). The FP
stem conv, the FP downsample convs of the ImageNet ResNets and the classifier stay in float.
"""
from __future__ import annotations

from typing import Any, Dict

import flax.linen as nn
import jax
import jax.numpy as jnp

from common import binarize, binary_export, transforms
from siman import siman
from siman import train as siman_train


def centred_per_sample(a: jax.Array) -> jax.Array:
  """``a - mean(a)`` per sample (mean over every axis but the batch), ``[B, ...]`` -> same.

  What the export packs for :func:`siman.siman.siman_activation`: ``sign((a - mean) / sqrt(var +
  eps))`` has the sign of ``a - mean`` (the divisor is positive), so the variance and the
  division (lmbxmu/SiMaN ``modules/binarized_modules.py: BinarizeConv2d.forward``) change no bit
  of the packed input and are skipped: one reduction instead of two, and no divide pass.
  """
  return a - jnp.mean(a, axis=tuple(range(1, a.ndim)), keepdims=True)


def export_binary(model: nn.Module, variables: Dict[str, Any], *,
                  weight_binarizer: str = 'siman', backend: str = 'auto', isa: str = 'auto',
                  num_threads: int = 0) -> binary_export.BinaryExport:
  """Exports a trained SiMaN network (any ``siman_*`` model with binary activations).

  Args:
    model: the flax module (``SiMaN(config).build_model()`` or ``common.models.get_model``).
    variables: ``{'params', 'batch_stats'}`` of the trained run, ``batch_stats`` holding the
      codes under ``'binary_codes'`` for weight_binarizer 'siman'
      (``common.train.load_variables(workdir)``).
    weight_binarizer: 'siman' | 'centred_sign' | 'sign_ste', as the run's
      ``config.method.weight_binarizer``.
    backend, isa, num_threads: as ``common.binary_export.export``.
  Returns:
    a ``common.binary_export.BinaryExport``: ``exported(images [B, H, W, 3]) -> logits``, the
    same as ``SiMaN.forward(..., train=False)``.
  Raises:
    ValueError: an unknown or non-binary weight_binarizer, or 'siman' without stored codes.
  """
  modes = [m for m in siman_train.WEIGHT_BINARIZERS if m != 'none']
  if weight_binarizer not in modes:
    raise ValueError(f'export_binary: weight_binarizer must be one of {modes} (a binary run); got '
                     f'{weight_binarizer!r}')
  bs = dict(variables.get('batch_stats', {}))
  codes = bs.pop(siman_train.CODES, None)
  if weight_binarizer == 'siman' and codes is None:
    raise ValueError(f"export_binary: SiMaN's eval forward uses the stored codes, but "
                     f"batch_stats has no {siman_train.CODES!r} entry (keys: {sorted(bs)})")
  params = variables['params']
  if weight_binarizer == 'siman':
    params = siman.binarize_params(params, codes)
  else:   # SiMaN.effective_params of the two control arms
    fn = siman.centred_sign_binarize if weight_binarizer == 'centred_sign' else binarize.sign_ste
    params = transforms.map_kernels(fn, params, siman.is_binary_kernel(params))
  return binary_export.export(model, {'params': params, 'batch_stats': bs}, backend=backend,
                              isa=isa, num_threads=num_threads,
                              sign_equivalents={siman.siman_activation: centred_per_sample})
