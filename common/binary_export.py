"""Binary networks of ``common.models.bnn_layers`` as bit-packed inference functions.

ReCU and SiMaN train with simulated binarization: float32 ``{-1, +1}`` tensors in ordinary convs.
:func:`export` turns such a trained network into an inference function whose binary convs run
on the bit-packed XNOR-popcount kernel (``xla_ext.binconv``: ``K - 2 popcount(x XOR w)``, the
FFI CPU kernel, or its pure-JAX fallback off CPU) while everything else -- the full-precision stem
and classifier, FP downsample convs, parameter-free shortcuts, pooling -- runs the model's own
code. It works on the model as built: a flax method interceptor (``nn.intercept_methods``)
replaces, during ``apply``,

* :class:`~common.models.bnn_layers.BiRealBlock` (``h = act(bn1(conv1(x)) + sc(x));
  y = act(bn2(conv2(h)) + h)``): each binary conv with its BatchNorm, its shortcut sum and its
  Hardtanh / PReLU fused into the kernel's float32 epilogue;
* :class:`~common.models.bnn_layers.StandardBlock` (``y = act(bn2(conv2(act(bn1(conv1(x))))) +
  sc(x))``): the same, and the binarized 1x1 shortcut conv (SiMaN CIFAR ResNet-18) on the same
  packed input as conv1;
* any other :class:`~common.models.bnn_layers.BinaryConv` (VGG-Small, where a max-pool comes
  between the conv and its BN; the two-stage blocks): the kernel with the ``alpha`` epilogue only,
  the model's own code for what follows.

Each binary conv's input is the model's own activation binarizer (``act_binarizer(x, train=False)``:
ReCU ``sign(x)``, SiMaN ``sign((x - mean) / std)`` per sample; or, given ``sign_equivalents``, a
cheaper function with the same signs, e.g. SiMaN's ``x - mean``), packed by ``x < 0``: the packed
form has no zero, so where the simulated ``sign`` gives exactly 0 the export uses +1 (a
measure-zero event for the float inputs of a trained network). Integer accumulations are exact;
the epilogue is the same float32 arithmetic as flax's BatchNorm (``(y - mean) * (gamma /
sqrt(var + eps)) + beta``) up to rounding.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, Optional

import flax.linen as nn
import jax
import numpy as np

from common import binarize, transforms
from common.models import bnn_layers as BL
from common.models import layers as L


def _remove_paths(tree, paths):
  """A copy of the nested dict ``tree`` without the leaves at ``paths``."""
  out = jax.tree_util.tree_map(lambda x: x, tree)
  out = _as_dicts(out)
  for p in paths:
    node = out
    for k in p[:-1]:
      node = node[k]
    del node[p[-1]]
  return out


def _as_dicts(tree):
  if hasattr(tree, 'items'):
    return {k: _as_dicts(v) for k, v in tree.items()}
  return tree


@dataclasses.dataclass
class BinaryExport:
  """An exported binary network: ``logits = exported(images)``.

  Attributes:
    fn: jitted ``(packed, variables, images) -> logits``.
    packed: ``{module path: xla_ext.binconv.PackedConv}`` of every binary conv.
    variables: the full-precision rest (``params`` without the binary kernels, ``batch_stats``).
    isa: the instruction set the kernel runs ('avx512' | 'avx2' | 'generic'; 'jax' for the
      fallback).
  """
  fn: Callable
  packed: Dict[str, Any]
  variables: Dict[str, Any]
  isa: str

  def __call__(self, images: jax.Array) -> jax.Array:
    """``[B, H, W, C]`` float images -> ``[B, num_classes]`` logits."""
    return self.fn(self.packed, self.variables, images)

  def memory(self) -> Dict[str, int]:
    """Bytes of the packed binary weights, of the float rest, and of the binary weights as the
    simulated model stores them (float32)."""
    packed = sum(p.nbytes for p in self.packed.values())
    fp = sum(int(np.asarray(x).nbytes) for x in jax.tree.leaves(self.variables))
    sim = sum(4 * p.ksize * p.ksize * p.c_in * p.c_out for p in self.packed.values())
    return {'packed_weight_bytes': int(packed), 'fp_bytes': int(fp),
            'binary_weight_bytes_fp32': int(sim), 'total_bytes': int(packed + fp),
            'simulated_total_bytes': int(sim + fp)}


def _bn(module, name):
  """Inference BatchNorm ``name`` of ``module`` as ``(mean, mul, beta)``, flax's arithmetic."""
  p, s = module.variables['params'][name], module.variables['batch_stats'][name]
  return s['mean'], jax.lax.rsqrt(s['var'] + L.BN_EPS) * p['scale'], p['bias']


def _act(module, name):
  """``(activation, slope)`` of the block nonlinearity ``name`` for the kernel's epilogue."""
  kind = module.nonlinearity
  if kind == 'hardtanh':
    return 'hardtanh', None
  if kind == 'prelu':
    return 'prelu', module.variables['params'][name]['negative_slope']
  # ReLU outputs are exactly 0 on half the map, where the simulated sign is 0 and the packed +1.
  raise ValueError(f'binary export supports the block nonlinearities hardtanh and prelu (the '
                   f'official ones); got {kind!r} in {"/".join(module.path)}')


def export(model: nn.Module, variables: Dict[str, Any], *, backend: str = 'auto',
           isa: str = 'auto', num_threads: int = 0,
           sign_equivalents: Optional[Dict[Callable, Callable]] = None) -> BinaryExport:
  """Exports a trained binary ``bnn_layers`` network to bit-packed inference.

  Args:
    model: the flax module (e.g. ``common.models.get_model('recu_resnet20', ...)``).
    variables: ``{'params', 'batch_stats'}`` *as the simulated eval forward uses them*: every
      binary layer's (``alpha``-marked) kernel already binarized to ``{-1, +1}`` (the paper's
      weight binarizer applied, e.g. ``recu.train.binarize_params``), batch_stats without
      non-BatchNorm entries.
    backend: 'auto' | 'ffi' | 'jax' (``xla_ext.binconv.binary_conv2d``).
    isa: 'auto' | 'generic' | 'avx2' | 'avx512' (the kernel's instruction set).
    num_threads: threads of XLA's intra-op pool for each conv (0 = all).
    sign_equivalents: ``{act_binarizer: z}``, for binarizers whose output has the sign of a
      cheaper ``z(x)`` (``sign(z(x)) == act_binarizer(x, train=False)`` wherever the latter is not
      0): a binary conv whose module's binarizer is a key packs ``z(x)`` instead. E.g. SiMaN's
      ``sign((a - mean) / std)`` has the sign of ``a - mean`` (std > 0), so its export skips the
      variance and the division (``siman.export_binary``). Other binarizers run as they are.
  Returns:
    a :class:`BinaryExport`; ``export(...)(images)`` equals ``model.apply(variables, images,
    train=False)`` (same integer counts; float epilogue to rounding).
  Raises:
    ValueError: no binary layer, a kernel not in {-1, 0, +1}, a kernel size other than 1 or 3,
      or an unsupported block nonlinearity (naming the layer).
  """
  from xla_ext import binconv   # the FFI kernel library loads on first export, not on import

  params = variables['params']
  paths = binarize.binary_kernel_paths(params)
  if not paths:
    raise ValueError('binary export: the model has no binary layer (no kernel with an alpha '
                     'leaf); export a binary network, not its full-precision control')
  packed = {}
  for p in paths:
    w = np.asarray(transforms.get_path(params, p))
    name = transforms.path_str(p[:-1])
    if not np.all(np.isin(w, (-1.0, 0.0, 1.0))):
      raise ValueError(f'binary export: kernel {name!r} is not binarized (values outside '
                       f'{{-1, 0, +1}}, e.g. {w.ravel()[~np.isin(w.ravel(), (-1, 0, 1))][0]!r}); '
                       'pass the params the eval forward uses (the weight binarizer applied)')
    try:
      packed[name] = binconv.pack_weights(w)
    except ValueError as e:
      raise ValueError(f'binary export: layer {name!r}: {e}') from e
  rest = {'params': _remove_paths(params, paths),
          'batch_stats': _as_dicts(variables.get('batch_stats', {}))}
  if backend not in binconv.BACKENDS:
    raise ValueError(f'binary export: backend must be one of {list(binconv.BACKENDS)}; got '
                     f'{backend!r}')
  use_ffi = backend == 'ffi' or (backend == 'auto' and binconv.xla_ext.available() and
                                 jax.default_backend() == 'cpu')
  isa_name = binconv.resolve_isa(isa) if use_ffi else 'jax'
  kw = dict(backend='ffi' if use_ffi else 'jax', num_threads=num_threads)
  if use_ffi:
    kw['isa'] = isa_name

  equivalents = dict(sign_equivalents or {})

  def pack_input(module, x):
    """``[B, H, W, C]`` float -> uint32 ``[B, H, W, ceil(C / 32)]``: the signs the module's
    binary conv sees, packed (0 -> +1, ``binconv.pack_bits``)."""
    z = equivalents.get(module.act_binarizer)
    return binconv.pack_bits(z(x) if z is not None else module.act_binarizer(x, False))

  def conv(packed_tree, module, name, xp, stride, **epi):
    key = '/'.join(module.path + (name,))
    alpha = module.variables['params'][name]['alpha']
    return binconv.binary_conv2d(xp, packed_tree[key], alpha, stride=stride, **epi, **kw)

  def make_interceptor(packed_tree):
    def interceptor(next_fun, args, kwargs, context):
      m = context.module
      if context.method_name != '__call__':
        return next_fun(*args, **kwargs)
      binary = getattr(m, 'act_binarizer', None) is not None and getattr(m, 'alpha', None)
      if isinstance(m, BL.BiRealBlock) and binary:
        x = args[0]
        if not BL._shape_changes(x, m.planes, m.stride):  # pylint: disable=protected-access
          sc = x
        elif m.shortcut == 'fp_conv':
          k = m.variables['params']['downsample_0']['kernel']
          # The conv the model's own nn.Conv runs (oneDNN on CPU unless switched off).
          fp_conv = L.cpu_conv_fn() or jax.lax.conv_general_dilated
          sc = fp_conv(x, k, (m.stride, m.stride), ((0, 0), (0, 0)),
                       dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
          mean, mul, beta = _bn(m, 'downsample_1')
          sc = (sc - mean) * mul + beta
        else:
          sc = m.shortcut(x, m.planes, m.stride)
        act, slope = _act(m, 'nonlinear1')
        h = conv(packed_tree, m, 'conv1', pack_input(m, x), m.stride,
                 bn=_bn(m, 'bn1'), residual=sc, activation=act, slope=slope)
        act, slope = _act(m, 'nonlinear2')
        return conv(packed_tree, m, 'conv2', pack_input(m, h), 1,
                    bn=_bn(m, 'bn2'), residual=h, activation=act, slope=slope)
      if isinstance(m, BL.StandardBlock) and binary:
        x = args[0]
        xp = pack_input(m, x)
        act, slope = _act(m, 'nonlinear1')
        y = conv(packed_tree, m, 'conv1', xp, m.stride, bn=_bn(m, 'bn1'), activation=act,
                 slope=slope)
        if not BL._shape_changes(x, m.planes, m.stride):  # pylint: disable=protected-access
          sc = x
        elif m.shortcut == 'binary_conv':
          sc = conv(packed_tree, m, 'shortcut_0', xp, m.stride, bn=_bn(m, 'shortcut_1'))
        else:
          sc = m.shortcut(x, m.planes, m.stride)
        act, slope = _act(m, 'nonlinear2')
        return conv(packed_tree, m, 'conv2', pack_input(m, y), 1,
                    bn=_bn(m, 'bn2'), residual=sc, activation=act, slope=slope)
      if isinstance(m, BL.BinaryConv) and binary:
        if m.weight_binarizer is not None:
          raise ValueError(f'binary export: {"/".join(m.path)} binarizes its kernel inside the '
                           'module; export needs it binarized on the parameter tree')
        k = (m.kernel_size,) * 2 if isinstance(m.kernel_size, int) else tuple(m.kernel_size)
        s = (m.strides,) * 2 if isinstance(m.strides, int) else tuple(m.strides)
        if k[0] != k[1] or s[0] != s[1]:
          raise ValueError(f'binary export: {"/".join(m.path)} needs a square kernel and stride; '
                           f'got kernel {k}, stride {s}')
        key = '/'.join(m.path)
        return binconv.binary_conv2d(pack_input(m, args[0]),
                                     packed_tree[key], m.variables['params']['alpha'],
                                     stride=s[0], **kw)
      return next_fun(*args, **kwargs)
    return interceptor

  def forward(packed_tree, rest_vars, images):
    with nn.intercept_methods(make_interceptor(packed_tree)):
      return model.apply(rest_vars, images, train=False)

  return BinaryExport(fn=jax.jit(forward), packed=packed, variables=rest, isa=isa_name)
