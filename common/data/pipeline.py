"""Deterministic, per-host-sharded batching over a random-access split (the ``Dataset`` contract).

A :class:`Dataset` yields ``{'image': float32 [B, H, W, C], 'label': int32 [B]}`` batches.

Determinism: the example order of epoch ``e`` is a pure function of ``(seed, e)`` and every
augmentation draw of an example is a function of ``(seed, e, step, position in the global batch)``,
so (i) a run resumed at an epoch boundary sees exactly the batches of an uninterrupted run and (ii)
the augmented images do not depend on how many processes share the batch.

Sharding: with ``process_count = P`` process ``p`` receives rows ``[p * B/P, (p+1) * B/P)`` of every
global batch of ``B`` rows: disjoint slices whose concatenation over ``p`` is the single-process
batch; every process gets the same number of batches (a short last eval batch gives short or empty
slices, which ``common.train`` pads).

Host-side work runs in a background thread that keeps ``prefetch`` batches ready.
"""
from __future__ import annotations

import queue
import re
import threading
from typing import Callable, Dict, Iterator, Optional, Sequence, Tuple, Union

import numpy as np

Batch = Dict[str, np.ndarray]

# (mean, std) per RGB channel of images scaled to [0, 1].
NORMALIZATIONS = {
    # DCFF / 1xN / White-Box / Jackpot CIFAR loaders (their cifar.py Normalize).
    'cifar': ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    # FFSD's CIFAR-100 loader (SJLeo/FFSD cifar.py).
    'cifar100': ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    # ImageNet statistics (every ImageNet loader; ReCU / SiMaN and LEC use them on CIFAR too).
    'imagenet': ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    'none': ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),
}

Normalization = Union[str, Tuple[Sequence[float], Sequence[float]]]


def normalization(spec: Normalization) -> Tuple[np.ndarray, np.ndarray]:
  """``(mean [3], std [3])`` float32 of a named normalisation or of an explicit ``(mean, std)``.

  Names: the keys of ``NORMALIZATIONS``. Raises ValueError for an unknown name, a wrong length or a
  non-positive std.
  """
  if isinstance(spec, str):
    if spec not in NORMALIZATIONS:
      raise ValueError(f'unknown normalization {spec!r}; allowed: {sorted(NORMALIZATIONS)} or an '
                       'explicit (mean, std) pair of 3-vectors')
    spec = NORMALIZATIONS[spec]
  try:
    mean, std = (np.asarray(v, np.float32).reshape(-1) for v in spec)
  except (TypeError, ValueError) as e:
    raise ValueError(f'normalization must be a name or a (mean, std) pair; got {spec!r}') from e
  if mean.shape not in ((1,), (3,)) or std.shape != mean.shape or not (std > 0).all():
    raise ValueError(f'normalization (mean, std) must be two equal-length 1- or 3-vectors with '
                     f'std > 0; got {spec!r}')
  return np.broadcast_to(mean, (3,)).copy(), np.broadcast_to(std, (3,)).copy()


def uniforms(seeds: np.ndarray, k: int) -> np.ndarray:
  """``k`` uniform [0, 1) numbers per example from its integer seed (splitmix64, vectorised).

  ``seeds [n]`` -> float64 ``[n, k]``. A counter-based generator, so the draws of an example depend
  only on its own seed (not on which other examples share its slice of the batch).
  """
  s = np.asarray(seeds, np.uint64).reshape(-1, 1)
  z = s * np.uint64(0x9E3779B97F4A7C15) + (np.arange(1, k + 1, dtype=np.uint64)
                                           * np.uint64(0xD1B54A32D192ED03))[None, :]
  z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
  z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
  z = z ^ (z >> np.uint64(31))
  return (z >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


_SPLIT_RE = re.compile(r'^(\w+)(?:\[(-?\d*)(%?):(-?\d*)(%?)\])?$')


def parse_split(split: str, allowed: Sequence[str]) -> Tuple[str, Optional[Tuple]]:
  """``'train'`` -> ``('train', None)``; ``'train[:5000]'`` / ``'test[10%:]'`` -> base + bounds.

  The bounds ``((start, is_percent), (stop, is_percent))`` follow Python slicing (negative counts
  from the end, percentages of the split size); resolve them with :func:`resolve_bounds`.
  """
  m = _SPLIT_RE.match(str(split).replace(' ', ''))
  if not m or m.group(1) not in allowed:
    raise ValueError(f'unknown split {split!r}; allowed: {list(allowed)}, optionally sliced as '
                     "'train[:5000]' or 'train[10%:20%]'")
  if m.group(0).find('[') < 0:
    return m.group(1), None
  a, ap, b, bp = m.group(2, 3, 4, 5)
  return m.group(1), ((int(a) if a else None, bool(ap)), (int(b) if b else None, bool(bp)))


def resolve_bounds(bounds, n: int) -> Tuple[int, int]:
  """``[start, stop)`` row range of a parsed slice over a split of ``n`` examples."""
  def one(v, pct):
    return v if v is None or not pct else int(round(v * n / 100))
  (a, ap), (b, bp) = bounds
  start, stop, _ = slice(one(a, ap), one(b, bp)).indices(n)
  return start, max(start, stop)


# get(rows [n] int64, train: bool, seeds [n] int64) -> (images float32 [n, H, W, C], labels [n])
GetFn = Callable[[np.ndarray, bool, np.ndarray], Tuple[np.ndarray, np.ndarray]]


class Dataset:
  """A split of a data set: random access to examples plus deterministic batching.

  Attributes:
    name: data set name; num_examples: split size; num_classes: label count; image_shape:
      ``(H, W, C)`` of the produced images; split: the split string it was loaded with; seed: the
      data-order / augmentation seed; normalization: ``(mean [3], std [3])`` that was applied (so
      ``x * std + mean`` recovers [0, 1] pixels).
  Args:
    get: ``get(rows, train, seeds) -> (images, labels)``; ``rows`` index the underlying storage,
      ``seeds`` are per-example augmentation seeds (see :func:`uniforms`); images float32
      normalised. It must be thread-safe (it runs in the prefetch thread).
    rows: the storage rows of this split, in their evaluation order (default ``arange(n)``).
    labels_fn: ``labels_fn(rows) -> int labels`` without decoding images (for :meth:`labels`).
    prefetch: batches prepared ahead in a background thread (0 = synchronous).
    passes: shuffled passes over the examples per training epoch (see :meth:`repeated`).
  """

  def __init__(self, name: str, num_classes: int, image_shape: Sequence[int], get: GetFn, *,
               rows: np.ndarray, labels_fn: Callable[[np.ndarray], np.ndarray], split: str = '',
               seed: int = 0, prefetch: int = 2,
               normalization: Tuple[np.ndarray, np.ndarray] = NORMALIZATIONS['none'],
               passes: int = 1):
    self.name = name
    self.num_classes = int(num_classes)
    self.image_shape = tuple(int(s) for s in image_shape)
    self.split = split
    self.seed = int(seed)
    self.prefetch = int(prefetch)
    self.normalization = tuple(np.asarray(v, np.float32) for v in normalization)
    self._get = get
    self._rows = np.asarray(rows, np.int64)
    self._labels_fn = labels_fn
    self._labels = None
    if not isinstance(passes, (int, np.integer)) or passes < 1:
      raise ValueError(f'passes must be a positive integer; got {passes!r}')
    self.passes = int(passes)

  @property
  def num_examples(self) -> int:
    return int(len(self._rows))

  def __len__(self) -> int:
    return self.num_examples

  def __repr__(self) -> str:
    return (f'Dataset({self.name!r}, split={self.split!r}, num_examples={self.num_examples}, '
            f'num_classes={self.num_classes}, image_shape={self.image_shape})')

  def labels(self) -> np.ndarray:
    """int32 ``[num_examples]``: every label in evaluation order (images are not decoded)."""
    if self._labels is None:
      self._labels = np.asarray(self._labels_fn(self._rows), np.int32)
    return self._labels

  def subset(self, indices) -> 'Dataset':
    """The examples ``indices`` (positions in this split's evaluation order) as a new Dataset.

    For held-out splits, low-data regimes and class-incremental sessions, e.g.
    ``ds.subset(np.flatnonzero(ds.labels() < 60))``. Order, seed and options are kept.
    """
    idx = np.asarray(indices, np.int64).reshape(-1)
    if idx.size and (idx.min() < -self.num_examples or idx.max() >= self.num_examples):
      raise ValueError(f'subset indices must lie in [0, {self.num_examples}); got '
                       f'[{idx.min()}, {idx.max()}]')
    out = Dataset(self.name, self.num_classes, self.image_shape, self._get, rows=self._rows[idx],
                  labels_fn=self._labels_fn, split=f'{self.split}<subset of {idx.size}>',
                  seed=self.seed, prefetch=self.prefetch, normalization=self.normalization,
                  passes=self.passes)
    if self._labels is not None:
      out._labels = self._labels[idx]
    return out

  def relabeled(self, table) -> 'Dataset':
    """The same examples with every label ``y`` replaced by ``table[y]``.

    ``table``: int array-like indexed by the stored labels (e.g. a class permutation of
    class-incremental sessions); a stored label outside it raises ValueError when read.
    """
    table = np.asarray(table, np.int64).reshape(-1)
    get, labels_fn = self._get, self._labels_fn

    def mapped(labels):
      labels = np.asarray(labels, np.int64)
      if labels.size and (labels.min() < 0 or labels.max() >= len(table)):
        raise ValueError(f'label {int(labels.max())} outside the relabelling table of '
                         f'{len(table)} entries')
      return table[labels].astype(np.int32)

    def get_mapped(r, train, seeds):
      images, labels = get(r, train, seeds)
      return images, mapped(labels)

    out = Dataset(self.name, int(max(self.num_classes, table.max() + 1 if table.size else 0)),
                  self.image_shape, get_mapped, rows=self._rows,
                  labels_fn=lambda r: mapped(labels_fn(r)), split=f'{self.split}<relabeled>',
                  seed=self.seed, prefetch=self.prefetch, normalization=self.normalization,
                  passes=self.passes)
    if self._labels is not None:
      out._labels = mapped(self._labels)
    return out

  def repeated(self, passes: int) -> 'Dataset':
    """The same split with ``passes`` shuffled passes per training epoch.

    A training epoch then has ``passes * (n // B)`` steps (each pass reshuffled, every batch
    within one pass; with ``B = n`` every step is one full-batch pass); evaluation still reads the
    examples once. For methods whose own "epoch" is one full-batch step over a few-shot set, so
    that the engine evaluates and checkpoints every ``passes`` of them.
    """
    out = self.subset(np.arange(self.num_examples))
    out.split = self.split
    if not isinstance(passes, (int, np.integer)) or passes < 1:
      raise ValueError(f'passes must be a positive integer; got {passes!r}')
    out.passes = int(passes)
    return out

  def steps_per_epoch(self, batch_size: int, drop_remainder: bool = True) -> int:
    """Number of global batches per training epoch (``drop_remainder`` drops a short last
    batch of every pass; ``passes`` passes per epoch)."""
    return self.passes * self._steps_per_pass(batch_size, drop_remainder)

  def _steps_per_pass(self, batch_size: int, drop_remainder: bool) -> int:
    if not isinstance(batch_size, (int, np.integer)) or batch_size <= 0:
      raise ValueError(f'batch_size must be a positive integer; got {batch_size!r}')
    if drop_remainder:
      return self.num_examples // batch_size
    return -(-self.num_examples // batch_size)

  def order(self, epoch: int, train: bool) -> np.ndarray:
    """Positions (into the evaluation order) of epoch ``epoch``: a ``(seed, epoch)`` permutation
    when training, the identity otherwise."""
    if not train:
      return np.arange(self.num_examples)
    return np.random.RandomState([self.seed, int(epoch), 17]).permutation(self.num_examples)

  def batches(self, batch_size: int, *, epoch: int, train: bool, drop_remainder: bool = True,
              process_index: int = 0, process_count: int = 1) -> Iterator[Batch]:
    """This process's slice of every global batch of ``epoch``.

    Args:
      batch_size: the global batch size ``B`` (all processes together); a multiple of
        ``process_count``.
      epoch: epoch number (>= 0): selects the shuffle and the augmentation draws.
      train: shuffle by ``(seed, epoch)`` and augment (if the data set was loaded with
        ``augment=True``); otherwise the stored order without augmentation.
      drop_remainder: drop the last short global batch.
    Yields:
      ``{'image': float32 [B/P, H, W, C], 'label': int32 [B/P]}``.
    """
    per_pass = self._steps_per_pass(batch_size, drop_remainder)
    passes = self.passes if train else 1
    steps = per_pass * passes
    if not isinstance(process_count, (int, np.integer)) or process_count <= 0:
      raise ValueError(f'process_count must be a positive integer; got {process_count!r}')
    if batch_size % process_count:
      raise ValueError(f'batch_size={batch_size} must be a multiple of process_count='
                       f'{process_count} (each process takes an equal slice of the global batch)')
    if not 0 <= process_index < process_count:
      raise ValueError(f'process_index={process_index} not in [0, {process_count})')
    if not isinstance(epoch, (int, np.integer)) or epoch < 0:
      raise ValueError(f'epoch must be a non-negative integer; got {epoch!r}')
    orders = [self.order(epoch, train)] + [
        np.random.RandomState([self.seed, int(epoch), 17, p]).permutation(self.num_examples)
        for p in range(1, passes)]
    per = batch_size // process_count

    def produce(step: int) -> Batch:
      i = step % per_pass
      pos = orders[step // per_pass][i * batch_size:(i + 1) * batch_size]
      seeds = np.random.RandomState([self.seed, int(epoch), step, 29]).randint(
          0, 2 ** 31 - 1, size=len(pos), dtype=np.int64)
      lo, hi = process_index * per, (process_index + 1) * per
      images, labels = self._get(self._rows[pos[lo:hi]], train, seeds[lo:hi])
      images = np.asarray(images, np.float32).reshape((-1,) + self.image_shape)
      return {'image': images, 'label': np.asarray(labels, np.int32).reshape(-1)}

    if self.prefetch <= 0:
      return (produce(s) for s in range(steps))
    return _prefetched(produce, steps, self.prefetch)


def _prefetched(produce: Callable[[int], Batch], steps: int, depth: int) -> Iterator[Batch]:
  """``produce(0), ..., produce(steps - 1)`` computed in a background thread ``depth`` ahead.

  Errors in the thread re-raise in the consumer; closing (or dropping) the iterator stops it.
  """
  q: 'queue.Queue' = queue.Queue(maxsize=depth)
  stop = threading.Event()

  def put(item) -> bool:
    while not stop.is_set():
      try:
        q.put(item, timeout=0.1)
        return True
      except queue.Full:
        continue
    return False

  def worker():
    try:
      for s in range(steps):
        if stop.is_set() or not put(('ok', produce(s))):
          return
      put(('end', None))
    except BaseException as e:  # noqa: BLE001 - surfaced in the consumer thread
      put(('err', e))

  t = threading.Thread(target=worker, daemon=True, name='common.data.prefetch')

  def consume():
    t.start()
    try:
      while True:
        kind, item = q.get()
        if kind == 'end':
          return
        if kind == 'err':
          raise item
        yield item
    finally:
      stop.set()
      t.join(timeout=5.0)

  return consume()
