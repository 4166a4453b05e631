"""A temporary persistent XLA compilation cache for experiment drivers.

The quick experiments train several arms and seeds whose steps are the same XLA program; with a
persistent cache only the first run pays the compile (seconds per program on 2 CPU cores).
"""
from __future__ import annotations

import contextlib


@contextlib.contextmanager
def persistent_compilation_cache(path: str):
  """Caches every compiled program under ``path`` for the duration of the ``with`` block.

  A no-op when the process already configured a cache (the user's choice wins); the previous
  settings are restored afterwards. Uses ``jax._src.compilation_cache.reset_cache`` so that the
  new directory takes effect in an already-initialised process; if that private module moves,
  the block simply runs without a cache.
  """
  import jax
  try:
    from jax._src import compilation_cache as cc
  except ImportError:
    yield
    return
  if jax.config.jax_compilation_cache_dir:
    yield
    return
  names = ('jax_compilation_cache_dir', 'jax_persistent_cache_min_compile_time_secs',
           'jax_persistent_cache_min_entry_size_bytes')
  old = {n: getattr(jax.config, n) for n in names}
  jax.config.update('jax_compilation_cache_dir', path)
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.0)
  jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)
  cc.reset_cache()
  try:
    yield
  finally:
    for n, v in old.items():
      jax.config.update(n, v)
    cc.reset_cache()
