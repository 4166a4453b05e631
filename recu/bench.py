"""ReCU benchmark: BNN train / eval step time vs the same network in full precision, side by side.

  python -m recu.bench [--model=recu_resnet20] [--widths='{"stem": 16, "stages": [16, 32, 64]}']
                       [--batch=128] [--hw=32] [--steps=20] [--repeats=3]

Both networks are built by ``common.models`` with the same widths (``binary=True`` / ``False``)
and run through the *same* engine step (``common.train.make_train_step`` / ``make_eval_step`` of
``recu.train.ReCU``, jitted, one device); the timings interleave the two (ABAB...) so load changes
on a shared machine hit both alike (:func:`time_interleaved`, also used by ``siman.bench``).
Prints one line per network and, last, ``bnn_over_fp_train=<ratio> bnn_over_fp_eval=<ratio>``.

Honest reading: in training, binarization is *simulated* in float32 (sign, standardisation, the
clamp and alpha are extra elementwise work on top of the same float convolutions), so the BNN step
is slower than the FP one. The 1-bit model size is reported by ``recu.train`` (``model_bits`` in
results.json).

Inference on the bit-packed kernel (``xla_ext.binconv``, ``recu.export_binary``):

  python -m recu.bench --binary [--nets=resnet18_imagenet,...] [--batches=1,8] [--isas=avx2,avx512]
                       [--e2e_model=recu_resnet18] [--e2e_hw=224] [--e2e_batches=1]
                       [--clock=wall|cpu] [--json_out=F]

prints, per layer of :data:`BINARY_LAYER_SHAPES` (ResNet-18 ImageNet 3x3 convs, SiMaN's CIFAR
ResNet-18 1x1/2 shortcuts, CIFAR ResNet-20, VGG-Small) and batch, XLA's float32 conv against the
binary kernel (alone, and with the pass that packs its input), on every SIMD ISA the CPU has,
named on every row, timed side by side; the median speedup per net, batch and ISA; and end to
end the exported ResNet-18 against the same graph in float32 (``binary=False``) and against the
simulated binary network, with the packed model's memory.
"""
from __future__ import annotations

import json
from typing import Any, Callable, Dict, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from common import schedules
from common import timing
from common import train
from recu.configs import digits as digits_config
from recu.train import ReCU

DEFAULT_WIDTHS = {'stem': 16, 'stages': [16, 32, 64]}

def build_step(meth, batch: int, hw: int, extra: Optional[Dict[str, Any]] = None,
               num_classes: int = 10):
  """Jitted train and eval steps of ``meth`` (a ``common.train.Method`` built from a config),
  exactly as the engine runs them (``common.train.make_train_step`` / ``make_eval_step``, one
  device), on a random batch ``[batch, hw, hw, 3]``.

  ``extra``: entries that replace the method's initial ``TrainState.extra`` (e.g. a mid-run tau).
  Returns ``(train_step, eval_step, state, batch, eval_batch)``.
  """
  c = meth.config
  meth.setup(train.RunInfo(num_classes=num_classes, image_shape=(hw, hw, 3)))
  net = meth.build_model()
  x = jnp.asarray(np.random.default_rng(0).normal(size=(batch, hw, hw, 3)), jnp.float32)
  y = jnp.asarray(np.arange(batch) % num_classes, jnp.int32)
  v = jax.jit(lambda im: meth.init_variables(net, jax.random.PRNGKey(0), im))(x[:1])
  state_extra = meth.init_extra(v['params'], v['batch_stats'], None)
  state_extra.update({k: jnp.asarray(val, jnp.float32) for k, val in (extra or {}).items()})
  sched = schedules.make_schedule(c.schedule, 0.1, 10, 10)
  tx = schedules.make_optimizer(c.optimizer, sched, meth.decay_mask(v['params']))
  state = train.TrainState(step=jnp.zeros((), jnp.int32), params=v['params'],
                           batch_stats=v['batch_stats'], opt_state=tx.init(v['params']),
                           extra=state_extra, rng=jax.random.key_data(jax.random.PRNGKey(0)))
  step = jax.jit(train.make_train_step(meth, net, tx, axis_name=None))
  ev = jax.jit(train.make_eval_step(meth, net, axis_name=None))
  b = {'image': x, 'label': y}
  eb = dict(b, weight=jnp.ones((batch,), jnp.float32))
  return step, ev, state, b, eb


def seconds_per_call(fn: Callable[[], Any], n: int) -> float:
  """Wall seconds per call of ``fn`` over ``n`` back-to-back calls (``common.timing``)."""
  return timing.loop_seconds(fn, n)


def time_interleaved(nets: Dict[str, Tuple], steps: int, repeats: int) -> Dict[str, float]:
  """Median seconds per train / eval step of each ``build_step`` tuple in ``nets``.

  Every network is compiled and warmed up first; then ``repeats`` rounds time ``steps`` train
  steps and ``steps`` eval steps of each network in turn (ABAB...), so load changes on a shared
  machine hit all alike. Returns ``{f'{key}_train', f'{key}_eval'}``.
  """
  if steps <= 0 or repeats <= 0:
    raise ValueError(f'steps and repeats must be positive; got {steps}, {repeats}')
  states = {k: v[2] for k, v in nets.items()}
  times = {f'{k}_{p}': [] for k in nets for p in ('train', 'eval')}
  for k, (step, ev, st, b, eb) in nets.items():   # compile + warm up
    s, _ = step(st, b)
    jax.block_until_ready(ev(s, eb))
    states[k] = s
  for _ in range(repeats):
    for k, (step, ev, _, b, eb) in nets.items():
      def train_once(k=k, step=step, b=b):
        states[k], m = step(states[k], b)
        return m
      times[f'{k}_train'].append(seconds_per_call(train_once, steps))
      times[f'{k}_eval'].append(seconds_per_call(lambda k=k, ev=ev, eb=eb: ev(states[k], eb),
                                                 steps))
  return {k: float(np.median(v)) for k, v in times.items()}


def _recu(model: str, widths, binarizer: str):
  c = digits_config.get_config()
  c.model.name = model
  c.model.widths = widths
  c.method.weight_binarizer = binarizer
  return ReCU(c)


def bench(model: str = 'recu_resnet20', widths=None, batch: int = 128, hw: int = 32,
          steps: int = 20, repeats: int = 3):
  """Seconds per train and eval step of the BNN and the FP network, and their ratios.

  ``widths``: the model's width config (None: ``{'stem': 16, 'stages': [16, 32, 64]}``).
  Returns ``{'bnn_train', 'fp_train', 'bnn_eval', 'fp_eval', 'bnn_over_fp_train',
  'bnn_over_fp_eval'}`` (medians over ``repeats`` interleaved rounds of ``steps`` steps).
  """
  if steps <= 0 or repeats <= 0 or batch <= 0:
    raise ValueError(f'steps, repeats and batch must be positive; got {steps}, {repeats}, {batch}')
  widths = DEFAULT_WIDTHS if widths is None else widths
  # tau = 0.9: a mid-run value, so the clamp is active in the timed BNN step.
  nets = {k: build_step(_recu(model, widths, b), batch, hw, extra={'tau': 0.9})
          for k, b in (('bnn', 'recu'), ('fp', 'none'))}
  out = time_interleaved(nets, steps, repeats)
  out['bnn_over_fp_train'] = out['bnn_train'] / out['fp_train']
  out['bnn_over_fp_eval'] = out['bnn_eval'] / out['fp_eval']
  return out



# --- the bit-packed binary kernel (xla_ext.binconv) against XLA's float32 conv -----------------

# The binary convs of the papers' networks: (layer, input hw, C_in, C_out, kernel, stride).
BINARY_LAYER_SHAPES = {
    # ImageNet ResNet-18 at 224 (both papers): the 3x3 convs of the four stages.
    'resnet18_imagenet': [('layer1 3x3', 56, 64, 64, 3, 1), ('layer2_0 3x3/2', 56, 64, 128, 3, 2),
                          ('layer2 3x3', 28, 128, 128, 3, 1),
                          ('layer3_0 3x3/2', 28, 128, 256, 3, 2),
                          ('layer3 3x3', 14, 256, 256, 3, 1),
                          ('layer4_0 3x3/2', 14, 256, 512, 3, 2),
                          ('layer4 3x3', 7, 512, 512, 3, 1)],
    # SiMaN's CIFAR ResNet-18: the binarized 1x1 stride-2 shortcuts.
    'resnet18_cifar_shortcut': [('shortcut 1x1/2 64-128', 32, 64, 128, 1, 2),
                                ('shortcut 1x1/2 128-256', 16, 128, 256, 1, 2),
                                ('shortcut 1x1/2 256-512', 8, 256, 512, 1, 2)],
    # CIFAR ResNet-20 (16/32/64 at 32x32).
    'resnet20_cifar': [('layer1 3x3', 32, 16, 16, 3, 1), ('layer2_0 3x3/2', 32, 16, 32, 3, 2),
                       ('layer2 3x3', 16, 32, 32, 3, 1), ('layer3_0 3x3/2', 16, 32, 64, 3, 2),
                       ('layer3 3x3', 8, 64, 64, 3, 1)],
    # VGG-Small (128-128-256-256-512-512 at 32x32; the max-pools halve the map after conv1/3).
    'vgg_small_cifar': [('conv1', 32, 128, 128, 3, 1), ('conv2', 16, 128, 256, 3, 1),
                        ('conv3', 16, 256, 256, 3, 1), ('conv4', 8, 256, 512, 3, 1),
                        ('conv5', 8, 512, 512, 3, 1)],
}


def _kernel_isas(isas):
  from xla_ext import binconv
  have = binconv.supported_isas()
  isas = [i for i in have if i != 'generic'] if isas is None else list(isas)
  bad = [i for i in isas if i not in have]
  if bad:
    raise ValueError(f'isa {bad[0]!r} is not available on this CPU; it has {list(have)}')
  return isas


def bench_binary_layers(nets=('resnet18_imagenet', 'resnet18_cifar_shortcut', 'resnet20_cifar',
                              'vgg_small_cifar'), batches=(1, 8), isas=None, repeats: int = 5,
                        min_seconds: float = 0.02, clock: str = 'wall'):
  """Per-layer seconds of XLA's float32 conv and of the binary kernel on the same layer.

  For each layer of :data:`BINARY_LAYER_SHAPES` ``nets`` and each batch: ``float`` is
  ``lax.conv_general_dilated`` of a float32 ``[B, H, W, C_in]`` input with a float32 ``{-1, +1}``
  kernel (what the simulated model runs), jitted; for every ISA, ``binary`` is
  ``xla_ext.binconv.binary_conv2d`` of the packed input with the packed kernel and the alpha
  epilogue, and ``binary_with_pack`` the same from the float input, including its
  ``pack_bits`` pass. All of one layer are timed in interleaved rounds (``common.timing``).

  ``clock``: 'wall' (both sides on every core, wall time) or 'cpu' (process CPU time, the kernel
  on one thread, XLA's conv as XLA runs it): the work each side does, which a machine shared with
  other jobs distorts far less than wall time (a descheduled thread stalls a 2-thread wall time,
  not a CPU time). Under 'cpu' run with ``XLA_FLAGS=--xla_cpu_multi_thread_eigen=false`` so that
  XLA's conv is single-threaded too (otherwise its worker threads' spin-waits count against it).

  Returns:
    one dict per (layer, batch, isa): ``net, layer, batch, isa, float_ms, binary_ms,
    binary_with_pack_ms, speedup, speedup_with_pack``.
  """
  import time  # pylint: disable=g-import-not-at-top
  from xla_ext import binconv
  isas = _kernel_isas(isas)
  if clock not in ('wall', 'cpu'):
    raise ValueError(f"clock must be 'wall' or 'cpu'; got {clock!r}")
  threads = 1 if clock == 'cpu' else 0
  rng = np.random.default_rng(0)
  rows = []
  for net in nets:
    if net not in BINARY_LAYER_SHAPES:
      raise ValueError(f'unknown net {net!r}; allowed: {list(BINARY_LAYER_SHAPES)}')
    for name, hw, ci, co, k, s in BINARY_LAYER_SHAPES[net]:
      w = jnp.asarray(np.where(rng.random((k, k, ci, co)) < 0.5, -1.0, 1.0), jnp.float32)
      packed = binconv.pack_weights(w)
      alpha = jnp.asarray(rng.uniform(0.5, 1.5, co), jnp.float32)
      pad = (k - 1) // 2
      fconv = jax.jit(lambda x, w, s=s, pad=pad: jax.lax.conv_general_dilated(
          x, w, (s, s), [(pad, pad)] * 2, dimension_numbers=('NHWC', 'HWIO', 'NHWC')))
      for b in batches:
        x = jnp.asarray(rng.standard_normal((b, hw, hw, ci)), jnp.float32)
        xp = binconv.pack_bits(x)
        fns = {'float': lambda x=x, w=w, f=fconv: f(x, w)}
        for isa in isas:
          conv = jax.jit(lambda xp, p, a, s=s, isa=isa: binconv.binary_conv2d(
              xp, p, a, stride=s, isa=isa, num_threads=threads))
          both = jax.jit(lambda x, p, a, s=s, isa=isa: binconv.binary_conv2d(
              binconv.pack_bits(x), p, a, stride=s, isa=isa, num_threads=threads))
          fns[isa] = lambda f=conv, xp=xp: f(xp, packed, alpha)
          fns[isa + '+pack'] = lambda f=both, x=x: f(x, packed, alpha)
        t = timing.time_interleaved(fns, repeats=repeats, min_seconds=min_seconds,
                                    clock=time.process_time if clock == 'cpu' else time.perf_counter)
        for isa in isas:
          rows.append({'net': net, 'layer': name, 'batch': b, 'isa': isa, 'clock': clock,
                       'shape': f'{hw}x{hw} {ci}->{co} {k}x{k}/{s}',
                       'float_ms': 1e3 * t['float'].median, 'binary_ms': 1e3 * t[isa].median,
                       'binary_with_pack_ms': 1e3 * t[isa + '+pack'].median,
                       'speedup': t['float'].median / t[isa].median,
                       'speedup_with_pack': t['float'].median / t[isa + '+pack'].median})
  return rows


def random_trained_variables(model, image_shape, seed: int = 0):
  """Variables of ``model`` as after training, for timing: its init plus random BatchNorm
  statistics and a small perturbation of every parameter (so that gamma = 1e-8 of the ImageNet
  BatchNorms does not zero the binary branches). Returns ``{'params', 'batch_stats'}``."""
  rng = np.random.default_rng(seed)
  x = jnp.zeros((1,) + tuple(image_shape), jnp.float32)
  v = jax.jit(lambda im: model.init({'params': jax.random.PRNGKey(seed)}, im, train=False))(x)
  bs = jax.tree.map(lambda a: a + jnp.asarray(rng.uniform(0.2, 1.0, a.shape), jnp.float32),
                    v.get('batch_stats', {}))
  params = jax.tree.map(lambda a: a + jnp.asarray(0.1 * rng.standard_normal(a.shape), a.dtype),
                        v['params'])
  return {'params': params, 'batch_stats': bs}


def bench_binary_end_to_end(fns: Dict[str, Callable], image_shape, batches=(1,),
                            repeats: int = 5, min_seconds: float = 0.1, clock: str = 'wall'):
  """End-to-end seconds per forward of several ``fn(images) -> logits`` on random images.

  ``fns``: e.g. ``{'binary': exported, 'float': fp_forward, 'simulated': sim_forward}``, all
  timed in interleaved rounds per batch (``common.timing``) in wall time or, ``clock='cpu'``,
  process CPU time (:func:`bench_binary_layers`). Returns one dict per batch: ``batch``,
  ``clock`` and ``<name>_ms`` for every fn.
  """
  import time  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  rows = []
  for b in batches:
    x = jnp.asarray(rng.standard_normal((b,) + tuple(image_shape)), jnp.float32)
    t = timing.time_interleaved({k: (lambda f=f: f(x)) for k, f in fns.items()},
                                repeats=repeats, min_seconds=min_seconds,
                                clock=time.process_time if clock == 'cpu' else time.perf_counter)
    rows.append({'batch': b, 'clock': clock, **{f'{k}_ms': 1e3 * v.median for k, v in t.items()}})
  return rows


def xla_conv_jit(f: Callable) -> Callable:
  """``f`` jitted and traced with XLA's own convolutions (``common.models.layers.cpu_conv(False)``,
  what ``COMPRESS_JAX_CPU_CONV=0`` gives), one compilation per input shape: the float baseline
  as it ran before the oneDNN kernels, side by side with the default one in the same process."""
  from common.models import layers
  jf, compiled = jax.jit(f), {}

  def g(x):
    key = (tuple(x.shape), str(x.dtype))
    if key not in compiled:
      with layers.cpu_conv(False):
        compiled[key] = jf.lower(x).compile()
    return compiled[key](x)
  return g


def end_to_end_rows(exported, fns: Dict[str, Callable], model: str, hw: int, batches,
                    repeats: int, clock: str = 'wall'):
  """:func:`bench_binary_end_to_end` of ``{'binary': exported, **fns}`` plus ``model, hw, isa,
  memory`` and ``speedup_vs_<name>`` for every other fn (``float``: the default convs, oneDNN on
  CPU; ``float_xla``: XLA's; ``simulated``: the float {-1, +1} network)."""
  rows = bench_binary_end_to_end({'binary': exported, **fns}, (hw, hw, 3), batches, repeats,
                                 clock=clock)
  for r in rows:
    r.update(model=model, hw=hw, isa=exported.isa, memory=exported.memory(),
             **{f'speedup_vs_{k}': r[f'{k}_ms'] / r['binary_ms'] for k in fns})
  return rows


def recu_end_to_end(model: str = 'recu_resnet18', widths=None, hw: int = 224, batches=(1,),
                    isa: str = 'auto', repeats: int = 5, clock: str = 'wall'):
  """The exported binary ReCU network against the same graph in full precision
  (``binary=False``: plain float convs, no binarizer, no alpha; with the default convs and with
  XLA's) and against the simulated binary network (float convs of ``{-1, +1}``), side by side;
  ``clock`` as :func:`bench_binary_layers`. Returns :func:`end_to_end_rows`."""
  from common import models
  from recu.export_binary import export_binary
  from recu.train import binarize_params
  shape = (hw, hw, 3)
  bnn = models.get_model(model, 1000 if 'imagenet' in model or hw >= 128 else 10, widths=widths)
  fp = models.get_model(model, 1000 if 'imagenet' in model or hw >= 128 else 10, widths=widths,
                        binary=False)
  v = random_trained_variables(bnn, shape)
  vf = random_trained_variables(fp, shape)
  exported = export_binary(bnn, v, isa=isa, num_threads=1 if clock == 'cpu' else 0)
  eff = {'params': binarize_params(v['params'], 1.0), 'batch_stats': v['batch_stats']}
  fwd = lambda x: fp.apply(vf, x, train=False)
  fns = {'float': jax.jit(fwd), 'float_xla': xla_conv_jit(fwd),
         'simulated': jax.jit(lambda x: bnn.apply(eff, x, train=False))}
  return end_to_end_rows(exported, fns, model, hw, batches, repeats, clock)


def print_binary_rows(layer_rows, e2e_rows, cpu: str = '') -> None:
  """The per-layer table, the median speedups per (net, batch, isa), and the end-to-end rows."""
  clocks = sorted({r.get('clock', 'wall') for r in layer_rows + e2e_rows})
  print(f'binary conv vs XLA float32 conv, side by side{" on " + cpu if cpu else ""} '
        f'({"/".join(clocks) or "wall"} time)')
  if layer_rows:
    print('| net | layer | shape | batch | isa | float ms | binary ms | speedup | '
          'with pack ms | speedup |')
    print('|---|---|---|---|---|---|---|---|---|---|')
  for r in layer_rows:
    print(f"| {r['net']} | {r['layer']} | {r['shape']} | {r['batch']} | {r['isa']} | "
          f"{r['float_ms']:.3f} | {r['binary_ms']:.3f} | {r['speedup']:.1f}x | "
          f"{r['binary_with_pack_ms']:.3f} | {r['speedup_with_pack']:.1f}x |")
  groups = {}
  for r in layer_rows:
    groups.setdefault((r['net'], r['batch'], r['isa']), []).append(r)
  for (net, b, isa), rs in groups.items():
    print(f'median speedup {net} batch {b} isa {isa}: '
          f'{np.median([r["speedup"] for r in rs]):.2f}x conv, '
          f'{np.median([r["speedup_with_pack"] for r in rs]):.2f}x with its pack pass')
  for r in e2e_rows:
    mem = r['memory']
    print(f"end to end {r['model']} {r['hw']}x{r['hw']} batch {r['batch']} isa {r['isa']} "
          f"({r['clock']} time): "
          f"binary {r['binary_ms']:.2f} ms, float {r['float_ms']:.2f} ms (XLA convs "
          f"{r['float_xla_ms']:.2f} ms), simulated {r['simulated_ms']:.2f} ms: "
          f"{r['speedup_vs_float']:.2f}x vs float ({r['speedup_vs_float_xla']:.2f}x vs XLA convs), "
          f"{r['speedup_vs_simulated']:.2f}x vs simulated; weights "
          f"{mem['total_bytes'] / 2**20:.2f} MiB packed (binary "
          f"{mem['packed_weight_bytes'] / 2**20:.2f} + float {mem['fp_bytes'] / 2**20:.2f}) vs "
          f"{mem['simulated_total_bytes'] / 2**20:.2f} MiB float32")



def parse_widths(text: str):
  """``--widths`` as JSON: ``'{"stem": 16, "stages": [16, 32, 64]}'`` or ``'[16, 16, ...]'``."""
  try:
    return json.loads(text)
  except json.JSONDecodeError as e:
    raise ValueError(f'--widths must be JSON (a dict or a list of ints); got {text!r}') from e



def add_binary_args(p, e2e_default: str) -> None:
  """The ``--binary`` options of ``recu.bench`` / ``siman.bench`` (module docstring)."""
  p.add_argument('--binary', action='store_true',
                 help='bit-packed kernel vs float32 conv: per layer and end to end')
  p.add_argument('--nets', default=','.join(BINARY_LAYER_SHAPES),
                 help=f'layer sets, comma-separated, of {list(BINARY_LAYER_SHAPES)} ("" = none)')
  p.add_argument('--batches', default='1,8', help='per-layer batch sizes')
  p.add_argument('--isas', default='', help='kernel ISAs (default: every SIMD one this CPU has)')
  p.add_argument('--e2e_model', default=e2e_default, help='end-to-end network ("" = none)')
  p.add_argument('--e2e_hw', type=int, default=224)
  p.add_argument('--e2e_batches', default='1')
  p.add_argument('--clock', default='wall', choices=('wall', 'cpu'),
                 help='wall time on every core, or CPU time with the kernel on one thread '
                      '(bench_binary_layers; run with XLA_FLAGS=--xla_cpu_multi_thread_eigen=false)')
  p.add_argument('--json_out', default='', help='also write the rows as JSON here')


def _ints(p, text: str, what: str):
  try:
    out = [int(t) for t in text.split(',') if t.strip()]
  except ValueError:
    p.error(f'{what} must be comma-separated positive ints; got {text!r}')
  if any(v <= 0 for v in out):
    p.error(f'{what} must be positive; got {text!r}')
  return out


def run_binary(p, a, end_to_end: Callable):
  """``--binary``: the per-layer rows, the end-to-end rows of ``end_to_end(model, widths=None,
  hw, batches, isa)``, printed (and written to ``--json_out``); returns both."""
  nets = [n for n in a.nets.split(',') if n.strip()]
  isas = [i for i in a.isas.split(',') if i.strip()] or None
  try:
    layers = bench_binary_layers(nets, _ints(p, a.batches, '--batches'), isas,
                                 repeats=a.repeats + 2, clock=a.clock)
    e2e = []
    if a.e2e_model:
      for isa in (isas or _kernel_isas(None)):
        e2e += end_to_end(a.e2e_model, None, a.e2e_hw, _ints(p, a.e2e_batches, '--e2e_batches'),
                          isa, repeats=a.repeats + 2, clock=a.clock)
  except ValueError as e:
    p.error(str(e))
  print_binary_rows(layers, e2e, timing.cpu_name())
  if a.json_out:
    with open(a.json_out, 'w') as f:
      json.dump({'cpu': timing.cpu_name(), 'layers': layers, 'end_to_end': e2e}, f, indent=1)
  return {'layers': layers, 'end_to_end': e2e}


def main(argv=None):
  """Command line (module docstring): prints the two networks' step times and the ratios;
  returns the :func:`bench` dict."""
  import argparse
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--model', default='recu_resnet20')
  p.add_argument('--widths', default=json.dumps(DEFAULT_WIDTHS), help='width config as JSON')
  p.add_argument('--batch', type=int, default=128)
  p.add_argument('--hw', type=int, default=32)
  p.add_argument('--steps', type=int, default=20)
  p.add_argument('--repeats', type=int, default=3)
  add_binary_args(p, 'recu_resnet18')
  a = p.parse_args(argv)
  try:
    widths = parse_widths(a.widths)
  except ValueError as e:
    p.error(str(e))
  if a.binary:
    return run_binary(p, a, recu_end_to_end)
  r = bench(a.model, widths, a.batch, a.hw, a.steps, a.repeats)
  for k in ('bnn', 'fp'):
    print(f'{k}: train {1e3 * r[k + "_train"]:.2f} ms/step, eval {1e3 * r[k + "_eval"]:.2f} '
          f'ms/step ({a.model}, widths {widths}, batch {a.batch}, {a.hw}x{a.hw})')
  print(f'bnn_over_fp_train={r["bnn_over_fp_train"]:.3f} '
        f'bnn_over_fp_eval={r["bnn_over_fp_eval"]:.3f}')
  return r


if __name__ == '__main__':
  main()
