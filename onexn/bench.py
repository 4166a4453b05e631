"""1xN block-sparse GEMM benchmark: the xla_ext kernel next to XLA dense and scipy.sparse, one run.

  python -m onexn.bench [--quick] [--models=mobilenet_v2,mobilenet_v1,resnet50] [--n=4,8,16]
                        [--p=0.3,0.5,0.75,0.9] [--batches=1,8] [--repeats=7] [--json=PATH]

Spec ``shared/papers/pruning-dcff-1xn-whitebox-jackpot.md`` §2.8 (benchmark side by side) and
§2.6 (the paper's latency claims, Fig. 5). For every 1x1-conv GEMM of the real networks at 224x224
input whose output is 56x56, 28x28 or 14x14 (``common.models.layer_specs``; M = B*H*W rows of the
NHWC activation, K = C_in, C_out columns), at batch 1 and 8, every block size N and pruning rate p
(uniform random 1xN blocks, exactly ``int(#blocks * p)`` pruned):

  dense    ``jnp.dot(x, w)`` under jit (XLA:CPU, all its threads);
  1xN      ``onexn.sparse_matmul`` on the packed weight (the FFI kernel, all of XLA's threads);
  bsr      scipy.sparse BSR with (N x 1) blocks, ``W^T @ X^T`` (its natural channels-first
           layout, X^T prepared outside the timing; scipy is single-threaded);
  csr      scipy.sparse CSR with the same number of nonzeros, unstructured.

Timing: warm-up (compile + 2 calls), then ``--repeats`` rounds in which dense and 1xN are timed
alternately (each a loop of calls lasting >= 10 ms, garbage collection off, ``block_until_ready``
at the end), so load from other processes hits both alike; the medians are reported. Both sides
pay the same per-call costs (dispatch, a fresh output buffer). Ratios are printed, not asserted.

The summary lines are the issue's claims: median 1xN speedup over dense on the MobileNet-V2 shapes
at N = 4 per p (target >= 1.6x / 3x / 6x at p = 0.5 / 0.75 / 0.9; break-even at p <= 0.3), and the
1xN speedup over scipy BSR (target >= 3x at every p).

``end_to_end()`` (a separate section at the end) times the whole MobileNet-V2 dense vs its 1xN
export when ``onexn.export.end_to_end_latency`` is available.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import time
from typing import Callable, Dict, List, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

import xla_ext
from onexn import sparse

RESOLUTIONS = (56, 28, 14)


def gemm_shapes(model_name: str) -> List[Tuple[int, int, int]]:
  """Distinct (C_in, C_out, H*W) of the model's 1x1 convs at the benchmark resolutions."""
  from common import models  # pylint: disable=g-import-not-at-top
  specs = models.layer_specs(model_name, input_hw=(224, 224), num_classes=1000)
  shapes = {(s.in_ch, s.out_ch, s.out_hw[0] * s.out_hw[1]) for s in specs
            if s.kind == 'conv' and tuple(s.kernel) == (1, 1) and s.groups == 1
            and s.out_hw[0] in RESOLUTIONS}
  return sorted(shapes, key=lambda t: (-t[2], t[0], t[1]))


def random_block_mask(rng: np.random.Generator, k: int, m: int, n: int, p: float) -> np.ndarray:
  """[K, M] bool, 1xN blocks, exactly int(#blocks * p) pruned, uniformly at random."""
  blocks = k * (m // n)
  keep = np.ones(blocks, bool)
  keep[rng.permutation(blocks)[:int(blocks * p)]] = False
  return np.repeat(keep.reshape(k, m // n), n, axis=1)


def _loop_seconds(fn: Callable, calls: int) -> float:
  # As timeit does: no garbage-collection pauses inside the timed loop (JAX call overhead
  # allocates Python objects, and a collection costs more than a small GEMM).
  gc_was_enabled = gc.isenabled()
  gc.disable()
  try:
    t = time.perf_counter()
    out = None
    for _ in range(calls):
      out = fn()
    jax.block_until_ready(out)
    return (time.perf_counter() - t) / calls
  finally:
    if gc_was_enabled:
      gc.enable()


def _calls_for(fn: Callable, min_seconds: float) -> int:
  one = _loop_seconds(fn, 1)
  return max(1, int(min_seconds / max(one, 1e-7)))


def time_interleaved(fns: Sequence[Callable], repeats: int, min_seconds: float = 0.01) -> List[float]:
  """Median seconds per call of each fn, measured in alternating rounds."""
  for fn in fns:  # compile + warm caches
    jax.block_until_ready(fn())
    jax.block_until_ready(fn())
  calls = [_calls_for(fn, min_seconds) for fn in fns]
  samples = [[] for _ in fns]
  for _ in range(repeats):
    for i, fn in enumerate(fns):
      samples[i].append(_loop_seconds(fn, calls[i]))
  return [statistics.median(s) for s in samples]


def time_host(fn: Callable, repeats: int, min_seconds: float = 0.01) -> float:
  """Median seconds per call of a host (NumPy/SciPy) function."""
  fn()
  calls = _calls_for(fn, min_seconds)
  return statistics.median(_loop_seconds(fn, calls) for _ in range(repeats))


def bench_shape(k: int, m: int, pixels: int, batch: int, ns: Sequence[int], ps: Sequence[float],
                repeats: int, with_scipy: bool, rng: np.random.Generator) -> List[Dict]:
  import scipy.sparse as sp  # pylint: disable=g-import-not-at-top
  rows = batch * pixels
  x = jnp.asarray(rng.standard_normal((rows, k)), jnp.float32)
  w = rng.standard_normal((k, m)).astype(np.float32)
  wj = jnp.asarray(w)
  dense = jax.jit(jnp.dot)
  sparse_fn = jax.jit(sparse.sparse_matmul)
  xt = np.ascontiguousarray(np.asarray(x).T)  # scipy's natural layout, outside the timing
  flops = 2.0 * rows * k * m
  out = []
  for n in ns:
    if m % n:
      continue  # 1xN blocks need C_out % N == 0 (e.g. 24 channels at N = 16): not applicable
    for p in ps:
      mask = random_block_mask(rng, k, m, n, p)
      packed = sparse.pack(w, mask, n)
      t_dense, t_sparse = time_interleaved([lambda: dense(x, wj), lambda: sparse_fn(x, packed)],
                                           repeats)
      row = {'k': k, 'm': m, 'pixels': pixels, 'batch': batch, 'rows': rows, 'n': n, 'p': p,
             'density': packed.density, 'dense_us': 1e6 * t_dense, 'sparse_us': 1e6 * t_sparse,
             'speedup': t_dense / t_sparse, 'dense_gflops': flops / t_dense / 1e9,
             'effective_gflops': flops / t_sparse / 1e9,
             'useful_gflops': 2.0 * rows * packed.nnzb * n / t_sparse / 1e9}
      if with_scipy:
        wm = w * mask
        bsr = sp.bsr_matrix(wm.T, blocksize=(n, 1))
        flat = rng.permutation(k * m)[:int(mask.sum())]
        wu = np.zeros(k * m, np.float32)
        wu[flat] = w.reshape(-1)[flat]
        csr = sp.csr_matrix(wu.reshape(k, m).T)
        sr = max(3, repeats // 2)
        row['bsr_us'] = 1e6 * time_host(lambda: bsr @ xt, sr)
        row['csr_us'] = 1e6 * time_host(lambda: csr @ xt, sr)
        row['vs_bsr'] = row['bsr_us'] / row['sparse_us']
        row['vs_csr'] = row['csr_us'] / row['sparse_us']
      out.append(row)
  return out


def _fmt_row(r: Dict) -> str:
  s = (f"{r['k']:5d} {r['m']:5d} {r['rows']:6d} {r['n']:3d} {r['p']:5.2f} | "
       f"{r['dense_us']:9.1f} {r['dense_gflops']:6.1f} | {r['sparse_us']:9.1f} "
       f"{r['effective_gflops']:7.1f} {r['speedup']:6.2f}x")
  if 'bsr_us' in r:
    s += f" | {r['bsr_us']:9.1f} {r['vs_bsr']:6.1f}x | {r['csr_us']:9.1f} {r['vs_csr']:6.1f}x"
  return s


HEADER = (f"{'K':>5} {'C_out':>5} {'M':>6} {'N':>3} {'p':>5} | {'dense us':>9} {'GF/s':>6} | "
          f"{'1xN us':>9} {'eff GF/s':>7} {'vs dense':>7} | {'bsr us':>9} {'1xN/bsr':>7} | "
          f"{'csr us':>9} {'1xN/csr':>7}")


def summarize(rows: List[Dict], ps: Sequence[float]) -> Dict:
  """The issue's claims, on the MobileNet-V2 rows at N = 4 (medians over shapes and batches)."""
  v2 = [r for r in rows if r['model'] == 'mobilenet_v2' and r['n'] == 4]
  summary = {}
  for p in ps:
    at = [r for r in v2 if r['p'] == p]
    if not at:
      continue
    entry = {'median_speedup': statistics.median(r['speedup'] for r in at),
             'min_speedup': min(r['speedup'] for r in at), 'cases': len(at)}
    if 'vs_bsr' in at[0]:
      entry['median_vs_bsr'] = statistics.median(r['vs_bsr'] for r in at)
      entry['min_vs_bsr'] = min(r['vs_bsr'] for r in at)
    summary[p] = entry
  return summary


def print_summary(summary: Dict) -> None:
  targets = {0.3: 1.0, 0.5: 1.6, 0.75: 3.0, 0.9: 6.0}
  print('\n== Summary: MobileNet-V2 1x1 GEMMs, N=4, fp32 (medians over shapes x batches) ==')
  for p, e in summary.items():
    line = (f"p={p:4.2f}: 1xN vs XLA dense median {e['median_speedup']:5.2f}x (min "
            f"{e['min_speedup']:5.2f}x, {e['cases']} cases)")
    if p in targets:
      line += f"  [issue target >= {targets[p]:.1f}x]"
    if 'median_vs_bsr' in e:
      line += (f" | vs scipy BSR median {e['median_vs_bsr']:6.1f}x (min {e['min_vs_bsr']:5.1f}x)"
               f"  [target >= 3x]")
    print(line)
  even = [p for p, e in summary.items() if e['median_speedup'] >= 1.0]
  print(f"break-even (median speedup >= 1) at p = {min(even) if even else 'none of'} "
        f"{'' if even else list(summary)}  [issue target: p <= 0.3]")


def end_to_end(quick: bool = False) -> List[Dict]:
  """Whole-network latency, dense vs 1xN export (owned by onexn.export; skipped if absent)."""
  print('\n== End to end: MobileNet-V2 224x224, batch 1, dense vs 1x4-sparse export ==')
  try:
    from onexn import export  # pylint: disable=g-import-not-at-top
    latency = export.end_to_end_latency
  except (ImportError, AttributeError) as e:
    print(f'skipped: onexn.export.end_to_end_latency is not available ({e})')
    return []
  rows = latency(repeats=5 if quick else 20)
  for r in rows:
    print('  '.join(f'{k}={v:.3f}' if isinstance(v, float) else f'{k}={v}' for k, v in r.items()))
  return rows


def main(argv=None) -> Dict:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--quick', action='store_true',
                      help='MobileNet-V2 shapes, batch 1, N=4 only, fewer repeats (~1 minute)')
  parser.add_argument('--models', default='mobilenet_v2,mobilenet_v1,resnet50')
  parser.add_argument('--n', default='4,8,16', help='block sizes N')
  parser.add_argument('--p', default='0.3,0.5,0.75,0.9', help='pruning rates p')
  parser.add_argument('--batches', default='1,8')
  parser.add_argument('--repeats', type=int, default=7, help='timed rounds (median reported)')
  parser.add_argument('--no_scipy', action='store_true', help='skip the scipy.sparse baselines')
  parser.add_argument('--no_end_to_end', action='store_true')
  parser.add_argument('--json', default='', help='also write all rows to this file')
  parser.add_argument('--seed', type=int, default=0)
  args = parser.parse_args(argv)
  models = args.models.split(',')
  ns = [int(v) for v in args.n.split(',')]
  ps = [float(v) for v in args.p.split(',')]
  batches = [int(v) for v in args.batches.split(',')]
  repeats = args.repeats
  if args.quick:
    models, ns, batches, repeats = ['mobilenet_v2'], [4], [1], max(3, args.repeats // 2)
  if not xla_ext.available():
    print(f'the xla_ext kernel is not available ({xla_ext.load_error()}); nothing to benchmark')
    return {}
  print(f'jax {jax.__version__}, devices {jax.devices()}, {os.cpu_count()} CPUs '
        f'(affinity {len(os.sched_getaffinity(0))}), kernel ISA {xla_ext.best_isa()}, '
        f'fp32, {repeats} timed rounds')
  tiny = jnp.ones((8, 8), jnp.float32)
  noop = jax.jit(lambda a: a + 1.0)
  overhead_us = 1e6 * time_interleaved([lambda: noop(tiny)], repeats)[0]
  print(f'per-call overhead of a trivial jitted op: {overhead_us:.1f} us (part of every dense and '
        f'1xN time below; inside a jitted network it is paid once, not per layer)')
  rng = np.random.default_rng(args.seed)
  rows = []
  for model in models:
    print(f'\n== {model}: 1x1-conv GEMMs (K = C_in, M = batch*H*W) ==\n{HEADER}')
    for batch in batches:
      for k, m, pixels in gemm_shapes(model):
        for r in bench_shape(k, m, pixels, batch, ns, ps, repeats, not args.no_scipy, rng):
          r['model'] = model
          rows.append(r)
          print(_fmt_row(r), flush=True)
  summary = summarize(rows, ps)
  print_summary(summary)
  e2e = [] if args.no_end_to_end else end_to_end(args.quick)
  result = {'rows': rows, 'summary': {str(k): v for k, v in summary.items()}, 'end_to_end': e2e,
            'isa': xla_ext.best_isa(), 'jax': jax.__version__, 'call_overhead_us': overhead_us}
  if args.json:
    with open(args.json, 'w') as f:
      json.dump(result, f, indent=1)
  return result


if __name__ == '__main__':
  main(sys.argv[1:])
