"""Uniform fake quantizers (pure functions + one activation module) for post-training quantization.

The asymmetric quantizer is the ZeroQ/GDFQ one that FDDA's code uses (zysxmu/FDDA ``quantization_utils/quant_utils.py``: ``asymmetric_linear_quantization_params`` / ``linear_quantize``):

  scale = (2^k - 1) / max(x_max - x_min, 1e-8)
  zp    = round(scale * x_min) + 2^(k-1)
  q     = clamp(round(scale * x - zp), -2^(k-1), 2^(k-1) - 1)
  x_q   = (q + zp) / scale

with a plain straight-through backward (gradient passed unchanged, no clipping mask). Weights are
quantized per output channel (HWIO kernels: reduce over every axis but the last) from their current
min/max; activations per tensor from an EMA of batch min/max kept in the ``quant_stats`` collection.
A symmetric per-channel quantizer and the LSQ learned-step quantizer complete the set.

Whole networks: :func:`weight_bits` / :func:`activation_bits` assign bit widths (FDDA's F{k}L{k}
and F8L8 rules), :func:`quantize_params` fake-quantizes the kernels of a parameter tree,
:func:`activation_quant_tap` puts a quantizer after every ReLU / ReLU6 through the zoo's tap sites,
and :func:`bits_summary` reports the bits and packed memory per layer.
"""
from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Sequence, Tuple, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


def _check_bits(bits: int) -> int:
  if int(bits) != bits or not 1 <= bits <= 16:
    raise ValueError(f'bits must be an integer in [1, 16]; got {bits}')
  return int(bits)


def straight_through(x: jax.Array, xq: jax.Array) -> jax.Array:
  """Forward ``xq``, backward identity to ``x`` (``x + stop_gradient(xq - x)``)."""
  return x + jax.lax.stop_gradient(xq - x)


def asymmetric_qparams(x_min, x_max, bits: int) -> Tuple[jax.Array, jax.Array]:
  """Scale and zero point of the asymmetric k-bit quantizer (``asymmetric_linear_quantization_params``)."""
  bits = _check_bits(bits)
  scale = (2.0 ** bits - 1) / jnp.maximum(x_max - x_min, 1e-8)
  zp = jnp.round(scale * x_min) + 2.0 ** (bits - 1)
  return scale, zp


def asymmetric_quantize(x, x_min, x_max, bits: int) -> jax.Array:
  """Fake-quantized ``x`` (same shape) with range ``[x_min, x_max]`` broadcast against ``x``.

  Implements ``linear_quantize`` then ``linear_dequantize``: ``(clamp(round(scale x - zp), -2^(k-1), 2^(k-1)-1) + zp) / scale`` with the
  straight-through gradient.
  """
  scale, zp = asymmetric_qparams(x_min, x_max, bits)
  q = jnp.clip(jnp.round(scale * x - zp), -2.0 ** (bits - 1), 2.0 ** (bits - 1) - 1)
  return straight_through(x, (q + zp) / scale)


def quantize_weight_per_channel(w: jax.Array, bits: int) -> jax.Array:
  """Per-output-channel asymmetric fake quantization of a ``[..., C_out]`` kernel.

  The range is the channel's current min/max, held constant in the backward (stop_gradient), as the
  FDDA code recomputes it every forward on the trainable full-precision shadow weights.
  """
  axes = tuple(range(w.ndim - 1))
  lo = jax.lax.stop_gradient(jnp.min(w, axis=axes, keepdims=True))
  hi = jax.lax.stop_gradient(jnp.max(w, axis=axes, keepdims=True))
  return asymmetric_quantize(w, lo, hi, bits)


def symmetric_quantize_per_channel(w: jax.Array, bits: int) -> jax.Array:
  """Symmetric signed per-output-channel quantizer: step ``max|w_c| / (2^(k-1) - 1)``, STE."""
  bits = _check_bits(bits)
  if bits < 2:
    raise ValueError(f'symmetric quantization needs bits >= 2; got {bits}')
  axes = tuple(range(w.ndim - 1))
  qmax = 2.0 ** (bits - 1) - 1
  step = jax.lax.stop_gradient(jnp.maximum(jnp.max(jnp.abs(w), axis=axes, keepdims=True), 1e-8)
                               / qmax)
  return straight_through(w, jnp.clip(jnp.round(w / step), -qmax, qmax) * step)


@jax.custom_vjp
def _round_ste(x):
  return jnp.round(x)


_round_ste.defvjp(lambda x: (jnp.round(x), None), lambda _, g: (g,))


def lsq_quantize(x: jax.Array, step: jax.Array, bits: int, signed: bool = True) -> jax.Array:
  """LSQ (Esser et al. 2020, eq. 1-3): ``round(clip(x / s, Qn, Qp)) * s`` with learned step ``s``.

  The step's gradient is scaled by ``1 / sqrt(numel * Qp)`` (LSQ eq. 4) so that its updates have
  the magnitude of the weights' updates.
  """
  bits = _check_bits(bits)
  qn, qp = (-(2.0 ** (bits - 1)), 2.0 ** (bits - 1) - 1) if signed else (0.0, 2.0 ** bits - 1)
  g = 1.0 / jnp.sqrt(x.size * qp)
  s = step * g + jax.lax.stop_gradient(step - step * g)   # value s, gradient scaled by g
  return _round_ste(jnp.clip(x / s, qn, qp)) * s


def ema_range(old_min, old_max, x, beta: float = 0.9):
  """``beta * old + (1 - beta) * batch`` for the running min and max.

  As ``QuantAct`` (zysxmu/FDDA ``quantization_utils/quant_modules.py``) keeps its activation range
  with ``act_range_momentum``.
  """
  return (beta * old_min + (1 - beta) * jnp.min(x), beta * old_max + (1 - beta) * jnp.max(x))


class ActQuant(nn.Module):
  """Per-tensor activation fake-quantizer with an EMA range in the ``quant_stats`` collection.

  Ranges start at 0 (no bias correction, as the code) and update only when ``quant_stats`` is
  mutable (the code's "unfixed" mode). ``bits=None`` makes it the identity.
  """
  bits: int = 8
  beta: float = 0.9

  @nn.compact
  def __call__(self, x):
    if self.bits is None:
      return x
    lo = self.variable('quant_stats', 'min', lambda: jnp.zeros((), jnp.float32))
    hi = self.variable('quant_stats', 'max', lambda: jnp.zeros((), jnp.float32))
    if self.is_mutable_collection('quant_stats') and not self.is_initializing():
      lo.value, hi.value = ema_range(lo.value, hi.value, jax.lax.stop_gradient(x), self.beta)
    return asymmetric_quantize(x, lo.value, hi.value, self.bits)


# ---------------------------------------------------------------------------------------------
# Whole-network post-training quantization: weight bit widths per layer (first/last-layer rules),
# activation quantizers at the zoo's activation tap sites, and a bits/memory summary.

FIRST_LAST_RULES = ('same', 'first_last_8')


def _is_weight(path, leaf) -> bool:
  return bool(path) and path[-1] == 'kernel' and getattr(leaf, 'ndim', 0) >= 2


def weight_paths(params) -> list:
  """``'/'``-joined paths of every conv / dense kernel of ``params`` (sorted, as ``jax.tree``)."""
  from common import transforms
  return [transforms.path_str(p) for p in transforms.select(params, _is_weight)]


def first_last_weights(params, in_channels: int = 3):
  """``(first, last)`` kernel paths of a classifier: the convs reading the ``in_channels``-channel
  image (the stem; the only HWIO kernels with ``I == in_channels``) and the dense kernels (the
  classifier; the only 2-D kernels of the zoo models).

  Raises:
    ValueError: if either set is empty (the message lists the kernels found).
  """
  from common import transforms
  sel = transforms.select(params, _is_weight)
  first = [transforms.path_str(p) for p, w in sel.items() if w.ndim == 4 and
           w.shape[2] == in_channels]
  last = [transforms.path_str(p) for p, w in sel.items() if w.ndim == 2]
  if not first or not last:
    raise ValueError(f'cannot find the first conv (I == {in_channels}) and the classifier '
                     f'(2-D kernel) among {[transforms.path_str(p) for p in sel]}')
  return first, last


def weight_bits(params, bits: int, first_last_bits: Optional[int] = None,
                in_channels: int = 3) -> Dict[str, int]:
  """``{kernel path: bits}`` for every conv / dense kernel.

  ``first_last_bits=None`` is FDDA's ``F{k}L{k}`` (zysxmu/FDDA ``main_DBNS_CBNS.py``
  ``quantize_model``: every ``Conv2d`` and ``Linear`` at ``qw`` bits); ``first_last_bits=8`` is its
  ``F8L8`` (``main_DBNS_CBNS_8F8L.py`` ``quantize_model_resnet18``: the ``init_block`` conv and the
  ``Linear`` at 8 bits, every other conv at ``qw``). Biases and BN stay float.
  """
  bits = _check_bits(bits)
  out = {p: bits for p in weight_paths(params)}
  if first_last_bits is not None:
    first_last_bits = _check_bits(first_last_bits)
    first, last = first_last_weights(params, in_channels)
    out.update({p: first_last_bits for p in first + last})
  return out


def quantize_params(params, bits: Union[int, Mapping[str, Optional[int]]], where=None):
  """``params`` with conv / dense kernels fake-quantized per output channel (STE); ``[same tree]``.

  Args:
    params: a parameter tree (HWIO conv kernels, ``[in, out]`` dense kernels).
    bits: one bit width for every selected kernel, or ``{kernel path: bits or None}`` (e.g.
      :func:`weight_bits`); a kernel missing from the mapping, or mapped to None, stays float.
    where: ``where(path_tuple, leaf) -> bool`` selecting kernels (default: every conv and dense
      kernel).
  Implements zysxmu/FDDA ``quantization_utils/quant_modules.py`` ``Quant_Conv2d`` /
  ``Quant_Linear`` forward: :func:`quantize_weight_per_channel` on the float shadow weight.
  """
  from common import transforms
  if isinstance(bits, Mapping):
    table = {k: (None if v is None else _check_bits(v)) for k, v in bits.items()}
    lookup = lambda path: table.get(transforms.path_str(path))
  else:
    b = _check_bits(bits)
    lookup = lambda path: b
  sel = where or _is_weight

  def fn(path, w):
    k = lookup(path)
    return w if k is None else quantize_weight_per_channel(w, k)
  return transforms.map_kernels(fn, params, where=sel, with_path=True)


def is_activation_site(site: str) -> bool:
  """Whether a zoo tap site is the output of an activation (ReLU / ReLU6): its last component is
  ``act*`` or ``*_act`` (``act1``, ``layer1_0/act2``, ``block3/dw_act``, ``act_last``)."""
  leaf = site.rsplit('/', 1)[-1]
  return leaf.startswith('act') or leaf.endswith('_act')


def activation_sites(model, input_shape) -> list:
  """Ordered ``[(site, shape)]`` of every activation site of a zoo model (the ReLU / ReLU6 outputs
  that FDDA's ``quantize_model`` follows with a ``QuantAct``)."""
  from common.models.taps import tap_sites
  return [(s, shp) for s, shp in tap_sites(model, input_shape) if is_activation_site(s)]


def activation_bits(sites, bits: int, first_last_bits: Optional[int] = None) -> Dict[str, int]:
  """``{site: bits}`` for the ordered activation ``sites``.

  ``first_last_bits`` (F8L8) sets the first activation (the stem's, inside the code's
  ``init_block``) and the last one (the activation feeding the pooled classifier input, the code's
  ``model.features.stage4.unit2.activ``) to that width (zysxmu/FDDA ``main_DBNS_CBNS_8F8L.py``).
  """
  bits = _check_bits(bits)
  names = [s if isinstance(s, str) else s[0] for s in sites]
  if not names:
    raise ValueError('activation_bits needs at least one activation site')
  out = {s: bits for s in names}
  if first_last_bits is not None:
    out[names[0]] = out[names[-1]] = _check_bits(first_last_bits)
  return out


def activation_quant_tap(act_bits: Mapping[str, int], lo: jax.Array, hi: jax.Array,
                         update: bool, beta: float = 0.9):
  """A zoo tap fake-quantizing every activation site of ``act_bits``, with per-tensor ranges.

  Args:
    act_bits: ``{site: bits}`` in forward order (:func:`activation_bits`); site ``i`` of this
      order uses range ``[lo[i], hi[i]]``.
    lo, hi: ``[n_sites]`` running min / max.
    update: the code's "unfixed" mode: each site first moves its range by :func:`ema_range`
      (``beta``) on the current batch, then quantizes with the new range (``QuantAct.forward``).
  Returns:
    ``(tap, ranges)``: pass ``tap`` to the model; after the model ran (while tracing),
    ``ranges()`` returns the new ``(lo [n], hi [n])`` (unchanged when ``update`` is False).
  Raises:
    ValueError: (when the model runs) a site of ``act_bits`` that the model never reached.
  """
  index = {s: i for i, s in enumerate(act_bits)}
  new_lo, new_hi = list(lo[i] for i in range(len(index))), list(hi[i] for i in range(len(index)))
  seen = set()

  def tap(site, h):
    i = index.get(site)
    if i is None:
      return h
    seen.add(site)
    if update:
      new_lo[i], new_hi[i] = ema_range(new_lo[i], new_hi[i], jax.lax.stop_gradient(h), beta)
    return asymmetric_quantize(h, new_lo[i], new_hi[i], act_bits[site])

  def ranges():
    missing = [s for s in index if s not in seen]
    if missing:
      raise ValueError(f'activation sites {missing} were never reached by the model')
    return jnp.stack(new_lo), jnp.stack(new_hi)
  return tap, ranges


def bits_summary(params, w_bits: Mapping[str, Optional[int]],
                 act_sites: Sequence[Tuple[str, Tuple[int, ...]]],
                 a_bits: Mapping[str, Optional[int]]) -> Dict[str, Any]:
  """Per-layer bit widths and memory of a fake-quantized network (what a packed export would hold).

  Args:
    params: the parameter tree; every leaf not in ``w_bits`` (BN, biases) counts as float32.
    w_bits: ``{kernel path: bits}`` (None = float32).
    act_sites: ``[(site, shape)]`` with the batch dimension first (per-example sizes are used).
    a_bits: ``{site: bits}``.
  Returns:
    ``{'layers': [{'name', 'kind' ('weight' | 'activation' | 'float'), 'numel', 'bits',
    'bytes'}], 'weight_bytes', 'float_param_bytes', 'model_bytes', 'fp32_model_bytes',
    'compression_vs_fp32', 'activation_bytes_per_example', 'fp32_activation_bytes_per_example'}``.
    Fake quantization stores float32 in memory: these are the sizes of packed integer storage.
  """
  from common import transforms
  rows, wbytes, fbytes, total = [], 0.0, 0.0, 0
  for path, leaf in transforms.select(params, lambda p, l: True).items():
    name = transforms.path_str(path)
    n = int(np.prod(np.shape(leaf)))
    total += n
    b = w_bits.get(name)
    if b is None:
      fbytes += 4 * n
      continue
    rows.append({'name': name, 'kind': 'weight', 'numel': n, 'bits': int(b), 'bytes': n * b / 8})
    wbytes += n * b / 8
  abytes = afp = 0.0
  for site, shape in act_sites:
    n = int(np.prod(shape[1:]))
    b = a_bits.get(site)
    afp += 4 * n
    bb = 4 * n if b is None else n * b / 8
    abytes += bb
    rows.append({'name': site, 'kind': 'activation', 'numel': n,
                 'bits': 32 if b is None else int(b), 'bytes': bb})
  rows.append({'name': 'float parameters (BN, biases)', 'kind': 'float',
               'numel': int(fbytes // 4), 'bits': 32, 'bytes': fbytes})
  model = wbytes + fbytes
  return {'layers': rows, 'weight_bytes': wbytes, 'float_param_bytes': fbytes,
          'model_bytes': model, 'fp32_model_bytes': 4.0 * total,
          'compression_vs_fp32': 4.0 * total / max(model, 1.0),
          'activation_bytes_per_example': abytes, 'fp32_activation_bytes_per_example': afp}


def format_bits_summary(summary: Mapping[str, Any]) -> str:
  """The table of :func:`bits_summary` as text (one line per layer, then the totals)."""
  lines = [f'{"layer":<40} {"kind":<10} {"numel":>10} {"bits":>4} {"bytes":>12}']
  for r in summary['layers']:
    lines.append(f'{r["name"]:<40} {r["kind"]:<10} {r["numel"]:>10} {r["bits"]:>4} '
                 f'{r["bytes"]:>12.1f}')
  lines.append(f'model {summary["model_bytes"] / 1024:.1f} KiB (float32 '
               f'{summary["fp32_model_bytes"] / 1024:.1f} KiB, x{summary["compression_vs_fp32"]:.2f}'
               f'); activations {summary["activation_bytes_per_example"] / 1024:.1f} KiB / example '
               f'(float32 {summary["fp32_activation_bytes_per_example"] / 1024:.1f} KiB)')
  return '\n'.join(lines)
