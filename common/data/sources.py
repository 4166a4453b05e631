"""The data sets: the embedded ``digits`` set and TFDS array_record data sets (read without TF).

TFDS data sets are read with ``tfds.builder_from_directory(...).as_data_source(split)`` from
array_record files (random access, no TensorFlow; shared notes jax-stack.md §2). They are written
once by ``python -m common.data.prepare`` (our builders store CIFAR as uint8 tensors and ImageNet /
CUB as the original JPEG bytes, so neither writing nor reading needs TensorFlow). Reading an
array_record data set prepared elsewhere with TFDS ``Image`` features also works (pillow decodes).
"""
from __future__ import annotations

import io
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Optional, Tuple

import numpy as np

from common.data import pipeline

# name -> (num_classes, image_shape, default normalisation, {our split: tfds split})
TFDS_DATASETS = {
    'cifar10': (10, (32, 32, 3), 'cifar', {'train': 'train', 'test': 'test'}),
    'cifar100': (100, (32, 32, 3), 'cifar', {'train': 'train', 'test': 'test'}),
    'imagenet2012': (1000, (224, 224, 3), 'imagenet', {'train': 'train', 'test': 'validation'}),
    'caltech_birds2011': (200, (224, 224, 3), 'imagenet', {'train': 'train', 'test': 'test'}),
}
SPLITS = ('train', 'test')
DIGITS_TRAIN_FRACTION = 0.8


def default_data_dir() -> str:
  return os.path.expanduser(os.environ.get('TFDS_DATA_DIR', '~/tensorflow_datasets'))


def prepare_command(name: str, data_dir: str) -> str:
  src = {'cifar10': 'cifar-10-python.tar.gz', 'cifar100': 'cifar-100-python.tar.gz',
         'imagenet2012': 'DIR_WITH_train_AND_val_CLASS_FOLDERS',
         'caltech_birds2011': 'CUB_200_2011_DIR'}[name]
  return (f'python -m common.data.prepare --dataset={name} --data_dir={data_dir} '
          f'--source=/path/to/{src}')


def _check_split(split: str):
  if split not in SPLITS:
    raise ValueError(f'unknown split {split!r}; allowed: {list(SPLITS)}')


# --- digits ----------------------------------------------------------------------------------


def digits(split: str, seed: int = 0, augment: bool = True, split_seed: int = 0,
           prefetch: int = 0) -> pipeline.Dataset:
  """scikit-learn's bundled digits (1,797 real 8x8 images, no download) as 32x32x3.

  The train/test split (80/20: 1,437 / 360) is fixed by ``split_seed`` (not by the training seed),
  images are upsampled 4x by pixel repetition (nearest neighbour: the strokes stay sharp), copied to
  3 channels so that CIFAR models run unchanged, and standardised with the train split's mean/std.
  Training augmentation is a pad-2 random crop only: digits are not flip-invariant (spec §0.4).
  """
  _check_split(split)
  from sklearn.datasets import load_digits
  d = load_digits()
  x = d.images.astype(np.float32) / 16.0
  y = d.target.astype(np.int32)
  perm = np.random.RandomState(split_seed).permutation(len(x))
  n_train = int(round(DIGITS_TRAIN_FRACTION * len(x)))
  tr, te = perm[:n_train], perm[n_train:]
  mean, std = float(x[tr].mean()), float(x[tr].std())
  x = np.repeat(np.repeat(x, 4, axis=1), 4, axis=2)
  x = np.repeat(((x - mean) / std)[..., None], 3, axis=-1).astype(np.float32)
  idx = tr if split == 'train' else te
  images, labels = x[idx], y[idx]

  def get(rows, train, rng):
    out = images[rows]
    if train and augment:
      # Padding value: the standardised background (0 before standardisation), not 0.
      bg = (0.0 - mean) / std
      out = pipeline.random_crop_flip(out - bg, rng, pad=2, flip=False) + bg
    return out, labels[rows]

  return pipeline.Dataset('digits', len(idx), 10, (32, 32, 3), get, seed=seed, prefetch=prefetch)


# --- TFDS ------------------------------------------------------------------------------------


def find_prepared(name: str, data_dir: str) -> Optional[str]:
  """The newest ``data_dir/name/<version>`` holding array_record files, or None."""
  root = os.path.join(data_dir, name)
  if not os.path.isdir(root):
    return None
  versions = []
  for v in os.listdir(root):
    d = os.path.join(root, v)
    if os.path.isdir(d) and not v.startswith('incomplete') and any(
        '.array_record' in f for f in os.listdir(d)):
      versions.append(v)
  if not versions:
    return None
  key = lambda v: tuple(int(p) if p.isdigit() else 0 for p in v.split('.'))
  return os.path.join(root, sorted(versions, key=key)[-1])


def _decode(img) -> np.ndarray:
  """A uint8 ``[H, W, 3]`` image from a decoded array or encoded JPEG/PNG bytes."""
  if isinstance(img, (bytes, bytearray, np.bytes_)):
    from PIL import Image
    with Image.open(io.BytesIO(bytes(img))) as im:
      return np.asarray(im.convert('RGB'))
  img = np.asarray(img)
  if img.ndim == 2:
    img = img[..., None]
  if img.shape[-1] == 1:
    img = np.repeat(img, 3, -1)
  return img


def random_resized_crop(img: np.ndarray, rng: np.random.RandomState, size: int,
                        scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)) -> np.ndarray:
  """torchvision ``RandomResizedCrop``: 10 tries of area/aspect sampling, else a centre crop."""
  from PIL import Image
  h, w = img.shape[:2]
  area = h * w
  for _ in range(10):
    target = area * rng.uniform(*scale)
    aspect = np.exp(rng.uniform(np.log(ratio[0]), np.log(ratio[1])))
    cw = int(round(np.sqrt(target * aspect)))
    ch = int(round(np.sqrt(target / aspect)))
    if 0 < cw <= w and 0 < ch <= h:
      top = rng.randint(0, h - ch + 1)
      left = rng.randint(0, w - cw + 1)
      break
  else:
    in_ratio = w / h
    if in_ratio < ratio[0]:
      cw, ch = w, int(round(w / ratio[0]))
    elif in_ratio > ratio[1]:
      ch, cw = h, int(round(h * ratio[1]))
    else:
      cw, ch = w, h
    top, left = (h - ch) // 2, (w - cw) // 2
  crop = Image.fromarray(img[top:top + ch, left:left + cw])
  return np.asarray(crop.resize((size, size), Image.BILINEAR))


def resize_center_crop(img: np.ndarray, resize: int, size: int) -> np.ndarray:
  """torchvision ``Resize(resize)`` (shorter side) + ``CenterCrop(size)``."""
  from PIL import Image
  h, w = img.shape[:2]
  if h < w:
    nh, nw = resize, int(resize * w / h)
  else:
    nw, nh = resize, int(resize * h / w)
  im = np.asarray(Image.fromarray(img).resize((nw, nh), Image.BILINEAR))
  top, left = (nh - size) // 2, (nw - size) // 2
  return im[top:top + size, left:left + size]


def tfds_dataset(name: str, split: str, data_dir: Optional[str] = None, seed: int = 0,
                 augment: bool = True, normalization: Optional[str] = None,
                 crop_scale: Tuple[float, float] = (0.08, 1.0), prefetch: int = 2,
                 workers: int = 8) -> pipeline.Dataset:
  """A TFDS array_record data set prepared by ``common.data.prepare`` (or any TFDS array_record).

  CIFAR: pad-4 random crop + horizontal flip on train (spec §0.4). ImageNet / CUB:
  RandomResizedCrop(224, ``crop_scale``) + flip on train; Resize(256) + CenterCrop(224) on test.

  Raises:
    FileNotFoundError: naming the data set, the directory searched and the prepare command.
  """
  _check_split(split)
  if name not in TFDS_DATASETS:
    raise ValueError(f'unknown data set {name!r}; allowed: {["digits"] + sorted(TFDS_DATASETS)}')
  num_classes, shape, norm_default, split_map = TFDS_DATASETS[name]
  data_dir = os.path.expanduser(data_dir or default_data_dir())
  path = find_prepared(name, data_dir)
  if path is None:
    raise FileNotFoundError(
        f'data set {name!r} not found as array_record files under {os.path.join(data_dir, name)} '
        f'(searched data_dir={data_dir}); prepare it once with: {prepare_command(name, data_dir)}')
  import tensorflow_datasets as tfds
  builder = tfds.builder_from_directory(path)
  src = builder.as_data_source(split_map[split])
  mean, std = pipeline.normalization(normalization or norm_default)
  small = shape[0] == 32
  pool = ThreadPoolExecutor(workers) if not small else None

  def load_one(i, train, r):
    ex = src[int(i)]
    img = _decode(ex['image'])
    if small:
      return img, int(ex['label'])
    if train and augment:
      img = random_resized_crop(img, r, shape[0], scale=crop_scale)
      if r.rand() < 0.5:
        img = img[:, ::-1]
    else:
      img = resize_center_crop(img, 256 * shape[0] // 224, shape[0])
    return img, int(ex['label'])

  def get(rows, train, rng):
    if len(rows) == 0:
      return np.zeros((0,) + shape, np.float32), np.zeros((0,), np.int32)
    seeds = rng.randint(0, 2 ** 31 - 1, len(rows))
    jobs = [(i, train, np.random.RandomState(s)) for i, s in zip(rows, seeds)]
    out = list(pool.map(lambda a: load_one(*a), jobs)) if pool else [load_one(*a) for a in jobs]
    images = np.stack([o[0] for o in out])
    labels = np.asarray([o[1] for o in out], np.int32)
    if small and train and augment:
      images = pipeline.random_crop_flip(images, rng, pad=4, flip=True)
    return (images.astype(np.float32) / 255.0 - mean) / std, labels

  return pipeline.Dataset(name, len(src), num_classes, shape, get, seed=seed, prefetch=prefetch)
