"""One-time, offline conversion into the TFDS array_record copies that ``common.data`` reads.

  python -m common.data.prepare --dataset=cifar10 --data_dir=~/tensorflow_datasets \\
      --source=/path/to/cifar-10-python.tar.gz      # or the extracted cifar-10-batches-py/
  python -m common.data.prepare --dataset=cifar100 --source=/path/to/cifar-100-python.tar.gz
  python -m common.data.prepare --dataset=imagenet2012 --source=/path/to/imagenet  # train/ val/
  python -m common.data.prepare --dataset=caltech_birds2011 --source=/path/to/CUB_200_2011
  python -m common.data.prepare --dataset=cifar10 --source=~/tensorflow_datasets/cifar10/3.0.2

Sources:
  * a TFDS copy prepared elsewhere (tfrecord, as ``tfds.load`` with TensorFlow writes it, or
    array_record): its version directory, its data dir, or its ``<data_dir>/<name>`` directory.
    TFRecord files are read without TensorFlow (``common/data/tfrecord.py``).
  * cifar10 / cifar100: the "python version" tarball or its extracted directory.
  * imagenet2012: a directory with ``train/<wnid>/*.JPEG`` and ``val/<wnid>/*.JPEG`` (the layout
    of torchvision's ``ImageFolder``; labels follow the sorted wnids, as in the papers' loaders).
  * caltech_birds2011: the extracted ``CUB_200_2011`` directory (``images.txt``,
    ``image_class_labels.txt``, ``train_test_split.txt``, ``images/``), its official split.

Nothing is downloaded and TensorFlow is not needed. CIFAR images are stored as uint8 ``Tensor``
features; ImageNet / CUB images as encoded JPEG ``Image`` features (the original bytes; the few
CMYK / grey / PNG files are re-encoded as RGB JPEG, as TFDS's own ImageNet builder does). Every
record also has an ``id`` text feature, the image's stable key (TFDS stores records shuffled, so
the record index is not the source order): CIFAR ``'train_00042'`` (the position in the pickle,
TFDS's own cifar ``id``), CUB the path under ``images/`` (``'001.Black_footed_Albatross/x.jpg'``),
ImageNet the path under the split folder; a TFDS copy's ``id`` / ``image/filename`` is kept. The
copy is written to ``<data_dir>/<dataset>/1.0.0`` and then read by ``common.data.load``.
"""
from __future__ import annotations

import argparse
import io
import os
import pickle
import sys
import tarfile
from typing import Callable, Dict, Iterator, List, Optional, Tuple

import numpy as np

from common import cli
from common.data import augment, tfds_source, tfrecord
from common.data.tfds_source import TFDS_DATASETS, default_data_dir

VERSION = '1.0.0'
Examples = Callable[[], Iterator[Tuple[object, int]]]


def make_builder(name: str, splits: Dict[str, Examples], num_classes: Optional[int] = None):
  """An unregistered array_record ``GeneratorBasedBuilder`` class for ``name``.

  Features: ``image`` (uint8 ``Tensor[32, 32, 3]`` for CIFAR, JPEG ``Image`` otherwise),
  ``label`` (``ClassLabel``) and ``id`` (``Text``, the image's stable key); ``splits`` maps TFDS
  split names to generators of ``(image, label)`` or ``(image, label, key)`` (no key: ``''``).
  Instantiate with ``(data_dir=..., file_format='array_record')``.
  """
  import tensorflow_datasets as tfds
  info = TFDS_DATASETS[name]
  n_classes = int(num_classes or info.num_classes)
  if info.image_size == 32:
    image_feature = tfds.features.Tensor(shape=(32, 32, 3), dtype=np.uint8)
  else:
    image_feature = tfds.features.Image(shape=(None, None, 3), encoding_format='jpeg')

  ds_name = name

  # Not named `Builder`: TFDS would then infer the name from the module, which fails under `-m`.
  class ArrayRecordCopy(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    name = ds_name
    VERSION = tfds.core.Version(globals()['VERSION'])

    def _info(self):
      # A DatasetInfo built here, not ``dataset_info_from_configs``: for a builder defined in a
      # module tfds looks for metadata files next to it and fails with NotADirectoryError.
      return tfds.core.DatasetInfo(
          builder=self, features=tfds.features.FeaturesDict({
              'image': image_feature,
              'label': tfds.features.ClassLabel(num_classes=n_classes),
              'id': tfds.features.Text()}),
          supervised_keys=('image', 'label'))

    def _split_generators(self, dl_manager):
      return {split: self._generate_examples(fn) for split, fn in splits.items()}

    def _generate_examples(self, fn):
      for i, ex in enumerate(fn()):
        key = ex[2] if len(ex) > 2 else ''
        yield i, {'image': ex[0], 'label': int(ex[1]), 'id': str(key)}

  return ArrayRecordCopy


def rgb_jpeg(data: bytes) -> bytes:
  """``data`` unchanged if it is an RGB JPEG, else the image re-encoded as one (quality 95)."""
  from PIL import Image
  with Image.open(io.BytesIO(data)) as im:
    if im.format == 'JPEG' and im.mode == 'RGB':
      return data
    out = io.BytesIO()
    im.convert('RGB').save(out, format='JPEG', quality=95)
    return out.getvalue()


def _read(path: str) -> bytes:
  with open(path, 'rb') as f:
    return f.read()


# --- CIFAR python pickles ---------------------------------------------------------------------


def _cifar_members(source: str, names: List[str]) -> Dict[str, dict]:
  """Unpickled CIFAR batch files from a tarball or an extracted directory."""
  out = {}
  if os.path.isdir(source):
    for n in names:
      hits = sorted(os.path.join(d, n) for d, _, fs in os.walk(source) if n in fs)
      if hits:
        with open(hits[0], 'rb') as f:
          out[n] = pickle.load(f, encoding='bytes')
  else:
    try:
      tar = tarfile.open(source)
    except tarfile.TarError as e:
      raise ValueError(f'--source {source} is neither a directory nor a tar archive') from e
    with tar:
      for m in tar.getmembers():
        if m.isfile() and os.path.basename(m.name) in names:
          out[os.path.basename(m.name)] = pickle.load(tar.extractfile(m), encoding='bytes')
  missing = [n for n in names if n not in out]
  if missing:
    raise FileNotFoundError(f'CIFAR batch file(s) {missing} not found in {source} (expected the '
                            '"python version" archive from https://www.cs.toronto.edu/~kriz/)')
  return out


def cifar_splits(name: str, source: str) -> Dict[str, Examples]:
  """``{'train': fn, 'test': fn}`` of ``(uint8 [32, 32, 3], label)`` from the python pickles."""
  if name == 'cifar10':
    files = {'train': [f'data_batch_{i}' for i in range(1, 6)], 'test': ['test_batch']}
    key = b'labels'
  else:
    files = {'train': ['train'], 'test': ['test']}
    key = b'fine_labels'
  members = _cifar_members(source, files['train'] + files['test'])

  def gen(split):
    def fn():
      i = 0
      for n in files[split]:
        d = members[n]
        # Rows are 3072 bytes: the 1024 R, then G, then B values of a 32x32 image (row-major).
        imgs = np.asarray(d[b'data'], np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        for img, label in zip(imgs, d[key]):
          yield img, label, f'{split}_{i:05d}'
          i += 1
    return fn

  return {s: gen(s) for s in files}


# --- image folders ----------------------------------------------------------------------------


def imagefolder_splits(source: str, split_dirs: Dict[str, str]) -> Tuple[Dict[str, Examples], int]:
  """``{tfds split: fn}`` of ``(jpeg bytes, label)`` from ``source/<dir>/<class>/<file>``.

  Classes are the sorted sub-folders of the first split's directory (``ImageFolder``'s order);
  every split must use the same class names.
  """
  dirs = {s: os.path.join(source, d) for s, d in split_dirs.items()}
  for s, d in dirs.items():
    if not os.path.isdir(d):
      raise FileNotFoundError(f'{d} not found: --source must hold '
                              f'{sorted(split_dirs.values())} directories of class folders')
  first = next(iter(dirs.values()))
  classes = sorted(c for c in os.listdir(first) if os.path.isdir(os.path.join(first, c)))
  if not classes:
    raise FileNotFoundError(f'no class folders under {first}')
  index = {c: i for i, c in enumerate(classes)}
  for s, d in dirs.items():
    extra = sorted(set(c for c in os.listdir(d) if os.path.isdir(os.path.join(d, c))) - set(index))
    if extra:
      raise ValueError(f'{d} has class folders not in {first}: {extra[:5]}')

  def gen(root):
    def fn():
      for c in classes:
        cdir = os.path.join(root, c)
        if not os.path.isdir(cdir):
          continue
        for f in sorted(os.listdir(cdir)):
          yield rgb_jpeg(_read(os.path.join(cdir, f))), index[c], f'{c}/{f}'
    return fn

  return {s: gen(d) for s, d in dirs.items()}, len(classes)


def cub_splits(source: str) -> Dict[str, Examples]:
  """CUB-200-2011 with its official train/test split (labels 1..200 -> 0..199)."""
  def table(n):
    p = os.path.join(source, n)
    if not os.path.exists(p):
      raise FileNotFoundError(f'{p} not found: --source must be the extracted CUB_200_2011 '
                              'directory')
    with open(p) as f:
      return dict(l.split(None, 1) for l in f if l.strip())
  images, is_train = table('images.txt'), table('train_test_split.txt')
  labels = table('image_class_labels.txt')

  def gen(train):
    def fn():
      for i in sorted(images, key=int):
        if (is_train[i].strip() == '1') == train:
          rel = images[i].strip()
          yield rgb_jpeg(_read(os.path.join(source, 'images', rel))), int(labels[i]) - 1, rel
    return fn

  return {'train': gen(True), 'test': gen(False)}


# --- TFDS copies prepared elsewhere ------------------------------------------------------------


def find_tfds_copy(name: str, source: str) -> Optional[str]:
  """The TFDS version directory that ``source`` designates, or None if it is not a TFDS copy."""
  if not os.path.isdir(source):
    return None
  if os.path.exists(os.path.join(source, 'dataset_info.json')):
    return source
  for data_dir, ds in ((source, name), (os.path.dirname(source.rstrip('/')),
                                        os.path.basename(source.rstrip('/')))):
    if ds == name:
      for p in tfds_source._version_dirs(name, data_dir):
        if os.path.exists(os.path.join(p, 'dataset_info.json')):
          return p
  return None


def tfds_copy_splits(name: str, version_dir: str) -> Tuple[Dict[str, Examples], Optional[int]]:
  """``{tfds split: fn}`` of ``(image, label)`` read from a TFDS copy (tfrecord or array_record).

  Images come out as encoded bytes (``Image`` features are not decoded) or arrays (``Tensor``);
  the key is the copy's ``id`` or ``image/filename`` feature (``''`` when it has neither).
  """
  import tensorflow_datasets as tfds
  builder = tfds.builder_from_directory(version_dir)
  features = builder.info.features
  if not {'image', 'label'} <= set(features.keys()):
    raise ValueError(f'{version_dir} has features {sorted(features.keys())}; need image, label')
  decoders = {k: tfds.decode.SkipDecoding() for k, f in features.items()
              if isinstance(f, tfds.features.Image)}
  wanted = list(TFDS_DATASETS[name].tfds_splits.values())
  missing = [s for s in wanted if s not in builder.info.splits]
  if missing:
    raise ValueError(f'{version_dir} lacks split(s) {missing}; it has '
                     f'{sorted(builder.info.splits.keys())}')
  fmt = str(getattr(builder.info.file_format, 'value', builder.info.file_format))
  key_name = next((k for k in ('id', 'image/filename') if k in features.keys()), None)

  def key_of(ex):
    if key_name is None:
      return ''
    k = ex[key_name]
    return k.decode() if isinstance(k, bytes) else str(k)

  def gen(split):
    def fn():
      if fmt == 'array_record':
        src = builder.as_data_source(split, decoders=decoders or None)
        for i in range(len(src)):
          ex = src[i]
          yield ex['image'], int(ex['label']), key_of(ex)
        return
      if fmt != 'tfrecord':
        raise ValueError(f'{version_dir}: unsupported file format {fmt!r}')
      paths = builder.info.splits[split].filepaths
      for p in paths:
        for record in tfrecord.read_records(os.fspath(p)):
          ex = features.deserialize_example_np(record, decoders=decoders or None)
          yield ex['image'], int(ex['label']), key_of(ex)
    return fn

  return {s: gen(s) for s in wanted}, getattr(features['label'], 'num_classes', None)


def _as_cifar_array(image) -> np.ndarray:
  img = augment.to_rgb(image)
  if img.shape != (32, 32, 3) or img.dtype != np.uint8:
    raise ValueError(f'expected uint8 32x32x3 images, got {img.dtype} {img.shape}')
  return img


def _as_jpeg(image) -> bytes:
  if isinstance(image, (bytes, bytearray, np.bytes_)):
    return rgb_jpeg(bytes(image))
  from PIL import Image
  out = io.BytesIO()
  Image.fromarray(augment.to_rgb(image)).save(out, format='JPEG', quality=95)
  return out.getvalue()


def prepare(name: str, source: str, data_dir: str) -> str:
  """Writes ``data_dir/name/VERSION`` (array_record) from ``source``; returns that directory.

  Raises:
    ValueError: unknown data set or an unusable source; FileNotFoundError: missing source files.
  """
  if name not in TFDS_DATASETS:
    raise ValueError(f'unknown data set {name!r}; allowed: {sorted(TFDS_DATASETS)}')
  source = os.path.abspath(os.path.expanduser(source))
  data_dir = os.path.abspath(os.path.expanduser(data_dir))
  if not os.path.exists(source):
    raise FileNotFoundError(f'--source {source} does not exist')
  small = TFDS_DATASETS[name].image_size == 32
  num_classes = None
  copy = find_tfds_copy(name, source)
  if copy is not None:
    if os.path.realpath(copy) == os.path.realpath(os.path.join(data_dir, name, VERSION)):
      raise ValueError(f'--source {copy} is the output directory itself')
    raw, num_classes = tfds_copy_splits(name, copy)
    convert = _as_cifar_array if small else _as_jpeg
    splits = {s: (lambda fn=fn: ((convert(im), y, k) for im, y, k in fn()))
              for s, fn in raw.items()}
  elif name in ('cifar10', 'cifar100'):
    splits = cifar_splits(name, source)
  elif name == 'imagenet2012':
    splits, n = imagefolder_splits(source, {'train': 'train', 'validation': 'val'})
    if n != 1000:
      print(f'warning: {n} class folders found (ImageNet-1k has 1000); labels still follow the '
            'sorted folder names', file=sys.stderr)
  else:
    if not os.path.isdir(source):
      raise ValueError(f'--source {source} must be the extracted CUB_200_2011 directory')
    splits = cub_splits(source)
  builder = make_builder(name, splits, num_classes)(data_dir=data_dir, file_format='array_record')
  builder.download_and_prepare()   # a no-op when this version is already prepared
  return os.path.join(data_dir, name, VERSION)


def main(argv=None) -> int:
  ap = cli.ArgumentParser(
      prog='python -m common.data.prepare', description=__doc__.split('\n')[0],
      epilog=__doc__.split('\n', 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument('--dataset', required=True, choices=sorted(TFDS_DATASETS))
  ap.add_argument('--source', required=True,
                  help='downloaded archive / directory, or a TFDS copy prepared elsewhere')
  ap.add_argument('--data_dir', default=default_data_dir(),
                  help='TFDS data directory to write into (default: %(default)s)')
  args = ap.parse_args(argv)
  try:
    path = prepare(args.dataset, args.source, args.data_dir)
  except (OSError, ValueError) as e:  # missing / unreadable source, wrong layout, bad archive
    cli.fail(str(e))
  print(f'prepared {args.dataset} in {path}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
