"""Binarization pieces shared by the binary-network papers (ReCU, SiMaN): spec binary-recu-siman.md §0.

* :func:`approx_sign` — forward ``sign(x)``, backward ``g * max(0, 2 - 2|x|)`` (Bi-Real ApproxSign,
  the activation binarizer of both repos).
* :func:`sign_ste` — forward ``sign``, identity backward (ReCU's weight sign after its clamp).
* :func:`sign_clipped_ste` — forward ``sign``, backward ``g * 1(|x| <= 1)`` (the classic BNN STE,
  used by the plain sign-STE baselines).
* :func:`standardize_per_channel` / :func:`standardize_per_sample` — the (unbiased, eps-inside)
  standardisations the repos apply before binarizing weights / activations; ordinary differentiable
  functions (the repos do not detach them).
* :class:`BinaryConv` / :class:`BinaryDense` — linen layers that binarize their input with
  ``act_binarizer``, apply the (optionally ``weight_binarizer``-ed) kernel and multiply by a
  learnable per-output-channel ``alpha`` (after the conv, before the following BN, as both repos do).
* :func:`binary_kernel_paths` / :func:`binary_kernel_where` — find the kernels of those layers in a
  parameter tree (the leaves a method's weight binarizer must transform).

Weight binarizers that depend on per-epoch scalars (ReCU's tau, SiMaN's percentile projection) are
applied to the parameter tree before ``apply`` (``common.train.Method.effective_params`` /
``post_step``), so the scalars live in ``TrainState.extra`` as traced arrays and never force a
recompile; stateless ones can be given to the layer as ``weight_binarizer``. The usual pattern::

    where = binary_kernel_where(params)                  # host side, once
    eff = transforms.map_kernels(lambda w: my_binarizer(w, extra['tau']), params, where=where)
    logits = model.apply({'params': eff, ...}, x, train=True)   # layers: weight_binarizer=None

A binary layer is recognised by its parameters: a module holding both ``kernel`` and ``alpha``
(every :class:`BinaryConv` / :class:`BinaryDense` with ``alpha`` set; no full-precision layer of the
zoo has an ``alpha``).

PyTorch's ``sign(0) = 0`` is kept (``jnp.sign`` agrees); with float weights/activations an exact 0
has probability ~0 after the standardisations.
"""
from __future__ import annotations

import math
from typing import Any, Callable, List, Optional, Sequence, Tuple, Union

import flax.linen as nn
import jax
import jax.numpy as jnp


@jax.custom_vjp
def approx_sign(x: jax.Array) -> jax.Array:
  """``sign(x)`` with the ApproxSign backward ``g * max(0, 2 - 2|x|)`` (spec §0; any shape)."""
  return jnp.sign(x)


def _approx_sign_fwd(x):
  return jnp.sign(x), x


def _approx_sign_bwd(x, g):
  return (g * jnp.maximum(0.0, 2.0 - 2.0 * jnp.abs(x)).astype(g.dtype),)


approx_sign.defvjp(_approx_sign_fwd, _approx_sign_bwd)


@jax.custom_vjp
def sign_ste(x: jax.Array) -> jax.Array:
  """``sign(x)`` with the identity straight-through backward (ReCU weights, spec §1.1 step 6)."""
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
  the last (HWIO: kh, kw, C_in), and are not detached (spec §1.1 steps 1-2: ReCU uses
  ``scale = 2 sqrt 2``; §2.1 step 1: SiMaN uses 1).
  """
  axes = tuple(range(w.ndim - 1))
  w0 = w - jnp.mean(w, axis=axes, keepdims=True)
  var = jnp.var(w0, axis=axes, keepdims=True, ddof=1)
  return w0 / jnp.sqrt(var + eps) * scale


def standardize_per_sample(a: jax.Array, subtract_mean: bool, eps: float = 1e-5) -> jax.Array:
  """Per-sample standardisation over every axis but the batch (spec §1.2 ReCU, §2.2 SiMaN).

  ``a [B, ...] -> a / sqrt(var + eps)`` (ReCU, no mean subtraction) or
  ``(a - mean) / sqrt(var(a - mean) + eps)`` (SiMaN), unbiased variance, not detached.
  """
  axes = tuple(range(1, a.ndim))
  if subtract_mean:
    a = a - jnp.mean(a, axis=axes, keepdims=True)
  var = jnp.var(a, axis=axes, keepdims=True, ddof=1)
  return a / jnp.sqrt(var + eps)


def recu_activation(a: jax.Array, train: bool) -> jax.Array:
  """ReCU's activation binarizer: ``approx_sign(a / std(a))`` in training, ``approx_sign(a)`` in eval.

  The forward is the same in both (sign is scale-invariant); training only rescales the gradient
  window (spec §1.2).
  """
  return approx_sign(standardize_per_sample(a, subtract_mean=False) if train else a)


def siman_activation(a: jax.Array, train: bool) -> jax.Array:
  """SiMaN's activation binarizer: ``approx_sign((a - mean) / std)`` in train *and* eval (§2.2)."""
  del train
  return approx_sign(standardize_per_sample(a, subtract_mean=True))


def plain_activation(a: jax.Array, train: bool) -> jax.Array:
  """``approx_sign(a)`` without any normalisation (the plain BNN baseline)."""
  del train
  return approx_sign(a)


ACTIVATION_BINARIZERS = {'recu': recu_activation, 'siman': siman_activation,
                         'plain': plain_activation}


def activation_binarizer(name: str) -> Callable[[jax.Array, bool], jax.Array]:
  """Named activation binarizer (``'recu'``, ``'siman'``, ``'plain'``)."""
  if name not in ACTIVATION_BINARIZERS:
    raise ValueError(f'unknown activation binarizer {name!r}; allowed: '
                     f'{sorted(ACTIVATION_BINARIZERS)}')
  return ACTIVATION_BINARIZERS[name]


def alpha_init(kind: str, fan_in: int):
  """Initialiser of the per-output-channel scale ``alpha [C_out]`` (spec §0 "Scaling factor").

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


class BinaryConv(nn.Module):
  """``conv(act_binarizer(x), weight_binarizer(kernel)) * alpha``; no bias (spec §0).

  Attributes:
    features: C_out.
    kernel_size, strides: ints or pairs; padding is PyTorch's symmetric ``k // 2``.
    act_binarizer: ``f(a, train) -> {-1, 0, +1}`` or None (full-precision input).
    weight_binarizer: ``f(kernel) -> binary kernel`` or None (the kernel is used as given, e.g.
      already binarized on the param tree by the method).
    alpha: None (no scale) or an :func:`alpha_init` kind.
    kernel_init: initialiser of the HWIO kernel ``[k, k, C_in, C_out]``.
  Input ``[B, H, W, C_in]`` -> output ``[B, H', W', C_out]``.
  """
  features: int
  kernel_size: Union[int, Sequence[int]] = 3
  strides: Union[int, Sequence[int]] = 1
  act_binarizer: Optional[Callable] = None
  weight_binarizer: Optional[Callable] = None
  alpha: Optional[str] = 'uniform'
  kernel_init: Callable = nn.initializers.kaiming_normal()

  @nn.compact
  def __call__(self, x, train: bool = False):
    k = (self.kernel_size,) * 2 if isinstance(self.kernel_size, int) else tuple(self.kernel_size)
    s = (self.strides,) * 2 if isinstance(self.strides, int) else tuple(self.strides)
    c_in = x.shape[-1]
    kernel = self.param('kernel', self.kernel_init, (k[0], k[1], c_in, self.features))
    if self.act_binarizer is not None:
      x = self.act_binarizer(x, train)
    w = self.weight_binarizer(kernel) if self.weight_binarizer is not None else kernel
    y = jax.lax.conv_general_dilated(
        x, w.astype(x.dtype), s, [(k[0] // 2, k[0] // 2), (k[1] // 2, k[1] // 2)],
        dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    if self.alpha is not None:
      a = self.param('alpha', alpha_init(self.alpha, c_in * k[0] * k[1]), (self.features,))
      y = y * a
    return y


class BinaryDense(nn.Module):
  """``act_binarizer(x) @ weight_binarizer(kernel) * alpha``; no bias (spec §0, for linear layers).

  Attributes as :class:`BinaryConv`; kernel ``[C_in, C_out]``; input ``[B, C_in]`` ->
  ``[B, C_out]``.
  """
  features: int
  act_binarizer: Optional[Callable] = None
  weight_binarizer: Optional[Callable] = None
  alpha: Optional[str] = 'uniform'
  kernel_init: Callable = nn.initializers.kaiming_normal()

  @nn.compact
  def __call__(self, x, train: bool = False):
    c_in = x.shape[-1]
    kernel = self.param('kernel', self.kernel_init, (c_in, self.features))
    if self.act_binarizer is not None:
      x = self.act_binarizer(x, train)
    w = self.weight_binarizer(kernel) if self.weight_binarizer is not None else kernel
    y = x @ w.astype(x.dtype)
    if self.alpha is not None:
      y = y * self.param('alpha', alpha_init(self.alpha, c_in), (self.features,))
    return y


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
