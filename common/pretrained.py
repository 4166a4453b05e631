"""Pretrained weights: converted-weights files, PyTorch / safetensors readers, BN recalibration.

Three parts:

* **Our files.** :func:`load_pretrained` reads ``{'params', 'batch_stats'}`` from a ``common.train``
  workdir, a ``.npz`` written by :func:`save_variables_npz` or a flax ``.msgpack``.
* **PyTorch weights without torch.** :func:`read_state_dict` reads a torch checkpoint
  (``.pth`` / ``.pt``: torch's zip format, ``<archive>/data.pkl`` + ``<archive>/data/<key>``
  storages, unpickled by a restricted unpickler that only rebuilds tensors, see
  :class:`TorchUnpickler`) or a ``.safetensors`` file (8-byte header length, JSON header, raw
  bytes), unwraps ``{'state_dict': ...}``-style dicts and DataParallel's ``module.`` prefix, and
  returns ``{torch key: numpy array}``. :func:`convert_state_dict` maps such a dict onto one of our
  zoo models through a per-family name map (:data:`LAYOUTS`) and the layout rules of
  :func:`to_flax_leaf`: conv ``OIHW -> HWIO``, Linear ``[out, in] -> [in, out]``, BN ``weight /
  bias -> params scale / bias`` and ``running_mean / running_var -> batch_stats mean / var``,
  ``num_batches_tracked`` dropped. ``python -m common.convert`` is the command line.
* **BN recalibration.** :func:`recalibrate_batch_stats` (stacked batches, one jitted scan) and
  :func:`recalibrate_batch_stats_iter` (any iterable of batches) replace the BN running statistics
  by the exact average of per-batch moments of a train-mode forward.

Eval-mode equivalence: PyTorch stores the *unbiased* running variance and Flax the biased batch
variance, but both normalise with ``(x - mean) / sqrt(var + eps)`` at eval time, so the stored
running variance is copied unchanged and the converted model's eval forward equals PyTorch's
``model.eval()`` forward (measured in ``tests/common/test_pretrained.py``).

Adding a layout: write ``name_map(params) -> {our module path: torch module prefix}`` for the
family (``params`` is the target params tree of shapes, so a map can depend on block structure,
as MobileNet-V2's does) and register it with :func:`register_layout` for the zoo names it covers.
The conversion rules then apply unchanged. The maps FDDA needs (its MobileNet-V1 and
RegNetX-600MF checkpoints) are written the same way, against the key list of the checkpoint
itself: ``python -m common.convert`` prints every unmatched key on both sides.
"""
from __future__ import annotations

import dataclasses
import functools
import io
import json
import os
import pickle
import re
import struct
import zipfile
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import serialization, traverse_util

from common import train

ModulePath = Tuple[str, ...]
StateDict = Dict[str, np.ndarray]

# ---------------------------------------------------------------------------------------------
# Our converted-weights files


def load_pretrained(path: str) -> Dict[str, Any]:
  """``{'params', 'batch_stats'}`` from a ``common.train`` workdir or a converted-weights file.

  Files: ``.npz`` with keys ``params/<module path>/<leaf>`` and ``batch_stats/...`` ('/'-joined
  tree paths, what :func:`save_variables_npz` and ``python -m common.convert`` write), or a flax
  ``.msgpack`` of ``{'params': ..., 'batch_stats': ...}``.

  Raises:
    common.train.UserError: empty path, missing file, unknown extension, or a file without a
      'params' tree.
  """
  if not path:
    raise train.UserError(
        'no pretrained model given: set --config.init_checkpoint to a finished common.train '
        'workdir or to a converted-weights .npz/.msgpack file (python -m common.convert writes '
        'one from a PyTorch or safetensors checkpoint)')
  if os.path.isdir(path):
    return train.load_variables(path)
  if not os.path.exists(path):
    raise train.UserError(f'init_checkpoint {path!r} does not exist')
  if path.endswith('.npz'):
    with np.load(path) as f:
      flat = {tuple(k.split('/')): jnp.asarray(f[k]) for k in f.files}
    tree = traverse_util.unflatten_dict(flat)
  elif path.endswith('.msgpack'):
    with open(path, 'rb') as f:
      tree = serialization.msgpack_restore(f.read())
  elif path.endswith(('.pth', '.pt', '.safetensors')):
    raise train.UserError(f'init_checkpoint {path!r} is a PyTorch/safetensors file: convert it '
                          f'first with `python -m common.convert --checkpoint={path} '
                          f'--model=NAME --out=FILE.npz`')
  else:
    raise train.UserError(f'init_checkpoint {path!r}: expected a workdir, .npz or .msgpack')
  if 'params' not in tree:
    raise train.UserError(f'{path!r} holds no "params" tree (top-level keys: {sorted(tree)})')
  return {'params': tree['params'], 'batch_stats': tree.get('batch_stats', {})}


def save_variables_npz(path: str, variables: Mapping[str, Any]) -> None:
  """Writes ``{'params', 'batch_stats'}`` in the ``.npz`` layout :func:`load_pretrained` reads."""
  flat = traverse_util.flatten_dict({k: variables[k] for k in ('params', 'batch_stats')
                                     if k in variables})
  np.savez(path, **{'/'.join(k): np.asarray(v) for k, v in flat.items()})


# ---------------------------------------------------------------------------------------------
# Reading PyTorch and safetensors files (no torch needed)

# torch storage class -> numpy dtype (torch/storage.py: the legacy typed storages that
# torch.serialization writes as the persistent id's storage type).
_TORCH_STORAGES = {
    'DoubleStorage': np.float64, 'FloatStorage': np.float32, 'HalfStorage': np.float16,
    'BFloat16Storage': 'bfloat16', 'LongStorage': np.int64, 'IntStorage': np.int32,
    'ShortStorage': np.int16, 'CharStorage': np.int8, 'ByteStorage': np.uint8,
    'BoolStorage': np.bool_,
}
# safetensors dtype codes (safetensors README, "Format").
_SAFETENSORS_DTYPES = {
    'F64': np.float64, 'F32': np.float32, 'F16': np.float16, 'BF16': 'bfloat16',
    'I64': np.int64, 'I32': np.int32, 'I16': np.int16, 'I8': np.int8, 'U8': np.uint8,
    'BOOL': np.bool_,
}
# Keys under which training scripts nest the state dict, tried in this order.
NESTED_KEYS = ('state_dict', 'model_state_dict', 'model', 'net', 'network')
# Per-module buffers PyTorch saves that have no counterpart in our variables.
DROPPED_SUFFIXES = ('num_batches_tracked',)


def _np_dtype(d):
  if d == 'bfloat16':
    import ml_dtypes   # a jax dependency
    return np.dtype(ml_dtypes.bfloat16)
  return np.dtype(d)


class _Storage:
  """A torch storage read from the archive: raw bytes viewed as a 1-D array of its dtype."""

  def __init__(self, data: np.ndarray):
    self.data = data


def _rebuild_tensor(storage, storage_offset, size, stride, *_unused):
  """``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks[,
  metadata])`` as a numpy array (a copy, so it outlives the zip buffer)."""
  if not isinstance(storage, _Storage):
    raise pickle.UnpicklingError(f'tensor rebuilt from {type(storage).__name__}, not a storage')
  data = storage.data
  size, stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)
  if not size:
    return np.array(data[storage_offset])
  extent = storage_offset + sum((n - 1) * s for n, s in zip(size, stride)) + 1
  if any(n == 0 for n in size):
    return np.zeros(size, data.dtype)
  if extent > data.size or storage_offset < 0:
    raise pickle.UnpicklingError(f'tensor of size {size} / stride {stride} at offset '
                                 f'{storage_offset} overruns its storage of {data.size} elements')
  view = np.lib.stride_tricks.as_strided(data[storage_offset:], size,
                                         tuple(s * data.itemsize for s in stride))
  return np.array(view)


def _rebuild_parameter(data, *_unused):
  """``torch._utils._rebuild_parameter(data, requires_grad, hooks[, state])``: the data."""
  return data


class TorchUnpickler(pickle.Unpickler):
  """Unpickles torch's ``data.pkl`` allowing only what a state dict needs.

  Allowed globals: ``collections.OrderedDict``, ``torch._utils._rebuild_tensor_v2`` /
  ``_rebuild_tensor`` / ``_rebuild_parameter`` (mapped to numpy builders) and the typed storage
  classes ``torch.<Dtype>Storage`` (persistent ids ``('storage', cls, key, location, numel)``,
  torch/serialization.py ``_load.persistent_load``). Anything else (a pickled module, an
  optimizer class, ``argparse.Namespace``, ...) raises :class:`pickle.UnpicklingError` naming the
  global, since unpickling arbitrary globals can run arbitrary code.

  Args:
    data: the ``data.pkl`` bytes; ``read_storage(key) -> bytes`` returns ``<archive>/data/<key>``;
    big_endian: the archive's ``byteorder`` record says ``big``.
  """

  _FUNCS = {('torch._utils', '_rebuild_tensor_v2'): _rebuild_tensor,
            ('torch._utils', '_rebuild_tensor'): _rebuild_tensor,
            ('torch._utils', '_rebuild_parameter'): _rebuild_parameter,
            ('torch._utils', '_rebuild_parameter_with_state'): _rebuild_parameter}

  def __init__(self, data: bytes, read_storage: Callable[[str], bytes], big_endian: bool = False):
    super().__init__(io.BytesIO(data))
    self._read_storage = read_storage
    self._big_endian = big_endian
    self._storages: Dict[str, _Storage] = {}

  def find_class(self, module, name):
    if (module, name) == ('collections', 'OrderedDict'):
      import collections
      return collections.OrderedDict
    if (module, name) in self._FUNCS:
      return self._FUNCS[(module, name)]
    if module == 'torch' and name in _TORCH_STORAGES:
      return ('storage_type', name)
    raise pickle.UnpicklingError(
        f'checkpoint needs global {module}.{name}, which is not allowed (only tensors, dicts, '
        f'lists and numbers can be read without torch); re-save just the state dict with '
        f'torch.save(model.state_dict(), path)')

  def persistent_load(self, pid):
    if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == 'storage'
            and isinstance(pid[1], tuple) and pid[1][0] == 'storage_type'):
      raise pickle.UnpicklingError(f'unsupported persistent id {pid!r} (expected a typed torch '
                                   f'storage)')
    _, (_, type_name), key, _location, _numel = pid
    key = str(key)
    if key not in self._storages:
      dtype = _np_dtype(_TORCH_STORAGES[type_name])
      if self._big_endian:
        dtype = dtype.newbyteorder('>')
      arr = np.frombuffer(self._read_storage(key), dtype)
      self._storages[key] = _Storage(arr.astype(arr.dtype.newbyteorder('='))
                                     if self._big_endian else arr)
    return self._storages[key]


def read_torch_file(path: str) -> Any:
  """The object ``torch.save`` wrote to ``path`` (zip format, torch >= 1.6), tensors as numpy.

  Raises:
    ValueError: not a zip archive (the legacy pre-1.6 format or not a torch file), no
      ``data.pkl`` record, or a pickled global other than tensors (see :class:`TorchUnpickler`).
  """
  if not zipfile.is_zipfile(path):
    raise ValueError(f'{path!r} is not a torch zip checkpoint (torch >= 1.6 torch.save format); '
                     f'legacy files: re-save with torch.save(obj, path) in torch >= 1.6')
  with zipfile.ZipFile(path) as z:
    names = z.namelist()
    pkl = [n for n in names if n == 'data.pkl' or n.endswith('/data.pkl')]
    if len(pkl) != 1:
      raise ValueError(f'{path!r}: expected one <archive>/data.pkl record in the zip; found '
                       f'{pkl or "none"}')
    prefix = pkl[0][:-len('data.pkl')]
    byteorder = prefix + 'byteorder'
    big = byteorder in names and z.read(byteorder).strip() == b'big'
    try:
      return TorchUnpickler(z.read(pkl[0]), lambda k: z.read(f'{prefix}data/{k}'), big).load()
    except (pickle.UnpicklingError, KeyError, EOFError, TypeError, ValueError, AttributeError,
            IndexError) as e:
      raise ValueError(f'{path!r}: cannot read the checkpoint: {e}') from e


def read_safetensors(path: str) -> StateDict:
  """``{name: array}`` of a ``.safetensors`` file.

  Format (huggingface/safetensors README): little-endian u64 ``N``, an ``N``-byte JSON header
  ``{name: {'dtype', 'shape', 'data_offsets': [begin, end]}, '__metadata__': {...}}`` and the
  little-endian tensor bytes, offsets relative to the end of the header.

  Raises:
    ValueError: truncated file, bad header, unknown dtype or offsets outside the data.
  """
  with open(path, 'rb') as f:
    raw = f.read()
  if len(raw) < 8:
    raise ValueError(f'{path!r} is not a safetensors file (shorter than its 8-byte header length)')
  (n,) = struct.unpack('<Q', raw[:8])
  if 8 + n > len(raw):
    raise ValueError(f'{path!r}: header length {n} exceeds the file size {len(raw)}')
  try:
    header = json.loads(raw[8:8 + n])
  except ValueError as e:
    raise ValueError(f'{path!r}: safetensors header is not JSON: {e}') from e
  if not isinstance(header, dict):
    raise ValueError(f'{path!r}: safetensors header is not a JSON object')
  data = memoryview(raw)[8 + n:]
  out = {}
  for name, info in header.items():
    if name == '__metadata__':
      continue
    try:
      code, shape, (begin, end) = info['dtype'], tuple(info['shape']), info['data_offsets']
    except (KeyError, TypeError, ValueError) as e:
      raise ValueError(f'{path!r}: bad header entry {name!r}: {info!r}') from e
    if code not in _SAFETENSORS_DTYPES:
      raise ValueError(f'{path!r}: tensor {name!r} has dtype {code!r}; supported: '
                       f'{sorted(_SAFETENSORS_DTYPES)}')
    dtype = _np_dtype(_SAFETENSORS_DTYPES[code]).newbyteorder('<')
    if not 0 <= begin <= end <= len(data) or end - begin != dtype.itemsize * int(np.prod(shape)):
      raise ValueError(f'{path!r}: tensor {name!r} offsets {[begin, end]} do not fit shape '
                       f'{list(shape)} of {code} in {len(data)} data bytes')
    arr = np.frombuffer(data[begin:end], dtype).reshape(shape)
    out[name] = arr.astype(arr.dtype.newbyteorder('='))
  return out


def find_state_dict(obj: Any, where: str = 'checkpoint') -> StateDict:
  """The ``{key: array}`` state dict inside a loaded checkpoint, ``module.`` prefixes removed.

  Accepts the state dict itself or a dict nesting it under one of :data:`NESTED_KEYS`
  (``{'state_dict': ..., 'epoch': ...}`` as most training scripts save), recursively; keys all
  starting with ``module.`` (``nn.DataParallel`` / DDP) lose that prefix.

  Raises:
    ValueError: no state dict found (the message lists the top-level keys).
  """
  if not isinstance(obj, Mapping):
    raise ValueError(f'{where} holds a {type(obj).__name__}, not a dict of tensors')
  tensors = {k: v for k, v in obj.items() if isinstance(v, np.ndarray)}
  if tensors and len(tensors) == len(obj):
    sd = {str(k): v for k, v in tensors.items()}
    while sd and all(k.startswith('module.') for k in sd):
      sd = {k[len('module.'):]: v for k, v in sd.items()}
    return sd
  for key in NESTED_KEYS:
    if isinstance(obj.get(key), Mapping):
      return find_state_dict(obj[key], f'{where}[{key!r}]')
  raise ValueError(f'{where} is not a state dict and nests none under {list(NESTED_KEYS)}; its '
                   f'keys: {sorted(map(str, obj))[:20]}')


def read_state_dict(path: str) -> StateDict:
  """``{torch key: numpy array}`` of a torch (``.pth``/``.pt``/``.bin``) or ``.safetensors`` file.

  The format is told by content (a zip archive is torch's format) with the extension as the
  fallback, so a ``.bin`` torch file also reads.

  Raises:
    ValueError: missing or unreadable file, unknown format, or no state dict inside.
  """
  if not os.path.isfile(path):
    raise ValueError(f'checkpoint {path!r} does not exist or is not a file')
  if zipfile.is_zipfile(path):
    return find_state_dict(read_torch_file(path), repr(path))
  if path.endswith('.safetensors'):
    return read_safetensors(path)
  if path.endswith(('.pth', '.pt', '.bin', '.ckpt', '.tar')):
    return find_state_dict(read_torch_file(path), repr(path))   # raises the legacy-format error
  raise ValueError(f'checkpoint {path!r}: unknown format; expected a torch zip checkpoint '
                   f'(.pth/.pt) or a .safetensors file')


# ---------------------------------------------------------------------------------------------
# Per-family name maps


@dataclasses.dataclass(frozen=True)
class Layout:
  """How one family's PyTorch checkpoints name our modules.

  ``name_map(params) -> {our module path: torch module prefix}``, ``params`` being the target
  params tree (any leaves with ``.shape``); every module of ``params`` must be mapped.
  ``source`` names the PyTorch code whose keys the map follows.
  """
  name: str
  source: str
  name_map: Callable[[Mapping], Dict[ModulePath, str]]


LAYOUTS: Dict[str, Layout] = {}


def register_layout(models: Iterable[str], layout: Layout) -> Layout:
  """Registers ``layout`` for the zoo model names ``models`` (a name maps to one layout)."""
  for m in models:
    if m in LAYOUTS and LAYOUTS[m] is not layout:
      raise ValueError(f'model {m!r} already has layout {LAYOUTS[m].name!r}')
    LAYOUTS[m] = layout
  return layout


def module_paths(params: Mapping) -> List[ModulePath]:
  """Module paths (leaf paths minus the leaf name) of a params tree, in tree order."""
  seen: Dict[ModulePath, None] = {}
  for k in traverse_util.flatten_dict(params):
    seen.setdefault(tuple(k[:-1]), None)
  return list(seen)


def torchvision_resnet_names(params: Mapping) -> Dict[ModulePath, str]:
  """``common.models.resnet`` -> torchvision ``resnet.py`` keys.

  ``conv1, bn1, fc`` keep their names; ``layer{s}_{b}/{conv1..3, bn1..3}`` ->
  ``layer{s}.{b}.{conv1..3, bn1..3}``; ``downsample_conv / downsample_bn`` -> ``downsample.0 /
  downsample.1`` (torchvision's ``nn.Sequential(conv1x1, norm_layer)``).
  """
  sub = {'downsample_conv': 'downsample.0', 'downsample_bn': 'downsample.1'}
  out = {}
  for p in module_paths(params):
    m = re.fullmatch(r'layer(\d+)_(\d+)', p[0])
    if m and len(p) == 2:
      out[p] = f'layer{m.group(1)}.{m.group(2)}.{sub.get(p[1], p[1])}'
    elif len(p) == 1:
      out[p] = p[0]
  return out


def torchvision_mobilenet_v2_names(params: Mapping) -> Dict[ModulePath, str]:
  """``common.models.mobilenet_v2`` (ImageNet variant) -> torchvision ``mobilenetv2.py`` keys.

  torchvision: ``features.0 = Conv2dNormActivation(conv, bn)`` (stem), ``features.{i+1}`` =
  block ``i`` with ``conv = [Conv2dNormActivation(expand) if t != 1, Conv2dNormActivation(dw),
  project conv, project bn]``, ``features.{n+1}`` = the final 1x1 ``(conv, bn)``, ``classifier =
  [Dropout, Linear]``. So a block with an expansion conv maps ``expand_conv/bn -> conv.0.0/1``,
  ``dw_conv/bn -> conv.1.0/1``, ``project_conv/bn -> conv.2/3``; block 0 (t = 1) maps
  ``dw_conv/bn -> conv.0.0/1``, ``project_conv/bn -> conv.1/2``.
  """
  blocks = sorted(int(k[len('block'):]) for k in params if re.fullmatch(r'block\d+', k))
  n = len(blocks)
  out = {('conv1',): 'features.0.0', ('bn1',): 'features.0.1',
         ('conv_last',): f'features.{n + 1}.0', ('bn_last',): f'features.{n + 1}.1',
         ('fc',): 'classifier.1'}
  for i in blocks:
    names = ['dw_conv', 'dw_bn']
    if 'expand_conv' in params[f'block{i}']:
      names = ['expand_conv', 'expand_bn'] + names
    seq = [f'{j // 2}.{j % 2}' for j in range(len(names))] + [str(len(names) // 2),
                                                               str(len(names) // 2 + 1)]
    for name, torch_name in zip(names + ['project_conv', 'project_bn'], seq):
      out[(f'block{i}', name)] = f'features.{i + 1}.conv.{torch_name}'
  return out


register_layout(('resnet18', 'resnet34', 'resnet50'),
                Layout('torchvision_resnet', 'torchvision/models/resnet.py: ResNet',
                       torchvision_resnet_names))
register_layout(('mobilenet_v2',),
                Layout('torchvision_mobilenet_v2', 'torchvision/models/mobilenetv2.py: MobileNetV2',
                       torchvision_mobilenet_v2_names))


# ---------------------------------------------------------------------------------------------
# Conversion

# our leaf name -> torch parameter / buffer name (collection, leaf) -> suffix
_LEAF_NAMES = {('params', 'kernel'): 'weight', ('params', 'bias'): 'bias',
               ('params', 'scale'): 'weight', ('batch_stats', 'mean'): 'running_mean',
               ('batch_stats', 'var'): 'running_var'}


def to_flax_leaf(leaf: str, value: np.ndarray, target_shape: Tuple[int, ...]) -> np.ndarray:
  """One PyTorch tensor in our layout.

  ``kernel``: conv ``[O, I/groups, kh, kw] -> [kh, kw, I/groups, O]`` (HWIO; a depthwise
  ``[C, 1, k, k]`` becomes ``[k, k, 1, C]``), Linear ``[out, in] -> [in, out]``; a Linear loaded
  into a 1x1-conv classifier (``[1, 1, in, out]``) or a 1x1 conv into a Dense is reshaped. Other
  leaves (BN weight / bias / running stats, biases) are copied. Returns float32 for floating
  inputs; the shape may still differ from ``target_shape`` (the caller reports it).
  """
  v = np.asarray(value)
  if np.issubdtype(v.dtype, np.floating) or v.dtype.name == 'bfloat16':
    v = v.astype(np.float32)
  if leaf == 'kernel':
    if v.ndim == 4:
      v = v.transpose(2, 3, 1, 0)
    elif v.ndim == 2:
      v = v.T
    squeeze = lambda s: tuple(d for d in s[:-2] if d != 1) + tuple(s[-2:])
    if v.shape != tuple(target_shape) and squeeze(v.shape) == squeeze(tuple(target_shape)):
      v = v.reshape(target_shape)
  return v


class ConversionError(ValueError):
  """Keys of the target model missing from, or mis-shaped in, the checkpoint (``report``)."""

  def __init__(self, message: str, report: Dict[str, Any]):
    super().__init__(message)
    self.report = report


def target_shapes(model_name: str, num_classes: int, widths=None,
                  model_kwargs: Optional[Mapping] = None) -> Dict[str, Any]:
  """``{'params', 'batch_stats'}`` of ``ShapeDtypeStruct`` leaves of a zoo model (no compute)."""
  from common import models
  model = models.get_model(model_name, num_classes, widths, **dict(model_kwargs or {}))
  x = jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32)
  shapes = jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x, train=False), x)
  return {'params': shapes['params'], 'batch_stats': shapes.get('batch_stats', {})}


def infer_num_classes(state_dict: Mapping[str, np.ndarray], model_name: str, widths=None,
                      model_kwargs: Optional[Mapping] = None) -> int:
  """The classifier's output count read from the checkpoint (the ``fc`` module's torch weight)."""
  layout = layout_of(model_name)
  probe = target_shapes(model_name, 1, widths, model_kwargs)['params']
  key = layout.name_map(probe)[('fc',)] + '.weight'
  if key not in state_dict:
    raise ConversionError(f'checkpoint has no classifier weight {key!r} ({layout.name} layout); '
                          f'pass num_classes explicitly', {'missing': [key]})
  return int(state_dict[key].shape[0])


def layout_of(model_name: str) -> Layout:
  """The registered :class:`Layout` of a zoo model name (ValueError listing those that have one)."""
  if model_name not in LAYOUTS:
    raise ValueError(f'no PyTorch name map for model {model_name!r}; models with one: '
                     f'{sorted(LAYOUTS)} (add one with common.pretrained.register_layout)')
  return LAYOUTS[model_name]


def convert_state_dict(state_dict: Mapping[str, np.ndarray], model_name: str, *,
                       num_classes: Optional[int] = None, widths=None,
                       model_kwargs: Optional[Mapping] = None
                       ) -> Tuple[Dict[str, Any], Dict[str, Any]]:
  """Maps a PyTorch state dict onto zoo model ``model_name``.

  Args:
    state_dict: ``{torch key: array}`` (:func:`read_state_dict`), in the family's PyTorch layout.
    model_name: a zoo name with a registered layout (:data:`LAYOUTS`).
    num_classes: classifier outputs; None reads it from the checkpoint's classifier weight.
    widths, model_kwargs: the zoo model's width config and options (e.g. ``classifier_as_conv``);
      None widths = the default (torchvision) widths.
  Returns:
    ``(variables, report)``: ``variables = {'params', 'batch_stats'}`` of float32 numpy arrays
    shaped like ``model.init``'s; ``report = {'layout', 'source', 'matched': [our path <-
    torch key], 'missing': [torch keys], 'mismatched': [(torch key, torch shape, converted
    shape, wanted shape)], 'unexpected': [torch keys], 'dropped': [torch keys]}``.
  Raises:
    ValueError: unknown model or no layout for it.
    ConversionError: missing or mis-shaped keys (listed in the message and ``.report``).
  """
  layout = layout_of(model_name)
  if num_classes is None:
    num_classes = infer_num_classes(state_dict, model_name, widths, model_kwargs)
  shapes = target_shapes(model_name, num_classes, widths, model_kwargs)
  names = layout.name_map(shapes['params'])
  flat = {(col,) + k: v for col in ('params', 'batch_stats')
          for k, v in traverse_util.flatten_dict(shapes[col]).items()}
  out: Dict[Tuple[str, ...], np.ndarray] = {}
  matched, missing, mismatched, used = [], [], [], set()
  for key, want in flat.items():
    col, mod, leaf = key[0], tuple(key[1:-1]), key[-1]
    if mod not in names or (col, leaf) not in _LEAF_NAMES:
      raise ValueError(f'layout {layout.name!r} does not map {"/".join(key)}')
    tkey = f'{names[mod]}.{_LEAF_NAMES[(col, leaf)]}'
    if tkey not in state_dict:
      missing.append(tkey)
      continue
    used.add(tkey)
    v = to_flax_leaf(leaf, state_dict[tkey], tuple(want.shape))
    if v.shape != tuple(want.shape):
      mismatched.append((tkey, tuple(state_dict[tkey].shape), v.shape, tuple(want.shape)))
      continue
    out[key] = v.astype(want.dtype)
    matched.append(f'{"/".join(key)} <- {tkey}')
  rest = [k for k in state_dict if k not in used]
  dropped = [k for k in rest if k.rsplit('.', 1)[-1] in DROPPED_SUFFIXES]
  unexpected = [k for k in rest if k not in dropped]
  missing.sort(key=_natural_key)
  mismatched.sort(key=lambda m: _natural_key(m[0]))
  report = {'layout': layout.name, 'source': layout.source, 'matched': matched,
            'missing': missing, 'mismatched': mismatched, 'unexpected': unexpected,
            'dropped': dropped}
  if missing or mismatched:
    shown = 8
    more = lambda xs: f' and {len(xs) - shown} more' if len(xs) > shown else ''
    parts = []
    if missing:
      parts.append(f'{len(missing)} missing keys {missing[:shown]}{more(missing)}')
    if mismatched:
      parts.append(f'{len(mismatched)} mis-shaped keys ' + ', '.join(
          f'{k} (torch {list(s)} -> {list(c)}, model wants {list(w)})'
          for k, s, c, w in mismatched[:shown]) + more(mismatched))
    hint = (' (do the widths / model options match the checkpoint\'s?)' if mismatched else '')
    raise ConversionError(f'checkpoint does not fit {model_name} ({layout.name} layout): '
                          + '; '.join(parts) + hint + ' (full lists in .report)', report)
  variables = traverse_util.unflatten_dict(out)
  variables.setdefault('batch_stats', {})
  return variables, report


def _natural_key(key: str):
  """``'features.2.x' < 'features.11.x'``: digit runs compare as numbers."""
  return [int(t) if t.isdigit() else t for t in re.split(r'(\d+)', key)]


def load_torch_weights(path: str, model_name: str, **kwargs) -> Dict[str, Any]:
  """:func:`read_state_dict` + :func:`convert_state_dict`: ``{'params', 'batch_stats'}``."""
  return convert_state_dict(read_state_dict(path), model_name, **kwargs)[0]


# ---------------------------------------------------------------------------------------------
# BN recalibration


def batch_moments(forward_fn: Callable, params: Any, batch_stats: Any, batch: Any,
                  momentum: float) -> Any:
  """Per-BN-layer moments of one batch, read off the running-average update.

  ``forward_fn(params, batch_stats, batch) -> new batch_stats`` must run every BN layer in train
  mode (normalising with the batch's own statistics), which Flax follows with ``new = momentum *
  old + (1 - momentum) * moment``. Feeding ``old = 0`` (train mode never reads it) gives
  ``moment = new / (1 - momentum)`` exactly up to one rounding, with none of the cancellation of
  solving ``(new - momentum * old) / (1 - momentum)``.

  Returns:
    a tree like ``batch_stats``: ``mean [C]`` = the batch mean and ``var [C]`` = the biased batch
    variance of every BN layer's input over ``(B, H, W)``.
  """
  zeros = jax.tree.map(jnp.zeros_like, batch_stats)
  new = forward_fn(params, zeros, batch)
  return jax.tree.map(lambda n: n / (1.0 - momentum), new)


def recalibrate_batch_stats(forward_fn: Callable, params: Any, batch_stats: Any, batches: Any,
                            *, momentum: Optional[float] = None) -> Any:
  """BN running statistics = the exact average of per-batch moments over ``batches``.

  Used to re-estimate BN statistics after weights change without training (the re-estimation
  step of 1xN's quick experiment after pruning; PyTorch's ``momentum=None`` cumulative average
  over one pass). Jit-able as a whole (one ``lax.scan`` over the batches):
  ``jax.jit(functools.partial(recalibrate_batch_stats, forward_fn))(params, bs, batches)``.

  Args:
    forward_fn: ``forward_fn(params, batch_stats, batch) -> new batch_stats``, a train-mode
      forward, e.g. ``lambda p, s, x: model.apply({'params': p, 'batch_stats': s}, x, train=True,
      mutable=['batch_stats'])[1]['batch_stats']``.
    params: passed through to ``forward_fn`` (any pytree).
    batch_stats: the current statistics (only their structure is used).
    batches: a pytree whose leaves are stacked batches ``[N, B, ...]`` (e.g. images
      ``[N, B, H, W, C]``); ``forward_fn`` receives one ``[B, ...]`` slice.
    momentum: the BN layers' Flax momentum (default ``common.models.layers.BN_MOMENTUM``).
  Returns:
    a tree like ``batch_stats``: ``mean [C] = (1/N) sum_n mean_n``, ``var [C] = (1/N) sum_n
    var_n`` (biased per-batch variances, as Flax stores them).
  """
  mom = _momentum(momentum)
  n = jax.tree.leaves(batches)[0].shape[0]

  def body(total, batch):
    m = batch_moments(forward_fn, params, batch_stats, batch, mom)
    return jax.tree.map(jnp.add, total, m), None

  zeros = jax.tree.map(lambda s: jnp.zeros(jnp.shape(s), jnp.float32), batch_stats)
  total, _ = jax.lax.scan(body, zeros, batches)
  return jax.tree.map(lambda t, s: (t / n).astype(jnp.result_type(s)), total, batch_stats)


def recalibrate_batch_stats_iter(forward_fn: Callable, params: Any, batch_stats: Any,
                                 batches: Iterable[Any], *, momentum: Optional[float] = None
                                 ) -> Any:
  """:func:`recalibrate_batch_stats` over an iterable of ``[B, ...]`` batches (a data loader).

  One jitted step accumulates each batch's moments on the device (no host sync per batch); the
  result is the same average. The step is compiled once per ``forward_fn`` object (a static jit
  argument), so pass the same function across calls to reuse it. Raises ValueError for an empty
  iterable.
  """
  mom = _momentum(momentum)
  total = jax.tree.map(lambda s: jnp.zeros(jnp.shape(s), jnp.float32), batch_stats)
  count = 0
  for batch in batches:
    total = _accumulate_moments(forward_fn, total, params, batch_stats, batch, mom)
    count += 1
  if not count:
    raise ValueError('recalibrate_batch_stats_iter: no batches given')
  return jax.tree.map(lambda t, s: (t / count).astype(jnp.result_type(s)), total, batch_stats)


@functools.partial(jax.jit, static_argnums=(0, 5))
def _accumulate_moments(forward_fn, total, params, batch_stats, batch, momentum):
  m = batch_moments(forward_fn, params, batch_stats, batch, momentum)
  return jax.tree.map(jnp.add, total, m)


def _momentum(momentum: Optional[float]) -> float:
  if momentum is None:
    from common.models import layers
    momentum = layers.BN_MOMENTUM
  if not 0.0 <= float(momentum) < 1.0:
    raise ValueError(f'BN momentum must be in [0, 1); got {momentum!r}')
  return float(momentum)
