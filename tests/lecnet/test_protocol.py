"""FSCIL protocols: index lists in the TOPIC/CEC and LEC formats mapped onto small prepared TFDS
copies, the published CIFAR-100 counts, and clear errors for lists that do not fit."""
import io
import os
import pickle
import tarfile

import numpy as np
import pytest
from PIL import Image

from common import data
from common.data import prepare
from common.train import UserError
from lecnet import protocol
from lecnet.configs import cifar100 as cifar100_config

PER_CLASS = 6   # training images per class in the small CIFAR-100 copy


@pytest.fixture(scope='module')
def cifar100(tmp_path_factory):
  """A 100-class CIFAR-100 lookalike (6 train + 1 test image per class) prepared as TFDS."""
  root = tmp_path_factory.mktemp('c100')
  r = np.random.RandomState(0)
  train_labels = r.permutation(np.repeat(np.arange(100), PER_CLASS))
  test_labels = np.arange(100)
  blobs = {}
  for name, labels in (('train', train_labels), ('test', test_labels)):
    blobs[name] = {b'data': r.randint(0, 256, (len(labels), 3072)).astype(np.uint8),
                   b'fine_labels': [int(v) for v in labels]}
  path = root / 'cifar-100-python.tar.gz'
  with tarfile.open(path, 'w:gz') as tar:
    for name, d in blobs.items():
      blob = pickle.dumps(d)
      info = tarfile.TarInfo(f'cifar-100-python/{name}')
      info.size = len(blob)
      tar.addfile(info, io.BytesIO(blob))
  prepare.prepare('cifar100', str(path), str(root / 'data'))
  tr = data.load('cifar100', 'train', data_dir=str(root / 'data'), augment=False,
                 normalization='none', prefetch=0)
  te = data.load('cifar100', 'test', data_dir=str(root / 'data'), augment=False,
                 normalization='none', prefetch=0)
  x = blobs['train'][b'data']
  pixels = np.stack([x[:, :1024], x[:, 1024:2048], x[:, 2048:]], -1).reshape(-1, 32, 32, 3)
  keys = protocol.record_keys('cifar100', str(root / 'data'))
  return root, tr, te, train_labels, pixels, keys


def write_cifar_lists(folder, labels, shot=5, base=60, way=5, sessions=8, bad=None):
  """session_1.txt: every training index of classes < base; session_t: shot indices per class."""
  os.makedirs(folder, exist_ok=True)
  files = {1: np.flatnonzero(labels < base)}
  for t in range(2, sessions + 2):
    lo = base + (t - 2) * way
    files[t] = np.concatenate([np.flatnonzero(labels == c)[:shot] for c in range(lo, lo + way)])
  if bad is not None:
    bad(files)
  for t, idx in files.items():
    with open(os.path.join(folder, f'session_{t}.txt'), 'w') as f:
      f.write(''.join(f'{int(i)}\n' for i in idx))
  return files


def cifar_protocol(tr, te, keys, folder, **kw):
  key_rows = protocol.name_rows(keys, protocol.cifar_key, 'CIFAR-100')
  return protocol.from_index_lists('cifar100', tr, te, str(folder), key_rows, 60, 5, 5, 8, **kw)


def test_cifar100_lists_have_the_published_counts(cifar100, tmp_path):
  _, tr, te, labels, pixels, keys = cifar100
  files = write_cifar_lists(tmp_path / 'cifar100', labels)
  p = cifar_protocol(tr, te, keys, tmp_path / 'cifar100')
  base, way, shot, sessions, total = protocol.PUBLISHED['cifar100']
  assert (p.base_classes, p.way, p.shot, p.sessions) == (base, way, shot, sessions)
  assert len(p.train) == sessions + 1
  assert p.train[0].num_examples == base * PER_CLASS
  assert sorted(set(p.train[0].labels())) == list(range(base))
  for s in range(1, sessions + 1):
    lab = p.train[s].labels()
    assert len(lab) == way * shot
    classes, counts = np.unique(lab, return_counts=True)
    assert classes.tolist() == list(range(base + (s - 1) * way, base + s * way))
    assert counts.tolist() == [shot] * way
    assert p.test_set(s).num_examples == base + s * way     # one test image per class here
  assert p.test.num_examples == total
  # TFDS stores the records shuffled: the keys, not the row order, give the pickle positions.
  assert sorted(keys) == [f'train_{i:05d}' for i in range(100 * PER_CLASS)]
  assert [keys[f'train_{i:05d}'] for i in range(100 * PER_CLASS)] != list(range(100 * PER_CLASS))
  # The listed indices select exactly those training images (in list order, no augmentation).
  b = next(p.train[3].batches(25, epoch=0, train=False))
  np.testing.assert_allclose(b['image'] * 255.0, pixels[files[4]].astype(np.float32), atol=1e-3)
  # The configured protocol is the published one.
  m = cifar100_config.get_config().method
  assert (m.base_classes, m.way, m.shot, m.sessions) == (base, way, shot, sessions)


def test_cifar100_lists_with_wrong_counts_or_images_fail_clearly(cifar100, tmp_path):
  _, tr, te, labels, _, keys = cifar100

  def four_shot(files):
    files[3] = files[3][1:]
  write_cifar_lists(tmp_path / 'a', labels, bad=four_shot)
  with pytest.raises(UserError, match=r'session 2: \[4, 5, 5, 5, 5\] images per class, expected '
                                      r'5-shot'):
    cifar_protocol(tr, te, keys, tmp_path / 'a')

  def unknown_image(files):
    files[5] = np.r_[files[5][:-1], 12345]
  write_cifar_lists(tmp_path / 'b', labels, bad=unknown_image)
  with pytest.raises(UserError, match=r'session_5\.txt: image 12345 not found'):
    cifar_protocol(tr, te, keys, tmp_path / 'b')

  write_cifar_lists(tmp_path / 'c', labels)
  os.remove(tmp_path / 'c' / 'session_9.txt')
  with pytest.raises(UserError, match=r'session_9\.txt not found'):
    cifar_protocol(tr, te, keys, tmp_path / 'c')
  with open(tmp_path / 'c' / 'session_9.txt', 'w') as f:
    f.write('1 2 3\n')
  with pytest.raises(UserError, match=r'session_9\.txt:1: expected'):
    cifar_protocol(tr, te, keys, tmp_path / 'c')


def write_cub(root, classes=4, per_class=4):
  """A CUB_200_2011 lookalike: ``classes`` folders, half of each class in the training split."""
  r = np.random.RandomState(0)
  lines, splits, labs = [], [], []
  i = 0
  for c in range(1, classes + 1):
    d = f'{c:03d}.Bird_{c}'
    os.makedirs(root / 'images' / d, exist_ok=True)
    for k in range(per_class):
      i += 1
      rel = f'{d}/Bird_{c}_{k:04d}.jpg'
      Image.fromarray(r.randint(0, 255, (20, 24, 3), np.uint8)).save(root / 'images' / rel)
      lines.append(f'{i} {rel}')
      splits.append(f'{i} {int(k < per_class // 2 + 1)}')
      labs.append(f'{i} {c}')
  for name, rows in (('images.txt', lines), ('train_test_split.txt', splits),
                     ('image_class_labels.txt', labs)):
    (root / name).write_text('\n'.join(rows) + '\n')
  return lines, splits


def test_cub_lists_topic_and_lec_formats(tmp_path):
  src = tmp_path / 'CUB_200_2011'
  lines, splits = write_cub(src)
  prepare.prepare('caltech_birds2011', str(src), str(tmp_path / 'data'))
  kw = dict(data_dir=str(tmp_path / 'data'), augment=False, prefetch=0, image_size=16,
            eval_resize=16)
  tr = data.load('caltech_birds2011', 'train', **kw)
  te = data.load('caltech_birds2011', 'test', **kw)
  train_paths = [l.split()[1] for l, s in zip(lines, splits) if s.split()[1] == '1']
  rows = protocol.record_keys('caltech_birds2011', str(tmp_path / 'data'))
  assert sorted(rows) == sorted(train_paths)
  x = {p: next(tr.subset([rows[p]]).batches(1, epoch=0, train=False))['image'] for p in train_paths}
  from common.data import augment
  mean, std = tr.normalization
  ref = {p: augment.imagenet_eval(np.asarray(Image.open(src / 'images' / p).convert('RGB')),
                                  size=16, resize_to=16) for p in train_paths}
  for p in train_paths:   # the row of a key holds that file's image (nearest of all files)
    got = x[p][0] * std + mean
    dist = {q: float(np.abs(got - r).max()) for q, r in ref.items()}
    assert min(dist, key=dist.get) == p and dist[p] < 0.02
  by_class = {c: [p for p in train_paths if p.startswith(f'{c:03d}.')] for c in range(1, 5)}
  key_rows = protocol.name_rows(rows, protocol.cub_key, 'CUB')
  # TOPIC format: base = classes 1-2, then two 1-way 2-shot sessions, natural order.
  topic = tmp_path / 'topic'
  os.makedirs(topic)
  sess = [by_class[1] + by_class[2], by_class[3][:2], by_class[4][:2]]
  for t, ps in enumerate(sess, 1):
    (topic / f'session_{t}.txt').write_text(''.join(f'CUB_200_2011/images/{p}\n' for p in ps))
  p = protocol.from_index_lists('cub', tr, te, str(topic), key_rows, 2, 1, 2, 2)
  assert sorted(p.train[0].labels()) == [0] * 3 + [1] * 3
  assert p.train[1].labels().tolist() == [2, 2] and p.train[2].labels().tolist() == [3, 3]
  assert sorted(p.test_set(1).labels()) == [0, 1, 2]
  # LEC format: "<path> <1-based label>" with a class permutation and every image of the new
  # class listed; `shot` of them are drawn per class (by the seed).
  lecd = tmp_path / 'lec'
  os.makedirs(lecd)
  perm = {4: 1, 2: 2, 1: 3, 3: 4}       # CUB class -> LEC label
  for t, cs in enumerate([(4, 2), (1,), (3,)], 1):
    (lecd / f'session_{t}.txt').write_text(''.join(
        f'CUB_200_2011/images/{q} {perm[c]}\n' for c in cs for q in by_class[c]))
  p = protocol.from_index_lists('cub', tr, te, str(lecd), key_rows, 2, 1, 2, 2, seed=3,
                                labelled=True)
  with pytest.raises(UserError, match=r'session_1\.txt: image .*: expected "<image>" \(TOPIC'):
    protocol.from_index_lists('cub', tr, te, str(lecd), key_rows, 2, 1, 2, 2, labelled=False)
  assert sorted(set(p.train[0].labels())) == [0, 1]
  assert p.train[1].labels().tolist() == [2, 2] and p.train[2].labels().tolist() == [3, 3]
  assert p.train[1].num_examples == 2                   # 2 of the 3 listed images
  test_orig = te.labels()
  test_new = p.test.labels()
  np.testing.assert_array_equal(np.sort(test_new), np.sort([perm[c + 1] - 1 for c in test_orig]))
  # A path that is not among the prepared training images is named with its list.
  (lecd / 'session_3.txt').write_text('CUB_200_2011/images/003.Bird_3/missing.jpg 4\n')
  with pytest.raises(UserError, match=r'session_3\.txt: image CUB_200_2011/images/003.Bird_3/'
                                      r'missing\.jpg not found'):
    protocol.from_index_lists('cub', tr, te, str(lecd), key_rows, 2, 1, 2, 2)


def test_digits_protocol_is_fixed_by_seed():
  tr = data.load('digits', 'train', augment=False)
  te = data.load('digits', 'test')
  a = protocol.digits(tr, te, seed=0)
  b = protocol.digits(tr, te, seed=0)
  c = protocol.digits(tr, te, seed=1)
  assert a.train[0].num_examples == int(np.sum(tr.labels() < 4))
  for s in (1, 2, 3):
    assert sorted(a.train[s].labels().tolist()) == [2 + 2 * s] * 5 + [3 + 2 * s] * 5
    x = next(a.train[s].batches(10, epoch=0, train=False))['image']
    np.testing.assert_array_equal(x, next(b.train[s].batches(10, epoch=0, train=False))['image'])
  assert any(not np.array_equal(next(a.train[s].batches(10, epoch=0, train=False))['image'],
                                next(c.train[s].batches(10, epoch=0, train=False))['image'])
             for s in (1, 2, 3))
  assert a.test_set(0).num_examples == int(np.sum(te.labels() < 4))
  assert a.test_set(3).num_examples == te.num_examples
  with pytest.raises(UserError, match='needs 12 classes'):
    protocol.digits(tr, te, seed=0, sessions=4)


def test_repeated_dataset_gives_full_batch_passes():
  tr = data.load('digits', 'train', augment=False)
  few = tr.subset(np.arange(10))
  rep = few.repeated(4)
  assert rep.steps_per_epoch(10) == 4 and rep.num_examples == 10
  bs = list(rep.batches(10, epoch=0, train=True))
  assert len(bs) == 4
  want = sorted(few.labels().tolist())
  for b in bs:   # every step is one whole pass over the ten images
    assert sorted(b['label'].tolist()) == want
  assert len(list(rep.batches(4, epoch=0, train=False, drop_remainder=False))) == 3
  relab = few.relabeled(np.arange(10)[::-1])
  np.testing.assert_array_equal(relab.labels(), 9 - few.labels())


def test_mini_imagenet_from_an_image_folder(tmp_path):
  root = tmp_path / 'miniimagenet'
  os.makedirs(root / 'images')
  os.makedirs(root / 'split')
  r = np.random.RandomState(0)
  wnids = ['n01', 'n02', 'n03']
  rows = {'train': [], 'test': []}
  for w in wnids:
    for k in range(4):
      for split in ('train', 'test'):
        name = f'{w}{split}{k:04d}.jpg'
        Image.fromarray(r.randint(0, 255, (30, 40, 3), np.uint8)).save(root / 'images' / name)
        rows[split].append(f'{name},{w}')
  for split, lines in rows.items():
    (root / 'split' / f'{split}.csv').write_text('filename,label\n' + '\n'.join(lines) + '\n')
  tr, te, lookup = protocol.mini_imagenet_splits(str(root), image_size=16)
  assert tr.num_classes == 3 and tr.labels().tolist() == [0] * 4 + [1] * 4 + [2] * 4
  lists = tmp_path / 'lists'
  os.makedirs(lists)
  (lists / 'session_1.txt').write_text(''.join(
      f'MINI-ImageNet/train/{w}/{w}train{k:04d}.jpg\n' for w in wnids[:2] for k in range(4)))
  (lists / 'session_2.txt').write_text(''.join(
      f'MINI-ImageNet/train/n03/n03train{k:04d}.jpg\n' for k in (1, 3)))
  key_rows = protocol.name_rows(lookup, lambda k: k.split('/')[-1], 'miniImageNet')
  p = protocol.from_index_lists('mini', tr, te, str(lists), key_rows, 2, 1, 2, 1)
  assert p.train[1].labels().tolist() == [2, 2]
  b = next(p.train[1].batches(2, epoch=0, train=False))
  assert b['image'].shape == (2, 16, 16, 3)
  assert p.test_set(1).num_examples == 12
