"""1xN block-sparse GEMM benchmark: the xla_ext kernel next to XLA dense and scipy.sparse, one run.

  python -m onexn.bench [--quick] [--models=mobilenet_v2,mobilenet_v1,resnet50] [--n=4,8,16]
                        [--p=0.3,0.5,0.75,0.9] [--batches=1,8] [--repeats=7] [--json=PATH]

The kernel side by side with its dense and sparse alternatives, at the shapes behind the paper's
latency claims (Fig. 5: MobileNet-V2 1x4, faster than dense from moderate p on). For every
1x1-conv GEMM of the real networks at 224x224 input whose output is 56x56, 28x28 or 14x14
(``common.models.layer_specs``; K = C_in, C_out columns, P = H*W pixels per image), at batch 1
and 8, every block size N and pruning rate p (uniform random 1xN blocks, exactly
``int(#blocks * p)`` pruned):

  dense    XLA:CPU's dot in both activation layouts, ``jnp.dot(x[B*P, K], w)`` (NHWC) and
           ``einsum(w^T, x[B, K, P])`` (channels-first); the FASTER of the two is the baseline;
  1xN      the FFI kernel on the packed weight: ``onexn.sparse_matmul`` (NHWC, which transposes
           row tiles of x internally) and ``onexn.sparse_matmul_cf`` (channels-first, no
           transposes; the reported 1xN time);
  bsr      scipy.sparse BSR with (N x 1) blocks, ``W^T @ X^T`` (its natural channels-first
           layout; scipy is single-threaded);
  csr      scipy.sparse CSR with the same number of nonzeros, unstructured.

Two timings, both printed:
  in-graph  each op applied ``CHAIN`` times in sequence inside one jitted ``fori_loop`` (each
            application depends on the previous one through an optimization barrier, so XLA
            can neither hoist nor merge them) divided by ``CHAIN``: the op's cost inside a compiled
            network, without Python dispatch. This is the headline ratio;
  per call  one Python call of a jitted function per op, as a user calling it eagerly sees it:
            every call also pays 4-5 us of dispatch and a fresh output buffer, the same on both
            sides, which caps the ratio of small GEMMs (e.g. 27 us dense vs 4-5 us of overhead).
Host memory: ``common.cpu_alloc.retain_freed_memory()`` first (glibc otherwise hands out fresh,
page-faulting memory for every output over 128 KiB, which made single 1xN calls 1.5-3x slower at
random; dense was unaffected).

Timing: warm-up (compile + 2 calls), then ``--repeats`` rounds in which all variants are timed
alternately (each a loop of calls lasting >= 10 ms, garbage collection off, ``block_until_ready``
at the end), so load from other processes hits all alike; medians are reported. Ratios are
printed, not asserted.

The summary lines hold this package's speed targets: median 1xN speedup over dense on the
MobileNet-V2 shapes at N = 4 per p (target >= 1.6x / 3x / 6x at p = 0.5 / 0.75 / 0.9; break-even
at p <= 0.3), and the 1xN speedup over scipy BSR (target >= 3x at every p; per-call times on
both sides).

``end_to_end()`` (a separate section at the end) times the whole MobileNet-V2 dense vs its 1xN
export (``onexn.latency.end_to_end_latency``).
"""
from __future__ import annotations

import json
import os
import statistics
import sys
from typing import Callable, Dict, List, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

import xla_ext
from common import cli, cpu_alloc
from common import timing
from onexn import block_sparse, ops

RESOLUTIONS = (56, 28, 14)
# The networks whose 1x1-conv GEMMs are benchmarked (``--models``).
MODELS = ('mobilenet_v2', 'mobilenet_v1', 'resnet50')
# Applications of an op per jitted call in the in-graph timing.
CHAIN = 16


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


def time_interleaved(fns: Sequence[Callable], repeats: int, min_seconds: float = 0.01) -> List[float]:
  """Median seconds per call of each fn, measured in alternating rounds (``common.timing``)."""
  return [t.median for t in timing.time_interleaved(list(fns), repeats, min_seconds=min_seconds)]


def time_host(fn: Callable, repeats: int, min_seconds: float = 0.01) -> float:
  """Median seconds per call of a host (NumPy/SciPy) function."""
  return timing.time_interleaved([fn], repeats, warmup=1, min_seconds=min_seconds)[0].median


def chained(fn: Callable, out_shape: Tuple[int, ...], times: int = CHAIN) -> Callable:
  """``common.timing.chained``: ``fn`` applied ``times`` times in sequence inside one jit."""
  return timing.chained(fn, out_shape, times)


def bench_shape(k: int, m: int, pixels: int, batch: int, ns: Sequence[int], ps: Sequence[float],
                repeats: int, with_scipy: bool, rng: np.random.Generator) -> List[Dict]:
  """Times one GEMM shape at every (N, p): the fields listed in the module docstring, in us."""
  import scipy.sparse as sp  # pylint: disable=g-import-not-at-top
  rows = batch * pixels
  x = jnp.asarray(rng.standard_normal((rows, k)), jnp.float32)
  x_cf = jnp.asarray(np.asarray(x).reshape(batch, pixels, k).transpose(0, 2, 1))
  w = rng.standard_normal((k, m)).astype(np.float32)
  wj, wtj = jnp.asarray(w), jnp.asarray(np.ascontiguousarray(w.T))
  dense_cf = lambda xc, wt: jnp.einsum('mk,bkp->bmp', wt, xc)
  g_dense = chained(jnp.dot, (rows, m))
  g_dense_cf = chained(dense_cf, (batch, m, pixels))
  g_sparse = chained(ops.sparse_matmul, (rows, m))
  g_sparse_cf = chained(ops.sparse_matmul_cf, (batch, m, pixels))
  c_dense, c_dense_cf = jax.jit(jnp.dot), jax.jit(dense_cf)
  c_sparse_cf = jax.jit(ops.sparse_matmul_cf)
  xt = np.ascontiguousarray(np.asarray(x).T)  # scipy's natural layout, outside the timing
  flops = 2.0 * rows * k * m
  out = []
  for n in ns:
    if m % n:
      continue  # 1xN blocks need C_out % N == 0 (e.g. 24 channels at N = 16): not applicable
    for p in ps:
      mask = random_block_mask(rng, k, m, n, p)
      packed = block_sparse.pack(w, mask, n)
      graph = time_interleaved([lambda: g_dense(x, wj), lambda: g_dense_cf(x_cf, wtj),
                                lambda: g_sparse(x, packed), lambda: g_sparse_cf(x_cf, packed)],
                               repeats)
      d_nhwc, d_cf, s_nhwc, s_cf = (t / CHAIN for t in graph)
      call = time_interleaved([lambda: c_dense(x, wj), lambda: c_dense_cf(x_cf, wtj),
                               lambda: c_sparse_cf(x_cf, packed)], repeats)
      d_best, c_best = min(d_nhwc, d_cf), min(call[0], call[1])
      row = {'k': k, 'm': m, 'pixels': pixels, 'batch': batch, 'rows': rows, 'n': n, 'p': p,
             'density': packed.density,
             'dense_nhwc_us': 1e6 * d_nhwc, 'dense_cf_us': 1e6 * d_cf, 'dense_us': 1e6 * d_best,
             'sparse_nhwc_us': 1e6 * s_nhwc, 'sparse_cf_us': 1e6 * s_cf, 'sparse_us': 1e6 * s_cf,
             'speedup': d_best / s_cf, 'speedup_nhwc': d_best / s_nhwc,
             'call_dense_us': 1e6 * c_best, 'call_sparse_us': 1e6 * call[2],
             'call_speedup': c_best / call[2],
             'dense_gflops': flops / d_best / 1e9, 'effective_gflops': flops / s_cf / 1e9,
             'useful_gflops': 2.0 * rows * packed.nnzb * n / s_cf / 1e9}
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
        # Host calls against per-call kernel times: both pay a Python call, neither a graph.
        row['vs_bsr'] = row['bsr_us'] / row['call_sparse_us']
        row['vs_csr'] = row['csr_us'] / row['call_sparse_us']
      out.append(row)
  return out


def _fmt_row(r: Dict) -> str:
  s = (f"{r['k']:5d} {r['m']:5d} {r['batch']:2d}x{r['pixels']:<5d} {r['n']:3d} {r['p']:5.2f} | "
       f"{r['dense_nhwc_us']:8.1f} {r['dense_cf_us']:8.1f} {r['dense_gflops']:6.1f} | "
       f"{r['sparse_nhwc_us']:8.1f} {r['sparse_cf_us']:8.1f} {r['effective_gflops']:7.1f} "
       f"{r['speedup']:6.2f}x | "
       f"{r['call_dense_us']:8.1f} {r['call_sparse_us']:8.1f} {r['call_speedup']:6.2f}x")
  if 'bsr_us' in r:
    s += f" | {r['bsr_us']:9.1f} {r['vs_bsr']:6.1f}x | {r['csr_us']:9.1f} {r['vs_csr']:6.1f}x"
  return s


HEADER = (f"{'K':>5} {'C_out':>5} {'B x P':>8} {'N':>3} {'p':>5} | in-graph us: {'dense':>5}"
          f" {'(cf)':>8} {'GF/s':>6} | {'1xN':>8} {'1xN cf':>8} {'eff GF/s':>7} {'speedup':>7} | "
          f"per call us: "
          f"{'dense':>3} {'1xN cf':>8} {'speedup':>7} | {'bsr us':>9} {'1xN/bsr':>7} | "
          f"{'csr us':>9} {'1xN/csr':>7}\n(in-graph: dense = NHWC jnp.dot and channels-first "
          f"einsum, the faster is the baseline, GF/s its rate; 1xN = NHWC kernel and "
          f"channels-first kernel, the latter is reported; eff GF/s = the dense GEMM's FLOPs over "
          f"the 1xN time)")


def summarize(rows: List[Dict], ps: Sequence[float]) -> Dict:
  """The speed targets (module docstring) on the MobileNet-V2 rows at N = 4 (medians over shapes
  and batches)."""
  v2 = [r for r in rows if r['model'] == 'mobilenet_v2' and r['n'] == 4]
  summary = {}
  for p in ps:
    at = [r for r in v2 if r['p'] == p]
    if not at:
      continue
    entry = {'median_speedup': statistics.median(r['speedup'] for r in at),
             'min_speedup': min(r['speedup'] for r in at), 'cases': len(at)}
    if 'speedup_nhwc' in at[0]:
      entry['median_speedup_nhwc'] = statistics.median(r['speedup_nhwc'] for r in at)
      entry['median_call_speedup'] = statistics.median(r['call_speedup'] for r in at)
    if 'vs_bsr' in at[0]:
      entry['median_vs_bsr'] = statistics.median(r['vs_bsr'] for r in at)
      entry['min_vs_bsr'] = min(r['vs_bsr'] for r in at)
    summary[p] = entry
  return summary


def print_summary(summary: Dict) -> None:
  targets = {0.3: 1.0, 0.5: 1.6, 0.75: 3.0, 0.9: 6.0}
  print('\n== Summary: MobileNet-V2 1x1 GEMMs, N=4, fp32 (medians over shapes x batches) ==')
  for p, e in summary.items():
    line = (f"p={p:4.2f}: 1xN (channels-first) vs XLA dense, in-graph median "
            f"{e['median_speedup']:5.2f}x (min {e['min_speedup']:5.2f}x, {e['cases']} cases)")
    if p in targets:
      line += f"  [target >= {targets[p]:.1f}x]"
    if 'median_speedup_nhwc' in e:
      line += (f"; NHWC kernel {e['median_speedup_nhwc']:5.2f}x; per call "
               f"{e['median_call_speedup']:5.2f}x")
    if 'median_vs_bsr' in e:
      line += (f" | vs scipy BSR median {e['median_vs_bsr']:6.1f}x (min {e['min_vs_bsr']:5.1f}x)"
               f"  [target >= 3x]")
    print(line)
  even = [p for p, e in summary.items() if e['median_speedup'] >= 1.0]
  print(f"break-even (median speedup >= 1) at p = {min(even) if even else 'none of'} "
        f"{'' if even else list(summary)}  [target: p <= 0.3]")


def end_to_end(quick: bool = False) -> List[Dict]:
  """Whole-network latency, dense vs 1xN export (``onexn.latency.end_to_end_latency``)."""
  from onexn import latency  # pylint: disable=g-import-not-at-top
  print('\n== End to end: MobileNet-V2 224x224, batch 1, dense vs 1x4-sparse export ==')
  rows = latency.end_to_end_latency(repeats=5 if quick else 20)
  for r in rows:
    print('  '.join(f'{k}={v:.3f}' if isinstance(v, float) else f'{k}={v}' for k, v in r.items()))
  return rows


def main(argv=None) -> Dict:
  parser = cli.ArgumentParser(prog='python -m onexn.bench', description=__doc__.split('\n')[0])
  parser.add_argument('--quick', action='store_true',
                      help='MobileNet-V2 shapes, N=4 only, fewer repeats (a few minutes)')
  parser.add_argument('--models', default='mobilenet_v2,mobilenet_v1,resnet50')
  parser.add_argument('--n', default='4,8,16', help='block sizes N')
  parser.add_argument('--p', default='0.3,0.5,0.75,0.9', help='pruning rates p')
  parser.add_argument('--batches', default='1,8')
  parser.add_argument('--repeats', type=int, default=7,
                      help='timed rounds (median reported), >= 1')
  parser.add_argument('--no_scipy', action='store_true', help='skip the scipy.sparse baselines')
  parser.add_argument('--no_end_to_end', action='store_true')
  parser.add_argument('--json', default='', help='also write all rows to this file')
  parser.add_argument('--seed', type=int, default=0)
  args = parser.parse_args(argv)
  models = cli.choices(cli.parse_list(args.models, '--models', str), '--models', MODELS)
  ns = cli.parse_list(args.n, '--n', int, lambda v: v > 0, 'positive integers (block sizes N)')
  ps = cli.parse_list(args.p, '--p', float, lambda v: 0.0 <= v < 1.0,
                      'numbers in [0, 1) (pruning rates)')
  batches = cli.parse_list(args.batches, '--batches', int, lambda v: v > 0, 'positive integers')
  if args.repeats < 1:
    cli.fail(f'--repeats must be >= 1; got {args.repeats}')
  if args.json and not os.path.isdir(os.path.dirname(os.path.abspath(args.json))):
    cli.fail(f'--json: the directory of {args.json!r} does not exist')
  repeats = args.repeats
  if args.quick:
    models, ns, repeats = ['mobilenet_v2'], [4], max(3, args.repeats // 2)
  if not xla_ext.available():
    print(f'the xla_ext kernel is not available ({xla_ext.load_error()}); nothing to benchmark')
    return {}
  malloc = cpu_alloc.retain_freed_memory()
  print(f'jax {jax.__version__}, devices {jax.devices()}, {os.cpu_count()} CPUs '
        f'(affinity {len(os.sched_getaffinity(0))}), kernel ISA {xla_ext.best_isa()}, '
        f'fp32, {repeats} timed rounds, in-graph chains of {CHAIN}, malloc {malloc or "default"}')
  tiny = jnp.ones((8, 8), jnp.float32)
  noop = jax.jit(lambda a: a + 1.0)
  overhead_us = 1e6 * time_interleaved([lambda: noop(tiny)], repeats)[0]
  print(f'per-call overhead of a trivial jitted op: {overhead_us:.1f} us (part of every dense and '
        f'1xN time below; inside a jitted network it is paid once, not per layer)')
  rng = np.random.default_rng(args.seed)
  rows = []
  for model in models:
    print(f'\n== {model}: 1x1-conv GEMMs (K = C_in, B x P = batch x H*W) ==\n{HEADER}')
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
