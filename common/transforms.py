"""Select and rewrite leaves of a parameter pytree by path.

Weight-side compression methods (masks, filter fusion, binarizers, fake quantizers) are pure
functions applied to the parameter tree *before* ``model.apply``; this module holds the plumbing that
finds the leaves they act on, so that no paper re-implements tree walking.

A *path* is the tuple of dict keys from the root to a leaf, e.g. ``('layer1_0', 'conv1', 'kernel')``.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Tuple

import jax

Path = Tuple[str, ...]
Where = Callable[[Path, Any], bool]


def _key_name(k) -> str:
  for attr in ('key', 'name', 'idx'):
    if hasattr(k, attr):
      return str(getattr(k, attr))
  return str(k)


def path_tuple(keypath) -> Path:
  """Converts a ``jax.tree_util`` key path into a tuple of strings."""
  return tuple(_key_name(k) for k in keypath)


def path_str(path: Path) -> str:
  """``('layer1_0', 'conv1', 'kernel')`` -> ``'layer1_0/conv1/kernel'``."""
  return '/'.join(path)


def is_kernel(path: Path, leaf) -> bool:
  """Default selector: conv and dense kernels (leaf named 'kernel' with ndim >= 2)."""
  return bool(path) and path[-1] == 'kernel' and getattr(leaf, 'ndim', 0) >= 2


def is_conv_kernel(path: Path, leaf) -> bool:
  """Conv kernels only: HWIO, ndim == 4."""
  return bool(path) and path[-1] == 'kernel' and getattr(leaf, 'ndim', 0) == 4


def under(*prefixes: str) -> Where:
  """Selector of leaves whose path string starts with one of ``prefixes``."""
  def where(path: Path, leaf) -> bool:
    s = path_str(path)
    return any(s == p or s.startswith(p.rstrip('/') + '/') for p in prefixes)
  return where


def map_kernels(fn: Callable, params, where: Optional[Where] = None, with_path: bool = False):
  """Applies ``fn`` to selected leaves of ``params``; other leaves are returned unchanged.

  Args:
    fn: ``fn(leaf) -> new_leaf`` (or ``fn(path, leaf)`` when ``with_path``). It may change shape:
      DCFF's fusion maps a ``[k,k,C_in,C]`` kernel to ``[k,k,C_in,m]``.
    params: a pytree of arrays (nested dicts, as flax produces).
    where: ``where(path, leaf) -> bool``; default :func:`is_kernel`.
    with_path: pass the path tuple as first argument to ``fn``.
  Returns:
    A pytree of the same structure.
  """
  where = where or is_kernel

  def visit(keypath, leaf):
    path = path_tuple(keypath)
    if not where(path, leaf):
      return leaf
    return fn(path, leaf) if with_path else fn(leaf)

  return jax.tree_util.tree_map_with_path(visit, params)


def select(params, where: Optional[Where] = None) -> Dict[Path, Any]:
  """Returns ``{path: leaf}`` for the selected leaves, in tree (forward definition) order."""
  where = where or is_kernel
  out = {}
  for keypath, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    path = path_tuple(keypath)
    if where(path, leaf):
      out[path] = leaf
  return out


def tree_from_paths(params, values: Dict[Path, Any], default=None):
  """A pytree shaped like ``params`` holding ``values[path]`` where given, ``default`` elsewhere.

  Used to build mask / score trees that mirror the parameter tree.
  """
  def visit(keypath, leaf):
    return values.get(path_tuple(keypath), default)
  return jax.tree_util.tree_map_with_path(visit, params)


def get_path(tree, path: Path):
  """Reads ``tree[path[0]][path[1]]...``; KeyError names the missing path."""
  node = tree
  for i, k in enumerate(path):
    try:
      node = node[k]
    except (KeyError, TypeError) as e:
      raise KeyError(f'path {path_str(path)!r} not found (missing {k!r} at depth {i})') from e
  return node


def set_path(tree, path: Path, value):
  """Returns a copy of a nested-dict tree with ``tree[path] = value`` (copy-on-write)."""
  if not path:
    return value
  head, rest = path[0], path[1:]
  new = dict(tree)
  new[head] = set_path(tree.get(head, {}), rest, value) if rest else value
  return new
