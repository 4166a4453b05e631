import numpy as np

from common import plots


def test_accuracy_curves_writes_a_png_and_cuts_to_the_shortest_seed(tmp_path):
  path = str(tmp_path / 'curves.png')
  # Seeds of unequal length (a run stopped early) are cut to the shortest, not padded.
  out = plots.accuracy_curves({'a': [[0.1, 0.5, 0.9], [0.2, 0.6]], 'b': [[0.3, 0.4]]}, path,
                              title='t')
  assert out == path
  with open(path, 'rb') as f:
    assert f.read(8) == b'\x89PNG\r\n\x1a\n'
  import matplotlib.image as mpimg
  assert np.asarray(mpimg.imread(path)).ndim == 3
