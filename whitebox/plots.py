"""White-Box plots: the K x C class-mask heat maps and the kept ratio per layer (matplotlib)."""
from __future__ import annotations

from typing import Dict, List, Sequence

import numpy as np


def _plt():
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  return plt


def class_masks(masks: Sequence[np.ndarray], plan, path: str, layers=None) -> str:
  """Heat maps of two used masks ``M [K, C]`` (default: the first and the last used in the
  forward); class-specific channels show as columns that differ between rows."""
  plt = _plt()
  used = plan.forward_sites[1]
  layers = list(layers) if layers is not None else [used[0], used[-1]]
  fig, ax = plt.subplots(1, len(layers), figsize=(6 * len(layers), 3.2), squeeze=False)
  for a, i in zip(ax[0], layers):
    m = np.asarray(masks[i])
    im = a.imshow(m, aspect='auto', cmap='viridis', interpolation='nearest')
    a.set_title(f'{plan.masks[i].name} at {plan.masks[i].site}: '
                f'class std/channel {np.std(m, 0).mean():.3f}', fontsize=8)
    a.set_xlabel('channel c')
    a.set_ylabel('class k')
    fig.colorbar(im, ax=a)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path


def kept_ratio(layers: List[Dict], path: str) -> str:
  """Bar chart of the kept fraction of every narrowed layer (``layer_report['layers']``)."""
  plt = _plt()
  fig, ax = plt.subplots(figsize=(max(4, 0.35 * len(layers) + 2), 3))
  ax.bar(range(len(layers)), [l['kept_ratio'] for l in layers],
         color=['tab:gray' if l['mask'] is None else 'tab:blue' for l in layers])
  ax.set_xticks(range(len(layers)))
  ax.set_xticklabels([l['site'] for l in layers], rotation=90, fontsize=6)
  ax.set_ylim(0, 1)
  ax.set_ylabel('kept ratio')
  ax.set_title('kept channels per layer (gray: random layer)', fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path
