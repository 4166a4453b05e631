"""Host-side image augmentation matching the torchvision transforms of the papers' loaders.

Small images (CIFAR, digits) are augmented a whole batch at a time in vectorised NumPy; large
images (ImageNet, CUB) one at a time with PIL (bilinear resampling as torchvision applies to PIL
images), called from a thread pool. Random numbers come from per-example seeds (see
``pipeline.uniforms``) so that results do not depend on batch composition.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple, Union

import numpy as np

# AlexNet PCA lighting: eigenvalues / eigenvectors of ImageNet RGB covariance on [0, 1] pixels
# (fb.resnet.torch, used by ReCU's loader and slimmable_networks' "imagenet1k_mobile").
PCA_EIGVAL = np.array([0.2175, 0.0188, 0.0045], np.float64)
PCA_EIGVEC = np.array([[-0.5675, 0.7192, 0.4009],
                       [-0.5808, -0.0045, -0.8140],
                       [-0.5836, -0.6948, 0.4203]], np.float64)


def crop_flip(images: np.ndarray, u: np.ndarray, pad: int, flip: bool,
              pad_mode: str = 'constant') -> np.ndarray:
  """torchvision ``RandomCrop(size, padding=pad)`` (+ ``RandomHorizontalFlip``) on a batch.

  Args:
    images: ``[n, H, W, C]`` raw pixels (any dtype; pad before normalising so that zero padding
      is black, as torchvision pads the PIL image).
    u: ``[n, >=3]`` uniforms: column 0 / 1 pick the row / column offset in ``[0, 2 pad]``,
      column 2 < 0.5 flips.
    pad: padding on every side (CIFAR 4, LEC's CIFAR 8, digits 2).
    flip: apply the horizontal flip with p = 0.5.
    pad_mode: 'constant' (zeros: torchvision's default) or 'reflect' (FFSD's loader).
  Returns:
    ``[n, H, W, C]``, same dtype.
  """
  if pad_mode not in ('constant', 'reflect'):
    raise ValueError(f"pad_mode must be 'constant' or 'reflect'; got {pad_mode!r}")
  n, h, w, _ = images.shape
  if pad < 0:
    raise ValueError(f'pad must be >= 0; got {pad}')
  if pad:
    padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode=pad_mode)
    oy = np.minimum((u[:, 0] * (2 * pad + 1)).astype(np.int64), 2 * pad)
    ox = np.minimum((u[:, 1] * (2 * pad + 1)).astype(np.int64), 2 * pad)
    rows = oy[:, None] + np.arange(h)[None, :]
    cols = ox[:, None] + np.arange(w)[None, :]
    images = padded[np.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]
  if flip:
    images = np.where((u[:, 2] < 0.5)[:, None, None, None], images[:, :, ::-1], images)
  return images


def _pil():
  from PIL import Image
  return Image


def resize(img: np.ndarray, size: Union[int, Sequence[int]]) -> np.ndarray:
  """torchvision ``Resize(size)`` of a uint8 ``[H, W, 3]`` image with bilinear (PIL) resampling.

  ``size`` int: the shorter side becomes ``size`` and the longer ``int(size * long / short)``
  (torchvision's truncation); ``(h, w)``: exactly that size.
  """
  Image = _pil()
  h, w = img.shape[:2]
  if isinstance(size, (int, np.integer)):
    if h <= w:
      nh, nw = int(size), int(size * w / h)
    else:
      nh, nw = int(size * h / w), int(size)
  else:
    nh, nw = (int(s) for s in size)
  if (nh, nw) == (h, w):
    return img
  return np.asarray(Image.fromarray(img).resize((nw, nh), Image.BILINEAR))


def center_crop(img: np.ndarray, size: int) -> np.ndarray:
  """torchvision ``CenterCrop(size)`` (offsets ``int(round((H - size) / 2))``)."""
  h, w = img.shape[:2]
  if h < size or w < size:
    raise ValueError(f'image {h}x{w} smaller than the centre crop {size}')
  top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
  return img[top:top + size, left:left + size]


def random_resized_crop(img: np.ndarray, rng: np.random.RandomState, size: int,
                        scale: Tuple[float, float] = (0.08, 1.0),
                        ratio: Tuple[float, float] = (3 / 4, 4 / 3)) -> np.ndarray:
  """torchvision ``RandomResizedCrop(size, scale, ratio)`` of a uint8 ``[H, W, 3]`` image.

  Ten tries of (area fraction ~ U(scale), log aspect ~ U(log ratio)); the first box that fits is
  resized to ``size x size`` (bilinear); otherwise the central crop clamped to ``ratio``. A scale
  above 1 (1xN / ReCU use (0.08, 1.25)) only makes the fallback likelier, as in torchvision.
  """
  Image = _pil()
  h, w = img.shape[:2]
  area = h * w
  log_ratio = (np.log(ratio[0]), np.log(ratio[1]))
  for _ in range(10):
    target = area * rng.uniform(scale[0], scale[1])
    aspect = np.exp(rng.uniform(*log_ratio))
    cw = int(round(np.sqrt(target * aspect)))
    ch = int(round(np.sqrt(target / aspect)))
    if 0 < cw <= w and 0 < ch <= h:
      top = rng.randint(0, h - ch + 1)
      left = rng.randint(0, w - cw + 1)
      break
  else:
    in_ratio = w / h
    if in_ratio < min(ratio):
      cw, ch = w, int(round(w / min(ratio)))
    elif in_ratio > max(ratio):
      ch, cw = h, int(round(h * max(ratio)))
    else:
      cw, ch = w, h
    top, left = (h - ch) // 2, (w - cw) // 2
  crop = Image.fromarray(np.ascontiguousarray(img[top:top + ch, left:left + cw]))
  return np.asarray(crop.resize((size, size), Image.BILINEAR))


def random_crop(img: np.ndarray, rng: np.random.RandomState, size: int) -> np.ndarray:
  """torchvision ``RandomCrop(size)`` without padding (LEC's CUB loader after Resize(256, 256))."""
  h, w = img.shape[:2]
  if h < size or w < size:
    raise ValueError(f'image {h}x{w} smaller than the random crop {size}')
  top, left = rng.randint(0, h - size + 1), rng.randint(0, w - size + 1)
  return img[top:top + size, left:left + size]


def _grey(x: np.ndarray) -> np.ndarray:
  # PIL's RGB -> L conversion (ITU-R 601-2 luma), which ImageEnhance uses.
  return x[..., 0] * 0.299 + x[..., 1] * 0.587 + x[..., 2] * 0.114


def color_jitter(img: np.ndarray, rng: np.random.RandomState, brightness: float,
                 contrast: float, saturation: float) -> np.ndarray:
  """torchvision ``ColorJitter(brightness, contrast, saturation)`` on a uint8 ``[H, W, 3]`` image.

  Factors ~ U(max(0, 1 - v), 1 + v), the three operations in a random order, each a blend with a
  degenerate image as PIL's ImageEnhance does (black; the mean grey level; the grey image), rounded
  and clipped to uint8 after every step (slimmable_networks' "imagenet1k_mobile", which PSS-Net's code uses).
  """
  x = img.astype(np.float32)
  ops = rng.permutation(3)
  factors = [rng.uniform(max(0.0, 1 - v), 1 + v) if v > 0 else None
             for v in (brightness, contrast, saturation)]
  for op in ops:
    f = factors[op]
    if f is None:
      continue
    if op == 0:
      degenerate = 0.0
    elif op == 1:
      degenerate = float(int(np.round(_grey(x)).mean() + 0.5))
    else:
      degenerate = np.round(_grey(x))[..., None]
    x = np.clip(np.round(degenerate + f * (x - degenerate)), 0, 255)
  return x.astype(np.uint8)


def lighting(img: np.ndarray, rng: np.random.RandomState, alphastd: float) -> np.ndarray:
  """AlexNet PCA lighting noise on a float ``[H, W, 3]`` image in [0, 1] (ReCU's ``Lighting``).

  ``img + eigvec @ (alpha * eigval)`` with ``alpha ~ N(0, alphastd^2)`` per channel, no clipping
  (the tensor version of fb.resnet.torch that ReCU's loader applies before normalising).
  """
  alpha = rng.normal(0.0, alphastd, 3)
  return img + (PCA_EIGVEC @ (alpha * PCA_EIGVAL)).astype(img.dtype)


def to_rgb(img) -> np.ndarray:
  """A uint8 ``[H, W, 3]`` array from encoded JPEG/PNG bytes or a decoded array (grey, RGBA and
  CMYK inputs converted as PIL's ``convert('RGB')`` does)."""
  if isinstance(img, (bytes, bytearray, np.bytes_, memoryview)):
    import io
    Image = _pil()
    with Image.open(io.BytesIO(bytes(img))) as im:
      return np.asarray(im.convert('RGB'))
  img = np.asarray(img)
  if img.ndim == 2:
    img = img[..., None]
  if img.shape[-1] == 1:
    img = np.repeat(img, 3, -1)
  elif img.shape[-1] == 4:
    img = img[..., :3]
  return img


def imagenet_train(img: np.ndarray, rng: np.random.RandomState, *, size: int = 224,
                   crop: str = 'resized', scale: Tuple[float, float] = (0.08, 1.0),
                   pre_resize: Optional[Union[int, Sequence[int]]] = None,
                   jitter: float = 0.0, alphastd: float = 0.0, flip: bool = True) -> np.ndarray:
  """The training transform of an ImageNet-style loader -> float32 ``[size, size, 3]`` in [0, 1].

  ``[Resize(pre_resize)] -> RandomResizedCrop(size, scale) | RandomCrop(size) -> [ColorJitter]
  -> [RandomHorizontalFlip] -> ToTensor -> [Lighting]`` (flip and lighting commute). Defaults:
  the torchvision ImageNet recipe of the DCFF / 1xN / White-Box / Jackpot code
  (``RandomResizedCrop(224)`` + flip); ReCU / 1xN pass ``scale=(0.08, 1.25)``, ReCU
  ``alphastd=0.1``; PSS-Net ``scale=(0.25, 1), jitter=0.4, alphastd=0.1``; CEC's CUB loader
  ``pre_resize=256``; LEC's ``pre_resize=(256, 256), crop='plain'``.
  """
  if pre_resize:
    img = resize(img, pre_resize)
  if crop == 'resized':
    img = random_resized_crop(img, rng, size, scale=scale)
  elif crop == 'plain':
    img = random_crop(img, rng, size)
  else:
    raise ValueError(f"crop must be 'resized' or 'plain'; got {crop!r}")
  if jitter:
    img = color_jitter(img, rng, jitter, jitter, jitter)
  if flip and rng.rand() < 0.5:
    img = img[:, ::-1]
  x = img.astype(np.float32) / 255.0
  if alphastd:
    x = lighting(x, rng, alphastd)
  return x


def imagenet_eval(img: np.ndarray, *, size: int = 224,
                  resize_to: Union[int, Sequence[int]] = 256) -> np.ndarray:
  """``Resize(resize_to) -> CenterCrop(size) -> ToTensor`` -> float32 ``[size, size, 3]`` in [0, 1].

  ``resize_to`` int resizes the shorter side (256 for 224 crops, torchvision's ImageNet validation
  transform); ``(h, w)``
  resizes to exactly that (LEC's CUB test uses ``(224, 224)``, i.e. no crop).
  """
  img = center_crop(resize(img, resize_to), size)
  return img.astype(np.float32) / 255.0
