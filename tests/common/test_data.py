"""common.data: digits (split, upsampling, standardisation, crop-only augmentation), determinism
and per-host sharding, and tiny CIFAR-10 / ImageNet / CUB copies prepared in a tmp dir (from the
downloaded formats and from a TF-style tfrecord copy) and read back through the real TFDS
array_record path. Expected values come from the raw inputs, PIL and brute-force searches written
here, not from common.data itself."""
import glob
import io
import json
import os
import pickle
import subprocess
import sys
import tarfile

import numpy as np
import pytest
from PIL import Image

from common import data
from common.data import pipeline, prepare, tfrecord

CIFAR_MEAN = np.array([0.4914, 0.4822, 0.4465], np.float32)
CIFAR_STD = np.array([0.2023, 0.1994, 0.2010], np.float32)
IMNET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMNET_STD = np.array([0.229, 0.224, 0.225], np.float32)


def all_images(ds, bs=512, **kw):
  out = list(ds.batches(bs, epoch=0, train=False, drop_remainder=False, **kw))
  return np.concatenate([b['image'] for b in out]), np.concatenate([b['label'] for b in out])


def find_crop(aug, sources, pad, mode='constant', atol=1e-5):
  """(source index, dy, dx, flipped) such that ``aug`` is that window of ``sources[i]`` padded by
  ``pad`` (brute force over every source, offset and flip), or None."""
  from numpy.lib.stride_tricks import sliding_window_view
  src = np.asarray(sources, np.float32).reshape((-1,) + aug.shape)
  padded = np.pad(src, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode=mode)
  win = sliding_window_view(padded, aug.shape[:2], axis=(1, 2))   # [n, dy, dx, C, h, w]
  for flipped, target in ((False, aug), (True, aug[:, ::-1])):
    err = np.abs(win - target.transpose(2, 0, 1)).max(axis=(3, 4, 5))
    hit = np.argwhere(err <= atol)
    if len(hit):
      i, dy, dx = hit[0]
      return int(i), int(dy), int(dx), flipped
  return None


# --- digits ------------------------------------------------------------------------------------


@pytest.fixture(scope='module')
def sk_digits():
  from sklearn.datasets import load_digits
  d = load_digits()
  return d.images / 16.0, d.target


@pytest.fixture(scope='module')
def digits_sets():
  return data.load('digits', 'train'), data.load('digits', 'test')


def test_digits_split_content_and_standardisation(digits_sets, sk_digits):
  tr, te = digits_sets
  assert (tr.num_examples, te.num_examples) == (1437, 360)
  assert tr.image_shape == (32, 32, 3) and tr.num_classes == 10 and tr.name == 'digits'
  xtr, ytr = all_images(tr)
  xte, yte = all_images(te)
  assert xtr.dtype == np.float32 and ytr.dtype == np.int32
  # unnormalised pixels: each image is a 4x nearest upsampling of one sklearn digit / 16, in 3
  # identical channels; recover which digit by exact search
  rtr, _ = all_images(data.load('digits', 'train', normalization='none'))
  rte, _ = all_images(data.load('digits', 'test', normalization='none'))
  raw, target = sk_digits
  ref = np.repeat(np.repeat(raw, 4, 1), 4, 2)
  key = {r.tobytes(): i for i, r in enumerate(np.round(raw * 16).astype(np.int8))}
  def match(x):
    assert (x[..., :1] == x).all()
    np.testing.assert_array_equal(x[..., 0], np.repeat(np.repeat(x[:, ::4, ::4, 0], 4, 1), 4, 2))
    return np.array([key[np.round(v * 16).astype(np.int8).tobytes()] for v in x[:, ::4, ::4, 0]])
  itr, ite = match(rtr), match(rte)
  np.testing.assert_allclose(rte[..., 0], ref[ite], atol=1e-6)
  np.testing.assert_array_equal(target[itr], ytr)
  np.testing.assert_array_equal(target[ite], yte)
  assert len(set(itr) | set(ite)) >= 1790   # sklearn's digits hold a few exact duplicates
  # default normalisation: standardised with the train split's pixel mean / std
  m, s = rtr.astype(np.float64).mean(), rtr.astype(np.float64).std()
  np.testing.assert_allclose(xtr, (rtr - m) / s, atol=1e-5)
  np.testing.assert_allclose(xte, (rte - m) / s, atol=1e-5)
  assert abs(xtr.mean()) < 1e-4 and abs(xtr.std() - 1) < 1e-4
  # stratified: every class holds its share of the 360 test images, +- 1
  counts = np.bincount(yte, minlength=10)
  expected = np.bincount(target, minlength=10) * 360 / 1797
  assert np.abs(counts - expected).max() <= 1
  # the split is fixed: another training seed sees the same test set, another split_seed not
  np.testing.assert_array_equal(all_images(data.load('digits', 'test', seed=5))[1], yte)
  assert not np.array_equal(all_images(data.load('digits', 'test', split_seed=1))[1], yte)
  assert data.load('digits', 'train', test_size=797).num_examples == 1000


def test_digits_bilinear_and_named_normalisation(sk_digits):
  x, _ = all_images(data.load('digits', 'test', upsample='bilinear', normalization='imagenet'))
  near, _ = all_images(data.load('digits', 'test', normalization='none'))
  raw = x * IMNET_STD + IMNET_MEAN                     # back to [0, 1] pixels
  key = {r.tobytes(): i for i, r in enumerate(np.round(sk_digits[0] * 16).astype(np.int8))}
  for k in range(0, 360, 23):
    i = key[np.round(near[k, ::4, ::4, 0] * 16).astype(np.int8).tobytes()]
    # PIL's bilinear resize of the float image is the independent reference
    ref = np.asarray(Image.fromarray(sk_digits[0][i].astype(np.float32), 'F').resize(
        (32, 32), Image.BILINEAR))
    for c in range(3):
      np.testing.assert_allclose(raw[k, ..., c], ref, atol=1e-5)


def test_digits_augmentation_is_crop_only(digits_sets):
  tr = data.load('digits', 'train', seed=3)
  plain = data.load('digits', 'train', seed=3, augment=False)
  a = next(tr.batches(48, epoch=2, train=True))
  p = next(plain.batches(48, epoch=2, train=True))
  np.testing.assert_array_equal(a['label'], p['label'])      # augment does not change the order
  bg = float(p['image'].min())                               # the standardised background
  offsets = []
  for aug, raw in zip(a['image'], p['image']):
    hit = find_crop(aug - bg, raw - bg, pad=2)
    assert hit is not None and not hit[3], 'digits must only be shifted, never flipped'
    offsets.append(hit[1:3])
  assert len(set(offsets)) > 5                               # the shifts really vary


def test_determinism_resume_epochs_and_seeds():
  ds = data.load('digits', 'train', seed=3)
  e3 = list(ds.batches(100, epoch=3, train=True))
  assert len(e3) == 14 == ds.steps_per_epoch(100)
  assert ds.steps_per_epoch(100, drop_remainder=False) == 15
  # a fresh object (a resumed run) reproduces epoch 3 without replaying epochs 0..2
  again = list(data.load('digits', 'train', seed=3).batches(100, epoch=3, train=True))
  for b1, b2 in zip(e3, again):
    np.testing.assert_array_equal(b1['image'], b2['image'])
    np.testing.assert_array_equal(b1['label'], b2['label'])
  e4 = next(ds.batches(100, epoch=4, train=True))
  other_seed = next(data.load('digits', 'train', seed=4).batches(100, epoch=3, train=True))
  assert not np.array_equal(e3[0]['label'], e4['label'])
  assert not np.array_equal(e3[0]['label'], other_seed['label'])
  # one epoch visits every example once (the labels of a full pass match the split's)
  full = list(ds.batches(479, epoch=1, train=True))
  assert sorted(np.concatenate([b['label'] for b in full])) == sorted(ds.labels())
  # eval order is the stored order and never augmented
  ev = next(ds.batches(64, epoch=5, train=False))
  np.testing.assert_array_equal(ev['label'], ds.labels()[:64])


@pytest.mark.parametrize('count', [2, 4])
def test_process_shards_partition_the_global_batch(count):
  ds = data.load('digits', 'train', seed=1)
  full = list(ds.batches(64, epoch=1, train=True))
  shards = [list(ds.batches(64, epoch=1, train=True, process_index=p, process_count=count))
            for p in range(count)]
  assert all(len(s) == len(full) for s in shards)
  for step, f in enumerate(full):
    parts = [s[step] for s in shards]
    assert all(len(q['label']) == 64 // count for q in parts)
    # the augmented images themselves do not depend on the process count
    np.testing.assert_array_equal(np.concatenate([q['image'] for q in parts]), f['image'])
    np.testing.assert_array_equal(np.concatenate([q['label'] for q in parts]), f['label'])
  # eval with a short last batch: the same number of batches everywhere, rows split disjointly
  te = data.load('digits', 'test')
  ev = [list(te.batches(100, epoch=0, train=False, drop_remainder=False, process_index=p,
                        process_count=count)) for p in range(count)]
  assert len({len(e) for e in ev}) == 1 and len(ev[0]) == 4
  got = np.concatenate([np.concatenate([e[k]['label'] for e in ev]) for k in range(4)])
  np.testing.assert_array_equal(got, te.labels())


def test_subset_split_slices_and_labels():
  tr = data.load('digits', 'train')
  labels = tr.labels()
  head = data.load('digits', 'train[:100]')
  np.testing.assert_array_equal(head.labels(), labels[:100])
  tail = data.load('digits', 'train[90%:]')
  assert tail.num_examples == 1437 - 1293
  idx = np.flatnonzero(labels < 3)
  sub = tr.subset(idx)
  assert sub.num_examples == len(idx) and set(all_images(sub)[1]) == {0, 1, 2}


def test_bad_arguments():
  ds = data.load('digits', 'test')
  with pytest.raises(ValueError, match="unknown split 'val'"):
    data.load('digits', 'val')
  with pytest.raises(ValueError, match='unknown split'):
    data.load('digits', 'train[a:b]')
  with pytest.raises(ValueError, match="unknown data set 'mnist'.*digits"):
    data.load('mnist', 'train')
  with pytest.raises(ValueError, match="unknown normalization 'imnet'"):
    data.load('digits', 'train', normalization='imnet')
  with pytest.raises(ValueError, match=r"unknown option\(s\) \['crop_scale'\].*upsample"):
    data.load('digits', 'train', crop_scale=(0.1, 1))
  with pytest.raises(ValueError, match='upsample'):
    data.load('digits', 'train', upsample='cubic')
  for bad in (0, -8, 2.5):
    with pytest.raises(ValueError, match='batch_size must be a positive integer'):
      ds.batches(bad, epoch=0, train=False)
    with pytest.raises(ValueError, match='batch_size'):
      ds.steps_per_epoch(bad)
  with pytest.raises(ValueError, match='batch_size=63 must be a multiple of process_count=2'):
    ds.batches(63, epoch=0, train=True, process_count=2)
  with pytest.raises(ValueError, match=r'process_index=2 not in \[0, 2\)'):
    ds.batches(64, epoch=0, train=True, process_index=2, process_count=2)
  with pytest.raises(ValueError, match='epoch'):
    ds.batches(64, epoch=-1, train=True)
  with pytest.raises(ValueError, match='subset indices'):
    ds.subset([0, 360])


def test_counter_rng_and_crc():
  u = pipeline.uniforms(np.arange(20000), 3)
  assert u.shape == (20000, 3) and 0 <= u.min() and u.max() < 1
  assert abs(u.mean() - 0.5) < 0.01 and abs(np.corrcoef(u[:, 0], u[:, 1])[0, 1]) < 0.03
  np.testing.assert_array_equal(pipeline.uniforms(np.arange(5, 9), 3), u[5:9])
  assert tfrecord.crc32c(b'123456789') == 0xE3069283      # the CRC-32C check value
  assert tfrecord.crc32c(b'') == 0


# --- tiny CIFAR-10 through the TFDS array_record path -------------------------------------------


def write_cifar_tarball(path, per_batch=6, n_test=10):
  """A cifar-10-python.tar.gz lookalike: 5 x 6 train + 10 test random images (40 in total)."""
  r = np.random.RandomState(0)
  train, test = [], None
  with tarfile.open(path, 'w:gz') as tar:
    for name in [f'data_batch_{i}' for i in range(1, 6)] + ['test_batch']:
      n = n_test if name == 'test_batch' else per_batch
      d = {b'data': r.randint(0, 256, (n, 3072)).astype(np.uint8),
           b'labels': [int(v) for v in r.randint(0, 10, n)]}
      (train.append(d) if name != 'test_batch' else None)
      test = d if name == 'test_batch' else test
      blob = pickle.dumps(d)
      info = tarfile.TarInfo(f'cifar-10-batches-py/{name}')
      info.size = len(blob)
      tar.addfile(info, io.BytesIO(blob))

  def images(d):   # the documented CIFAR row layout: 1024 R, 1024 G, 1024 B values
    x = np.asarray(d[b'data'], np.uint8)
    return np.stack([x[:, :1024], x[:, 1024:2048], x[:, 2048:]], -1).reshape(-1, 32, 32, 3)
  return ((np.concatenate([images(d) for d in train]),
           np.concatenate([d[b'labels'] for d in train])), (images(test), np.asarray(test[b'labels'])))


def match_rows(got, want):
  """Index into want of each image of got (exact match), asserting a permutation."""
  idx = [int(np.argmin(np.abs(want.astype(np.float32) - g).reshape(len(want), -1).max(1)))
         for g in got]
  assert sorted(idx) == list(range(len(want)))
  return np.asarray(idx)


@pytest.fixture(scope='module')
def cifar(tmp_path_factory):
  root = tmp_path_factory.mktemp('cifar')
  raw = write_cifar_tarball(str(root / 'cifar-10-python.tar.gz'))
  assert prepare.main(['--dataset=cifar10', f'--source={root / "cifar-10-python.tar.gz"}',
                       f'--data_dir={root / "data"}']) == 0
  return str(root / 'data'), raw


def test_cifar_content_labels_and_normalisations(cifar):
  d, ((xtr, ytr), (xte, yte)) = cifar
  tr = data.load('cifar10', 'train', data_dir=d)
  te = data.load('cifar10', 'test', data_dir=d)
  assert (tr.num_examples, te.num_examples, tr.num_classes, tr.image_shape) == (30, 10, 10,
                                                                              (32, 32, 3))
  x, y = all_images(te)
  assert x.dtype == np.float32 and y.dtype == np.int32 and y.min() >= 0 and y.max() < 10
  pix = (x * CIFAR_STD + CIFAR_MEAN) * 255.0
  idx = match_rows(pix, xte)     # TFDS shuffles examples when it writes: match by content
  np.testing.assert_allclose(x, (xte[idx] / 255.0 - CIFAR_MEAN) / CIFAR_STD, atol=1e-5)
  np.testing.assert_array_equal(y, yte[idx])
  np.testing.assert_array_equal(te.labels(), y)
  xi, _ = all_images(data.load('cifar10', 'test', data_dir=d, normalization='imagenet'))
  np.testing.assert_allclose(xi, (xte[idx] / 255.0 - IMNET_MEAN) / IMNET_STD, atol=1e-5)
  xn, _ = all_images(data.load('cifar10', 'test', data_dir=d,
                               normalization=((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))))
  np.testing.assert_allclose(xn, (xte[idx] / 255.0 - 0.5) / 0.25, atol=1e-5)
  xtr_got, ytr_got = all_images(tr)
  itr = match_rows((xtr_got * CIFAR_STD + CIFAR_MEAN) * 255.0, xtr)
  np.testing.assert_array_equal(ytr_got, ytr[itr])


def test_prepared_records_carry_their_source_position_as_id(cifar):
  """Each record's ``id`` is ``<split>_<position in the pickle>`` (TFDS's cifar convention), so
  lists that name images by that position find them although TFDS stores records shuffled."""
  import tensorflow_datasets as tfds
  from common.data import tfds_source
  d, ((xtr, _), (xte, _)) = cifar
  src = tfds.builder_from_directory(tfds_source.find_prepared('cifar10', d))
  for split, x in (('train', xtr), ('test', xte)):
    recs = list(src.as_data_source(split))
    ids = [r['id'].decode() if isinstance(r['id'], bytes) else str(r['id']) for r in recs]
    pos = [int(i.split('_')[1]) for i in ids]
    assert sorted(ids) == [f'{split}_{i:05d}' for i in range(len(x))]
    assert pos != list(range(len(x)))            # shuffled on disk
    for r, p in zip(recs, pos):
      np.testing.assert_array_equal(np.asarray(r['image']), x[p])


def test_cifar_augmentation_determinism_and_shards(cifar):
  d, ((xtr, ytr), _) = cifar
  tr = data.load('cifar10', 'train', data_dir=d, seed=7)
  flips, offsets = [], []
  for epoch in range(3):
    b = next(tr.batches(30, epoch=epoch, train=True))
    assert b['image'].shape == (30, 32, 32, 3) and b['image'].dtype == np.float32
    pix = (b['image'] * CIFAR_STD + CIFAR_MEAN) * 255.0
    for img, label in zip(pix[:10], b['label'][:10]):
      hit = find_crop(img, xtr[ytr == label], 4, atol=1e-2)
      flips.append(hit[3])
      offsets.append(hit[1:3])
  assert 0 < sum(flips) < len(flips)              # both flipped and unflipped crops occur
  assert len(set(offsets)) > 5
  a = list(tr.batches(10, epoch=1, train=True))
  b = list(data.load('cifar10', 'train', data_dir=d, seed=7).batches(10, epoch=1, train=True))
  c = list(tr.batches(10, epoch=2, train=True))
  for u, v in zip(a, b):
    np.testing.assert_array_equal(u['image'], v['image'])
  assert not np.array_equal(a[0]['image'], c[0]['image'])
  halves = [list(tr.batches(10, epoch=1, train=True, process_index=p, process_count=2))
            for p in range(2)]
  for full, h0, h1 in zip(a, *halves):
    np.testing.assert_array_equal(np.concatenate([h0['image'], h1['image']]), full['image'])
    assert not set(map(bytes, h0['image'])) & set(map(bytes, h1['image']))
  refl = data.load('cifar10', 'train', data_dir=d, seed=7, pad_mode='reflect', flip=False)
  rb = next(refl.batches(10, epoch=0, train=True))
  for img, label in zip((rb['image'] * CIFAR_STD + CIFAR_MEAN) * 255, rb['label']):
    hit = find_crop(img, xtr[ytr == label], 4, mode='reflect', atol=1e-2)
    assert hit is not None and not hit[3]


def write_tf_style_copy(data_dir, images, labels):
  """A TFDS cifar10 copy as TensorFlow writes it: PNG Image features in tfrecord files."""
  import tensorflow_datasets as tfds
  from array_record.python.array_record_module import ArrayRecordReader

  def png(a):
    b = io.BytesIO()
    Image.fromarray(a).save(b, format='PNG')
    return b.getvalue()

  class Cifar10(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    name = 'cifar10'
    VERSION = tfds.core.Version('3.0.2')

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
          'id': tfds.features.Text(), 'image': tfds.features.Image(shape=(32, 32, 3)),
          'label': tfds.features.ClassLabel(num_classes=10)}), supervised_keys=('image', 'label'))

    def _split_generators(self, dl_manager):
      return {'train': self._generate_examples(slice(0, 8)),
              'test': self._generate_examples(slice(8, 12))}

    def _generate_examples(self, sl):
      for i in range(sl.start, sl.stop):
        yield i, {'id': f'x{i}', 'image': png(images[i]), 'label': int(labels[i])}

  Cifar10(data_dir=data_dir, file_format='array_record').download_and_prepare()
  vdir = os.path.join(data_dir, 'cifar10', '3.0.2')
  # TFDS writes the same serialised tf.train.Example records in both formats: re-frame them.
  for f in glob.glob(os.path.join(vdir, '*.array_record-*')):
    reader = ArrayRecordReader(f)
    records = reader.read_all()
    reader.close()
    tfrecord.write_records(f.replace('.array_record-', '.tfrecord-'), records)
    os.remove(f)
  with open(os.path.join(vdir, 'dataset_info.json')) as fh:
    info = json.load(fh)
  info['fileFormat'] = 'tfrecord'
  with open(os.path.join(vdir, 'dataset_info.json'), 'w') as fh:
    json.dump(info, fh)
  return vdir


def test_tfrecord_copy_converts_without_tensorflow(tmp_path, cifar):
  _, ((xtr, ytr), _) = cifar
  tf_dir = str(tmp_path / 'tf_data')
  vdir = write_tf_style_copy(tf_dir, xtr, ytr)
  records = list(tfrecord.read_records(glob.glob(os.path.join(vdir, '*train.tfrecord*'))[0],
                                       verify_data=True))
  assert len(records) == 8
  # unconverted: the error names the data set, the dir, the prepare command and the copy found
  with pytest.raises(FileNotFoundError) as e:
    data.load('cifar10', 'train', data_dir=tf_dir)
  assert f'--source={vdir}' in str(e.value) and 'tfrecord' in str(e.value)
  out = str(tmp_path / 'converted')
  assert prepare.main(['--dataset=cifar10', f'--source={tf_dir}', f'--data_dir={out}']) == 0
  te = data.load('cifar10', 'test', data_dir=out)
  x, y = all_images(te)
  want = xtr[8:12]
  idx = match_rows((x * CIFAR_STD + CIFAR_MEAN) * 255.0, want)
  np.testing.assert_allclose(x, (want[idx] / 255.0 - CIFAR_MEAN) / CIFAR_STD, atol=1e-5)
  np.testing.assert_array_equal(y, ytr[8:12][idx])
  assert data.load('cifar10', 'train', data_dir=out).num_examples == 8


def test_missing_dataset_message(tmp_path):
  with pytest.raises(FileNotFoundError) as e:
    data.load('cifar100', 'train', data_dir=str(tmp_path))
  msg = str(e.value)
  assert "'cifar100'" in msg and f'data_dir searched: {tmp_path}' in msg
  assert (f'python -m common.data.prepare --dataset=cifar100 --data_dir={tmp_path} '
          '--source=/path/to/cifar-100-python.tar.gz') in msg
  assert '\n' not in msg
  with pytest.raises(SystemExit) as e:
    prepare.main(['--dataset=cifar100', f'--source={tmp_path / "nope.tar.gz"}',
                  f'--data_dir={tmp_path}'])
  assert e.value.code == 2


@pytest.mark.parametrize('args,needles', [
    (['--dataset=cifar11', '--source=x'], ['--dataset', "'cifar11'", 'cifar10']),
    (['--dataset=cifar10'], ['--source']),
    (['--dataset=cifar10', '--source=/nonexistent/cifar.tar.gz'], ['/nonexistent/cifar.tar.gz']),
])
def test_prepare_cli_bad_input_is_one_error_line(tmp_path, args, needles):
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  r = subprocess.run([sys.executable, '-m', 'common.data.prepare', *args,
                      f'--data_dir={tmp_path}'], capture_output=True, text=True, timeout=120,
                     cwd=root)
  lines = r.stderr.strip().splitlines()
  assert r.returncode == 2 and 'Traceback' not in r.stderr, r.stderr[-2000:]
  assert len(lines) == 1 and lines[0].startswith('error: '), r.stderr[-2000:]
  for n in needles:
    assert n in lines[0], lines[0]


# --- tiny ImageNet / CUB: encoded JPEGs, per-image PIL transforms -------------------------------


def ref_eval(img):
  """torchvision Resize(256) + CenterCrop(224) + ToTensor + Normalize, written with PIL here."""
  h, w = img.shape[:2]
  nh, nw = (256, int(256 * w / h)) if h <= w else (int(256 * h / w), 256)
  im = np.asarray(Image.fromarray(img).resize((nw, nh), Image.BILINEAR))
  t, l = int(round((nh - 224) / 2)), int(round((nw - 224) / 2))
  return (im[t:t + 224, l:l + 224] / 255.0 - IMNET_MEAN) / IMNET_STD


@pytest.fixture(scope='module')
def imagenet(tmp_path_factory):
  root = tmp_path_factory.mktemp('imagenet')
  r = np.random.RandomState(0)
  val = []
  for split, n in (('train', 3), ('val', 2)):
    for c, wnid in enumerate(('n002', 'n001')):     # labels follow the sorted wnids
      os.makedirs(root / 'src' / split / wnid)
      for i in range(n):
        # smooth images, so that re-encoding as JPEG changes them only slightly
        blocks = r.randint(0, 255, (4, 5, 3)).astype(np.uint8)
        img = np.asarray(Image.fromarray(blocks).resize((80, 60 + 7 * i), Image.BILINEAR))
        path = root / 'src' / split / wnid / f'{i}.JPEG'
        if split == 'val' and i == 0 and c == 0:
          Image.fromarray(img[..., 0]).save(path, format='JPEG')   # a greyscale JPEG
        elif split == 'val' and i == 0:
          Image.fromarray(img).save(path, format='PNG')            # a PNG named .JPEG
        else:
          Image.fromarray(img).save(path, format='JPEG', quality=95)
        if split == 'val':
          with Image.open(path) as im:
            val.append((np.asarray(im.convert('RGB')), 1 - c))
  assert prepare.main(['--dataset=imagenet2012', f'--source={root / "src"}',
                       f'--data_dir={root / "data"}']) == 0
  return str(root / 'data'), val


def test_imagenet_eval_matches_pil_reference(imagenet):
  d, val = imagenet
  te = data.load('imagenet2012', 'test', data_dir=d)
  assert (te.num_examples, te.num_classes, te.image_shape) == (4, 1000, (224, 224, 3))
  x, y = all_images(te, bs=4)
  refs = [ref_eval(img) for img, _ in val]
  for got, label in zip(x, y):
    errs = [np.abs(got - ref).mean() for ref in refs]
    k = int(np.argmin(errs))
    assert min(np.delete(errs, k)) > 0.5
    if k in (0, 2):   # the grey JPEG and the PNG were re-encoded as RGB JPEG: quantisation only
      assert errs[k] < 0.05, errs
    else:             # stored bytes unchanged: PIL decode + resize + crop reproduced exactly
      np.testing.assert_allclose(got, refs[k], atol=1e-4)
    assert label == val[k][1]


def test_imagenet_train_crops(imagenet):
  d, _ = imagenet
  tr = data.load('imagenet2012', 'train', data_dir=d, seed=1, crop_scale=(0.08, 1.25),
                 lighting=0.1, color_jitter=0.4)
  assert tr.num_examples == 6
  b = next(tr.batches(6, epoch=0, train=True))
  assert b['image'].shape == (6, 224, 224, 3) and np.isfinite(b['image']).all()
  assert sorted(b['label']) == [0, 0, 0, 1, 1, 1]
  b2 = next(data.load('imagenet2012', 'train', data_dir=d, seed=1, crop_scale=(0.08, 1.25),
                      lighting=0.1, color_jitter=0.4).batches(6, epoch=0, train=True))
  np.testing.assert_array_equal(b['image'], b2['image'])
  halves = [next(tr.batches(6, epoch=0, train=True, process_index=p, process_count=2))
            for p in range(2)]
  np.testing.assert_array_equal(np.concatenate([h['image'] for h in halves]), b['image'])
  # a plain crop after Resize((256, 256)) is a 224 window of the resized image (LEC's CUB loader)
  plain = data.load('imagenet2012', 'train', data_dir=d, seed=2, crop='plain',
                    train_resize=(256, 256), flip=False)
  got = next(plain.batches(1, epoch=0, train=True))['image'][0] * IMNET_STD + IMNET_MEAN
  srcs = glob.glob(os.path.join(os.path.dirname(d), 'src', 'train', '*', '*.JPEG'))
  big = [np.asarray(Image.open(p).convert('RGB').resize((256, 256), Image.BILINEAR)) / 255.0
         for p in srcs]
  best = min(np.abs(b_[t:t + 224, l:l + 224] - got).max() for b_ in big
             for t in range(33) for l in range(0, 33, 1) if abs(b_[t, l] - got[0, 0]).max() < 0.02)
  assert best < 0.02   # JPEG decode of the same bytes: identical up to float rounding
  with pytest.raises(ValueError, match=r"unknown option\(s\) \['pad'\]"):
    data.load('imagenet2012', 'train', data_dir=d, pad=4)


def test_cub_official_split(tmp_path):
  src = tmp_path / 'CUB_200_2011'
  os.makedirs(src / 'images' / '001.A')
  os.makedirs(src / 'images' / '002.B')
  r = np.random.RandomState(0)
  lines, splits, labels = [], [], []
  for i in range(1, 7):
    cls = 1 + (i % 2)
    rel = f'{"001.A" if cls == 1 else "002.B"}/img_{i}.jpg'
    Image.fromarray(r.randint(0, 255, (40, 50, 3), np.uint8)).save(src / 'images' / rel)
    lines.append(f'{i} {rel}')
    splits.append(f'{i} {int(i <= 4)}')
    labels.append(f'{i} {cls}')
  for name, rows in (('images.txt', lines), ('train_test_split.txt', splits),
                     ('image_class_labels.txt', labels)):
    (src / name).write_text('\n'.join(rows) + '\n')
  prepare.prepare('caltech_birds2011', str(src), str(tmp_path / 'data'))
  tr = data.load('caltech_birds2011', 'train', data_dir=str(tmp_path / 'data'))
  te = data.load('caltech_birds2011', 'test', data_dir=str(tmp_path / 'data'))
  assert (tr.num_examples, te.num_examples, tr.num_classes) == (4, 2, 200)
  assert sorted(tr.labels()) == [0, 0, 1, 1] and sorted(te.labels()) == [0, 1]
  b = next(te.batches(2, epoch=0, train=False))
  assert b['image'].shape == (2, 224, 224, 3)


def test_augment_ops_closed_forms():
  from common.data import augment
  r = np.random.RandomState(0)
  img = r.randint(0, 256, (40, 100, 3)).astype(np.uint8)
  pil = lambda a, box, size: np.asarray(Image.fromarray(a).crop(box).resize((size, size),
                                                                            Image.BILINEAR))
  sq = img[:, :40]
  # scale = ratio = 1 on a square image: the whole image, resized
  out = augment.random_resized_crop(np.ascontiguousarray(sq), r, 24, scale=(1, 1), ratio=(1, 1))
  np.testing.assert_array_equal(out, pil(np.ascontiguousarray(sq), (0, 0, 40, 40), 24))
  # no box fits (area 4x the image): torchvision's fallback, the central crop clamped to 4/3
  out = augment.random_resized_crop(img, r, 24, scale=(4, 4))
  w = int(round(40 * 4 / 3))
  np.testing.assert_array_equal(out, pil(img, ((100 - w) // 2, 0, (100 - w) // 2 + w, 40), 24))
  # Resize(shorter side) truncates the longer side like torchvision; CenterCrop rounds offsets
  assert augment.resize(img, 30).shape == (30, 75, 3)
  assert augment.resize(img[:, :41], 30).shape == (30, 30, 3)
  np.testing.assert_array_equal(augment.center_crop(img, 21), img[10:31, 40:61])
  # brightness-only jitter is a clipped, rounded scaling by one factor in [0.6, 1.4]
  x = np.full((4, 4, 3), 100, np.uint8)
  x[0, 0] = 250
  out = augment.color_jitter(x, np.random.RandomState(3), 0.4, 0, 0).astype(int)
  f = out[1, 1, 0] / 100                  # the factor, to within the rounding of 1/100
  assert 0.595 <= f <= 1.405 and f != 1 and (out[1:, 1:] == out[1, 1, 0]).all()
  assert abs(out[0, 0, 0] - min(255, 250 * f)) <= 1.5
  # PCA lighting adds one RGB offset per image, a combination of the eigenvectors
  z = r.rand(8, 8, 3).astype(np.float32)
  d = augment.lighting(z, np.random.RandomState(5), 0.1) - z
  np.testing.assert_allclose(d, np.broadcast_to(d[0, 0], d.shape), atol=1e-6)
  coef = np.linalg.solve(augment.PCA_EIGVEC, d[0, 0].astype(np.float64)) / augment.PCA_EIGVAL
  assert np.abs(coef).max() < 0.5 and np.abs(coef).min() > 0   # alpha ~ N(0, 0.1^2)
