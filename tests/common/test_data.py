"""Data: digits split/normalisation/augmentation, and a tiny CIFAR-10 / ImageNet prepared locally
and read back through the real TFDS array_record path."""
import io
import os
import pickle
import tarfile

import numpy as np
import pytest

from common import data
from common.data import prepare

CIFAR_MEAN = np.array([0.4914, 0.4822, 0.4465], np.float32)
CIFAR_STD = np.array([0.2023, 0.1994, 0.2010], np.float32)


def test_digits_split_and_stats():
  tr, te = data.load('digits', 'train'), data.load('digits', 'test')
  assert (tr.num_examples, te.num_examples) == (1438, 359)
  assert tr.image_shape == (32, 32, 3) and tr.num_classes == 10
  xs = np.concatenate([b['image'] for b in tr.batches(500, epoch=0, train=False,
                                                      drop_remainder=False)])
  assert abs(xs.mean()) < 1e-4 and abs(xs.std() - 1) < 1e-3     # standardised with train stats
  assert (xs[..., 0] == xs[..., 2]).all()                        # grey copied to 3 channels
  assert (xs[:, ::4, ::4] == xs[:, 1::4, 1::4]).all()            # 4x nearest upsampling
  # the split does not depend on the training seed
  te2 = data.load('digits', 'test', seed=5)
  a = next(te.batches(359, epoch=0, train=False, drop_remainder=False))
  b = next(te2.batches(359, epoch=0, train=False, drop_remainder=False))
  np.testing.assert_array_equal(a['label'], b['label'])


def test_digits_determinism_epochs_and_shards():
  ds = data.load('digits', 'train', seed=3)
  e0 = list(ds.batches(64, epoch=0, train=True))
  e0b = list(ds.batches(64, epoch=0, train=True))
  e1 = list(ds.batches(64, epoch=1, train=True))
  assert len(e0) == 1438 // 64
  np.testing.assert_array_equal(e0[0]['image'], e0b[0]['image'])
  assert not np.array_equal(e0[0]['label'], e1[0]['label'])
  halves = [list(ds.batches(64, epoch=0, train=True, process_index=p, process_count=2))
            for p in range(2)]
  for full, h0, h1 in zip(e0, *halves):
    np.testing.assert_array_equal(np.concatenate([h0['label'], h1['label']]), full['label'])
  # augmentation is a crop only: no horizontal flips of digits
  plain = next(ds.batches(1438, epoch=0, train=False))
  assert plain['image'].shape[0] == 1438
  with pytest.raises(ValueError, match='multiple of process_count'):
    next(ds.batches(63, epoch=0, train=True, process_count=2))
  with pytest.raises(ValueError, match="unknown split 'val'"):
    data.load('digits', 'val')
  with pytest.raises(ValueError, match="unknown data set 'mnist'"):
    data.load('mnist', 'train')


def write_fake_cifar(path, n_per_batch=4):
  r = np.random.RandomState(0)
  with tarfile.open(path, 'w:gz') as tar:
    for name in [f'data_batch_{i}' for i in range(1, 6)] + ['test_batch']:
      d = {b'data': r.randint(0, 256, (n_per_batch, 3072)).astype(np.uint8),
           b'labels': list(r.randint(0, 10, n_per_batch))}
      blob = pickle.dumps(d)
      info = tarfile.TarInfo(f'cifar-10-batches-py/{name}')
      info.size = len(blob)
      tar.addfile(info, io.BytesIO(blob))
  return d


@pytest.fixture(scope='module')
def cifar_dir(tmp_path_factory):
  root = tmp_path_factory.mktemp('tfds')
  last = write_fake_cifar(str(root / 'cifar.tar.gz'))
  assert prepare.main(['--dataset=cifar10', f'--source={root / "cifar.tar.gz"}',
                       f'--data_dir={root / "data"}']) == 0
  return str(root / 'data'), last


def test_cifar_through_tfds(cifar_dir):
  d, last = cifar_dir
  tr = data.load('cifar10', 'train', data_dir=d)
  te = data.load('cifar10', 'test', data_dir=d)
  assert (tr.num_examples, te.num_examples, tr.num_classes) == (20, 4, 10)
  b = next(te.batches(4, epoch=0, train=False))
  want = last[b'data'].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1) / 255.0
  # TFDS shuffles examples when it writes array_record files: match each image to its source.
  raw = b['image'] * CIFAR_STD + CIFAR_MEAN
  src = [int(np.argmin(np.abs(want - x).reshape(4, -1).max(1))) for x in raw]
  assert sorted(src) == [0, 1, 2, 3]
  np.testing.assert_allclose(b['image'], (want[src] - CIFAR_MEAN) / CIFAR_STD, rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(b['label'], np.asarray(last[b'labels'])[src])
  t0 = next(tr.batches(8, epoch=0, train=True))
  assert t0['image'].shape == (8, 32, 32, 3) and t0['image'].dtype == np.float32
  t0b = next(tr.batches(8, epoch=0, train=True))
  np.testing.assert_array_equal(t0['image'], t0b['image'])
  imnet = data.load('cifar10', 'test', data_dir=d, normalization='imagenet')
  bi = next(imnet.batches(4, epoch=0, train=False))
  np.testing.assert_allclose(bi['image'],
                             (want[src] - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225],
                             rtol=1e-5, atol=1e-5)


def test_missing_dataset_message(tmp_path):
  with pytest.raises(FileNotFoundError) as e:
    data.load('cifar100', 'train', data_dir=str(tmp_path))
  msg = str(e.value)
  assert 'cifar100' in msg and str(tmp_path) in msg
  assert 'python -m common.data.prepare --dataset=cifar100' in msg


def test_imagenet_folder_decode_and_crops(tmp_path):
  from PIL import Image
  r = np.random.RandomState(0)
  for split, n in (('train', 3), ('val', 2)):
    for c in ('n001', 'n002'):
      os.makedirs(tmp_path / 'src' / split / c)
      for i in range(n):
        Image.fromarray(r.randint(0, 255, (60 + i, 80, 3), np.uint8)).save(
            tmp_path / 'src' / split / c / f'{i}.JPEG')
  prepare.prepare('imagenet2012', str(tmp_path / 'src'), str(tmp_path / 'data'))
  tr = data.load('imagenet2012', 'train', data_dir=str(tmp_path / 'data'))
  te = data.load('imagenet2012', 'test', data_dir=str(tmp_path / 'data'))
  assert (tr.num_examples, te.num_examples) == (6, 4)
  b = next(te.batches(4, epoch=0, train=False))
  assert b['image'].shape == (4, 224, 224, 3)
  assert sorted(b['label']) == [0, 0, 1, 1]
  bt = next(tr.batches(2, epoch=0, train=True))
  assert bt['image'].shape == (2, 224, 224, 3) and np.isfinite(bt['image']).all()
