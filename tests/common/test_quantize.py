"""Quantizer bucket edges, STE gradients and EMA ranges against hand-computed values."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from common import quantize as Q


def ref_asym(x, lo, hi, k):
  scale = (2 ** k - 1) / max(hi - lo, 1e-8)
  zp = np.round(scale * lo) + 2 ** (k - 1)
  q = np.clip(np.round(scale * x - zp), -2 ** (k - 1), 2 ** (k - 1) - 1)
  return (q + zp) / scale


def test_asymmetric_levels_2bit():
  x = jnp.array([0.0, 0.4, 0.6, 1.0, 1.49, 1.51, 2.0, 3.0, 5.0, -1.0])
  out = np.asarray(Q.asymmetric_quantize(x, 0.0, 3.0, 2))
  # 2 bits on [0, 3]: levels 0,1,2,3; round-half-even at .5 edges; outside values clamp.
  np.testing.assert_allclose(out, [0, 0, 1, 1, 1, 2, 2, 3, 3, 0])


@pytest.mark.parametrize('k', [2, 4, 8])
def test_asymmetric_matches_numpy_and_has_2k_levels(k):
  r = np.random.RandomState(k)
  x = r.randn(1000).astype(np.float32)
  lo, hi = float(x.min()), float(x.max())
  out = np.asarray(Q.asymmetric_quantize(jnp.asarray(x), lo, hi, k))
  np.testing.assert_allclose(out, ref_asym(x, lo, hi, k), rtol=1e-5, atol=1e-6)
  assert len(np.unique(np.round(out, 5))) <= 2 ** k


def test_weight_per_channel_and_ste_gradient():
  w = jnp.asarray(np.random.RandomState(0).randn(3, 3, 4, 5), jnp.float32)
  wq = np.asarray(Q.quantize_weight_per_channel(w, 4))
  for c in range(5):
    wc = np.asarray(w[..., c])
    np.testing.assert_allclose(wq[..., c], ref_asym(wc, wc.min(), wc.max(), 4), rtol=1e-5,
                               atol=1e-6)
  g = jax.grad(lambda w: jnp.sum(Q.quantize_weight_per_channel(w, 4) * 3.0))(w)
  np.testing.assert_allclose(g, 3.0)   # plain STE: gradient passed unchanged


def test_symmetric_and_lsq():
  w = jnp.array([[-1.0, 0.5], [0.26, -0.2]])
  out = np.asarray(Q.symmetric_quantize_per_channel(w, 3))   # step = max|w_c| / 3
  np.testing.assert_allclose(out[:, 0], np.round(np.array([-1.0, 0.26]) / (1 / 3)) * (1 / 3))
  x = jnp.array([0.1, 0.9, 3.0, -3.0])
  y = Q.lsq_quantize(x, jnp.array(0.5), 2, signed=True)       # Qn=-2, Qp=1
  np.testing.assert_allclose(y, [0.0, 0.5, 0.5, -1.0])
  with pytest.raises(ValueError, match='bits must be an integer'):
    Q.asymmetric_quantize(x, 0.0, 1.0, 0)


def test_act_quant_ema_only_when_mutable():
  m = Q.ActQuant(bits=4, beta=0.9)
  v = m.init(jax.random.PRNGKey(0), jnp.zeros(3))
  x = jnp.array([-2.0, 0.0, 6.0])
  _, upd = m.apply(v, x, mutable=['quant_stats'])
  assert float(upd['quant_stats']['min']) == pytest.approx(-0.2)
  assert float(upd['quant_stats']['max']) == pytest.approx(0.6)
  frozen = m.apply(upd, x)             # fixed ranges: quantized with the stored EMA range
  np.testing.assert_allclose(frozen, ref_asym(np.asarray(x), -0.2, 0.6, 4), rtol=1e-5, atol=1e-6)
  again = m.apply(upd, x * 10)         # not mutable -> ranges unchanged
  np.testing.assert_allclose(again, ref_asym(np.asarray(x) * 10, -0.2, 0.6, 4), rtol=1e-5,
                             atol=1e-6)
