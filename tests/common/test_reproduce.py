"""The main job's report: runs the dense baseline (smoke size: one epoch, above chance) and writes
RESULTS.md + results.json; a failed check fails ``--strict``, a raising experiment always fails."""
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
  rc = reproduce.main(['--papers=common', f'--workdir={tmp_path}', '--seeds=0', '--smoke',
                       '--strict'])
  assert rc == 0
  text = open(tmp_path / 'RESULTS.md').read()
  assert '| dense ResNet-20 |' in text
  out = json.load(open(tmp_path / 'results.json'))
  row = out['common']['rows'][0]
  # the smoke claim: one epoch of a working engine is far above chance (0.1)
  assert row['top1'] >= reproduce.SMOKE_MIN_TOP1 and row['params'] == 269722
  (claim, ok), = out['common']['checks'].items()
  assert ok and 'after 1 epoch' in claim and f'- PASS: {claim}' in text
  assert os.path.exists(out['common']['plots'][0])


def fake_baseline(top1):
  """A stand-in for the dense baseline whose one check holds iff ``top1 >= 0.5``."""
  def run(workdir, seeds=(0,), smoke=False):
    return {'rows': [{'method': 'fake', 'seed': s, 'top1': top1} for s in seeds], 'plots': [],
            'checks': {'fake is above chance': top1 >= 0.5}}
  return run


def test_strict_exits_1_when_a_check_fails(tmp_path, monkeypatch, capsys):
  monkeypatch.setattr(reproduce, 'dense_baseline', fake_baseline(0.1))
  args = ['--papers=common', f'--workdir={tmp_path}', '--seeds=0,1']
  assert reproduce.main(args + ['--strict']) == 1
  err = capsys.readouterr().err
  assert "error: checks failed: [('common', 'fake is above chance')]" in err
  assert '- FAIL: fake is above chance' in open(tmp_path / 'RESULTS.md').read()
  # without --strict the failed check is reported, not fatal
  assert reproduce.main(args) == 0
  assert 'warning: checks failed' in capsys.readouterr().err
  # a passing check passes --strict
  monkeypatch.setattr(reproduce, 'dense_baseline', fake_baseline(0.9))
  assert reproduce.main(args + ['--strict']) == 0


def test_strict_exits_1_when_an_experiment_raises(tmp_path, monkeypatch, capsys):
  def broken(workdir, seeds=(0,), smoke=False):
    raise RuntimeError('engine broke')
  monkeypatch.setattr(reproduce, 'dense_baseline', broken)
  assert reproduce.main(['--papers=common', f'--workdir={tmp_path}', '--seeds=0']) == 1
  assert "error: experiments failed: ['common']" in capsys.readouterr().err
  assert 'engine broke' in open(tmp_path / 'RESULTS.md').read()


def test_unknown_paper_is_an_error(tmp_path, capsys):
  assert reproduce.main(['--papers=nope', f'--workdir={tmp_path}']) == 2
  assert "unknown paper(s) ['nope']" in capsys.readouterr().err
  assert reproduce.main(['--papers=common', '--seeds=0,x', f'--workdir={tmp_path}']) == 2
  assert "error: --seeds must be comma-separated integers; got '0,x'" in capsys.readouterr().err
