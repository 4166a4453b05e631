"""Named tap sites: where a compression method reads or rewrites a zoo model's activations.

Every zoo model (``resnet_cifar``, ``vgg``, ``resnet``, ``mobilenet_v1``, ``mobilenet_v2``) takes
``__call__(x, train, tap=None)``. ``tap`` is a function ``tap(site: str, h: Array) -> Array``; the
model calls it at every named site, in forward order, and continues with what it returns (same
shape). ``tap=None`` is the identity: the params tree, the outputs and the compiled graph are those
of the model without taps. A tap is an ordinary Python closure evaluated while tracing, so it may
close over labels, masks or parameters of the calling method and runs under ``jit``/``grad``.

Site names are ``'/'``-joined, relative to the zoo model (also when it is a submodule of a larger
module): the block's module name, then the site kind. The kinds, derived from the param names:

* ``<bn>_in``: the input of the BatchNorm whose module path is ``<bn>`` (the conv output),
  e.g. ``bn1_in``, ``layer2_0/bn1_in``, ``block3/dw_bn_in``; one per BN, so the BN-input
  statistics of ``batch_stats/<bn>`` are those of site ``<bn>_in``.
* ``<act>``: the output of the activation that follows BN ``<bn>``, named by replacing ``bn`` by
  ``act`` in the BN's name: ``bn1 -> act1``, ``dw_bn -> dw_act``, ``bn_last -> act_last``. In a
  residual block the last activation is applied to the residual sum (``act2`` of a basic block is
  ``act(bn2(.) + shortcut)``).
* ``out``: a block's output (after its ``<act>`` site when the block ends in an activation).
* ``features``: the pooled features ``[B, C]`` entering the classifier (before the model sows them
  as ``intermediates/features``).

The per-model lists are in each model module's docstring; :func:`tap_sites` lists them for a
built model. Uses: White-Box's class-wise channel masks sit after every ReLU of VGG-16
(``act{i}``), on conv1's output before bn1 in the CIFAR ResNets (``layer*/bn1_in``), after the
depthwise activation of MobileNet-V2 (``block*/dw_act``) and after ``act1`` / ``act2`` of ResNet-50
bottlenecks (zyxxmu/White-Box: the label-dependent ``mask`` multiplications in its model files);
FFSD fuses the students' block outputs (``*/out``); FDDA matches per-class BN-input statistics
(``*_in``; zysxmu/FDDA ``BNScenters.py``) and fake-quantizes after every ReLU/ReLU6 (``act*``).
"""
from __future__ import annotations

import inspect
from typing import Callable, List, Optional, Tuple

import jax
import jax.numpy as jnp

Tap = Callable[[str, jax.Array], jax.Array]


def at(tap: Optional[Tap], site: str, h):
  """``tap(site, h)`` (``h`` itself when ``tap`` is None), checked to keep ``h``'s shape.

  Raises:
    ValueError: naming the site when the tap returns another shape.
  """
  if tap is None:
    return h
  y = tap(site, h)
  if getattr(y, 'shape', None) != h.shape:
    raise ValueError(f'tap at site {site!r} must return an array of shape {tuple(h.shape)}; '
                     f'got {getattr(y, "shape", type(y).__name__)}')
  return y


def within(tap: Optional[Tap], prefix: str) -> Optional[Tap]:
  """The tap seen by a submodule called ``prefix``: its site ``s`` is the parent's
  ``f'{prefix}/{s}'`` (None stays None, so untapped models build the same graph)."""
  if tap is None:
    return None
  return lambda site, h: tap(f'{prefix}/{site}', h)


def act_site(bn_name: str) -> str:
  """Site of the activation following BN ``bn_name``: ``'bn'`` replaced by ``'act'`` once."""
  if 'bn' not in bn_name:
    raise ValueError(f'BN module name {bn_name!r} has no "bn" to derive its activation site from')
  return bn_name.replace('bn', 'act', 1)


def has_taps(model) -> bool:
  """Whether ``model.__call__`` takes a ``tap`` argument (every zoo family of ``common.models``)."""
  return 'tap' in inspect.signature(type(model).__call__).parameters


def tap_sites(model, input_shape, *, train: bool = False) -> List[Tuple[str, Tuple[int, ...]]]:
  """Ordered ``[(site, shape)]`` of a zoo model, traced once under ``jax.eval_shape`` (no FLOPs).

  Args:
    model: a zoo ``nn.Module`` whose ``__call__`` takes ``tap``.
    input_shape: the input batch shape ``(B, H, W, C)``.
    train: trace the training-mode forward (the same sites; BN uses batch statistics).
  Returns:
    the sites in the order the model reaches them, with the activation shape at each.
  Raises:
    ValueError: if the model has no taps or repeats a site name.
  """
  if not has_taps(model):
    raise ValueError(f'{type(model).__name__} has no tap sites (its __call__ takes no `tap`)')
  found: List[Tuple[str, Tuple[int, ...]]] = []

  def record(site, h):
    found.append((site, tuple(h.shape)))
    return h

  def run(x):
    variables = model.init(jax.random.PRNGKey(0), x, train=False)
    model.apply(variables, x, train=train, tap=record,
                **({'mutable': ['batch_stats']} if train else {}))

  jax.eval_shape(run, jax.ShapeDtypeStruct(tuple(input_shape), jnp.float32))
  names = [s for s, _ in found]
  dup = sorted({s for s in names if names.count(s) > 1})
  if dup:
    raise ValueError(f'{type(model).__name__} repeats tap sites {dup}')
  return found
