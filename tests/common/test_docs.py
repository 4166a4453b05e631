"""The docs' examples run, and the docs point only at files inside the repository."""
import os
import re

import numpy as np

from common import train
from tests.common.engine_fixtures import toy_config, use_toy_data

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _code_block(path):
  text = open(os.path.join(ROOT, path)).read()
  return re.search(r'```python\n(.*?)```', text, re.S).group(1)


def test_engine_md_minimal_method_runs_and_trains_only_the_classifier(tmp_path, monkeypatch):
  use_toy_data(monkeypatch)
  ns = {}
  exec(_code_block('docs/engine.md'), ns)  # pylint: disable=exec-used
  c = toy_config(2)
  engine = train.Engine(c, ns['LinearProbe'](c))
  s0 = engine.create_state()
  s1, _ = engine.train_epoch(s0, 0)
  np.testing.assert_array_equal(s0.params['conv1']['kernel'], s1.params['conv1']['kernel'])
  assert not np.allclose(s0.params['fc']['kernel'], s1.params['fc']['kernel'])
  train.run(c, str(tmp_path), ns['LinearProbe'](c))
  assert all('fc_norm' in r for r in train.read_metrics(str(tmp_path)))


def test_docs_link_existing_files():
  for name in os.listdir(os.path.join(ROOT, 'docs')):
    text = open(os.path.join(ROOT, 'docs', name)).read()
    for link in re.findall(r'\]\(([^)#]+)\)', text):
      if '://' not in link:
        assert os.path.exists(os.path.join(ROOT, 'docs', link)), (name, link)
