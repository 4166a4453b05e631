"""The main job's report: runs the dense baseline (smoke size) and writes RESULTS.md + results.json."""
import json
import os

import numpy as np

from common import reproduce


def test_summarize_mean_std():
  rows = [{'method': 'a', 'seed': s, 'top1': v} for s, v in enumerate([0.9, 0.8, 0.7])]
  rows.append({'method': 'b', 'seed': 0, 'top1': 0.5})
  s = {r['method']: r for r in reproduce.summarize(rows)}
  assert abs(s['a']['mean'] - 0.8) < 1e-12
  assert abs(s['a']['std'] - np.std([0.9, 0.8, 0.7], ddof=1)) < 1e-12
  assert s['b']['n'] == 1 and s['b']['std'] == 0.0


def test_main_smoke_writes_report(tmp_path):
  rc = reproduce.main(['--papers=common', f'--workdir={tmp_path}', '--seeds=0', '--smoke'])
  assert rc == 0
  text = open(tmp_path / 'RESULTS.md').read()
  assert '| dense ResNet-20 |' in text
  out = json.load(open(tmp_path / 'results.json'))
  row = out['common']['rows'][0]
  assert 0.0 <= row['top1'] <= 1.0 and row['params'] > 0
  assert os.path.exists(out['common']['plots'][0])


def test_unknown_paper_is_an_error(tmp_path, capsys):
  assert reproduce.main(['--papers=nope', f'--workdir={tmp_path}']) == 2
  assert "unknown paper(s) ['nope']" in capsys.readouterr().err
