"""In-memory and random-access datasets with deterministic, per-host-sharded batching.

A :class:`Dataset` yields ``{'image': float32 [B, H, W, C], 'label': int32 [B]}`` batches. The order
of epoch ``e`` is a pure function of ``(seed, e)``, so a run resumed at an epoch boundary sees the
same batches as an uninterrupted one. With ``process_count = P`` each process receives rows
``[p * B/P, (p+1) * B/P)`` of every global batch (disjoint slices, the same number of batches on
every process, possibly short or empty slices of the last eval batch).

Augmentation runs on the host in vectorised NumPy (CIFAR-sized data) or per image (ImageNet-sized
data, decoded lazily); a background thread keeps ``prefetch`` batches ready.
"""
from __future__ import annotations

import queue
import threading
from typing import Callable, Dict, Iterator, Optional, Sequence

import numpy as np

Batch = Dict[str, np.ndarray]

# (mean, std) per channel, on images scaled to [0, 1].
NORMALIZATIONS = {
    # DCFF / 1xN / White-Box / Jackpot CIFAR loaders (shared spec §0.4).
    'cifar': ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    # ImageNet statistics (ImageNet loaders; ReCU / SiMaN use them on CIFAR too).
    'imagenet': ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    'none': ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),
}


def normalization(name: str):
  """``(mean [3], std [3])`` arrays of a named normalisation; ValueError lists the names."""
  if name not in NORMALIZATIONS:
    raise ValueError(f'unknown normalization {name!r}; allowed: {sorted(NORMALIZATIONS)}')
  mean, std = NORMALIZATIONS[name]
  return np.asarray(mean, np.float32), np.asarray(std, np.float32)


def random_crop_flip(images: np.ndarray, rng: np.random.RandomState, pad: int, flip: bool):
  """Zero-pad by ``pad``, random crop back to size, random horizontal flip (p = 0.5).

  ``images [B, H, W, C]`` (any dtype) -> same shape; one crop offset and flip per image, the
  torchvision ``RandomCrop(padding=pad)`` + ``RandomHorizontalFlip`` pair.
  """
  b, h, w, _ = images.shape
  if pad:
    padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    oy = rng.randint(0, 2 * pad + 1, b)
    ox = rng.randint(0, 2 * pad + 1, b)
    rows = oy[:, None] + np.arange(h)[None, :]
    cols = ox[:, None] + np.arange(w)[None, :]
    images = padded[np.arange(b)[:, None, None], rows[:, :, None], cols[:, None, :]]
  if flip:
    do = rng.rand(b) < 0.5
    images = np.where(do[:, None, None, None], images[:, :, ::-1], images)
  return images


class Dataset:
  """A split of a data set: random access to examples plus deterministic batching.

  Args:
    name: data set name (for messages).
    num_examples: size of the split.
    num_classes: label count.
    image_shape: ``(H, W, C)`` of the produced images.
    get: ``get(indices, train, rng) -> (images float32 [n, H, W, C] normalised, labels int [n])``.
    seed: data-order seed.
    prefetch: batches prepared ahead in a background thread (0 = synchronous).
  """

  def __init__(self, name: str, num_examples: int, num_classes: int, image_shape: Sequence[int],
               get: Callable, seed: int = 0, prefetch: int = 2):
    self.name = name
    self.num_examples = int(num_examples)
    self.num_classes = int(num_classes)
    self.image_shape = tuple(int(s) for s in image_shape)
    self._get = get
    self.seed = int(seed)
    self.prefetch = int(prefetch)

  def steps_per_epoch(self, batch_size: int, drop_remainder: bool = True) -> int:
    """Number of global batches per epoch."""
    if batch_size <= 0:
      raise ValueError(f'batch_size must be positive; got {batch_size}')
    if drop_remainder:
      return self.num_examples // batch_size
    return -(-self.num_examples // batch_size)

  def batches(self, batch_size: int, *, epoch: int, train: bool, drop_remainder: bool = True,
              process_index: int = 0, process_count: int = 1) -> Iterator[Batch]:
    """Yields this process's slice of every global batch of ``epoch``.

    ``train=True`` shuffles with ``(seed, epoch)`` and augments; ``train=False`` keeps the stored
    order and does neither.
    """
    if batch_size <= 0 or batch_size % process_count:
      raise ValueError(f'batch_size={batch_size} must be a positive multiple of process_count='
                       f'{process_count}')
    if not 0 <= process_index < process_count:
      raise ValueError(f'process_index={process_index} not in [0, {process_count})')
    order = (np.random.RandomState([self.seed, epoch, 17]).permutation(self.num_examples)
             if train else np.arange(self.num_examples))
    steps = self.steps_per_epoch(batch_size, drop_remainder)
    per = batch_size // process_count

    def produce(step: int) -> Batch:
      idx = order[step * batch_size:(step + 1) * batch_size]
      idx = idx[process_index * per:(process_index + 1) * per]
      rng = np.random.RandomState([self.seed, epoch, step, process_index, 29])
      images, labels = self._get(idx, train, rng)
      return {'image': np.asarray(images, np.float32), 'label': np.asarray(labels, np.int32)}

    if self.prefetch <= 0:
      for s in range(steps):
        yield produce(s)
      return
    yield from _prefetched(produce, steps, self.prefetch)


def _prefetched(produce: Callable[[int], Batch], steps: int, depth: int) -> Iterator[Batch]:
  """Runs ``produce(0..steps-1)`` in a background thread, ``depth`` batches ahead, in order."""
  q: 'queue.Queue' = queue.Queue(maxsize=depth)
  stop = threading.Event()

  def worker():
    try:
      for s in range(steps):
        if stop.is_set():
          return
        q.put(('ok', produce(s)))
      q.put(('end', None))
    except BaseException as e:  # surfaced in the consumer thread
      q.put(('err', e))

  t = threading.Thread(target=worker, daemon=True)
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
    while not q.empty():
      q.get_nowait()
