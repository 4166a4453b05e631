"""Binarization pieces shared by the binary-network papers (ReCU: z-hXu/ReCU, SiMaN: lmbxmu/SiMaN;
both repos' ``modules/binarized_modules.py``).

* :func:`approx_sign` -- forward ``sign(x)``, backward ``g * max(0, 2 - 2|x|)`` (the Bi-Real
  ApproxSign of the activation quantizer in both repos' ``binarized_modules.py``).
* :func:`sign_ste` -- forward ``sign``, identity backward (ReCU's weight quantizer after its clamp;
  the plain sign-STE baselines).
* :func:`sign_clipped_ste` -- forward ``sign``, backward ``g * 1(|x| <= 1)`` (the classic BNN STE).
* :func:`standardize_per_channel` / :func:`standardize_per_sample` -- the (unbiased, eps-inside)
  standardisations both ``BinarizeConv2d.forward`` apply before binarizing weights / activations;
  ordinary differentiable functions (the repos do not detach them).
* :func:`plain_activation` -- ``approx_sign(a)`` without normalisation (the plain BNN baseline).
* :func:`alpha_init` -- initialisers of the per-output-channel scaling factor.
* :func:`binary_kernel_paths` / :func:`binary_kernel_where` -- find the binary layers' kernels in a
  parameter tree (the leaves a method's weight binarizer must transform).

The binary layers themselves (``BinaryConv`` and the blocks built from it) live in
``common.models.bnn_layers``; each paper's own binarizers live in its package (``recu.recu``,
``siman.siman``).

Weight binarizers that depend on per-epoch scalars (ReCU's tau, SiMaN's percentile projection) are
applied to the parameter tree before ``apply`` (``common.train.Method.effective_params`` /
``post_step``), so the scalars live in ``TrainState.extra`` as traced arrays and never force a
recompile; stateless ones can be given to the layer as ``weight_binarizer``. The usual pattern::

    where = binary_kernel_where(params)                  # host side, once
    eff = transforms.map_kernels(lambda w: my_binarizer(w, extra['tau']), params, where=where)
    logits = model.apply({'params': eff, ...}, x, train=True)   # layers: weight_binarizer=None

A binary layer is recognised by its parameters: a module holding both ``kernel`` and ``alpha``
(every ``bnn_layers.BinaryConv`` / ``BinaryDense`` with ``alpha`` set; no full-precision layer of
the zoo has an ``alpha``).

PyTorch's ``sign(0) = 0`` is kept (``jnp.sign`` agrees); with float weights/activations an exact 0
has probability ~0 after the standardisations.
"""
from __future__ import annotations

import math
from typing import Any, Callable, List, Tuple

import jax
import jax.numpy as jnp


@jax.custom_vjp
def approx_sign(x: jax.Array) -> jax.Array:
  """``sign(x)`` with the ApproxSign backward ``g * max(0, 2 - 2|x|)`` (any shape)."""
  return jnp.sign(x)


def _approx_sign_fwd(x):
  return jnp.sign(x), x


def _approx_sign_bwd(x, g):
  return (g * jnp.maximum(0.0, 2.0 - 2.0 * jnp.abs(x)).astype(g.dtype),)


approx_sign.defvjp(_approx_sign_fwd, _approx_sign_bwd)


@jax.custom_vjp
def sign_ste(x: jax.Array) -> jax.Array:
  """``sign(x)`` with the identity straight-through backward, any shape (ReCU's weight sign, after
  its clamp; the plain sign-STE baselines)."""
  return jnp.sign(x)


sign_ste.defvjp(lambda x: (jnp.sign(x), None), lambda _, g: (g,))


@jax.custom_vjp
def sign_clipped_ste(x: jax.Array) -> jax.Array:
  """``sign(x)`` with the clipped straight-through backward ``g * 1(|x| <= 1)``."""
  return jnp.sign(x)


sign_clipped_ste.defvjp(lambda x: (jnp.sign(x), x),
                        lambda x, g: (g * (jnp.abs(x) <= 1.0).astype(g.dtype),))


def standardize_per_channel(w: jax.Array, scale: float = 1.0, eps: float = 1e-5) -> jax.Array:
  """``(w - mean_c) / sqrt(var_c + eps) * scale`` per output channel of a ``[..., C_out]`` kernel.

  The mean and the *unbiased* variance (divisor N - 1, as ``torch.var``) reduce over every axis but
  the last (HWIO: kh, kw, C_in), and are not detached (``BinarizeConv2d.forward``: ReCU uses
  ``scale = 2 sqrt 2``, SiMaN 1).
  """
  axes = tuple(range(w.ndim - 1))
  w0 = w - jnp.mean(w, axis=axes, keepdims=True)
  var = jnp.var(w0, axis=axes, keepdims=True, ddof=1)
  return w0 / jnp.sqrt(var + eps) * scale


def standardize_per_sample(a: jax.Array, subtract_mean: bool, eps: float = 1e-5) -> jax.Array:
  """Per-sample standardisation over every axis but the batch (both repos' ``BinarizeConv2d``).

  ``a [B, ...] -> a / sqrt(var + eps)`` (ReCU, no mean subtraction) or
  ``(a - mean) / sqrt(var(a - mean) + eps)`` (SiMaN), unbiased variance, not detached.
  """
  axes = tuple(range(1, a.ndim))
  if subtract_mean:
    a = a - jnp.mean(a, axis=axes, keepdims=True)
  var = jnp.var(a, axis=axes, keepdims=True, ddof=1)
  return a / jnp.sqrt(var + eps)


def plain_activation(a: jax.Array, train: bool) -> jax.Array:
  """``approx_sign(a)`` without any normalisation (the plain BNN baseline)."""
  del train
  return approx_sign(a)


def alpha_init(kind: str, fan_in: int):
  """Initialiser of the per-output-channel scale ``alpha [C_out]`` (``BinarizeConv2d.alpha``).

  ``'uniform'``: U[0, 1) (ReCU, ``torch.rand``). ``'mean_abs_default'``: per-channel mean |w| of a
  PyTorch-default (kaiming-uniform a=sqrt5 = U(+-1/sqrt(fan_in))) weight drawn for this purpose
  (SiMaN takes it from the conv's default init in ``__init__``, before the model re-initialises
  the weights). ``'ones'``: 1.
  """
  def init(key, shape, dtype=jnp.float32):
    c_out = shape[-1]
    if kind == 'uniform':
      return jax.random.uniform(key, shape, dtype)
    if kind == 'mean_abs_default':
      bound = 1.0 / math.sqrt(fan_in)
      w = jax.random.uniform(key, (fan_in, c_out), dtype, -bound, bound)
      return jnp.mean(jnp.abs(w), axis=0).reshape(shape)
    if kind == 'ones':
      return jnp.ones(shape, dtype)
    raise ValueError(f"unknown alpha init {kind!r}; allowed: ['uniform', 'mean_abs_default', "
                     "'ones']")
  return init


def binary_kernel_paths(params) -> List[Tuple[str, ...]]:
  """Paths ``(..., 'kernel')`` of the binary layers' kernels, in tree order.

  A binary layer is a module dict holding both ``kernel`` and ``alpha`` (see the module docstring).
  """
  out = []

  def visit(node, prefix):
    if not isinstance(node, dict) and not hasattr(node, 'items'):
      return
    keys = list(node.keys())
    if 'kernel' in keys and 'alpha' in keys and not hasattr(node['kernel'], 'items'):
      out.append(prefix + ('kernel',))
    for k in keys:
      visit(node[k], prefix + (str(k),))

  visit(params, ())
  return out


def binary_kernel_where(params) -> Callable[[Tuple[str, ...], Any], bool]:
  """``where(path, leaf)`` selector (``common.transforms``) of the binary kernels of ``params``."""
  paths = frozenset(binary_kernel_paths(params))
  return lambda path, leaf: tuple(path) in paths
