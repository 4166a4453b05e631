"""Few-shot class-incremental (FSCIL) protocols: which images each session trains on.

TOPIC (Tao et al., CVPR 2020) and CEC (Zhang et al., CVPR 2021; icoz69/CEC-CVPR2021
``data/index_list``) fix the split in an ``index_list`` folder, one file per session:
``session_1.txt`` lists every training image of the base classes, ``session_t.txt`` (t > 1) the
``way x shot`` images of session t - 1's new classes. Lines name images:

* CIFAR-100: an integer, the image's position in the training pickle (``cifar-100-python/train``);
* CUB-200-2011: ``CUB_200_2011/images/<class dir>/<file>.jpg``;
* miniImageNet: ``MINI-ImageNet/train/<wnid>/<file>.jpg`` (the file name is the key).

LEC-Net (ICCV2021-LEC/LEC ``data_list``) adds a second column, the 1-based label after its seeded
class permutation (CUB ``Seed_1`` ... ``Seed_10``), and lists *every* training image of the new
classes; its loader draws ``shot`` of them per class at random (``data/CUB200.py``:
``random.sample`` under ``random.seed(123)``). Both formats are read here.

The lists are mapped onto the prepared TFDS records (``python -m common.data.prepare``) by the
stable key the prepare step stores in each record's ``id`` feature: for CIFAR-100 ``train_<i>``
with ``i`` the position in the pickle (the integer the lists hold), for CUB the image path under
``images/``. An image a list names that cannot be found is an error naming the list and the
image.

Labels are renumbered in session order (base classes first, then ``way`` per session), which is
the natural class order for the TOPIC lists and LEC's relabelling for its seeded lists.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from common.data import pipeline
from common.train import UserError

# Published protocols: (base classes, way, shot, incremental sessions, classes in all).
PUBLISHED = {
    'cifar100': (60, 5, 5, 8, 100),
    'caltech_birds2011': (100, 10, 5, 10, 200),
    'mini_imagenet': (60, 5, 5, 8, 100),
}


@dataclasses.dataclass
class Protocol:
  """The sessions of one FSCIL run.

  Attributes:
    name: protocol name.
    base_classes, way, shot, sessions: K_0, classes per session, images per new class, S.
    train: ``S + 1`` training sets (index 0 = the base session); labels in session order.
    test: every test image of the ``base + S way`` classes, labels in session order.
  """
  name: str
  base_classes: int
  way: int
  shot: int
  sessions: int
  train: List[pipeline.Dataset]
  test: pipeline.Dataset

  def num_seen(self, session: int) -> int:
    """Classes seen after ``session``: ``base + session * way``."""
    return self.base_classes + session * self.way

  def test_set(self, session: int) -> pipeline.Dataset:
    """The joint test set after ``session``: every test image of the classes seen so far."""
    return self.test.subset(np.flatnonzero(self.test.labels() < self.num_seen(session)))

  def check(self) -> None:
    """Raises UserError unless every session has the protocol's classes and shots."""
    for s, ds in enumerate(self.train):
      labels = ds.labels()
      want = (np.arange(self.base_classes) if s == 0 else
              np.arange(self.num_seen(s - 1), self.num_seen(s)))
      got, counts = np.unique(labels, return_counts=True)
      if not np.array_equal(got, want):
        raise UserError(f'{self.name} session {s}: classes {got.tolist()}, expected '
                        f'{want.min()}..{want.max()}')
      if s and (counts != self.shot).any():
        raise UserError(f'{self.name} session {s}: {counts.tolist()} images per class, expected '
                        f'{self.shot}-shot')


def digits(train: pipeline.Dataset, test: pipeline.Dataset, seed: int, base_classes: int = 4,
           way: int = 2, shot: int = 5, sessions: int = 3) -> Protocol:
  """The small FSCIL protocol on the embedded digits set.

  Base session: classes ``0 .. base-1`` on all their training images; then ``sessions`` sessions
  of ``way``-way ``shot``-shot on the next classes in natural order, the shots drawn by ``seed``
  (``RandomState(seed)``, fixed per seed); test on every test image of the seen classes.
  """
  total = base_classes + way * sessions
  if total > train.num_classes:
    raise UserError(f'digits protocol needs {total} classes (base {base_classes} + '
                    f'{sessions} x {way}); digits has {train.num_classes}')
  labels = train.labels()
  rs = np.random.RandomState([int(seed), 4242])
  sets = [train.subset(np.flatnonzero(labels < base_classes))]
  for s in range(1, sessions + 1):
    picks = []
    for c in range(base_classes + (s - 1) * way, base_classes + s * way):
      pool = np.flatnonzero(labels == c)
      if len(pool) < shot:
        raise UserError(f'digits class {c} has {len(pool)} training images, fewer than '
                        f'{shot} shots')
      picks.append(np.sort(rs.choice(pool, shot, replace=False)))
    sets.append(train.subset(np.concatenate(picks)))
  test = test.subset(np.flatnonzero(test.labels() < total))
  p = Protocol('digits', base_classes, way, shot, sessions, sets, test)
  p.check()
  return p


# --- index lists -----------------------------------------------------------------------------


def read_index_list(path: str) -> List[Tuple[str, Optional[int]]]:
  """``[(image key, label or None)]`` of one session file.

  A line is ``<key>`` (TOPIC / CEC) or ``<key> <1-based label>`` (LEC); blank lines are skipped.
  Raises UserError for a missing file or a malformed line (naming the file and the line).
  """
  if not os.path.exists(path):
    raise UserError(f'index list {path} does not exist')
  out = []
  with open(path) as f:
    for n, line in enumerate(f, 1):
      parts = line.split()
      if not parts:
        continue
      if len(parts) > 2:
        raise UserError(f'{path}:{n}: expected "<image>" or "<image> <label>"; got {line!r}')
      label = None
      if len(parts) == 2:
        try:
          label = int(parts[1]) - 1
        except ValueError:
          raise UserError(f'{path}:{n}: label {parts[1]!r} is not an integer') from None
      out.append((parts[0], label))
  return out


def session_files(list_dir: str, sessions: int) -> List[str]:
  """``list_dir/session_1.txt .. session_{S+1}.txt``; UserError naming the first missing one."""
  if not os.path.isdir(list_dir):
    raise UserError(f'index_list folder {list_dir} does not exist (point method.index_list_dir '
                    'at the TOPIC/CEC data/index_list/<dataset> folder)')
  files = [os.path.join(list_dir, f'session_{t}.txt') for t in range(1, sessions + 2)]
  missing = [f for f in files if not os.path.exists(f)]
  if missing:
    raise UserError(f'index list {missing[0]} not found ({len(missing)} of the {len(files)} '
                    f'session files missing in {list_dir})')
  return files


def record_keys(name: str, data_dir: str, split: str = 'train') -> Dict[str, int]:
  """``{image key: record row}`` of a prepared TFDS split, from its ``id`` feature.

  ``common.data.prepare`` stores each image's stable key there (CIFAR ``'train_00042'``, the
  position in the pickle; CUB the path under ``images/``): TFDS writes records shuffled, so the
  row is not the source order. Raises UserError for a copy without keys.
  """
  import tensorflow_datasets as tfds
  from common.data import tfds_source
  data_dir = os.path.abspath(os.path.expanduser(data_dir or tfds_source.default_data_dir()))
  path = tfds_source.find_prepared(name, data_dir)
  if path is None:
    raise UserError(str(tfds_source.missing_error(name, data_dir)))
  builder = tfds.builder_from_directory(path)
  if 'id' not in builder.info.features.keys():
    raise UserError(f'the prepared {name} copy at {path} has no image keys (its records lack the '
                    f'"id" feature): prepare it again with '
                    f'{tfds_source.prepare_command(name, data_dir)}')
  decoders = {k: tfds.decode.SkipDecoding() for k, f in builder.info.features.items()
              if isinstance(f, tfds.features.Image)}
  src = builder.as_data_source(tfds_source.TFDS_DATASETS[name].tfds_splits[split],
                               decoders=decoders or None)
  out = {}
  for lo in range(0, len(src), 4096):
    for i, ex in enumerate(src.__getitems__(list(range(lo, min(lo + 4096, len(src)))))):
      k = ex['id']
      out[k.decode() if isinstance(k, bytes) else str(k)] = lo + i
  return out


def cifar_key(key: str) -> str:
  """A CIFAR-100 list entry (an index into the training pickle) -> its record key
  ``'train_<index:05d>'``; UserError for a non-integer."""
  try:
    return f'train_{int(key):05d}'
  except ValueError:
    raise UserError(f'image {key!r} is not a CIFAR-100 training index') from None


def cub_key(key: str) -> str:
  """``'CUB_200_2011/images/001.X/x.jpg'`` (or ``'images/...'``) -> ``'001.X/x.jpg'``."""
  parts = key.replace('\\', '/').split('/')
  if 'images' in parts:
    parts = parts[parts.index('images') + 1:]
  return '/'.join(parts[-2:])


def from_index_lists(name: str, train: pipeline.Dataset, test: pipeline.Dataset, list_dir: str,
                     key_rows, base_classes: int, way: int, shot: int, sessions: int,
                     seed: int = 0, labelled: Optional[bool] = None) -> Protocol:
  """A protocol from the session files of ``list_dir``.

  Args:
    name: protocol name (error messages).
    train, test: the prepared splits (labels = the data set's class ids).
    list_dir: the folder holding ``session_1.txt ... session_{S+1}.txt``.
    key_rows: ``(entries, list_path) -> rows [n]`` mapping a list's keys to training rows.
    base_classes, way, shot, sessions: the protocol.
    seed: draws ``shot`` images per class when a list holds more (LEC's lists).
    labelled: True: every line must carry a label (LEC's format); False: none may (TOPIC's);
      None: either.
  """
  files = session_files(list_dir, sessions)
  stored = train.labels()
  per_session, table = [], {}
  for t, path in enumerate(files):
    entries = read_index_list(path)
    if not entries:
      raise UserError(f'index list {path} is empty')
    if labelled is not None:
      bad = next((k for k, lab in entries if (lab is None) == labelled), None)
      if bad is not None:
        fmt = '"<image> <label>" (LEC)' if labelled else '"<image>" (TOPIC/CEC)'
        raise UserError(f'{path}: image {bad}: expected {fmt} lines')
    rows = key_rows(entries, path)
    for (key, new), row in zip(entries, rows):
      old = int(stored[row])
      new = old if new is None else new
      if table.setdefault(old, new) != new:
        raise UserError(f'{path}: image {key} gives class {old} label {new + 1}, but an earlier '
                        f'line gave it label {table[old] + 1}')
    per_session.append(rows)
  total = base_classes + way * sessions
  labels_new = sorted(table.values())
  if labels_new != list(range(total)):
    raise UserError(f'{name}: the lists in {list_dir} name {len(table)} classes with labels '
                    f'{labels_new[:3]}..{labels_new[-3:]}; the protocol needs 0..{total - 1}')
  lut = np.full(max(int(train.num_classes), max(table) + 1), -1, np.int64)
  for old, new in table.items():
    lut[old] = new
  rs = np.random.RandomState([int(seed), 123])
  sets = []
  for t, rows in enumerate(per_session):
    if t:
      lab = lut[stored[rows]]
      keep = []
      for c in np.unique(lab):
        idx = np.flatnonzero(lab == c)
        keep.append(idx if len(idx) <= shot else np.sort(rs.choice(idx, shot, replace=False)))
      rows = rows[np.concatenate(keep)]
    sets.append(train.subset(rows).relabeled(np.maximum(lut, 0)))
  test_lab = test.labels()
  seen = lut[np.clip(test_lab, 0, len(lut) - 1)] >= 0
  test_set = test.subset(np.flatnonzero(seen)).relabeled(np.maximum(lut, 0))
  p = Protocol(name, base_classes, way, shot, sessions, sets, test_set)
  p.check()
  return p


# --- miniImageNet from the user's image folder ------------------------------------------------


def mini_imagenet_splits(root: str, seed: int = 0, image_size: int = 84
                         ) -> Tuple[pipeline.Dataset, pipeline.Dataset, Dict[str, int]]:
  """miniImageNet as CEC lays it out: ``root/images/<file>.jpg`` and ``root/split/{train,test}.csv``
  (``filename,wnid`` rows; labels in order of first appearance, icoz69/CEC-CVPR2021
  ``dataloader/miniimagenet/miniimagenet.py``).

  Train: ``RandomResizedCrop(84)`` + flip; test: ``Resize(92)`` + ``CenterCrop(84)``; ImageNet
  normalisation. Returns ``(train, test, {file name: training row})``.
  """
  from common.data import augment
  mean, std = pipeline.normalization('imagenet')
  splits = {}
  for split in ('train', 'test'):
    p = os.path.join(root, 'split', f'{split}.csv')
    if not os.path.exists(p):
      raise UserError(f'{p} not found: method.mini_imagenet_root must hold images/ and '
                      'split/train.csv, split/test.csv (the CEC layout)')
    with open(p) as f:
      lines = [l.strip() for l in f][1:]
    names, wnids = zip(*(l.split(',') for l in lines if l))
    splits[split] = (list(names), list(wnids))
  classes = list(dict.fromkeys(splits['train'][1]))
  index = {w: i for i, w in enumerate(classes)}

  def make(split):
    names, wnids = splits[split]
    labels = np.asarray([index[w] for w in wnids], np.int32)
    train = split == 'train'

    def get(rows, train_mode, seeds):
      from PIL import Image
      out = []
      for r, s in zip(rows, seeds):
        with Image.open(os.path.join(root, 'images', names[r])) as im:
          img = np.asarray(im.convert('RGB'))
        if train_mode and train:
          x = augment.imagenet_train(img, np.random.RandomState(int(s)), size=image_size)
        else:
          x = augment.imagenet_eval(img, size=image_size, resize_to=(92, 92))
        out.append((x - mean) / std)
      return np.stack(out).astype(np.float32), labels[rows]

    return pipeline.Dataset('mini_imagenet', len(classes), (image_size, image_size, 3), get,
                            rows=np.arange(len(names)), labels_fn=lambda r: labels[r],
                            split=split, seed=seed, prefetch=2, normalization=(mean, std))

  return make('train'), make('test'), {n: i for i, n in enumerate(splits['train'][0])}


def name_rows(lookup: Dict[str, int], key_fn, dataset: str):
  """``key_rows`` for :func:`from_index_lists`: each list entry through ``key_fn`` (list entry ->
  record key) into ``lookup`` (record key -> row)."""
  def rows(entries, list_path):
    out = []
    for key, _ in entries:
      try:
        k = key_fn(key)
      except UserError as e:
        raise UserError(f'{list_path}: {e}') from None
      if k not in lookup:
        raise UserError(f'{list_path}: image {key} not found among the {len(lookup)} prepared '
                        f'{dataset} training images (looked up as {k!r})')
      out.append(lookup[k])
    return np.asarray(out, np.int64)
  return rows
