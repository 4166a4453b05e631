"""Data: the embedded ``digits`` set and TFDS pipelines (cifar10, cifar100, imagenet2012,
caltech_birds2011), all behind one call::

    ds = common.data.load('digits', 'train', seed=0)
    for batch in ds.batches(128, epoch=0, train=True, drop_remainder=True):
        batch['image']  # float32 [128, 32, 32, 3], normalised
        batch['label']  # int32 [128]

``pipeline.py``: the Dataset (determinism, per-host sharding, prefetch); ``augment.py``: the
torchvision-equivalent transforms; ``digits.py`` and ``tfds_source.py``: the data sets;
``prepare.py``: the one-time, offline conversion into array_record files;
``tfrecord.py``: TFRecord files without TensorFlow.
"""
from typing import Optional

from common.data import digits as _digits
from common.data import tfds_source as _tfds
from common.data.pipeline import NORMALIZATIONS, Dataset, Normalization, normalization
from common.data.tfds_source import TFDS_DATASETS, default_data_dir, prepare_command

DATASETS = ('digits',) + tuple(TFDS_DATASETS)


def load(name: str, split: str, *, data_dir: Optional[str] = None, seed: int = 0,
         augment: bool = True, normalization: Optional[Normalization] = None,
         **options) -> Dataset:
  """The ``split`` of data set ``name`` as a :class:`Dataset` (the ``common.data`` contract).

  Args:
    name: one of ``DATASETS``: 'digits', 'cifar10', 'cifar100', 'imagenet2012',
      'caltech_birds2011'.
    split: 'train' | 'test' (ImageNet's 'test' is its validation set), optionally sliced as
      'train[:5000]' or 'train[90%:]' (held-out subsets; TFDS stores examples pre-shuffled).
    data_dir: TFDS data directory (default ``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``);
      ignored for digits.
    seed: data-order / augmentation seed: batches are a pure function of (seed, epoch).
    augment: training-time augmentation on (it applies only when batching with ``train=True``).
    normalization: None = the data set's usual one ('cifar' for CIFAR-10/100, 'imagenet' for
      ImageNet / CUB, train-set standardisation for digits); or a name of ``NORMALIZATIONS``
      ('cifar', 'cifar100', 'imagenet', 'none'; digits also 'standardize'); or an explicit
      ``(mean[3], std[3])`` on [0, 1] pixels. ReCU / SiMaN pass 'imagenet' for CIFAR.
    options: per-data-set options, see ``digits.load`` (split_seed, test_size, upsample, pad)
      and ``tfds_source.load`` (CIFAR: pad, pad_mode, flip; ImageNet / CUB: crop_scale,
      image_size, crop, train_resize, eval_resize, color_jitter, lighting, flip, workers);
      all: prefetch.
  Raises:
    ValueError: unknown name / split / option / normalisation.
    FileNotFoundError: a TFDS data set that has not been prepared; the message names the data
      set, the data_dir searched and the ``python -m common.data.prepare`` command.
  """
  if name == 'digits':
    unknown = sorted(set(options) - set(_digits.OPTIONS))
    if unknown:
      raise ValueError(f'unknown option(s) {unknown} for data set digits; allowed: '
                       f'{sorted(_digits.OPTIONS)}')
    return _digits.load(split, seed=seed, augment_train=augment, normalization=normalization,
                        **options)
  if name in TFDS_DATASETS:
    return _tfds.load(name, split, data_dir=data_dir, seed=seed, augment_train=augment,
                      normalization=normalization, **options)
  raise ValueError(f'unknown data set {name!r}; allowed: {list(DATASETS)}')
