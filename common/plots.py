"""Plots every quick experiment draws the same way (matplotlib PNGs, headless)."""
from __future__ import annotations

from typing import Dict, Sequence

import numpy as np


def accuracy_curves(curves: Dict[str, Sequence[Sequence[float]]], path: str,
                    title: str = 'test top-1 vs epoch (mean, band = min..max over seeds)') -> str:
  """Mean test top-1 per epoch for each arm, with the min..max band over seeds.

  Args:
    curves: arm label -> one per-epoch accuracy list per seed (cut to the shortest run).
    path: the PNG written.
    title: the figure title.
  Returns:
    ``path``.
  """
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(6.4, 4.0))
  for label, runs in curves.items():
    n = min(len(r) for r in runs)
    arr = np.asarray([r[:n] for r in runs], np.float64)
    ep = np.arange(1, n + 1)
    ax.plot(ep, arr.mean(0), marker='.', label=label)
    ax.fill_between(ep, arr.min(0), arr.max(0), alpha=0.2)
  ax.set_xlabel('epoch')
  ax.set_ylabel('test top-1')
  ax.set_title(title, fontsize=9)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path
