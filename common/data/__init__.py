"""Data: the embedded ``digits`` set and TFDS pipelines (cifar10, cifar100, imagenet2012,
caltech_birds2011), all behind one call::

    ds = common.data.load('digits', 'train', seed=0)
    for batch in ds.batches(128, epoch=0, train=True, drop_remainder=True):
        batch['image']  # float32 [128, 32, 32, 3], normalised
        batch['label']  # int32 [128]

See ``common/data/pipeline.py`` for determinism and per-host sharding, ``sources.py`` for each
data set's preprocessing, and ``prepare.py`` for the one-time conversion of downloaded archives.
"""
from typing import Optional

from common.data.pipeline import NORMALIZATIONS, Dataset
from common.data.sources import SPLITS, TFDS_DATASETS, default_data_dir, digits, tfds_dataset

DATASETS = ('digits',) + tuple(sorted(TFDS_DATASETS))


def load(name: str, split: str, *, data_dir: Optional[str] = None, seed: int = 0,
         augment: bool = True, normalization: Optional[str] = None, **kwargs) -> Dataset:
  """The ``split`` ('train' | 'test') of data set ``name`` as a :class:`Dataset`.

  Args:
    name: one of ``DATASETS``.
    data_dir: TFDS data directory (default ``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``);
      ignored for digits.
    seed: data-order / augmentation seed.
    augment: training-time augmentation on (applies only when batching with ``train=True``).
    normalization: 'cifar' | 'imagenet' | 'none' (default: the data set's usual one).
    kwargs: per-source options (``crop_scale`` for ImageNet-style data, ``prefetch``).
  Raises:
    ValueError: unknown name / split / normalisation.
    FileNotFoundError: a TFDS data set that has not been prepared (the message says how).
  """
  if name == 'digits':
    if normalization not in (None, ''):
      raise ValueError('digits is standardised with its own train statistics; '
                       f'normalization={normalization!r} is not supported for it')
    return digits(split, seed=seed, augment=augment, **kwargs)
  if name in TFDS_DATASETS:
    return tfds_dataset(name, split, data_dir=data_dir, seed=seed, augment=augment,
                        normalization=normalization or None, **kwargs)
  raise ValueError(f'unknown data set {name!r}; allowed: {list(DATASETS)}')
