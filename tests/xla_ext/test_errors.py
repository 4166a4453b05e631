"""Every xla_ext op names itself in its errors, on the Python side and in the C++ handlers, and
the three ops resolve their instruction set from one table (an unknown one is an error for all)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import xla_ext

pytestmark = pytest.mark.skipif(not xla_ext.available(), reason='xla_ext kernel not built')

RP = np.array([0, 1], np.int32)
CI = np.array([0], np.int32)
VALS = np.ones((1, 4), np.float32)


def raw_calls(isa: int):
  """The three FFI targets called directly (no Python-side checks), with attribute ``isa``."""
  i64 = np.int64
  x_nhwc = jnp.ones((3, 2), jnp.float32)
  x_cf = jnp.ones((1, 2, 5), jnp.float32)
  empty = jnp.zeros((0,), jnp.float32)
  x_dw = jnp.ones((1, 4, 3 * 7), jnp.float32)
  return {
      'block_sparse_matmul': lambda: jax.ffi.ffi_call(
          xla_ext.TARGET_NAME, jax.ShapeDtypeStruct((3, 4), jnp.float32),
          vmap_method='sequential')(RP, CI, VALS, x_nhwc, num_threads=i64(1), isa=i64(isa)),
      'block_sparse_matmul_cf': lambda: jax.ffi.ffi_call(
          xla_ext.TARGET_NAME_CF, jax.ShapeDtypeStruct((1, 4, 5), jnp.float32),
          vmap_method='sequential')(RP, CI, VALS, x_cf, empty, empty, num_threads=i64(1),
                                    isa=i64(isa), activation=i64(0), has_bias=i64(0),
                                    has_residual=i64(0)),
      'depthwise3x3_cf': lambda: jax.ffi.ffi_call(
          xla_ext.TARGET_NAME_DW, jax.ShapeDtypeStruct((1, 4, 3 * 7), jnp.float32),
          vmap_method='sequential')(x_dw, jnp.zeros((4, 9), jnp.float32),
                                    jnp.zeros((4,), jnp.float32), h=i64(3), w=i64(5),
                                    stride=i64(1), activation=i64(0), num_threads=i64(1),
                                    isa=i64(isa)),
  }


@pytest.mark.parametrize('op', ['block_sparse_matmul', 'block_sparse_matmul_cf',
                                'depthwise3x3_cf'])
def test_cpp_unknown_isa_names_the_op(op):
  with pytest.raises(Exception, match=rf'{op}: unknown isa 9; allowed 0 \(auto\)'):
    jax.block_until_ready(raw_calls(9)[op]())


@pytest.mark.parametrize('isa', ['generic', 'avx2', 'avx512'])
def test_every_op_runs_on_every_supported_isa(isa):
  if not xla_ext.isa_supported(isa):
    pytest.skip(f'this CPU lacks {isa}')
  for op, call in raw_calls(xla_ext.ISAS[isa]).items():
    y = np.asarray(call())
    assert np.isfinite(y).all(), op


def test_cpp_encoding_errors_name_the_op():
  bad_ci = np.array([7], np.int32)
  with pytest.raises(Exception, match=r'block_sparse_matmul: col_idx\[0\] = 7 is outside'):
    jax.block_until_ready(xla_ext.block_sparse_matmul(np.ones((3, 2), np.float32), RP, bad_ci,
                                                      VALS))
  with pytest.raises(Exception, match=r'block_sparse_matmul_cf: col_idx\[0\] = 7 is outside'):
    jax.block_until_ready(xla_ext.block_sparse_matmul_cf(np.ones((1, 2, 5), np.float32), RP,
                                                         bad_ci, VALS))


def test_python_errors_name_the_op():
  x = np.ones((3, 2), np.float32)
  with pytest.raises(ValueError, match=r"^block_sparse_matmul: isa must be one of .* got 'sse9'"):
    xla_ext.block_sparse_matmul(x, RP, CI, VALS, isa='sse9')
  with pytest.raises(ValueError, match=r"^block_sparse_matmul_cf: isa must be one of .* 'sse9'"):
    xla_ext.block_sparse_matmul_cf(np.ones((1, 2, 5), np.float32), RP, CI, VALS, isa='sse9')
  with pytest.raises(TypeError, match=r'^block_sparse_matmul_cf: row_ptr and col_idx must be int32'):
    xla_ext.block_sparse_matmul_cf(np.ones((1, 2, 5), np.float32), RP.astype(np.int64), CI, VALS)
  with pytest.raises(ValueError, match=r'^depthwise3x3_cf: num_threads must be an int >= 0'):
    xla_ext.depthwise3x3_cf(jnp.zeros((1, 4, 21), jnp.float32), jnp.zeros((4, 9), jnp.float32),
                            jnp.zeros((4,), jnp.float32), (3, 5), 1, num_threads=-1)
