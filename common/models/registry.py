"""The model registry behind ``common.models.get_model`` / ``default_widths`` / ``layer_specs``.

A registered entry is a *builder* ``builder(num_classes, widths, **kwargs) -> nn.Module`` (a
function or a Module class taking those keyword arguments), plus optionally its default widths and
its spec function ``specs(widths, input_hw, num_classes, **kwargs) -> list[LayerSpec]``:

    @register('resnet20', default_widths=..., specs=...)
    def build(num_classes, widths, **kwargs): ...

Models without ``specs`` (e.g. a BNN variant) still build, but ``layer_specs`` / ``common.flops``
raise a clear error for them.
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
import numbers
from collections.abc import Mapping
from typing import Any, Callable, Dict, Optional


@dataclasses.dataclass(frozen=True)
class Entry:
  """One registered model name."""
  name: str
  builder: Callable[..., Any]
  default_widths: Any = None
  specs: Optional[Callable[..., Any]] = None


MODELS: Dict[str, Entry] = {}


def register(name: str, *, default_widths: Any = None, specs: Optional[Callable] = None):
  """Decorator registering ``builder`` under ``name`` (duplicate names raise ValueError).

  Args:
    name: the ``get_model`` name.
    default_widths: the paper-default width config (JSON-serialisable), or a zero-argument
      callable returning it; ``None`` if the model has no width config.
    specs: ``specs(widths, input_hw, num_classes, **kwargs) -> list[LayerSpec]`` with ``widths``
      already resolved (never None).
  """
  def deco(builder):
    if name in MODELS and MODELS[name].builder is not builder:
      raise ValueError(f'model name {name!r} is already registered')
    MODELS[name] = Entry(name, builder, default_widths, specs)
    return builder
  return deco


def entry(name: str) -> Entry:
  """The registry entry of ``name``; unknown names raise ValueError listing the known ones."""
  if name not in MODELS:
    close = difflib.get_close_matches(str(name), list(MODELS), n=3)
    hint = f' (did you mean {close}?)' if close else ''
    raise ValueError(f'unknown model {name!r}{hint}; known models: {sorted(MODELS)}')
  return MODELS[name]


def default_widths(name: str):
  """A fresh copy of ``name``'s default width config (plain ints / lists / dicts)."""
  dw = entry(name).default_widths
  return copy.deepcopy(dw() if callable(dw) else dw)


def canonical_widths(widths):
  """Plain-python copy of a width config: ConfigDict / mappings -> dict, tuples -> lists, numpy
  integers -> int (ml_collections hands ``config.model.widths`` over as ConfigDict / tuples)."""
  if hasattr(widths, 'to_dict'):
    widths = widths.to_dict()
  if hasattr(widths, 'tolist') and not isinstance(widths, (list, tuple)):   # numpy arrays/scalars
    widths = widths.tolist()
  if isinstance(widths, Mapping):
    return {str(k): canonical_widths(v) for k, v in widths.items()}
  if isinstance(widths, (list, tuple)):
    return [canonical_widths(v) for v in widths]
  if isinstance(widths, numbers.Integral) and not isinstance(widths, bool):
    return int(widths)
  return widths


def _resolve(name: str, widths):
  return default_widths(name) if widths is None else canonical_widths(widths)


def get_model(name: str, num_classes: int, widths=None, **kwargs):
  """Builds the linen module ``name`` (``widths=None``: the paper-default widths).

  Args:
    name: a registered name (see ``MODELS``).
    num_classes: classifier outputs K (logits ``[B, K]``).
    widths: the model's width config (format in its module docstring).
    **kwargs: model options (``init``, ``classifier_as_conv``, ...; see each model).
  Returns:
    a ``flax.linen.Module`` with ``__call__(x [B,H,W,C] float32, train: bool) -> [B, K]``.
  """
  e = entry(name)
  if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes <= 0:
    raise ValueError(f'num_classes must be a positive int; got {num_classes!r}')
  return e.builder(num_classes=num_classes, widths=_resolve(name, widths), **kwargs)


def layer_specs(name: str, widths=None, input_hw=(32, 32), num_classes: int = 10, **kwargs):
  """Analytic ``list[LayerSpec]`` of ``name`` in forward order (no tracing; see ``specs.py``)."""
  e = entry(name)
  if e.specs is None:
    raise ValueError(f'model {name!r} has no layer_specs (registered without a specs function)')
  if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes <= 0:
    raise ValueError(f'num_classes must be a positive int; got {num_classes!r}')
  return e.specs(_resolve(name, widths), tuple(input_hw), num_classes, **kwargs)
