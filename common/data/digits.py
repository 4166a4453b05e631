"""The embedded ``digits`` set: scikit-learn's bundled 8x8 digits as 32x32x3 (real data, offline).

The quick experiments of every paper package run on it (papers' "tiny CPU experiment" sections):
CIFAR-sized models run unchanged, a full run takes minutes on two cores.
"""
from __future__ import annotations

import functools
from typing import Optional

import numpy as np

from common.data import augment, pipeline

SPLITS = ('train', 'test')
NUM_EXAMPLES = 1797
DEFAULT_TEST_SIZE = 360          # 1437 train / 360 test, stratified (sklearn load_digits: 1797)
UPSAMPLINGS = ('nearest', 'bilinear')
OPTIONS = ('split_seed', 'test_size', 'upsample', 'pad', 'prefetch')


def bilinear_matrix(n_in: int, n_out: int) -> np.ndarray:
  """``[n_out, n_in]`` linear-interpolation weights with half-pixel centres and edge clamping
  (PIL's / ``torch.nn.functional.interpolate(align_corners=False)``'s bilinear upsampling)."""
  src = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
  lo = np.floor(src).astype(np.int64)
  hi = np.minimum(lo + 1, n_in - 1)
  m = np.zeros((n_out, n_in))
  np.add.at(m, (np.arange(n_out), lo), 1 - (src - lo))
  np.add.at(m, (np.arange(n_out), hi), src - lo)
  return m


@functools.lru_cache(maxsize=8)
def _arrays(split_seed: int, test_size: int, upsample: str):
  """(images float32 [1797, 32, 32, 3] in [0, 1], labels int32 [1797], train rows, test rows)."""
  from sklearn.datasets import load_digits
  from sklearn.model_selection import train_test_split
  d = load_digits()
  x = d.images.astype(np.float64) / 16.0          # pixel values 0..16
  y = d.target.astype(np.int32)
  tr, te = train_test_split(np.arange(len(x)), test_size=test_size, random_state=split_seed,
                            stratify=y)
  if upsample == 'nearest':
    x = np.repeat(np.repeat(x, 4, axis=1), 4, axis=2)
  else:
    m = bilinear_matrix(8, 32)
    x = np.einsum('ai,nij,bj->nab', m, x, m)
  x = np.repeat(x[..., None], 3, axis=-1).astype(np.float32)
  x.setflags(write=False)
  return x, y, np.asarray(tr, np.int64), np.asarray(te, np.int64)


def load(split: str, *, seed: int = 0, augment_train: bool = True,
         normalization: Optional[pipeline.Normalization] = None, split_seed: int = 0,
         test_size: int = DEFAULT_TEST_SIZE, upsample: str = 'nearest', pad: int = 2,
         prefetch: int = 0) -> pipeline.Dataset:
  """scikit-learn's digits (1,797 real 8x8 images, 10 classes) as a 32x32x3 :class:`Dataset`.

  Args:
    split: 'train' | 'test' (optionally sliced, e.g. 'train[:500]').
    seed: data-order / augmentation seed (does not change the split).
    augment_train: pad-``pad`` random crop when batching with ``train=True``. Never flips: digits
      are not flip-invariant (a mirrored 2, 3 or 7 is not a digit).
    normalization: None / 'standardize' (default): subtract the train split's pixel mean and
      divide by its std, so the train images have mean 0 and std 1; or any
      ``pipeline.normalization`` spec (e.g. 'imagenet', which the ReCU / SiMaN digits runs use, as their
      CIFAR loaders do),
      applied to [0, 1] pixels.
    split_seed: seed of the stratified train/test split (fixed at 0 so that runs with different
      training seeds evaluate on the same test set).
    test_size: test examples (360 -> 1437 / 360; FFSD's quick run uses 797 -> 1000 / 797).
    upsample: 'nearest' (each pixel repeated 4x4: strokes stay sharp, the default) or
      'bilinear' (half-pixel centres, as PIL / torch ``interpolate`` upsample).
    pad: crop padding of the augmentation (zero = background pixels, padded before normalising).
    prefetch: background batches (the whole set is in memory, so 0 is fastest).
  """
  base, bounds = pipeline.parse_split(split, SPLITS)
  if upsample not in UPSAMPLINGS:
    raise ValueError(f'unknown upsample {upsample!r}; allowed: {list(UPSAMPLINGS)}')
  if not 0 < int(test_size) < NUM_EXAMPLES:
    raise ValueError(f'test_size must be in (0, {NUM_EXAMPLES}); got {test_size}')
  x, y, tr, te = _arrays(int(split_seed), int(test_size), upsample)
  if normalization in (None, '', 'standardize'):
    train_pixels = x[tr, ..., 0].astype(np.float64)
    mean = np.full(3, train_pixels.mean(), np.float32)
    std = np.full(3, train_pixels.std(), np.float32)
  else:
    mean, std = pipeline.normalization(normalization)
  rows = tr if base == 'train' else te
  if bounds is not None:
    a, b = pipeline.resolve_bounds(bounds, len(rows))
    rows = rows[a:b]

  def get(r, train, seeds):
    out = x[r]
    if train and augment_train:
      out = augment.crop_flip(out, pipeline.uniforms(seeds, 3), pad=pad, flip=False)
    return (out - mean) / std, y[r]

  return pipeline.Dataset('digits', 10, (32, 32, 3), get, rows=rows, labels_fn=lambda r: y[r],
                          split=split, seed=seed, prefetch=prefetch, normalization=(mean, std))
