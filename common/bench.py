"""Train-step throughput of the engine on this machine, and XLA CPU flag variants side by side.

  python -m common.bench [--models=resnet20,resnet56] [--batch=128] [--steps=8] [--variants=all]
  python -m common.bench --engine_overhead
  python -m common.bench --checkpoint --models=resnet20   # checkpoint verification cost

First, the engine's own cost: one epoch of ``common.train.run`` on digits against the same number
of bare calls of its compiled step on the same batches (``engine_overhead``). Then, for each model: compile time and images/s of the jitted engine train step (the same
``make_train_step`` every paper uses: forward, backward, coupled-decay SGD update) at the given
batch. Each XLA flag variant runs in its own subprocess (XLA reads ``XLA_FLAGS`` once at start-up)
and is printed as a ratio to the default flags measured in the same run. Printed, not asserted.
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


def _cpu_name() -> str:
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        if line.startswith('model name'):
          return line.split(':', 1)[1].strip()
  except OSError:
    pass
  import platform
  return platform.processor() or 'unknown CPU'


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
  ap.add_argument('--models', default='resnet20,resnet56')
  ap.add_argument('--batch', type=int, default=128)
  ap.add_argument('--steps', type=int, default=8)
  ap.add_argument('--variants', default='all', help='comma list of ' + ','.join(VARIANTS))
  ap.add_argument('--child', default='', help=argparse.SUPPRESS)
  ap.add_argument('--engine_overhead', action='store_true',
                  help='only the epoch-of-run vs bare-steps comparison')
  ap.add_argument('--checkpoint', action='store_true',
                  help='only print the checkpoint save+restore cost of verification, per model')
  args = ap.parse_args(argv)
  if args.child:
    print(json.dumps(measure(args.child, args.batch, args.steps)))
    return 0
  if args.checkpoint:
    for model in args.models.split(','):
      print_checkpoint_overhead(model)
    return 0
  r = engine_overhead()
  print(f'engine overhead ({_cpu_name()}): one epoch of common.train.run on digits (ResNet-20, '
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
