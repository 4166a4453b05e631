"""What a binary network costs: operations and storage, measured from the model's own layers.

Binarized layers are *simulated* here (float32 convs of {-1, +1} tensors), so training and
evaluation save no time; these counts give the numbers a 1-bit deployment would have.

* :func:`op_counts` — per layer, multiply-accumulates of every conv / dense and ``2 * numel`` of
  every BatchNorm (the thop convention of ``common.flops``), split into binary (XNOR-popcount) and
  full-precision work. Shapes come from ``jax.eval_shape`` of the model with its layer calls
  intercepted (``flax.linen.intercept_methods``), so no FLOPs are spent and every BNN variant is
  covered without a hand-written spec. ``ops = fp_flops + bops / 64`` is the usual BNN total
  (Bi-Real Net / ReActNet convention).
* :func:`bits_summary` — binary kernel weights at 1 bit, every other parameter at 32 bits.
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from common.models import bnn_layers
from common import transforms
from siman import siman


def op_counts(model: nn.Module, input_shape: Tuple[int, ...]) -> Tuple[Dict[str, int], List[Dict]]:
  """``({'fp_flops', 'bops', 'flops', 'ops'}, table)`` of one image through ``model``.

  Args:
    model: a linen model ``(x, train) -> logits`` built from ``common.bnn_layers.BinaryConv``,
      ``nn.Conv``, ``nn.Dense`` and ``nn.BatchNorm``.
    input_shape: ``(H, W, C)`` of one image.
  Returns:
    totals — ``fp_flops`` (full-precision MACs + BN), ``bops`` (binary MACs), ``flops``
    (``fp_flops + bops``: the thop count of the same network in full precision) and
    ``ops = fp_flops + bops / 64`` — and one table row per layer (path, kind, binary, flops).
  """
  rows: List[Dict[str, Any]] = []

  def interceptor(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    mod = context.module
    if context.method_name != '__call__':
      return out
    path = '/'.join(mod.path)
    if isinstance(mod, (bnn_layers.BinaryConv, nn.Conv)):
      k = mod.variables['params']['kernel']
      flops = math.prod(out.shape[1:-1]) * out.shape[-1] * math.prod(k.shape[:-1])
      if isinstance(mod, nn.Conv) and mod.use_bias:
        flops += math.prod(out.shape[1:])
      binary = isinstance(mod, bnn_layers.BinaryConv) and mod.act_binarizer is not None
      rows.append({'path': path, 'kind': 'conv', 'binary': binary, 'flops': int(flops)})
    elif isinstance(mod, nn.Dense):
      k = mod.variables['params']['kernel']
      rows.append({'path': path, 'kind': 'dense', 'binary': False, 'flops': int(k.size)})
    elif isinstance(mod, nn.BatchNorm):
      rows.append({'path': path, 'kind': 'bn', 'binary': False,
                   'flops': int(2 * math.prod(out.shape[1:]))})
    return out

  x = jnp.zeros((1,) + tuple(input_shape), jnp.float32)

  def apply():
    variables = model.init(jax.random.PRNGKey(0), x, train=False)
    with nn.intercept_methods(interceptor):
      return model.apply(variables, x, train=False)

  jax.eval_shape(apply)
  bops = sum(r['flops'] for r in rows if r['binary'])
  fp = sum(r['flops'] for r in rows if not r['binary'])
  return {'fp_flops': fp, 'bops': bops, 'flops': fp + bops, 'ops': fp + bops // 64}, rows


def bits_summary(params) -> Dict[str, Any]:
  """Storage of a SiMaN network: binary kernels at 1 bit, every other parameter at 32 bits.

  Returns:
    ``binary_weights`` (count), ``fp_params`` (count, including alpha, BN, PReLU, stem and
    classifier), ``params`` (total), ``model_bits``, ``fp32_model_bits`` and their ratio
    ``memory_saving``.
  """
  binary = sum(int(w.size) for w in transforms.select(params, siman.is_binary_kernel(params)).values())
  total = sum(int(x.size) for x in jax.tree.leaves(params))
  fp = total - binary
  bits = binary + 32 * fp
  return {'binary_weights': binary, 'fp_params': fp, 'params': total, 'model_bits': bits,
          'fp32_model_bits': 32 * total, 'memory_saving': 32 * total / max(bits, 1)}
