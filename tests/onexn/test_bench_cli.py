"""``python -m onexn.bench`` answers bad flags with one ``error:`` line (exit 2) before any timing."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.parametrize('args,needles', [
    (['--models=mobilenet_v3'], ['--models', "'mobilenet_v3'", 'mobilenet_v2']),
    (['--n=4,0'], ['--n', "'0'", 'positive integers']),
    (['--n=four'], ['--n', "'four'"]),
    (['--p=0.5,1.5'], ['--p', "'1.5'", '[0, 1)']),
    (['--batches=1,-8'], ['--batches', "'-8'"]),
    (['--repeats=0'], ['--repeats', '>= 1', '0']),
    (['--repeats=x'], ['--repeats', "'x'"]),
    (['--json=/nonexistent_dir/rows.json'], ['--json', '/nonexistent_dir/rows.json']),
    (['--frobnicate'], ['--frobnicate']),
])
def test_bad_flags_are_one_error_line(args, needles):
  r = subprocess.run([sys.executable, '-m', 'onexn.bench', *args], capture_output=True, text=True,
                     timeout=300, cwd=ROOT)
  lines = r.stderr.strip().splitlines()
  assert r.returncode == 2 and 'Traceback' not in r.stderr, r.stderr[-2000:]
  assert len(lines) == 1 and lines[0].startswith('error: '), r.stderr[-2000:]
  assert r.stdout == ''
  for n in needles:
    assert n in lines[0], lines[0]
