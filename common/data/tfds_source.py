"""TFDS data sets read from array_record files, without TensorFlow.

``tfds.builder_from_directory(dir).as_data_source(split)`` gives random access to array_record
files with NumPy records (no TensorFlow: ``as_dataset`` would need it for array_record). ``python -m common.data.prepare`` writes
them once from downloaded archives or from a TF-prepared tfrecord copy; our builders store CIFAR
as uint8 tensors and ImageNet / CUB as encoded JPEG ``Image`` features. Any other array_record
copy with the TFDS feature names ``image`` / ``label`` (``Image`` or uint8 ``Tensor`` images)
reads the same way: encoded images are fetched undecoded and decoded with PIL in the workers.
"""
from __future__ import annotations

import dataclasses
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, Optional

import numpy as np

from common.data import augment, pipeline

SPLITS = ('train', 'test')


@dataclasses.dataclass(frozen=True)
class Info:
  num_classes: int
  image_size: int            # 32: whole-batch NumPy pipeline; otherwise the crop size
  normalization: str         # the papers' default for this data set
  tfds_splits: Dict[str, str]
  source_hint: str           # what --source the prepare command expects


TFDS_DATASETS = {
    'cifar10': Info(10, 32, 'cifar', {'train': 'train', 'test': 'test'},
                    '/path/to/cifar-10-python.tar.gz'),
    'cifar100': Info(100, 32, 'cifar', {'train': 'train', 'test': 'test'},
                     '/path/to/cifar-100-python.tar.gz'),
    'imagenet2012': Info(1000, 224, 'imagenet', {'train': 'train', 'test': 'validation'},
                         '/path/to/imagenet_with_train_and_val_class_folders'),
    'caltech_birds2011': Info(200, 224, 'imagenet', {'train': 'train', 'test': 'test'},
                              '/path/to/CUB_200_2011'),
}

SMALL_OPTIONS = {'pad': 4, 'pad_mode': 'constant', 'flip': True, 'prefetch': 2}
LARGE_OPTIONS = {'image_size': 224, 'crop': 'resized', 'crop_scale': (0.08, 1.0),
                 'train_resize': None, 'eval_resize': 256, 'color_jitter': 0.0,
                 'lighting': 0.0, 'flip': True, 'prefetch': 2, 'workers': 8}


def default_data_dir() -> str:
  """``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets`` (TFDS's own default)."""
  return os.path.expanduser(os.environ.get('TFDS_DATA_DIR', '') or '~/tensorflow_datasets')


def prepare_command(name: str, data_dir: str, source: Optional[str] = None) -> str:
  """The ``common.data.prepare`` command line that writes ``name`` into ``data_dir``."""
  return (f'python -m common.data.prepare --dataset={name} --data_dir={data_dir} '
          f'--source={source or TFDS_DATASETS[name].source_hint}')


def _version_key(v: str):
  return tuple(int(p) if p.isdigit() else -1 for p in v.split('.'))


def _version_dirs(name: str, data_dir: str):
  """Every ``data_dir/name[/config]/<version>`` directory (TFDS layout), newest version first."""
  root = os.path.join(data_dir, name)
  if not os.path.isdir(root):
    return []
  found = []
  for a in os.listdir(root):
    pa = os.path.join(root, a)
    if not os.path.isdir(pa) or a.startswith('incomplete') or a.startswith('.'):
      continue
    if a[:1].isdigit():
      found.append((a, pa))
    else:  # a builder config directory
      found += [(b, os.path.join(pa, b)) for b in os.listdir(pa)
                if b[:1].isdigit() and os.path.isdir(os.path.join(pa, b))]
  return [p for _, p in sorted(found, key=lambda t: _version_key(t[0]), reverse=True)]


def _has(path: str, fmt: str) -> bool:
  return any(f'.{fmt}-' in f for f in os.listdir(path)) and os.path.exists(
      os.path.join(path, 'dataset_info.json'))


def find_prepared(name: str, data_dir: str) -> Optional[str]:
  """The newest ``data_dir/name/[config/]<version>`` holding array_record files, or None."""
  return next((p for p in _version_dirs(name, data_dir) if _has(p, 'array_record')), None)


def find_tfrecord(name: str, data_dir: str) -> Optional[str]:
  """The newest version directory holding a TF-prepared tfrecord copy, or None."""
  return next((p for p in _version_dirs(name, data_dir) if _has(p, 'tfrecord')), None)


def missing_error(name: str, data_dir: str) -> FileNotFoundError:
  """The error for an unprepared data set: names it, the directory searched and the command."""
  msg = (f'data set {name!r} is not prepared: no array_record copy under '
         f'{os.path.join(data_dir, name)} (data_dir searched: {data_dir}); prepare it once, '
         f'offline and without TensorFlow, with: {prepare_command(name, data_dir)}')
  tfrecord = find_tfrecord(name, data_dir)
  if tfrecord:
    msg += (f' -- a TF-prepared tfrecord copy exists, convert it with: '
            f'{prepare_command(name, data_dir, tfrecord)}')
  return FileNotFoundError(msg)


class _Reader:
  """Thread-safe batched record access to one split of a prepared TFDS directory."""

  def __init__(self, path: str, tfds_split: str, name: str):
    import tensorflow_datasets as tfds
    builder = tfds.builder_from_directory(path)
    features = builder.info.features
    missing = {'image', 'label'} - set(features.keys())
    if missing:
      raise ValueError(f'{path} has features {sorted(features.keys())}; {name} needs "image" '
                       'and "label"')
    if tfds_split not in builder.info.splits:
      raise ValueError(f'{path} has splits {sorted(builder.info.splits.keys())}; {name} needs '
                       f'{tfds_split!r}')
    # Encoded images (and any other image feature, e.g. CUB's masks) are fetched as bytes and
    # decoded in the augmentation workers.
    decoders = {k: tfds.decode.SkipDecoding() for k, f in features.items()
                if isinstance(f, tfds.features.Image)}
    self.source = builder.as_data_source(tfds_split, decoders=decoders or None)
    label = features['label']
    self.num_classes = getattr(label, 'num_classes', None)
    self.path = path
    self._lock = threading.Lock()

  def __len__(self):
    return len(self.source)

  def read(self, rows) -> list:
    rows = [int(r) for r in rows]
    if not rows:
      return []
    with self._lock:
      return list(self.source.__getitems__(rows))

  def labels(self, rows, chunk: int = 4096) -> np.ndarray:
    rows = np.asarray(rows, np.int64)
    out = [int(r['label']) for i in range(0, len(rows), chunk)
           for r in self.read(rows[i:i + chunk])]
    return np.asarray(out, np.int32)


def _check_options(name: str, options: dict, allowed: dict) -> dict:
  unknown = sorted(set(options) - set(allowed))
  if unknown:
    raise ValueError(f'unknown option(s) {unknown} for data set {name!r}; allowed: '
                     f'{sorted(allowed)}')
  return {**allowed, **options}


def load(name: str, split: str, *, data_dir: Optional[str] = None, seed: int = 0,
         augment_train: bool = True, normalization: Optional[pipeline.Normalization] = None,
         **options) -> pipeline.Dataset:
  """A split of a prepared TFDS data set as a :class:`pipeline.Dataset`.

  CIFAR-10/100 (the DCFF / 1xN / White-Box / Jackpot ``cifar.py`` loaders): train ``RandomCrop(32, padding=pad)`` + flip, test
  unchanged. Options ``pad`` (4; LEC 8), ``pad_mode`` ('constant'; FFSD 'reflect'), ``flip``.

  ImageNet / CUB: train ``RandomResizedCrop(image_size, crop_scale)`` + flip, test
  ``Resize(eval_resize)`` + ``CenterCrop(image_size)``. Options ``image_size`` (224),
  ``crop_scale`` ((0.08, 1); 1xN / ReCU (0.08, 1.25), PSS (0.25, 1)), ``crop`` ('resized' or
  LEC's 'plain'), ``train_resize`` (a Resize before the crop: CEC's CUB 256), ``eval_resize``
  (256, or (h, w)), ``color_jitter`` (PSS 0.4), ``lighting`` (ReCU / PSS 0.1), ``flip``,
  ``workers`` (decode threads). Both: ``prefetch`` (batches prepared ahead).

  Raises:
    FileNotFoundError: the data set is not prepared under ``data_dir`` (message: the data set,
      the directory searched and the prepare command).
    ValueError: unknown split / option / normalisation, or a copy without image/label features.
  """
  info = TFDS_DATASETS[name]
  base, bounds = pipeline.parse_split(split, SPLITS)
  small = info.image_size == 32
  opts = _check_options(name, options, SMALL_OPTIONS if small else LARGE_OPTIONS)
  data_dir = os.path.abspath(os.path.expanduser(data_dir or default_data_dir()))
  path = find_prepared(name, data_dir)
  if path is None:
    raise missing_error(name, data_dir)
  reader = _Reader(path, info.tfds_splits[base], name)
  num_classes = int(reader.num_classes or info.num_classes)
  mean, std = pipeline.normalization(normalization or info.normalization)
  rows = np.arange(len(reader), dtype=np.int64)
  if bounds is not None:
    a, b = pipeline.resolve_bounds(bounds, len(rows))
    rows = rows[a:b]

  def check_labels(labels):
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
      raise ValueError(f'{name} at {path}: label outside [0, {num_classes})')
    return labels

  if small:
    shape = (32, 32, 3)

    def get(r, train, seeds):
      recs = reader.read(r)
      if not recs:
        return np.zeros((0,) + shape, np.float32), np.zeros((0,), np.int32)
      images = np.stack([augment.to_rgb(x['image']) for x in recs])
      if images.shape[1:] != shape:
        raise ValueError(f'{name} at {path}: images of shape {images.shape[1:]}, expected {shape}')
      if train and augment_train:
        images = augment.crop_flip(images, pipeline.uniforms(seeds, 3), pad=int(opts['pad']),
                                   flip=bool(opts['flip']), pad_mode=opts['pad_mode'])
      labels = check_labels(np.asarray([int(x['label']) for x in recs], np.int32))
      return (images.astype(np.float32) / 255.0 - mean) / std, labels
  else:
    size = int(opts['image_size'])
    shape = (size, size, 3)
    pool_box = []

    def pool():
      if not pool_box:
        pool_box.append(ThreadPoolExecutor(max(1, int(opts['workers'])),
                                           thread_name_prefix=f'common.data.{name}'))
      return pool_box[0]

    def one(args):
      raw, s, train = args
      img = augment.to_rgb(raw)
      if train and augment_train:
        x = augment.imagenet_train(
            img, np.random.RandomState(int(s)), size=size, crop=opts['crop'],
            scale=tuple(opts['crop_scale']), pre_resize=opts['train_resize'],
            jitter=float(opts['color_jitter']), alphastd=float(opts['lighting']),
            flip=bool(opts['flip']))
      else:
        x = augment.imagenet_eval(img, size=size, resize_to=opts['eval_resize'])
      return (x - mean) / std

    def get(r, train, seeds):
      recs = reader.read(r)
      if not recs:
        return np.zeros((0,) + shape, np.float32), np.zeros((0,), np.int32)
      images = list(pool().map(one, [(x['image'], s, train) for x, s in zip(recs, seeds)]))
      labels = check_labels(np.asarray([int(x['label']) for x in recs], np.int32))
      return np.stack(images).astype(np.float32), labels

  return pipeline.Dataset(name, num_classes, shape, get, rows=rows, labels_fn=reader.labels,
                          split=split, seed=seed, prefetch=int(opts['prefetch']),
                          normalization=(mean, std))
