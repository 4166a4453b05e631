"""Depthwise convolution as a sum of shifted slices, and a context that routes a model's depthwise
convs through it.

Why: XLA:CPU lowers a grouped ``lax.conv_general_dilated`` with ``feature_group_count == C`` to a
slow generic loop; at MobileNet shapes on this project's x86 CPUs it is 20-100x slower than
``sum_{dy,dx} slice(x, dy, dx) * w[dy, dx]`` (forward and backward), which is what the MobileNets'
end-to-end CPU time and the quick experiment's training time were dominated by. The result is the
same convolution up to float32 summation order (tested against ``lax``). Nothing 1xN-specific: the
1x1 convs stay the zoo's own modules, depthwise convs are never pruned (spec §2.4).
"""
from __future__ import annotations

import contextlib

import flax.linen as nn
import jax
import jax.numpy as jnp


def as_pair(s):
  if s is None:
    return (1, 1)
  if isinstance(s, int):
    return (s, s)
  return tuple(int(v) for v in s)


def explicit_padding(padding, in_hw, kernel_hw, strides):
  """Flax/lax padding spec -> ``((top, bottom), (left, right))``."""
  if isinstance(padding, str):
    return tuple(tuple(int(v) for v in p) for p in
                 jax.lax.padtype_to_pads(in_hw, kernel_hw, strides, padding.upper()))
  if isinstance(padding, int):
    return ((padding, padding),) * 2
  return tuple(tuple(int(v) for v in p) for p in padding)


def depthwise_conv(x, kernel, strides, padding):
  """Depthwise conv ``[B, H, W, C] * [kh, kw, 1, C] -> [B, Ho, Wo, C]`` as shifted slices.

  Args:
    x: NHWC input.
    kernel: HWIO depthwise kernel ``[kh, kw, 1, C]``.
    strides: int or (sh, sw).
    padding: 'SAME' | 'VALID' | int | ((top, bottom), (left, right)).
  Returns:
    ``lax.conv_general_dilated(x, kernel, strides, padding, feature_group_count=C)``.
  """
  kh, kw = kernel.shape[:2]
  sh, sw = as_pair(strides)
  b, h, w, c = x.shape
  (pt, pb), (pl, pr) = explicit_padding(padding, (h, w), (kh, kw), (sh, sw))
  xp = jnp.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
  ho, wo = (h + pt + pb - kh) // sh + 1, (w + pl + pr - kw) // sw + 1
  acc = None
  for dy in range(kh):
    for dx in range(kw):
      t = jax.lax.slice(xp, (0, dy, dx, 0), (b, dy + (ho - 1) * sh + 1, dx + (wo - 1) * sw + 1, c),
                        (1, sh, sw, 1)) * kernel[dy, dx, 0]
      acc = t if acc is None else acc + t
  return acc


def is_depthwise(module: nn.Module, x) -> bool:
  """A linen Conv with ``feature_group_count == C_in == C_out > 1``."""
  return (isinstance(module, nn.Conv) and module.feature_group_count > 1
          and module.feature_group_count == x.shape[-1] == module.features)


def _interceptor(next_fun, args, kwargs, context):
  mod = context.module
  if (context.method_name == '__call__' and isinstance(mod, nn.Conv)
      and is_depthwise(mod, args[0]) and mod.has_variable('params', 'kernel')):
    params = mod.variables['params']
    y = depthwise_conv(args[0], params['kernel'], mod.strides, mod.padding)
    if mod.use_bias:
      y = y + params['bias']
    return y
  return next_fun(*args, **kwargs)


@contextlib.contextmanager
def fast_depthwise(enabled: bool = True):
  """Within the context, ``model.apply`` runs every depthwise ``nn.Conv`` as shifted slices.

  (``model.init`` is unaffected: the kernel must exist before it is intercepted.)
  """
  if not enabled:
    yield
    return
  with nn.intercept_methods(_interceptor):
    yield
