"""onexn.ops.sparse_matmul_cf: the channels-first 1xN layer with its fused epilogue (paper Fig. 3).

``y[..., c, p] = act(sum_k W[k, c] x[..., k, p] + bias[c] + residual[..., c, p])``. References are
NumPy float64 (the masked dense kernel in the original channel order; gradients in closed form),
never the implementation against itself; the 'ffi' and 'xla' backends are each checked against
them and against each other.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import xla_ext
from onexn import block_sparse, ops
from tests.onexn.test_sparse import block_mask  # one random 1xN mask builder for both files

BACKENDS = ['xla'] + (['ffi'] if xla_ext.available() else [])
needs_ffi = pytest.mark.skipif(not xla_ext.available(), reason='xla_ext kernel unavailable')
ACTS = ('none', 'relu', 'relu6')


def np_act(z, activation):
  if activation == 'relu':
    return np.maximum(z, 0)
  if activation == 'relu6':
    return np.clip(z, 0, 6)
  return z


def np_act_grad(z, activation):
  if activation == 'relu':
    return (z > 0).astype(np.float64)
  if activation == 'relu6':
    return ((z > 0) & (z < 6)).astype(np.float64)
  return np.ones_like(z)


def reference(x, w2, bias=None, residual=None, activation='none'):
  """float64 (pre-activation, output) for x [..., K, P] and the masked GEMM weight w2 [K, C_out]."""
  z = np.einsum('...kp,kc->...cp', np.asarray(x, np.float64), np.asarray(w2, np.float64))
  if bias is not None:
    z = z + np.asarray(bias, np.float64)[:, None]
  if residual is not None:
    z = z + np.asarray(residual, np.float64)
  return z, np_act(z, activation)


def err(y, ref, pre):
  """Max error relative to the pre-activation scale (the activations are 1-Lipschitz)."""
  if not np.size(ref):
    return 0.0
  return float(np.max(np.abs(np.asarray(y, np.float64) - ref)) / max(1e-30, np.abs(pre).max()))


layer_st = st.fixed_dictionaries({
    'k': st.sampled_from([1, 1, 3]),
    'c_in': st.integers(1, 12),
    'groups': st.integers(1, 4),
    'n': st.sampled_from([1, 2, 4, 8, 16, 32]),
    'keep_prob': st.sampled_from([0.0, 0.25, 0.5, 0.9, 1.0]),
    'permute': st.booleans(),
    'seed': st.integers(0, 2**16),
})


def make_layer(d):
  rng = np.random.default_rng(d['seed'])
  k, c_in, n = d['k'], d['c_in'], d['n']
  c_out = d['groups'] * n
  perm = rng.permutation(c_out) if d['permute'] else None
  w = rng.standard_normal((k, k, c_in, c_out)).astype(np.float32)
  m = block_mask(rng, k, k, c_in, c_out, n, d['keep_prob'], perm)
  if k == 1 and rng.random() < 0.5:  # a dense [C_in, C_out] kernel
    w, m = w[0, 0], m[0, 0]
  return rng, block_sparse.pack(w, m, n, perm), np.where(m, w, 0).reshape(-1, c_out)


@settings(max_examples=20, deadline=None)
@given(layer_st, st.sampled_from([(), (2,), (1, 3)]),
       st.sampled_from([1, 7, 16, 23, 49, 64, 97, 196]), st.booleans(), st.booleans(),
       st.sampled_from(ACTS))
def test_matches_numpy_reference_and_backends_agree(d, lead, p, with_bias, with_residual,
                                                    activation):
  """Leading dims of rank 0-2 (x of rank 2-4), perm, bias/residual/activation on both backends."""
  rng, packed, w2 = make_layer(d)
  c_out = w2.shape[1]
  x = (2 * rng.standard_normal(lead + (packed.k, p))).astype(np.float32)
  bias = (3 * rng.standard_normal(c_out)).astype(np.float32) if with_bias else None
  res = (3 * rng.standard_normal(lead + (c_out, p))).astype(np.float32) if with_residual else None
  pre, ref = reference(x, w2, bias, res, activation)
  ys = {}
  for backend in BACKENDS:
    y = ops.sparse_matmul_cf(x, packed, bias=bias, residual=res, activation=activation,
                           backend=backend)
    assert y.shape == lead + (c_out, p) and y.dtype == jnp.float32
    assert err(y, ref, pre) < 1e-5, backend
    ys[backend] = np.asarray(y)
  if 'ffi' in ys:
    scale = float(np.abs(pre).max()) if pre.size else 0.0
    np.testing.assert_allclose(ys['ffi'], ys['xla'], rtol=0, atol=2e-6 * scale + 1e-30)


@pytest.fixture(scope='module')
def layer():
  """1x1 conv C_in=12 -> C_out=16, N=4, rearranged filters (perm), about half the blocks kept."""
  rng = np.random.default_rng(7)
  perm = rng.permutation(16)
  w = rng.standard_normal((12, 16)).astype(np.float32)
  m = block_mask(rng, 1, 1, 12, 16, 4, 0.5, perm)[0, 0]
  packed = block_sparse.pack(w, m, 4, perm)
  assert packed.perm is not None and not np.array_equal(perm, np.arange(16))
  return w, m, packed


def test_perm_pack_is_in_rearranged_order(layer):
  """The mask is 1xN only in the permuted order, so perm must actually be honoured."""
  w, m, packed = layer
  with pytest.raises(ValueError, match='not a 1xN block mask'):
    block_sparse.pack(w, m, 4)  # the identity order mixes kept and pruned weights in some block
  rp, ci = np.asarray(packed.row_ptr), np.asarray(packed.col_idx)
  for g in range(4):  # block g = original channels perm[4g:4g+4], kept rows col_idx of block g
    cols = np.asarray(packed.perm)[4 * g:4 * g + 4]
    kept = np.nonzero(m[:, cols].all(axis=1))[0]
    np.testing.assert_array_equal(ci[rp[g]:rp[g + 1]], kept)


@pytest.mark.parametrize('backend', BACKENDS)
def test_vmap_over_inputs_residual_and_bias(layer, backend):
  w, m, packed = layer
  w2 = np.where(m, w, 0)
  rng = np.random.default_rng(8)
  xv = rng.standard_normal((3, 2, 12, 23)).astype(np.float32)  # [V, B, K, P]
  rv = rng.standard_normal((3, 2, 16, 23)).astype(np.float32)
  bv = rng.standard_normal((3, 16)).astype(np.float32)

  def f(x, r, b):
    return ops.sparse_matmul_cf(x, packed, bias=b, residual=r, activation='relu', backend=backend)

  def check(y, x, r, b):
    pre, ref = reference(x, w2, b, r, 'relu')
    assert y.shape == ref.shape and err(y, ref, pre) < 1e-5

  refs = [reference(xv[v], w2, bv[0], rv[v], 'relu') for v in range(3)]
  # x and residual batched, shared weights and bias: more images of one call.
  y = jax.jit(jax.vmap(f, in_axes=(0, 0, None)))(xv, rv, bv[0])
  assert y.shape == (3, 2, 16, 23)
  assert max(err(y[v], refs[v][1], refs[v][0]) for v in range(3)) < 1e-5
  # Only x batched (residual shared), only the residual batched (x shared).
  y = jax.vmap(f, in_axes=(0, None, None))(xv, rv[1], bv[0])
  for v in range(3):
    check(y[v], xv[v], rv[1], bv[0])
  y = jax.vmap(f, in_axes=(None, 0, None))(xv[2], rv, bv[0])
  for v in range(3):
    check(y[v], xv[2], rv[v], bv[0])
  # A batched bias (one kernel call per element), and batch axes that are not leading.
  y = jax.vmap(f, in_axes=(0, 0, 0))(xv, rv, bv)
  for v in range(3):
    check(y[v], xv[v], rv[v], bv[v])
  y = jax.vmap(f, in_axes=(1, 1, None), out_axes=2)(xv.transpose(1, 0, 2, 3),
                                                    rv.transpose(1, 0, 2, 3), bv[0])
  assert y.shape == (2, 16, 3, 23)
  for v in range(3):
    check(y[:, :, v], xv[v], rv[v], bv[0])
  # Nested vmap, x of rank 2 inside.
  y = jax.vmap(jax.vmap(f, in_axes=(0, 0, None)), in_axes=(0, 0, None))(xv, rv, bv[0])
  for v in range(3):
    check(y[v], xv[v], rv[v], bv[0])


@needs_ffi
def test_shared_weight_vmap_is_one_kernel_call(layer):
  """The batching rule folds a vmapped x / residual into the images of a single kernel call."""
  _, _, packed = layer
  f = lambda x, r: ops.sparse_matmul_cf(x, packed, residual=r, backend='ffi')
  hlo = jax.jit(jax.vmap(f)).lower(jnp.ones((3, 2, 12, 5)), jnp.ones((3, 2, 16, 5))).as_text()
  assert hlo.count(xla_ext.TARGET_NAME_CF) == 1 and 'while' not in hlo


@pytest.mark.parametrize('backend', BACKENDS)
def test_vmap_over_packed_weights_with_different_perms(backend):
  """Stacked packs (same block count, different values and filter rearrangements): lax.map path."""
  rng = np.random.default_rng(9)
  perms = [rng.permutation(8) for _ in range(3)]
  packs, dense = [], []
  for v, perm in enumerate(perms):
    w = rng.standard_normal((3, 3, 2, 8)).astype(np.float32)
    m = block_mask(np.random.default_rng(99), 3, 3, 2, 8, 4, 0.5, perm)  # same blocks kept
    packs.append(block_sparse.pack(w, m, 4, perm))
    dense.append(np.where(m, w, 0).reshape(18, 8))
  stacked = jax.tree.map(lambda *a: jnp.stack(a), *packs)
  assert stacked.perm.shape == (3, 8) and stacked.n == 4
  x = rng.standard_normal((3, 18, 10)).astype(np.float32)
  res = rng.standard_normal((3, 8, 10)).astype(np.float32)
  bias = rng.standard_normal(8).astype(np.float32)
  f = lambda x, p, r: ops.sparse_matmul_cf(x, p, bias=bias, residual=r, activation='relu6',
                                         backend=backend)
  y = jax.jit(jax.vmap(f))(x, stacked, res)
  for v in range(3):
    pre, ref = reference(x[v], dense[v], bias, res[v], 'relu6')
    assert err(y[v], ref, pre) < 1e-5
  # Batched weights, shared input.
  y = jax.vmap(f, in_axes=(None, 0, None))(x[0], stacked, res[0])
  for v in range(3):
    pre, ref = reference(x[0], dense[v], bias, res[0], 'relu6')
    assert err(y[v], ref, pre) < 1e-5


@pytest.mark.parametrize('activation', ACTS)
@pytest.mark.parametrize('backend', BACKENDS)
def test_gradients_match_closed_form(layer, backend, activation):
  """d/d(x, bias, residual, values) of sum(t * y) against the NumPy chain rule."""
  w, m, packed = layer
  w2 = np.where(m, w, 0).astype(np.float64)
  rng = np.random.default_rng(10)
  x = (2 * rng.standard_normal((2, 12, 9))).astype(np.float32)
  bias = (2 * rng.standard_normal(16)).astype(np.float32)
  res = (2 * rng.standard_normal((2, 16, 9))).astype(np.float32)
  t = rng.standard_normal((2, 16, 9)).astype(np.float32)
  z, _ = reference(x, w2, bias, res)
  assert np.abs(z).min() > 1e-3 and np.abs(z - 6).min() > 1e-3  # no kinks: one true gradient
  if activation != 'none':
    assert (z < 0).any() and (z > 0).any()
  if activation == 'relu6':
    assert (z > 6).any()
  g = t * np_act_grad(z, activation)  # dL/dz
  gx_ref = np.einsum('kc,bcp->bkp', w2, g)
  gw_ref = np.einsum('bkp,bcp->kc', x.astype(np.float64), g) * m
  gb_ref, gr_ref = g.sum((0, 2)), g

  def loss(x, bias, res, values):
    p = block_sparse.PackedBlockSparse(packed.row_ptr, packed.col_idx, values, packed.perm, 4, (12, 16))
    y = ops.sparse_matmul_cf(x, p, bias=bias, residual=res, activation=activation,
                           backend=backend)
    return jnp.sum(y * t)

  gx, gb, gr, gv = jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3)))(x, bias, res, packed.values)
  scale = np.abs(g).max()
  assert np.abs(np.asarray(gr) - gr_ref).max() <= 1e-6 * scale
  assert np.abs(np.asarray(gb) - gb_ref).max() <= 1e-5 * np.abs(gb_ref).max()
  assert np.abs(np.asarray(gx) - gx_ref).max() <= 1e-5 * np.abs(gx_ref).max()
  gw, _ = block_sparse.unpack(block_sparse.PackedBlockSparse(packed.row_ptr, packed.col_idx, gv, packed.perm, 4,
                                       (12, 16)))
  assert np.abs(np.asarray(gw) - gw_ref).max() <= 1e-5 * np.abs(gw_ref).max()
  # Per-example gradients: vmap of grad (the backward under the batching rule).
  gxs = jax.vmap(jax.grad(lambda xi, ri, ti: jnp.sum(ops.sparse_matmul_cf(
      xi, packed, bias=bias, residual=ri, activation=activation, backend=backend) * ti)))(
          x, res, t)
  assert np.abs(np.asarray(gxs) - gx_ref).max() <= 1e-5 * np.abs(gx_ref).max()


@needs_ffi
def test_auto_runs_the_kernel_for_float32_only(layer):
  w, m, packed = layer
  x32 = jnp.ones((2, 12, 5), jnp.float32)
  lower = lambda x, **kw: jax.jit(lambda x: ops.sparse_matmul_cf(x, packed, **kw)).lower(x).as_text()
  assert xla_ext.TARGET_NAME_CF in lower(x32)
  assert xla_ext.TARGET_NAME_CF not in lower(x32, backend='xla')
  assert xla_ext.TARGET_NAME_CF not in lower(x32.astype(jnp.float16))
  assert xla_ext.TARGET_NAME_CF not in lower(x32.astype(jnp.bfloat16))
  # Low-precision x under 'auto': the fallback, promoted with the float32 weights.
  rng = np.random.default_rng(11)
  for dt in (jnp.float16, jnp.bfloat16):
    x = jnp.asarray(rng.standard_normal((2, 12, 7)), dt)
    res = jnp.asarray(rng.standard_normal((2, 16, 7)), dt)
    pre, ref = reference(np.asarray(x, np.float32), np.where(m, w, 0), None,
                         np.asarray(res, np.float32), 'relu')
    y = ops.sparse_matmul_cf(x, packed, residual=res, activation='relu')
    assert y.dtype == jnp.float32 and err(y, ref, pre) < 1e-5
  # float16 weights with float32 x: still the kernel (values are read as float32).
  w16 = w.astype(np.float16)
  p16 = block_sparse.pack(w16, m, 4, np.asarray(packed.perm))
  x = rng.standard_normal((2, 12, 7)).astype(np.float32)
  pre, ref = reference(x, np.where(m, w16.astype(np.float32), 0))
  y = ops.sparse_matmul_cf(x, p16, backend='ffi')
  assert y.dtype == jnp.float32 and err(y, ref, pre) < 1e-5
  np.testing.assert_array_equal(np.asarray(y), np.asarray(ops.sparse_matmul_cf(x, p16)))


@needs_ffi
def test_jit_and_thread_count_independence():
  """jit with the packed layer as an argument; num_threads=1 and all threads: the same bits."""
  rng = np.random.default_rng(12)
  w = rng.standard_normal((64, 64)).astype(np.float32)
  m = block_mask(rng, 1, 1, 64, 64, 8, 0.5)[0, 0]
  packed = block_sparse.pack(w, m, 8)
  x = rng.standard_normal((2, 64, 196)).astype(np.float32)
  bias = rng.standard_normal(64).astype(np.float32)
  res = rng.standard_normal((2, 64, 196)).astype(np.float32)
  f = jax.jit(lambda x, p, b, r, threads: ops.sparse_matmul_cf(
      x, p, bias=b, residual=r, activation='relu6', backend='ffi', num_threads=threads),
              static_argnums=4)
  y1, y0 = np.asarray(f(x, packed, bias, res, 1)), np.asarray(f(x, packed, bias, res, 0))
  np.testing.assert_array_equal(y1, y0)
  pre, ref = reference(x, np.where(m, w, 0), bias, res, 'relu6')
  assert err(y1, ref, pre) < 1e-5
  # One image of 49 pixels: few tiles, so the kernel also splits the output groups.
  y1 = np.asarray(f(x[:1, :, :49], packed, bias, res[:1, :, :49], 1))
  for threads in (0, 3):
    np.testing.assert_array_equal(y1, np.asarray(f(x[:1, :, :49], packed, bias,
                                                   res[:1, :, :49], threads)))


@pytest.mark.parametrize('backend', BACKENDS)
def test_no_images_and_no_pixels(layer, backend):
  """Empty leading dims and P = 0 give empty outputs (the C++ kernel handles both)."""
  _, _, packed = layer
  y = ops.sparse_matmul_cf(np.zeros((0, 12, 3), np.float32), packed, backend=backend)
  assert y.shape == (0, 16, 3)
  # P = 0 (an empty image): currently a ZeroDivisionError from x.reshape((-1, K, 0)).
  y = ops.sparse_matmul_cf(np.zeros((2, 12, 0), np.float32), packed, bias=np.ones(16, np.float32),
                         residual=np.zeros((2, 16, 0), np.float32), backend=backend)
  assert y.shape == (2, 16, 0)
  assert ops.sparse_matmul_cf(np.zeros((12, 0), np.float32), packed, backend=backend).shape == (16, 0)


def test_bad_input_errors_name_the_bad_value(layer):
  _, _, packed = layer
  x = np.ones((2, 12, 5), np.float32)
  f = ops.sparse_matmul_cf
  with pytest.raises(ValueError, match=r"activation must be one of .*'relu6'.*got 'gelu'"):
    f(x, packed, activation='gelu')
  with pytest.raises(ValueError, match=r'bias must have shape \(16,\); got \(15,\)'):
    f(x, packed, bias=np.ones(15, np.float32))
  with pytest.raises(ValueError, match=r'bias must have shape \(16,\); got \(2, 16\)'):
    f(x, packed, bias=np.ones((2, 16), np.float32))
  with pytest.raises(ValueError, match=r'residual must have the output shape \(2, 16, 5\); got '
                                       r'\(2, 12, 5\)'):
    f(x, packed, residual=x)
  with pytest.raises(ValueError, match=r'residual .*\(2, 16, 5\); got \(16, 5\)'):
    f(x, packed, residual=np.ones((16, 5), np.float32))
  with pytest.raises(ValueError, match=r'x has shape \(2, 11, 5\).*K = kh\*kw\*C_in = 12'):
    f(np.ones((2, 11, 5), np.float32), packed)
  with pytest.raises(ValueError, match=r'x has shape \(12,\)'):
    f(np.ones(12, np.float32), packed)
  with pytest.raises(TypeError, match='floating point; got int32'):
    f(x.astype(np.int32), packed)
  for dt, name in ((jnp.float16, 'float16'), (jnp.bfloat16, 'bfloat16')):
    if xla_ext.available():
      with pytest.raises(TypeError, match=rf'backend="ffi" computes float32.*got x {name}'):
        f(jnp.asarray(x, dt), packed, backend='ffi')
  with pytest.raises(ValueError, match=r"backend must be one of .*got 'cuda'"):
    f(x, packed, backend='cuda')
  with pytest.raises(ValueError, match=r"isa must be one of .*got 'sse9'"):
    f(x, packed, isa='sse9')
  with pytest.raises(ValueError, match=r'num_threads .*got -1'):
    f(x, packed, num_threads=-1)
  with pytest.raises(TypeError, match='PackedBlockSparse.*ndarray'):
    f(x, np.ones((12, 16), np.float32))
