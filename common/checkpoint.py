"""Orbax checkpoints of the whole training state, with resume and clear errors.

Layout of a workdir::

  checkpoints/<epoch>/{state,meta}   every ``checkpoint_every_epochs`` (last ``keep`` kept)
  best/<epoch>/{variables,meta}      the best test top-1 so far (params + batch_stats + extra)

Orbax writes each step into a temporary directory and renames it when complete, so a run killed
mid-save leaves the previous checkpoint intact; a directory that is not finalised is ignored on
restore. A checkpoint that exists but cannot be read raises :class:`CheckpointError` with the path,
and nothing is overwritten.
"""
from __future__ import annotations

import os
from typing import Any, Dict, Optional, Tuple

import jax
import orbax.checkpoint as ocp


class CheckpointError(RuntimeError):
  """A checkpoint exists but cannot be restored (corrupt, or from another model/config)."""


def _abstract(tree):
  return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


class Checkpointer:
  """Saves and restores ``(state, meta)`` pairs under ``directory``.

  Args:
    directory: absolute or relative path; created if missing.
    keep: number of checkpoints kept (older ones deleted after a successful save).
  """

  def __init__(self, directory: str, keep: int = 2):
    self.directory = os.path.abspath(directory)
    opts = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                        enable_async_checkpointing=False)
    self._mngr = ocp.CheckpointManager(self.directory, options=opts)

  def latest_step(self) -> Optional[int]:
    return self._mngr.latest_step()

  def save(self, step: int, state, meta: Dict[str, Any]) -> None:
    """Writes ``state`` (any pytree of arrays) and a JSON ``meta`` dict as checkpoint ``step``."""
    self._mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                  meta=ocp.args.JsonSave(meta)), force=True)
    self._mngr.wait_until_finished()

  def restore(self, target, step: Optional[int] = None) -> Tuple[Any, Dict[str, Any]]:
    """Restores checkpoint ``step`` (default latest) into the structure of ``target``.

    Raises:
      CheckpointError: naming the checkpoint path, when it cannot be read or does not match.
    """
    step = self.latest_step() if step is None else step
    if step is None:
      raise CheckpointError(f'no checkpoint found in {self.directory}')
    path = os.path.join(self.directory, str(step))
    try:
      out = self._mngr.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(_abstract(target)), meta=ocp.args.JsonRestore()))
    except Exception as e:  # orbax raises many types (ValueError, FileNotFoundError, tensorstore)
      first = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
      raise CheckpointError(
          f'checkpoint {path} cannot be restored ({type(e).__name__}: {first}). It is corrupt or '
          f'was written by a different model/config; move it away or use a fresh --workdir.') from e
    return out.state, dict(out.meta)

  def restore_raw(self, step: Optional[int] = None):
    """Restores without a target structure (used to load pretrained variables)."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise CheckpointError(f'no checkpoint found in {self.directory}')
    try:
      out = self._mngr.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(), meta=ocp.args.JsonRestore()))
    except Exception as e:
      raise CheckpointError(f'checkpoint {os.path.join(self.directory, str(step))} cannot be '
                            f'restored ({type(e).__name__}: {str(e)[:300]})') from e
    return out.state, dict(out.meta)

  def close(self):
    self._mngr.close()
