"""One-time conversion of downloaded data sets into TFDS array_record files readable without TF.

  python -m common.data.prepare --dataset=cifar10 --data_dir=~/tensorflow_datasets \
      --source=/path/to/cifar-10-python.tar.gz          # or the extracted cifar-10-batches-py/
  python -m common.data.prepare --dataset=cifar100 --source=/path/to/cifar-100-python.tar.gz
  python -m common.data.prepare --dataset=imagenet2012 --source=/path/to/imagenet  # train/ val/
  python -m common.data.prepare --dataset=caltech_birds2011 --source=/path/to/CUB_200_2011

Nothing is downloaded. CIFAR images are stored as uint8 tensors, ImageNet/CUB images as their
original JPEG bytes (no re-encoding, so no TensorFlow is needed to write or read). ImageNet folders
hold one sub-folder per class (wnid) under ``train/`` and ``val/``; labels follow the sorted wnids
(the torchvision ``ImageFolder`` order the papers' loaders use).
"""
from __future__ import annotations

import argparse
import os
import pickle
import sys
import tarfile
from typing import Dict, Iterator, List, Tuple

import numpy as np

from common.data.sources import TFDS_DATASETS, default_data_dir

VERSION = '1.0.0'


def _builder(name: str, image_feature, splits: Dict[str, callable]):
  """An unregistered array_record ``GeneratorBasedBuilder`` named ``name`` with ``splits``."""
  import tensorflow_datasets as tfds
  num_classes = TFDS_DATASETS[name][0]

  class Builder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    VERSION = tfds.core.Version(globals()['VERSION'])

    def _info(self):
      return tfds.core.DatasetInfo(
          builder=self, features=tfds.features.FeaturesDict({
              'image': image_feature, 'label': tfds.features.ClassLabel(num_classes=num_classes)}),
          supervised_keys=('image', 'label'))

    def _split_generators(self, dl_manager):
      return {split: self._generate_examples(fn) for split, fn in splits.items()}

    def _generate_examples(self, fn):
      for i, (image, label) in enumerate(fn()):
        yield i, {'image': image, 'label': int(label)}

  Builder.name = name
  return Builder


# --- readers of the downloaded formats --------------------------------------------------------


def _cifar_members(source: str, names: List[str]) -> Dict[str, dict]:
  """Unpickled CIFAR batch files from a tarball or an extracted directory."""
  out = {}
  if os.path.isdir(source):
    for n in names:
      hits = [os.path.join(d, n) for d, _, fs in os.walk(source) if n in fs]
      if not hits:
        raise FileNotFoundError(f'{n} not found under {source}')
      with open(hits[0], 'rb') as f:
        out[n] = pickle.load(f, encoding='bytes')
    return out
  with tarfile.open(source) as tar:
    for m in tar.getmembers():
      base = os.path.basename(m.name)
      if base in names:
        out[base] = pickle.load(tar.extractfile(m), encoding='bytes')
  missing = [n for n in names if n not in out]
  if missing:
    raise FileNotFoundError(f'{missing} not found in {source}')
  return out


def cifar_splits(name: str, source: str):
  """``{'train': fn, 'test': fn}`` yielding ``(uint8 [32, 32, 3], label)`` from the python pickles."""
  if name == 'cifar10':
    files = {'train': [f'data_batch_{i}' for i in range(1, 6)], 'test': ['test_batch']}
    key = b'labels'
  else:
    files = {'train': ['train'], 'test': ['test']}
    key = b'fine_labels'
  members = _cifar_members(source, files['train'] + files['test'])

  def gen(split):
    def fn():
      for n in files[split]:
        d = members[n]
        imgs = np.asarray(d[b'data'], np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        for img, label in zip(imgs, d[key]):
          yield img, label
    return fn

  return {s: gen(s) for s in files}


def _jpeg_bytes(path: str) -> bytes:
  with open(path, 'rb') as f:
    return f.read()


def imagefolder_splits(source: str, split_dirs: Dict[str, str]):
  """``{'train': fn, ...}`` yielding ``(jpeg bytes, label)`` from class sub-folders."""
  classes = sorted(d for d in os.listdir(os.path.join(source, split_dirs['train']))
                   if os.path.isdir(os.path.join(source, split_dirs['train'], d)))
  if not classes:
    raise FileNotFoundError(f'no class folders under {os.path.join(source, split_dirs["train"])}')
  index = {c: i for i, c in enumerate(classes)}

  def gen(sub):
    def fn():
      root = os.path.join(source, sub)
      for c in sorted(os.listdir(root)):
        if c not in index:
          continue
        for f in sorted(os.listdir(os.path.join(root, c))):
          yield _jpeg_bytes(os.path.join(root, c, f)), index[c]
    return fn

  return {s: gen(d) for s, d in split_dirs.items()}, len(classes)


def cub_splits(source: str):
  """CUB-200-2011 with its official train/test split files."""
  def read(n):
    with open(os.path.join(source, n)) as f:
      return dict(l.split() for l in f if l.strip())
  images, is_train, labels = (read('images.txt'), read('train_test_split.txt'),
                              read('image_class_labels.txt'))

  def gen(train):
    def fn():
      for i in sorted(images, key=int):
        if (is_train[i] == '1') == train:
          yield _jpeg_bytes(os.path.join(source, 'images', images[i])), int(labels[i]) - 1
    return fn

  return {'train': gen(True), 'test': gen(False)}


def prepare(name: str, source: str, data_dir: str) -> str:
  """Writes ``data_dir/name/VERSION`` from ``source``; returns that path."""
  import tensorflow_datasets as tfds
  if name not in TFDS_DATASETS:
    raise ValueError(f'unknown data set {name!r}; allowed: {sorted(TFDS_DATASETS)}')
  if not os.path.exists(source):
    raise FileNotFoundError(f'--source {source} does not exist')
  if name in ('cifar10', 'cifar100'):
    feature = tfds.features.Tensor(shape=(32, 32, 3), dtype=np.uint8)
    splits = cifar_splits(name, source)
  elif name == 'imagenet2012':
    feature = tfds.features.Tensor(shape=(), dtype=np.object_)
    splits, n = imagefolder_splits(source, {'train': 'train', 'validation': 'val'})
    if n != 1000:
      print(f'warning: {n} classes found (ImageNet has 1000)', file=sys.stderr)
  else:
    feature = tfds.features.Tensor(shape=(), dtype=np.object_)
    splits = cub_splits(source)
  builder = _builder(name, feature, splits)(data_dir=data_dir, file_format='array_record')
  builder.download_and_prepare()
  return os.path.join(data_dir, name, VERSION)


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  ap.add_argument('--dataset', required=True, choices=sorted(TFDS_DATASETS))
  ap.add_argument('--source', required=True, help='downloaded archive or directory')
  ap.add_argument('--data_dir', default=default_data_dir())
  args = ap.parse_args(argv)
  try:
    path = prepare(args.dataset, os.path.expanduser(args.source), os.path.expanduser(args.data_dir))
  except (FileNotFoundError, ValueError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  print(f'prepared {args.dataset} in {path}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
