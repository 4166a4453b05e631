"""onexn.block_sparse / ops / conv: the packed 1xN format (paper Fig. 3), sparse matmul and conv:
exact pack/unpack round trip, products equal to the masked dense ones, clear errors on bad input.

References are computed independently: NumPy float64 products with the masked kernel, and
``lax.conv_general_dilated`` (as flax.linen.Conv) on the masked HWIO kernel.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import xla_ext
from onexn import block_sparse, conv, ops

BACKENDS = ['xla'] + (['ffi'] if xla_ext.available() else [])
needs_ffi = pytest.mark.skipif(not xla_ext.available(), reason='xla_ext kernel unavailable')


def block_mask(rng, kh, kw, c_in, c_out, n, keep_prob, perm=None):
  """A random 1xN mask (True = kept) that is valid in channel order ``perm``; block (0, 0) is
  always pruned and block (0, 1) always kept, so both extremes occur in every example."""
  keep = rng.random((c_in, c_out // n)) < keep_prob
  keep[0, 0] = False
  if keep.shape[1] > 1:
    keep[0, 1] = True
  m = np.broadcast_to(np.repeat(keep, n, axis=1)[None, None], (kh, kw, c_in, c_out))
  if perm is not None:  # m is the mask of kernel[..., perm]; scatter it back
    m = m[..., np.argsort(perm)]
  return np.ascontiguousarray(m)


def rel_err(y, ref):
  y, ref = np.asarray(y, np.float64), np.asarray(ref, np.float64)
  return float(np.max(np.abs(y - ref)) / max(1e-30, np.max(np.abs(ref)))) if ref.size else 0.0


layer_st = st.fixed_dictionaries({
    'k': st.sampled_from([1, 1, 3]),
    'c_in': st.integers(1, 24),
    'groups': st.integers(1, 6),
    'n': st.sampled_from([1, 2, 4, 8, 16, 32]),
    'keep_prob': st.sampled_from([0.0, 0.25, 0.5, 0.9, 1.0]),
    'permute': st.booleans(),
    'dense_kernel': st.booleans(),
    'seed': st.integers(0, 2**16),
})


def make_layer(d):
  rng = np.random.default_rng(d['seed'])
  k, c_in, n = d['k'], d['c_in'], d['n']
  c_out = d['groups'] * n
  perm = rng.permutation(c_out) if d['permute'] else None
  w = rng.standard_normal((k, k, c_in, c_out)).astype(np.float32)
  m = block_mask(rng, k, k, c_in, c_out, n, d['keep_prob'], perm)
  if d['dense_kernel'] and k == 1:
    w, m = w[0, 0], m[0, 0]
  return rng, w, m, perm


@settings(max_examples=30, deadline=None)
@given(layer_st)
def test_pack_unpack_round_trip_is_exact(d):
  _, w, m, perm = make_layer(d)
  packed = block_sparse.pack(w, m, d['n'], perm)
  kernel, mask = block_sparse.unpack(packed)
  np.testing.assert_array_equal(np.asarray(mask), m)
  np.testing.assert_array_equal(np.asarray(kernel), np.where(m, w, 0))
  assert packed.nnzb * packed.n == m.sum()
  assert packed.density == pytest.approx(m.mean())
  # Format invariants (paper Fig. 3): pointers bound each block, indices ascend inside a block.
  rp, ci = np.asarray(packed.row_ptr), np.asarray(packed.col_idx)
  assert rp[0] == 0 and rp[-1] == ci.size and np.all(np.diff(rp) >= 0)
  assert all(np.all(np.diff(ci[a:b]) > 0) for a, b in zip(rp[:-1], rp[1:]))


def test_packed_format_on_a_hand_example():
  """Paper Fig. 3 by hand: 1x1 conv, C_in=3, C_out=4, N=2, blocks (c0,b1), (c2,b0), (c1,b1) kept."""
  w = np.arange(12, dtype=np.float32).reshape(3, 4) + 1  # [C_in, C_out]
  keep = np.array([[0, 1], [0, 1], [1, 0]], bool)
  m = np.repeat(keep, 2, axis=1)
  p = block_sparse.pack(w, m, 2)
  np.testing.assert_array_equal(p.row_ptr, [0, 1, 3])
  np.testing.assert_array_equal(p.col_idx, [2, 0, 1])
  np.testing.assert_array_equal(p.values, [[9, 10], [3, 4], [7, 8]])
  assert p.perm is None and p.kernel_shape == (3, 4) and p.k == 3
  # A 3x3 kernel: every kept channel contributes its 9 im2col rows (dy*3 + dx)*C_in + c.
  w3 = np.ones((3, 3, 3, 4), np.float32)
  p3 = block_sparse.pack(w3, np.broadcast_to(m, w3.shape), 2)
  np.testing.assert_array_equal(p3.col_idx[:9], 2 + 3 * np.arange(9))
  assert p3.nnzb == 27


@settings(max_examples=30, deadline=None)
@given(layer_st, st.integers(1, 40), st.sampled_from(BACKENDS))
def test_sparse_matmul_equals_dense_masked_matmul(d, rows, backend):
  rng, w, m, perm = make_layer(d)
  packed = block_sparse.pack(w, m, d['n'], perm)
  w2 = np.where(m, w, 0).reshape(-1, w.shape[-1])
  x = rng.standard_normal((rows, w2.shape[0])).astype(np.float32)
  y = ops.sparse_matmul(x, packed, backend=backend)
  assert y.shape == (rows, w.shape[-1]) and y.dtype == jnp.float32
  assert rel_err(y, x.astype(np.float64) @ w2) < 1e-5


@needs_ffi
@settings(max_examples=15, deadline=None)
@given(layer_st, st.integers(1, 60))
def test_fallback_equals_ffi(d, rows):
  rng, w, m, perm = make_layer(d)
  packed = block_sparse.pack(w, m, d['n'], perm)
  x = rng.standard_normal((rows, packed.k)).astype(np.float32)
  y_ffi = ops.sparse_matmul(x, packed, backend='ffi')
  y_xla = ops.sparse_matmul(x, packed, backend='xla')
  np.testing.assert_allclose(np.asarray(y_ffi), np.asarray(y_xla), rtol=1e-5,
                             atol=1e-5 * float(np.abs(np.asarray(y_xla)).max() + 1e-30))


@pytest.mark.parametrize('backend', BACKENDS)
@pytest.mark.parametrize('k,stride,padding', [
    (1, 1, 'SAME'), (1, 2, 'SAME'), (1, 2, 'VALID'), (3, 1, 'SAME'), (3, 2, 'SAME'),
    (3, 1, 'VALID'), (3, 2, 'VALID'), (3, (2, 1), ((0, 2), (1, 0))), (3, 1, 1)])
def test_sparse_conv_equals_lax_conv(k, stride, padding, backend):
  rng = np.random.default_rng(k * 10 + (stride if isinstance(stride, int) else 7))
  c_in, c_out, n = 6, 16, 4
  w = rng.standard_normal((k, k, c_in, c_out)).astype(np.float32)
  m = block_mask(rng, k, k, c_in, c_out, n, 0.5)
  x = rng.standard_normal((2, 9, 8, c_in)).astype(np.float32)
  strides = (stride, stride) if isinstance(stride, int) else stride
  pads = ((padding, padding),) * 2 if isinstance(padding, int) else padding
  ref = jax.lax.conv_general_dilated(x, np.where(m, w, 0), strides, pads,
                                     dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
                                     precision=jax.lax.Precision.HIGHEST)
  y = jax.jit(lambda x, p: conv.sparse_conv(x, p, stride, padding, backend=backend))(
      x, block_sparse.pack(w, m, n))
  assert y.shape == ref.shape
  assert rel_err(y, ref) < 1e-5


@pytest.mark.parametrize('backend', BACKENDS)
def test_conv_with_permutation_and_unbatched_input(backend):
  rng = np.random.default_rng(5)
  perm = rng.permutation(8)
  w = rng.standard_normal((3, 3, 5, 8)).astype(np.float32)
  m = block_mask(rng, 3, 3, 5, 8, 4, 0.5, perm)
  x = rng.standard_normal((6, 7, 5)).astype(np.float32)  # [H, W, C]: no batch axis
  ref = jax.lax.conv_general_dilated(x[None], np.where(m, w, 0), (1, 1), 'SAME',
                                     dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
                                     precision=jax.lax.Precision.HIGHEST)[0]
  y = conv.sparse_conv(x, block_sparse.pack(w, m, 4, perm), backend=backend)
  assert rel_err(y, ref) < 1e-5


@pytest.fixture(scope='module')
def layer():
  rng = np.random.default_rng(7)
  w = rng.standard_normal((12, 16)).astype(np.float32)
  m = block_mask(rng, 1, 1, 12, 16, 4, 0.5)[0, 0]
  return w, m, block_sparse.pack(w, m, 4)


@pytest.mark.parametrize('backend', BACKENDS)
def test_vmap_over_inputs_and_over_weights(layer, backend):
  w, m, packed = layer
  rng = np.random.default_rng(8)
  xb = rng.standard_normal((3, 5, 12)).astype(np.float32)
  ref = np.einsum('bpk,km->bpm', xb.astype(np.float64), np.where(m, w, 0))
  f = lambda x, p: ops.sparse_matmul(x, p, backend=backend)
  assert rel_err(jax.jit(jax.vmap(f, in_axes=(0, None)))(xb, packed), ref) < 1e-5
  # Batched weights (same sparsity structure, different values): one kernel call per element.
  scales = np.array([1.0, -2.0, 0.5], np.float32)
  stacked = jax.tree.map(lambda a: jnp.stack([a] * 3), packed)
  stacked = block_sparse.PackedBlockSparse(stacked.row_ptr, stacked.col_idx,
                                stacked.values * scales[:, None, None], stacked.perm, packed.n,
                                packed.kernel_shape)
  y = jax.jit(jax.vmap(f))(xb, stacked)
  assert rel_err(y, ref * scales[:, None, None]) < 1e-5
  # Nested vmap folds both batch axes into kernel rows.
  y2 = jax.vmap(jax.vmap(f, in_axes=(0, None)), in_axes=(0, None))(xb[None], packed)
  assert rel_err(y2[0], ref) < 1e-5


@pytest.mark.parametrize('backend', BACKENDS)
def test_gradients_match_the_dense_masked_layer(layer, backend):
  w, m, packed = layer
  rng = np.random.default_rng(9)
  x = rng.standard_normal((7, 12)).astype(np.float32)
  t = rng.standard_normal((7, 16)).astype(np.float32)

  def loss_sparse(x, values):
    p = block_sparse.PackedBlockSparse(packed.row_ptr, packed.col_idx, values, None, 4, (12, 16))
    return jnp.sum((ops.sparse_matmul(x, p, backend=backend) - t) ** 2)

  def loss_dense(x, wd):
    return jnp.sum((jnp.dot(x, wd * m, precision='highest') - t) ** 2)

  gx, gv = jax.jit(jax.grad(loss_sparse, argnums=(0, 1)))(x, packed.values)
  gx_ref, gw_ref = jax.grad(loss_dense, argnums=(0, 1))(x, jnp.asarray(w))
  assert rel_err(gx, gx_ref) < 1e-5
  # dvalues are dW at the kept positions; unpacking them must reproduce the masked dW.
  g_kernel, _ = block_sparse.unpack(block_sparse.PackedBlockSparse(packed.row_ptr, packed.col_idx, gv, None, 4, (12, 16)))
  assert rel_err(g_kernel, np.asarray(gw_ref) * m) < 1e-5


@needs_ffi
def test_auto_backend_runs_the_kernel_on_cpu(layer):
  _, _, packed = layer
  x = jnp.ones((3, 12))
  hlo = jax.jit(lambda x: ops.sparse_matmul(x, packed)).lower(x).as_text()
  assert xla_ext.TARGET_NAME in hlo
  hlo_xla = jax.jit(lambda x: ops.sparse_matmul(x, packed, backend='xla')).lower(x).as_text()
  assert xla_ext.TARGET_NAME not in hlo_xla


@needs_ffi
def test_bfloat16_activations(layer):
  w, m, packed = layer
  x = jnp.asarray(np.random.default_rng(10).standard_normal((9, 12)), jnp.bfloat16)
  ref = np.asarray(x, np.float64) @ np.where(m, w, 0)
  y = ops.sparse_matmul(x, packed, backend='ffi')  # bf16 x, f32 weights -> f32 (jnp promotion)
  assert y.dtype == jnp.float32 and rel_err(y, ref) < 1e-5
  pb = block_sparse.pack(jnp.asarray(w, jnp.bfloat16), m, 4)
  yb = ops.sparse_matmul(x, pb, backend='ffi')
  assert yb.dtype == jnp.bfloat16
  ref_b = np.asarray(x, np.float64) @ np.where(m, np.asarray(pb.values.dtype.type(0)) + np.asarray(
      jnp.asarray(w, jnp.bfloat16), np.float64), 0)
  assert rel_err(yb, ref_b) < 1e-2  # one bf16 rounding of the output
  np.testing.assert_allclose(np.asarray(yb, np.float32),
                             np.asarray(ops.sparse_matmul(x, pb, backend='xla'), np.float32),
                             rtol=1e-2, atol=1e-2)


def test_pytree_and_jit_argument(layer):
  _, _, packed = layer
  leaves, treedef = jax.tree.flatten(packed)
  assert len(leaves) == 3  # perm=None contributes no leaf; n and kernel_shape are static
  again = jax.tree.unflatten(treedef, leaves)
  assert again.n == 4 and again.kernel_shape == (12, 16)
  assert packed.nbytes == 4 * (packed.row_ptr.size + packed.col_idx.size + packed.values.size)


def test_bad_input_errors(layer):
  w, m, packed = layer
  with pytest.raises(ValueError, match=r'positive integer.*got 0'):
    block_sparse.pack(w, m, 0)
  with pytest.raises(ValueError, match=r"layer 'blocks/3/conv'.*C_out=16 is not divisible.*N=3"):
    block_sparse.pack(w, m, 3, layer='blocks/3/conv')
  with pytest.raises(ValueError, match=r'allowed N for this layer: \[1, 2, 4, 8, 16\]'):
    block_sparse.pack(w, m, 32)
  bad = m.copy()
  bad[2, 5] = ~bad[2, 5]
  with pytest.raises(ValueError, match=r'not a 1xN block mask for N=4: input channel 2 x output '
                                       r'block 1 \(channels 4..7\)'):
    block_sparse.pack(w, bad, 4)
  with pytest.raises(ValueError, match='not a permutation'):
    block_sparse.pack(w, m, 4, perm=np.zeros(16, np.int32))
  with pytest.raises(ValueError, match='mask shape'):
    block_sparse.pack(w, m[:, :8], 4)
  with pytest.raises(TypeError, match='floating'):
    block_sparse.pack(w.astype(np.int32), m, 4)
  with pytest.raises(ValueError, match=r'HWIO'):
    block_sparse.pack(w[None], m[None], 4)
  with pytest.raises(TypeError, match='outside jit'):
    jax.jit(lambda w: block_sparse.pack(w, m, 4))(w)
  with pytest.raises(ValueError, match=r'needs x\[..., K\] with K = kh\*kw\*C_in = 12'):
    ops.sparse_matmul(np.ones((2, 11), np.float32), packed)
  with pytest.raises(TypeError, match='floating point'):
    ops.sparse_matmul(np.ones((2, 12), np.int32), packed)
  with pytest.raises(ValueError, match='backend'):
    ops.sparse_matmul(np.ones((2, 12), np.float32), packed, backend='cuda')
  with pytest.raises(TypeError, match='PackedBlockSparse'):
    ops.sparse_matmul(np.ones((2, 12), np.float32), w)
  with pytest.raises(ValueError, match='input channels'):
    conv.sparse_conv(np.ones((1, 4, 4, 3), np.float32), packed)
  with pytest.raises(ValueError, match='stride'):
    conv.sparse_conv(np.ones((1, 4, 4, 12), np.float32), packed, stride=0)
  with pytest.raises(ValueError, match='padding'):
    conv.sparse_conv(np.ones((1, 4, 4, 12), np.float32), packed, padding='FULL')
  with pytest.raises(ValueError, match='no output pixels'):
    p3 = block_sparse.pack(np.ones((3, 3, 12, 16), np.float32), None, 4)
    conv.sparse_conv(np.ones((1, 2, 2, 12), np.float32), p3, padding='VALID')


def test_bench_helpers():
  """onexn.bench: exact block counts, the real networks' GEMM shapes, one timed row, the summary."""
  from onexn import bench
  rng = np.random.default_rng(11)
  m = bench.random_block_mask(rng, 10, 12, 4, 0.75)
  assert block_sparse.block_keep(m, 4).sum() == 30 - int(30 * 0.75)  # 10 x 3 blocks, int(G*p) pruned
  shapes = bench.gemm_shapes('mobilenet_v2')
  assert (24, 144, 56 * 56) in shapes and (576, 96, 14 * 14) in shapes and len(shapes) == 12
  rows = bench.bench_shape(16, 8, 9, 1, ns=[4, 16], ps=[0.5], repeats=1, with_scipy=True, rng=rng)
  assert len(rows) == 1  # N=16 does not divide C_out=8: skipped, not an error
  r = dict(rows[0], model='mobilenet_v2')
  assert r['density'] == 0.5 and r['speedup'] > 0 and r['vs_bsr'] > 0 and r['vs_csr'] > 0
  summary = bench.summarize([r, dict(r, speedup=3.0)], [0.5])
  assert summary[0.5]['median_speedup'] == pytest.approx((r['speedup'] + 3.0) / 2)
