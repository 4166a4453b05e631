"""Plots of the SiMaN package: the binary weights' histogram with its Laplace fit (the paper's
claim that learned BNN weights are roughly Laplacian) and accuracy-vs-epoch curves."""
from __future__ import annotations

from typing import Any, Dict

import numpy as np

from common import transforms
from common.plots import accuracy_curves  # noqa: F401  (siman.plots.accuracy_curves)
from siman import siman


def standardized_weights(params) -> np.ndarray:
  """All binary kernels' standardised weights ``w2`` (per-channel), flattened."""
  from common import binarize
  ws = [np.asarray(binarize.standardize_per_channel(w)).reshape(-1)
        for w in transforms.select(params, siman.is_binary_kernel(params)).values()]
  if not ws:
    raise ValueError('no binary kernels (no module with an alpha leaf) in params')
  return np.concatenate(ws)


def weight_histogram(panels: Dict[str, Any], path: str, title: str = '', bins: int = 80) -> str:
  """Histogram of the standardised binary weights with the ML Laplace and Gaussian fits.

  Args:
    panels: ``{label: params}``, one panel per parameter tree.
    path: PNG path.
    title: figure title.
  Returns:
    ``path``.
  """
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  if not isinstance(panels, dict) or not panels:
    raise ValueError('panels must be a non-empty {label: params} dict')
  params_by_label = panels
  n = len(params_by_label)
  fig, axes = plt.subplots(1, n, figsize=(4.4 * n, 3.4), squeeze=False)
  for ax, (label, params) in zip(axes[0], params_by_label.items()):
    x = standardized_weights(params)
    mu, b = siman.laplace_fit(x)
    lim = max(4.0, float(np.quantile(np.abs(x), 0.999)))
    ax.hist(x, bins=bins, range=(-lim, lim), density=True, alpha=0.6, color='tab:blue',
            label='binary-layer weights (standardised)')
    t = np.linspace(-lim, lim, 400)
    ax.plot(t, np.exp(-np.abs(t - mu) / b) / (2 * b), 'r-', label=f'Laplace fit b={b:.3f}')
    sd = float(np.std(x))
    ax.plot(t, np.exp(-0.5 * ((t - x.mean()) / sd) ** 2) / (sd * np.sqrt(2 * np.pi)), 'k--',
            lw=1, label='Gaussian fit')
    ax.set_title(label or title, fontsize=9)
    ax.legend(fontsize=7)
  if title and n > 1:
    fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path

