"""The FDDA quick experiment at its smallest size: a real outcome on digits (teacher and W3A3
FDDA student well above chance), the rows and plots of the contract."""
import os

from fdda import quick


def test_quick_smoke(tmp_path):
  out = quick.run(str(tmp_path), seeds=(0,), smoke=True)
  assert out['checks'] and all(out['checks'].values()), out['checks']
  methods = {r['method'] for r in out['rows']}
  assert methods == {quick.M_FP, quick.M_PTQ, quick.M_FDDA}
  fdda_row = [r for r in out['rows'] if r['method'] == quick.M_FDDA][0]
  # W3A3 F3L3 on ResNet-8: packed kernels are 32/3 x smaller than float32; the float BN
  # parameters and biases keep the model above that bound but well past the 8x of 4 bits.
  assert (quick.WEIGHT_BITS, quick.ACT_BITS) == (3, 3)
  assert 8.0 < fdda_row['compression_vs_fp32'] < 32.0 / 3.0
  # The alignment diagnostic of the generator arm: a C_BNS is a mean of squares, the real
  # calibration images of different classes have different deep-layer statistics.
  assert fdda_row['centre_distance'] >= 0.0
  assert fdda_row['class_separation'] >= 0.0 and fdda_row['class_separation_real'] > 0.0
  assert all(os.path.isfile(p) for p in out['plots'])
  assert os.path.isfile(os.path.join(tmp_path, 'fdda_seed0', 'synthetic_class_0.png'))
