"""Train-step throughput of the engine on this machine, and XLA CPU flag variants side by side.

  python -m common.bench [--models=resnet20,resnet56] [--batch=128] [--steps=8] [--variants=all]
  python -m common.bench --engine_overhead
  python -m common.bench --checkpoint --models=resnet20   # checkpoint verification cost
  python -m common.bench --cpu_conv [--models=resnet20,resnet56,vgg_tiny,mobilenet_v2_narrow]
                                    # the CPU conv kernels vs XLA vs PyTorch, per layer and per step

First, the engine's own cost: one epoch of ``common.train.run`` on digits against the same number
of bare calls of its compiled step on the same batches (``engine_overhead``). Then, for each model: compile time and images/s of the jitted engine train step (the same
``make_train_step`` every paper uses: forward, backward, coupled-decay SGD update) at the given
batch. Each XLA flag variant runs in its own subprocess (XLA reads ``XLA_FLAGS`` once at start-up)
and is printed as a ratio to the default flags measured in the same run. Printed, not asserted.

``--cpu_conv`` times, side by side in one process: per 3x3 conv layer of the CIFAR ResNets (batch
128) XLA's forward / input gradient / weight gradient, the same three through the oneDNN kernels
of ``xla_ext.conv``, the hand-written AVX-512 weight gradient they were chosen over, and PyTorch's
forward + both gradients; then per model the engine's train step without and with the CPU conv
path (``common.models.layers.cpu_conv``) and PyTorch's train step on the same network (NCHW, SGD
with momentum and weight decay, as the official CIFAR code trains), when torch is importable.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

# Candidate XLA:CPU settings for convolution-heavy training (names from `XLA_FLAGS=--help` of the
# pinned jaxlib). Kept only if they measure faster; see README "Benchmarks".
VARIANTS = {
    'default': '',
    'onednn': '--xla_cpu_use_onednn=true',
    'onednn_custom_call': '--xla_cpu_experimental_onednn_custom_call=true',
    'no_xnnpack': '--xla_cpu_use_xnnpack=false',
    'fast_math': '--xla_cpu_enable_fast_math=true',
}



def measure(model_name: str, batch: int, steps: int) -> dict:
  """Compile time and steady-state images/s of one engine train step (single device)."""
  import jax
  import jax.numpy as jnp
  import numpy as np

  from common import schedules, timing, train
  from common.configs import base

  config = base.get_config()
  config.model.name = model_name
  method = train.Method(config)
  method.setup(train.RunInfo(num_classes=10, image_shape=(32, 32, 3)))
  model = method.build_model()
  x = jnp.asarray(np.random.RandomState(0).randn(batch, 32, 32, 3), jnp.float32)
  y = jnp.asarray(np.random.RandomState(1).randint(0, 10, batch), jnp.int32)
  v = method.init_variables(model, jax.random.PRNGKey(0), x[:1])
  tx = schedules.make_optimizer(config.optimizer, lambda s: 0.1)
  state = train.TrainState(step=jnp.zeros((), jnp.int32), params=v['params'],
                           batch_stats=v['batch_stats'], opt_state=tx.init(v['params']), extra={},
                           rng=jax.random.PRNGKey(0))
  step = jax.jit(train.make_train_step(method, model, tx, axis_name=None), donate_argnums=(0,))
  batch_d = {'image': x, 'label': y}
  t = time.perf_counter()
  compiled = step.lower(state, batch_d).compile()
  compile_s = time.perf_counter() - t
  def one_step():
    nonlocal state
    state, metrics = compiled(state, batch_d)
    return metrics

  # One untimed step, then the median of `steps` single steps (each blocked on).
  dt = timing.time_interleaved({'step': one_step}, steps, warmup=1)['step'].median
  return {'model': model_name, 'batch': batch, 'compile_s': compile_s, 'step_ms': dt * 1e3,
          'img_s': batch / dt}


def _engine_step(model_name: str, batch: int, use_cpu_conv: bool):
  """``(one_step, compile_s)``: a zero-argument call of the compiled engine train step of
  ``model_name`` (its :data:`CPU_CONV_MODELS` config) on a fixed random batch, built with or
  without the CPU conv kernels."""
  import jax
  import jax.numpy as jnp
  import numpy as np

  from common import schedules, train
  from common.configs import base
  from common.models import layers

  config = base.get_config()
  name, widths, kwargs = CPU_CONV_MODELS[model_name]
  config.model.name = name
  if widths is not None:
    config.model.widths = widths
  config.model.kwargs = dict(kwargs)
  method = train.Method(config)
  method.setup(train.RunInfo(num_classes=10, image_shape=(32, 32, 3)))
  model = method.build_model()
  x = jnp.asarray(np.random.RandomState(0).randn(batch, 32, 32, 3), jnp.float32)
  y = jnp.asarray(np.random.RandomState(1).randint(0, 10, batch), jnp.int32)
  v = method.init_variables(model, jax.random.PRNGKey(0), x[:1])
  tx = schedules.make_optimizer(config.optimizer, lambda s: 0.1)
  holder = [train.TrainState(step=jnp.zeros((), jnp.int32), params=v['params'],
                             batch_stats=v['batch_stats'], opt_state=tx.init(v['params']),
                             extra={}, rng=jax.random.PRNGKey(0))]
  batch_d = {'image': x, 'label': y}
  step = jax.jit(train.make_train_step(method, model, tx, axis_name=None), donate_argnums=(0,))
  t = time.perf_counter()
  with layers.cpu_conv(use_cpu_conv):   # the convs are built (and the FFI chosen) while tracing
    compiled = step.lower(holder[0], batch_d).compile()
  compile_s = time.perf_counter() - t

  def one_step():
    holder[0], metrics = compiled(holder[0], batch_d)
    return metrics
  return one_step, compile_s


# The networks of the quick experiments: (zoo name, widths or None for the default, kwargs).
CPU_CONV_MODELS = {
    'resnet20': ('resnet20', None, {}),
    'resnet56': ('resnet56', None, {}),
    'vgg_tiny': ('vgg_tiny', None, {}),
    'mobilenet_v2_narrow': ('mobilenet_v2', {'stem': 32, 'hidden': [32, 128, 192, 192, 256],
                                             'out': [32, 48, 48, 64, 64], 'last': 128},
                            {'strides': (1, 2, 1, 2, 1), 'stem_stride': 2}),
}


def _torch_model(model_name: str):
  """The same network in PyTorch (NCHW): conv/BN/ReLU layout, widths, strides, shortcuts and
  classifier of the zoo's model (``common.models``); initialisation is PyTorch's (only the step
  time is compared)."""
  import torch
  from torch import nn as tnn

  from common.models import mobilenet_v2, resnet_cifar, vgg

  name, widths, kwargs = CPU_CONV_MODELS[model_name]

  def conv_bn(cin, cout, k, stride=1, groups=1, bias=False):
    return [tnn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=bias),
            tnn.BatchNorm2d(cout)]

  if name.startswith('resnet'):
    depth = int(name[len('resnet'):])
    stem, stages, inner = resnet_cifar.parse_widths(name, depth,
                                                    resnet_cifar.uniform_widths(depth, (16, 32, 64)))

    class Block(tnn.Module):
      def __init__(self, cin, mid, cout, stride):
        super().__init__()
        self.body = tnn.Sequential(*conv_bn(cin, mid, 3, stride), tnn.ReLU(),
                                   *conv_bn(mid, cout, 3))
        self.stride, self.pad = stride, cout - cin

      def forward(self, x):
        sc = x[:, :, ::2, ::2] if self.stride == 2 else x   # option A, as the zoo's default
        if self.pad:
          sc = torch.nn.functional.pad(sc, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))
        return torch.relu(self.body(x) + sc)

    layers = [*conv_bn(3, stem, 3), tnn.ReLU()]
    cin = stem
    for s, (out, inners) in enumerate(zip(stages, inner)):
      for b, mid in enumerate(inners):
        layers.append(Block(cin, mid, out, 2 if s > 0 and b == 0 else 1))
        cin = out
    return tnn.Sequential(*layers, tnn.AdaptiveAvgPool2d(1), tnn.Flatten(), tnn.Linear(cin, 10))
  if name.startswith('vgg'):
    ws, pools = vgg.parse(name, vgg.cfg_widths(vgg.CFGS[name]))
    layers, cin = [], 3
    for i, w in enumerate(ws):
      layers += [*conv_bn(cin, w, 3, bias=True), tnn.ReLU()]
      if i in pools:
        layers.append(tnn.MaxPool2d(2))
      cin = w
    return tnn.Sequential(*layers, tnn.AdaptiveAvgPool2d(1), tnn.Flatten(), tnn.Linear(cin, 10))
  stem, hidden, out, last, strides, stem_stride = mobilenet_v2.parse(
      name, 'imagenet', widths, kwargs['strides'], kwargs['stem_stride'])
  plan = mobilenet_v2.block_plan('imagenet', stem, hidden, out, strides)

  class Inverted(tnn.Module):
    def __init__(self, cin, expand, shortcut, h, o, s):
      super().__init__()
      body = ([*conv_bn(cin, h, 1), tnn.ReLU6()] if expand else []) + [
          *conv_bn(h, h, 3, s, groups=h), tnn.ReLU6(), *conv_bn(h, o, 1)]
      self.body = tnn.Sequential(*body)
      self.shortcut = (tnn.Sequential(*conv_bn(cin, o, 1)) if shortcut == 'conv' else
                       (tnn.Identity() if shortcut == 'identity' else None))

    def forward(self, x):
      y = self.body(x)
      return y if self.shortcut is None else y + self.shortcut(x)

  layers = [*conv_bn(3, stem, 3, stem_stride), tnn.ReLU6()]
  for (cin, expand, shortcut), h, o, s in zip(plan, hidden, out, strides):
    layers.append(Inverted(cin, expand, shortcut, h, o, s))
  return tnn.Sequential(*layers, *conv_bn(out[-1], last, 1), tnn.ReLU6(), tnn.AdaptiveAvgPool2d(1),
                        tnn.Flatten(), tnn.Linear(last, 10))


def _torch_step(model_name: str, batch: int):
  """A zero-argument PyTorch train step (forward, cross-entropy, backward, SGD with Nesterov
  momentum 0.9 and weight decay 5e-4) of :func:`_torch_model` on a fixed random batch."""
  import torch

  torch.manual_seed(0)
  net = _torch_model(model_name).train()
  opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
  x = torch.randn(batch, 3, 32, 32)
  y = torch.randint(0, 10, (batch,))

  def one_step():
    opt.zero_grad(set_to_none=True)
    loss = torch.nn.functional.cross_entropy(net(x), y)
    loss.backward()
    opt.step()
    return None
  return one_step, sum(p.numel() for p in net.parameters())


def _torch_status() -> str:
  """'' when torch is importable, else the reason the PyTorch rows are skipped."""
  try:
    import torch  # pylint: disable=g-import-not-at-top,unused-import
  except ImportError as e:
    return f'torch is not importable ({e})'
  return ''


def conv_layer_rows(batch: int = 128, repeats: int = 5) -> list:
  """Per 3x3 conv layer (stride 1, padding 1, C_in = C_out) of the CIFAR ResNets at ``batch``:
  milliseconds of XLA's forward / input gradient / weight gradient, the oneDNN kernels' three, the
  hand-written AVX-512 weight gradient, and PyTorch's forward + both gradients (NCHW), timed in
  interleaved rounds (``common.timing``). Each kernel's result is checked against XLA's first."""
  import jax
  import jax.numpy as jnp
  import numpy as np

  from common import timing
  from xla_ext import conv as xc

  dn = ('NHWC', 'HWIO', 'NHWC')
  pads = ((1, 1), (1, 1))
  torch_reason = _torch_status()
  rows = []
  for hw, c in ((32, 16), (16, 32), (8, 64)):
    rs = np.random.RandomState(0)
    x = jnp.asarray(rs.randn(batch, hw, hw, c), jnp.float32)
    w = jnp.asarray(rs.randn(3, 3, c, c) / np.sqrt(9 * c), jnp.float32)
    dy = jnp.asarray(rs.randn(batch, hw, hw, c), jnp.float32)
    lax_conv = lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), pads, dimension_numbers=dn)
    fns = {
        'xla_fwd': jax.jit(lax_conv),
        'xla_dgrad': jax.jit(lambda dy, w: jax.vjp(lambda x: lax_conv(x, w), x)[1](dy)[0]),
        'xla_wgrad': jax.jit(lambda x, dy: jax.vjp(lambda w: lax_conv(x, w), w)[1](dy)[0]),
        'kernel_fwd': jax.jit(lambda x, w: xc.conv_fwd(x, w, (1, 1), pads)),
        'kernel_dgrad': jax.jit(lambda dy, w: xc.conv_bwd_data(dy, w, x.shape, (1, 1), pads)),
        'kernel_wgrad': jax.jit(lambda x, dy: xc.conv_bwd_weights(x, dy, (3, 3), (1, 1), pads)),
        'hand_wgrad': jax.jit(lambda x, dy: xc.conv_wgrad_direct(x, dy, (3, 3), (1, 1))),
    }
    args = {'fwd': (x, w), 'dgrad': (dy, w), 'wgrad': (x, dy)}
    calls = {k: (lambda f=f, a=args[k.split('_')[1]]: f(*a)) for k, f in fns.items()}
    for k in ('kernel_fwd', 'kernel_dgrad', 'kernel_wgrad', 'hand_wgrad'):
      ref = np.asarray(calls['xla_' + k.split('_')[1]]())
      err = float(np.abs(np.asarray(calls[k]()) - ref).max() / np.abs(ref).max())
      if err > 1e-4:
        raise AssertionError(f'{k} at {hw}x{hw}x{c} differs from XLA by {err:.2e} (relative)')
    if not torch_reason:
      import torch
      tx = torch.randn(batch, c, hw, hw, requires_grad=True)
      tw = torch.randn(c, c, 3, 3, requires_grad=True)
      tdy = torch.randn(batch, c, hw, hw)

      def torch_layer():
        torch.nn.functional.conv2d(tx, tw, padding=1).backward(tdy)
        tx.grad = tw.grad = None
      calls['torch_all'] = torch_layer
    t = timing.time_interleaved(calls, repeats, warmup=2)
    rows.append({'layer': f'{hw} x {hw} x {c}', **{k: v.median * 1e3 for k, v in t.items()}})
  return rows


def wgrad_choice_rows(batch: int = 128, repeats: int = 7) -> list:
  """The measurement behind choosing oneDNN: per layer of :func:`conv_layer_rows`, the CPU time
  (``time.process_time``, all threads of this process) of one weight gradient by oneDNN and by the
  hand-written AVX-512 kernel, both on one thread, and by XLA on all threads. CPU time, not wall
  time, so that the comparison survives a machine shared with other jobs."""
  import jax
  import jax.numpy as jnp
  import numpy as np

  from common import timing
  from xla_ext import conv as xc

  pads = ((1, 1), (1, 1))
  rows = []
  for hw, c in ((32, 16), (16, 32), (8, 64)):
    rs = np.random.RandomState(0)
    x = jnp.asarray(rs.randn(batch, hw, hw, c), jnp.float32)
    dy = jnp.asarray(rs.randn(batch, hw, hw, c), jnp.float32)
    w = jnp.zeros((3, 3, c, c), jnp.float32)
    lax_conv = lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), pads,
                                                         dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    fns = {'onednn_1t': jax.jit(lambda x, dy: xc.conv_bwd_weights(x, dy, (3, 3), (1, 1), pads,
                                                                   num_threads=1)),
           'hand_1t': jax.jit(lambda x, dy: xc.conv_wgrad_direct(x, dy, (3, 3), (1, 1),
                                                                  num_threads=1)),
           'xla': jax.jit(lambda x, dy: jax.vjp(lambda w: lax_conv(x, w), w)[1](dy)[0])}
    t = timing.time_interleaved({k: (lambda f=f: f(x, dy)) for k, f in fns.items()}, repeats,
                                warmup=2, clock=time.process_time)
    rows.append({'layer': f'{hw} x {hw} x {c}', **{k: v.median * 1e3 for k, v in t.items()}})
  return rows


def print_cpu_conv(models, batch: int, steps: int) -> None:
  """Prints :func:`conv_layer_rows` and, per model, the engine step without / with the CPU conv
  kernels and PyTorch's step, timed in interleaved rounds in this process."""
  from common import timing
  from xla_ext import conv as xc

  if not xc.available():
    print(f'cpu_conv: the CPU conv kernels are not available ({xc.load_error()}); nothing to '
          f'compare', flush=True)
    return
  torch_reason = _torch_status()
  threads = ''
  if not torch_reason:
    import torch
    threads = f', torch {torch.__version__} with {torch.get_num_threads()} threads'
  print(f'CPU conv kernels ({timing.cpu_name()}{threads}); per 3x3 conv layer at batch {batch}, '
        f'ms (medians of interleaved rounds):', flush=True)
  cols = ['xla_fwd', 'xla_dgrad', 'xla_wgrad', 'kernel_fwd', 'kernel_dgrad', 'kernel_wgrad',
          'hand_wgrad', 'torch_all']
  print(f'{"layer":14s} ' + ' '.join(f'{c:>12s}' for c in cols))
  for r in conv_layer_rows(batch):
    print(f'{r["layer"]:14s} ' + ' '.join(
        f'{r[c]:12.1f}' if c in r else f'{"skipped":>12s}' for c in cols), flush=True)
  if torch_reason:
    print(f'PyTorch columns skipped: {torch_reason}')
  print(f'weight gradient at batch {batch}, CPU ms per call (process time): oneDNN and the '
        f'hand-written AVX-512 kernel on 1 thread, XLA on all', flush=True)
  for r in wgrad_choice_rows(batch):
    print(f'{r["layer"]:14s} oneDNN {r["onednn_1t"]:6.1f}   hand-written {r["hand_1t"]:6.1f}   '
          f'XLA {r["xla"]:6.1f}', flush=True)
  print(f'train step at batch {batch}, img/s (ms):')
  print(f'{"model":20s} {"XLA":>14s} {"CPU conv":>14s} {"PyTorch":>14s} {"CPU conv/XLA":>12s} '
        f'{"CPU conv/PyTorch":>16s}')
  for model in models:
    calls = {}
    xla_step, _ = _engine_step(model, batch, False)
    cpu_step, _ = _engine_step(model, batch, True)
    calls = {'xla': xla_step, 'cpu_conv': cpu_step}
    if not torch_reason:
      calls['torch'], _ = _torch_step(model, batch)
    t = timing.time_interleaved(calls, steps, warmup=2)
    ips = {k: batch / v.median for k, v in t.items()}
    cell = lambda k: (f'{ips[k]:6.0f} ({t[k].median * 1e3:5.0f})' if k in ips else
                      f'{"skipped":>14s}')
    vs_torch = f'{ips["cpu_conv"] / ips["torch"]:15.2f}x' if 'torch' in ips else f'{"n/a":>16s}'
    print(f'{model:20s} {cell("xla")} {cell("cpu_conv")} {cell("torch")} '
          f'{ips["cpu_conv"] / ips["xla"]:11.2f}x {vs_torch}', flush=True)
  if torch_reason:
    print(f'PyTorch column skipped: {torch_reason}')


def engine_overhead(config_path: str = 'common/configs/resnet20_digits.py', epochs: int = 3,
                    repeats: int = 3) -> dict:
  """Wall time of one epoch of ``common.train.run`` against the same steps run bare.

  The run's epoch (``epochs`` >= 3, the second one timed between two ``epoch_start`` calls, so the
  first epoch's compilation is excluded) includes data loading, the host hooks, evaluation,
  checkpointing and logging. The bare arm runs the same number of calls of the same compiled
  pmapped step on the same epoch's batches, prepared beforehand. Returns both times (median over
  ``repeats`` bare passes) and ``overhead = run_epoch / bare - 1``.
  """
  import importlib.util
  import tempfile

  import jax

  from common import train

  spec = importlib.util.spec_from_file_location('bench_config', config_path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  config.num_epochs = max(int(epochs), 3)
  config.progress_bar = False

  class Stamped(train.Method):
    stamps = {}

    def epoch_start(self, state, epoch):
      self.stamps[epoch] = time.perf_counter()
      return state

  method = Stamped(config)
  with tempfile.TemporaryDirectory() as wd:
    train.run(config, wd, method)
  run_epoch = method.stamps[2] - method.stamps[1]

  engine = train.Engine(config, train.Method(config))
  rstate = train.replicate(engine.create_state())
  step = engine.train_step_fn()
  batches = [train.shard(b, engine.ndev) for b in engine.train_ds.batches(
      engine.batch_size, epoch=1, train=True, drop_remainder=True)]
  rstate, m = step(rstate, batches[0], ())
  jax.block_until_ready(m)
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    for b in batches:
      rstate, m = step(rstate, b, ())
    jax.block_until_ready((rstate, m))
    times.append(time.perf_counter() - t)
  bare = float(sorted(times)[len(times) // 2])
  return {'config': config_path, 'steps': len(batches), 'run_epoch_s': run_epoch,
          'bare_steps_s': bare, 'overhead': run_epoch / bare - 1.0}


def checkpoint_overhead(model_name: str = 'resnet20', repeats: int = 9) -> dict:
  """Save + restore time of ``common.checkpoint`` (with checksums) over plain orbax, on one state.

  The state is the engine's ``TrainState`` of ``model_name`` (params, batch stats, SGD momentum).
  ``plain`` is the orbax ``CheckpointManager`` save + restore of ``(state, meta)`` without the
  checksum item or verification; ``verified`` is ``Checkpointer.save`` + ``Checkpointer.restore``
  (CRC-32 of every array on save, integrity item, CRC-32 check on restore). The fastest of
  ``repeats`` interleaved rounds (the one least disturbed by other processes), each into a fresh
  step of its own temporary directory.

  Returns:
    ``{'model', 'arrays', 'mbytes', 'plain_save_ms', 'plain_restore_ms', 'verified_save_ms',
    'verified_restore_ms', 'checksums_ms', 'plain_ms', 'verified_ms', 'ratio'}``.
  """
  import tempfile

  import jax
  import jax.numpy as jnp
  import numpy as np
  import orbax.checkpoint as ocp

  from common import checkpoint, schedules, train
  from common.configs import base

  config = base.get_config()
  config.model.name = model_name
  method = train.Method(config)
  method.setup(train.RunInfo(num_classes=10, image_shape=(32, 32, 3)))
  model = method.build_model()
  v = method.init_variables(model, jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3), jnp.float32))
  tx = schedules.make_optimizer(config.optimizer, lambda s: 0.1)
  state = train.TrainState(step=jnp.zeros((), jnp.int32), params=v['params'],
                           batch_stats=v['batch_stats'], opt_state=tx.init(v['params']), extra={},
                           rng=jax.random.PRNGKey(0))
  meta = {'epoch': 0, 'best_top1': 0.5, 'seconds': 1.0}
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
  leaves = jax.tree.leaves(state)
  nbytes = sum(np.asarray(x).nbytes for x in leaves)
  with tempfile.TemporaryDirectory() as tmp:
    opts = ocp.CheckpointManagerOptions(max_to_keep=2, create=True,
                                        enable_async_checkpointing=False)
    plain = ocp.CheckpointManager(os.path.join(tmp, 'plain'), options=opts)
    verified = checkpoint.Checkpointer(os.path.join(tmp, 'verified'), keep=2)

    def plain_save(step):
      plain.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                               meta=ocp.args.JsonSave(meta)), force=True)
      plain.wait_until_finished()

    def plain_restore(step):
      out = plain.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
      jax.block_until_ready(out.state)

    phases = {'plain_save': plain_save, 'plain_restore': plain_restore,
              'verified_save': lambda step: verified.save(step, state, meta),
              'verified_restore': lambda step: jax.block_until_ready(verified.restore(state)[0]),
              'checksums': lambda step: checkpoint.checksums(state)}
    times = {k: [] for k in phases}
    names = list(phases)
    for step in range(repeats + 1):   # round 0 warms up every path
      # Odd rounds run the verified phases first, so neither side always meets a warmer cache.
      order = names if step % 2 == 0 else names[2:4] + names[:2] + names[4:]
      for name in order:
        fn = phases[name]
        t = time.perf_counter()
        fn(step)
        if step:
          times[name].append(time.perf_counter() - t)
    plain.close()
    verified.close()
  med = {k: float(np.min(v)) * 1e3 for k, v in times.items()}
  plain_ms = med['plain_save'] + med['plain_restore']
  verified_ms = med['verified_save'] + med['verified_restore']
  return {'model': model_name, 'arrays': len(leaves), 'mbytes': nbytes / 2**20,
          **{f'{k}_ms': v for k, v in med.items()}, 'plain_ms': plain_ms,
          'verified_ms': verified_ms, 'ratio': verified_ms / plain_ms}


def print_checkpoint_overhead(model_name: str = 'resnet20', repeats: int = 9) -> None:
  """Prints :func:`checkpoint_overhead` as one line (target: ratio at most 1.2x)."""
  r = checkpoint_overhead(model_name, repeats)
  print(f'checkpoint save+restore of the {r["model"]} state ({r["arrays"]} arrays, '
        f'{r["mbytes"]:.2f} MiB): plain orbax {r["plain_save_ms"]:.0f} + '
        f'{r["plain_restore_ms"]:.0f} ms, with crc32 verification {r["verified_save_ms"]:.0f} + '
        f'{r["verified_restore_ms"]:.0f} ms = {r["ratio"]:.2f}x (crc32 of all arrays once: '
        f'{r["checksums_ms"]:.1f} ms)', flush=True)


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  ap.add_argument('--models', default=None, help='default resnet20,resnet56')
  ap.add_argument('--batch', type=int, default=128)
  ap.add_argument('--steps', type=int, default=8)
  ap.add_argument('--variants', default='all', help='comma list of ' + ','.join(VARIANTS))
  ap.add_argument('--child', default='', help=argparse.SUPPRESS)
  ap.add_argument('--engine_overhead', action='store_true',
                  help='only the epoch-of-run vs bare-steps comparison')
  ap.add_argument('--cpu_conv', action='store_true',
                  help='only the CPU conv kernels vs XLA vs PyTorch, per layer and per train step '
                       '(--models defaults to ' + ','.join(CPU_CONV_MODELS) + ')')
  ap.add_argument('--checkpoint', action='store_true',
                  help='only print the checkpoint save+restore cost of verification, per model')
  args = ap.parse_args(argv)
  if args.cpu_conv:
    models = (args.models or ','.join(CPU_CONV_MODELS)).split(',')
    bad = [m for m in models if m not in CPU_CONV_MODELS]
    if bad:
      print(f'error: --cpu_conv models must be among {list(CPU_CONV_MODELS)}; got {bad}',
            file=sys.stderr)
      return 2
    print_cpu_conv(models, args.batch, args.steps)
    return 0
  args.models = args.models or 'resnet20,resnet56'
  if args.child:
    print(json.dumps(measure(args.child, args.batch, args.steps)))
    return 0
  if args.checkpoint:
    for model in args.models.split(','):
      print_checkpoint_overhead(model)
    return 0
  r = engine_overhead()
  from common import timing  # pylint: disable=g-import-not-at-top  (after the XLA flags are set)
  print(f'engine overhead ({timing.cpu_name()}): one epoch of common.train.run on digits (ResNet-20, '
        f'{r["steps"]} steps, with evaluation, checkpoint, logging, hooks) {r["run_epoch_s"]:.2f} s '
        f'vs the same steps bare {r["bare_steps_s"]:.2f} s: overhead {100 * r["overhead"]:.1f}% '
        f'(target <= 10%)', flush=True)
  if args.engine_overhead:
    return 0
  print_checkpoint_overhead('resnet20')
  names = list(VARIANTS) if args.variants == 'all' else args.variants.split(',')
  bad = [n for n in names if n not in VARIANTS]
  if bad:
    print(f'error: unknown variants {bad}; allowed: {list(VARIANTS)}', file=sys.stderr)
    return 2
  print(f'{"model":10s} {"variant":20s} {"compile s":>9s} {"step ms":>8s} {"img/s":>7s} '
        f'{"vs default":>10s}')
  for model in args.models.split(','):
    base_ips = None
    for name in names:
      env = dict(os.environ)
      env['XLA_FLAGS'] = (env.get('XLA_FLAGS', '') + ' ' + VARIANTS[name]).strip()
      out = subprocess.run([sys.executable, '-m', 'common.bench', '--child', model, '--batch',
                            str(args.batch), '--steps', str(args.steps)], env=env,
                           capture_output=True, text=True)
      if out.returncode != 0:
        print(f'{model:10s} {name:20s} failed: {out.stderr.strip().splitlines()[-1:]}')
        continue
      r = json.loads(out.stdout.strip().splitlines()[-1])
      base_ips = base_ips or (r['img_s'] if name == 'default' else None)
      ratio = f'{r["img_s"] / base_ips:9.2f}x' if base_ips else '       n/a'
      print(f'{model:10s} {name:20s} {r["compile_s"]:9.1f} {r["step_ms"]:8.0f} {r["img_s"]:7.0f} '
            f'{ratio}', flush=True)
  return 0


if __name__ == '__main__':
  sys.exit(main())
