"""``python -m whitebox.bench``: one JSON line from a real (tiny) run, and one ``error:`` line (exit
2) for bad flags before any timing."""
import json
import os
import subprocess
import sys

import pytest

from common import flops
from whitebox import bench

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_tiny_run_times_every_call_and_the_vote_meets_its_target(capsys):
  res = bench.main(['--model=vgg_tiny', '--batch=8', '--target=0.6', '--repeats=1'])
  line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert line == json.loads(json.dumps(res))
  for k in ('classwise_s', 'dense_s', 'finetune_s', 'vote_s'):
    assert res[k] > 0, k
  assert res['classwise_over_dense'] == pytest.approx(res['classwise_s'] / res['dense_s'], rel=0.02)
  dense = flops.count('vgg_tiny', None, (32, 32), 10)[0]
  compact = flops.count('vgg_tiny', res['compact_widths'], (32, 32), 10)[0]
  assert len(res['compact_widths']) == 6 and min(res['compact_widths']) >= 1
  assert 1 - compact / dense == pytest.approx(res['vote_flops_reduction'], abs=1e-4)
  assert res['vote_flops_reduction'] >= 0.6 and res['vote_iterations'] >= 1
  assert res['cpu'] and res['batch'] == 8


@pytest.mark.parametrize('args,needles', [
    (['--model=resnet18'], ['--model', "'resnet18'", 'vgg16']),
    (['--batch=0'], ['--batch', '>= 1', '0']),
    (['--repeats=0'], ['--repeats', '>= 1']),
    (['--target=0.95'], ['--target', '(0, 0.9)', '0.95']),
    (['--target=x'], ['--target', "'x'"]),
    (['--frobnicate'], ['--frobnicate']),
])
def test_bad_flags_are_one_error_line(capsys, args, needles):
  with pytest.raises(SystemExit) as e:
    bench.main(args)
  out = capsys.readouterr()
  lines = out.err.strip().splitlines()
  assert e.value.code == 2 and out.out == ''
  assert len(lines) == 1 and lines[0].startswith('error: '), out.err
  for n in needles:
    assert n in lines[0], lines[0]


def test_cli_process_answers_one_error_line():
  r = subprocess.run([sys.executable, '-m', 'whitebox.bench', '--batch=-3'], capture_output=True,
                     text=True, timeout=300, cwd=ROOT)
  lines = r.stderr.strip().splitlines()
  assert r.returncode == 2 and 'Traceback' not in r.stderr, r.stderr[-2000:]
  assert lines == ['error: --batch must be >= 1; got -3'] and r.stdout == ''
