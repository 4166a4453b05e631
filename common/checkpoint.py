"""Orbax checkpoints of the whole training state, verified by checksums, with resume and fallback.

Layout of a workdir::

  checkpoints/<epoch>/{state,meta}   every ``checkpoint_every_epochs`` (the last ``keep`` kept)
  checkpoints/corrupt-<epoch>/       a checkpoint that failed verification, moved aside
  best/<epoch>/{state,meta}          the best test top-1 so far (params, batch stats, extra)

Integrity. ``save`` computes, from the arrays in memory, the shape, dtype and CRC-32 (``zlib.crc32``
of the C-order bytes) of every leaf and the CRC-32 of the canonical JSON of ``meta``, and writes
them beside ``meta`` in the step's JSON item (``{'meta': ..., 'integrity': ...}``). Orbax writes a
step into ``<step>.orbax-checkpoint-tmp-*`` and renames it to ``<step>`` only after every item is
written, so a checkpoint becomes visible only together with its checksums; a save killed halfway
(kill -9) leaves a temporary directory that is never restored. Every restore recomputes the
checksums of the restored arrays and compares them leaf by leaf, so flipped bytes, truncated or
deleted files and a missing checksum record (an incomplete checkpoint, or one written without
checksums) are all detected, whether tensorstore fails to decode the damaged chunk or decodes it
into wrong numbers.

Fallback. ``restore`` and ``restore_raw`` try the steps newest first and return the newest that
verifies, after one ``warning:`` line on stderr per damaged step naming its path and the arrays
that differ. ``restore`` (the resume path: training goes on and saves again) also moves each
damaged step newer than the one restored to ``corrupt-<step>``, so the damaged state is kept for
inspection, never again taken for the latest checkpoint, and does not count towards ``keep`` (orbax
deletes old steps by number, so a damaged newest step would otherwise survive while the good ones
are rotated out). ``restore_raw`` (loading pretrained variables from another run) only reads.
When no step verifies, both raise :class:`CheckpointError` naming the directory and every step's
reason, and change nothing on disk.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import zlib
from typing import Any, Dict, List, Optional, Tuple

import jax
import numpy as np
import orbax.checkpoint as ocp

INTEGRITY_FORMAT = 1
_MAX_NAMED = 4   # arrays named in one message; the rest are counted


class CheckpointError(RuntimeError):
  """A checkpoint exists but cannot be restored (corrupt, incomplete, or another model/config)."""


class _Unverified(Exception):
  """One step failed to restore or to verify; the message says why (internal to the fallback)."""


def _abstract(tree):
  return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


def _key_name(k) -> str:
  for attr in ('key', 'name', 'idx'):   # DictKey / FlattenedIndexKey, GetAttrKey, SequenceKey
    if hasattr(k, attr):
      return str(getattr(k, attr))
  return str(k)


def _leaf_name(path) -> str:
  # Orbax restores dataclasses and namedtuples without a target as dicts, so attribute keys and
  # dict keys must give the same name: 'opt_state/0/trace/conv1/kernel' either way.
  return '/'.join(_key_name(k) for k in path)


def _host(x) -> np.ndarray:
  if isinstance(x, jax.Array):
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
      x = jax.random.key_data(x)
    if not x.is_fully_addressable and x.is_fully_replicated:
      x = x.addressable_data(0)
  return np.asarray(x, order='C')   # ascontiguousarray would turn a scalar into shape (1,)


def _crc(a: np.ndarray) -> int:
  return zlib.crc32(a.reshape(-1).view(np.uint8))


def _meta_crc(meta: Dict[str, Any]) -> int:
  return zlib.crc32(json.dumps(meta, sort_keys=True).encode())


def checksums(tree) -> Dict[str, Dict[str, Any]]:
  """``{leaf path: {'shape', 'dtype', 'crc32'}}`` of every array leaf of ``tree``.

  The CRC-32 (``zlib.crc32``, the IEEE polynomial of zip/PNG) runs over each leaf's bytes in C
  order, so it is independent of how orbax/tensorstore chunk, compress or lay out the data on disk.
  Leaf paths join dict keys, attribute names and sequence indices with ``/``.
  """
  out = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    a = _host(leaf)
    out[_leaf_name(path)] = {'shape': list(a.shape), 'dtype': str(a.dtype), 'crc32': _crc(a)}
  return out


def _mismatches(expected: Dict[str, Dict[str, Any]], tree) -> List[str]:
  """Descriptions of the leaves of ``tree`` that differ from ``expected`` (empty: verified)."""
  got = checksums(tree)
  bad = [f'{n} missing' for n in expected if n not in got]
  bad += [f'{n} not in the checksum record' for n in got if n not in expected]
  for n in expected:
    if n in got and got[n] != expected[n]:
      e, g = expected[n], got[n]
      if e['shape'] != g['shape'] or e['dtype'] != g['dtype']:
        bad.append(f'{n} is {g["dtype"]}{g["shape"]}, saved as {e["dtype"]}{e["shape"]}')
      else:
        bad.append(f'{n} crc32 {g["crc32"]:08x} != saved {e["crc32"]:08x}')
  return bad


def _first_line(e: BaseException) -> str:
  text = str(e).strip()
  return f'{type(e).__name__}: {text.splitlines()[0][:300]}' if text else type(e).__name__


def _warn(msg: str) -> None:
  if jax.process_index() == 0:
    print(f'warning: {msg}', file=sys.stderr, flush=True)


class Checkpointer:
  """Saves ``(state, meta)`` pairs under ``directory`` with checksums; restores only verified ones.

  Args:
    directory: absolute or relative path; created if missing.
    keep: number of checkpoints kept (older ones deleted after a successful save).
  """

  def __init__(self, directory: str, keep: int = 2):
    self.directory = os.path.abspath(directory)
    opts = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                        enable_async_checkpointing=False)
    self._mngr = ocp.CheckpointManager(self.directory, options=opts)

  def _path(self, step: int) -> str:
    return os.path.join(self.directory, str(step))

  def latest_step(self) -> Optional[int]:
    """The newest complete step on disk, verified or not (``None``: none, start from scratch).

    A step counts as present as soon as orbax finalised it, so a directory whose only checkpoints
    are damaged is never mistaken for an empty one; :meth:`restore` then verifies it and falls
    back or raises.
    """
    return self._mngr.latest_step()

  def save(self, step: int, state, meta: Dict[str, Any]) -> None:
    """Writes ``state`` (any pytree of arrays), a JSON ``meta`` dict and their checksums as ``step``.

    Steps ``>= step`` already on disk belong to a run that was rolled back (killed between two
    saves, or resumed from an older step after a damaged one); they are replaced, with a warning.
    """
    for s in [s for s in self._mngr.all_steps() if s >= step]:
      _warn(f'replacing checkpoint {self._path(s)}, left by a run rolled back to an earlier epoch')
      self._mngr.delete(s)
    if jax.process_index() == 0:   # temporaries of this step from a save killed halfway
      prefix = f'{step}{ocp.utils.TMP_DIR_SUFFIX}'
      for name in os.listdir(self.directory):
        if name.startswith(prefix):
          shutil.rmtree(os.path.join(self.directory, name), ignore_errors=True)
    integrity = {'format': INTEGRITY_FORMAT, 'algorithm': 'crc32', 'arrays': checksums(state),
                 'meta_crc32': _meta_crc(meta)}
    # One JSON item holds the meta dict and the checksums: a third orbax item would cost more
    # (its own directory, metadata and commit marker) than computing the checksums.
    self._mngr.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        meta=ocp.args.JsonSave({'meta': meta, 'integrity': integrity})), force=True)
    self._mngr.wait_until_finished()

  def _restore_verified(self, step: int, target) -> Tuple[Any, Dict[str, Any]]:
    """Restores ``step`` and checks it against its integrity record; raises :class:`_Unverified`."""
    state_args = (ocp.args.StandardRestore(_abstract(target)) if target is not None
                  else ocp.args.StandardRestore())
    try:
      out = self._mngr.restore(step, args=ocp.args.Composite(
          state=state_args, meta=ocp.args.JsonRestore()))
    except Exception as e:  # orbax raises many types (ValueError, FileNotFoundError, tensorstore)
      raise _Unverified(f'{_first_line(e)}; it is damaged or was written by a different '
                        f'model/config') from e
    record = out.meta.get('integrity') if isinstance(out.meta, dict) else None
    if record is None:
      raise _Unverified('it has no checksum record, so it is incomplete or was written without '
                        'checksums')
    if (not isinstance(record, dict) or record.get('format') != INTEGRITY_FORMAT
        or not isinstance(record.get('arrays'), dict) or not isinstance(out.meta.get('meta'), dict)):
      raise _Unverified('its checksum record is malformed')
    bad = _mismatches(record['arrays'], out.state)
    if bad:
      named = ', '.join(bad[:_MAX_NAMED]) + (f' and {len(bad) - _MAX_NAMED} more'
                                              if len(bad) > _MAX_NAMED else '')
      raise _Unverified(f'{len(bad)} of {len(record["arrays"])} arrays fail verification: {named}')
    meta = dict(out.meta['meta'])
    if _meta_crc(meta) != record.get('meta_crc32'):
      raise _Unverified('its meta record fails verification')
    return out.state, meta

  def _restore_newest(self, target, step: Optional[int], quarantine: bool):
    if step is not None:
      try:
        return self._restore_verified(step, target)
      except _Unverified as e:
        raise CheckpointError(f'checkpoint {self._path(step)} cannot be restored: {e}') from e
    steps = sorted(self._mngr.all_steps(), reverse=True)
    if not steps:
      raise CheckpointError(f'no checkpoint found in {self.directory}')
    failed = []
    for s in steps:
      try:
        out = self._restore_verified(s, target)
      except _Unverified as e:
        _warn(f'checkpoint {self._path(s)} cannot be restored: {e}')
        failed.append((s, str(e)))
        continue
      if failed:
        moved = self._quarantine([f for f, _ in failed]) if quarantine else []
        where = f'; moved to {", ".join(moved)}' if moved else ''
        _warn(f'falling back to {self._path(s)}, the newest checkpoint in {self.directory} that '
              f'verifies (skipped damaged step(s) {[f for f, _ in failed]}{where})')
      return out
    reasons = '; '.join(f'{self._path(s)} cannot be restored: {r}' for s, r in failed)
    raise CheckpointError(
        f'no checkpoint in {self.directory} verifies ({reasons}). Nothing was changed; move the '
        f'directory away or use a fresh --workdir.')

  def _quarantine(self, steps: List[int]) -> List[str]:
    """Moves damaged ``steps`` to ``corrupt-<step>`` (``-1``, ``-2``... if taken); returns paths."""
    moved = []
    if jax.process_index() == 0:
      for s in steps:
        dest, k = os.path.join(self.directory, f'corrupt-{s}'), 0
        while os.path.exists(dest):
          k += 1
          dest = os.path.join(self.directory, f'corrupt-{s}-{k}')
        os.rename(self._path(s), dest)
        moved.append(dest)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils
      multihost_utils.sync_global_devices('common.checkpoint quarantine')
    self._mngr.reload()
    return moved

  def restore(self, target, step: Optional[int] = None) -> Tuple[Any, Dict[str, Any]]:
    """Restores the newest verified checkpoint (or exactly ``step``) into the structure of ``target``.

    Damaged steps newer than the one restored are moved to ``corrupt-<step>`` with a warning, so
    that the saves that follow never rotate out a good checkpoint while keeping a damaged one.

    Returns:
      ``(state, meta)``: ``state`` has the structure, shapes and dtypes of ``target``.
    Raises:
      CheckpointError: naming the directory (or the ``step`` path) when nothing there verifies.
    """
    return self._restore_newest(target, step, quarantine=step is None)

  def restore_raw(self, step: Optional[int] = None) -> Tuple[Any, Dict[str, Any]]:
    """Like :meth:`restore` without a target (nested dicts; pretrained loading); never moves files.

    Raises:
      CheckpointError: naming the directory (or the ``step`` path) when nothing there verifies.
    """
    return self._restore_newest(None, step, quarantine=False)

  def close(self):
    self._mngr.close()
