"""The CLI as a user meets it: one clear error line for bad input; kill -9 then rerun resumes."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CFG = 'tests/common/configs/tiny_digits.py'


def cli(*args, wait=True):
  env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get('PYTHONPATH', ''))
  cmd = [sys.executable, '-m', 'common.train', *args]
  if not wait:
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
  return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def assert_one_line_error(out, *needles):
  assert out.returncode == 2, (out.returncode, out.stderr[-2000:])
  err = [l for l in out.stderr.strip().splitlines() if l.startswith('error:')]
  assert len(err) == 1, out.stderr[-2000:]
  assert 'Traceback' not in out.stderr, out.stderr[-2000:]
  for n in needles:
    assert n in err[0], err[0]


def rows(wd):
  with open(os.path.join(wd, 'metrics.jsonl')) as f:
    return [json.loads(l) for l in f if l.strip()]


@pytest.fixture(scope='module')
def finished(tmp_path_factory):
  wd = str(tmp_path_factory.mktemp('ref'))
  out = cli(f'--config={CFG}', f'--workdir={wd}')
  assert out.returncode == 0, out.stderr[-3000:]
  return wd


def test_run_outputs(finished):
  res = json.load(open(os.path.join(finished, 'results.json')))
  assert res['top1_best'] > 0.5          # 10 classes: chance is 0.1
  assert res['params'] > 0 and res['flops'] > 0
  cfg = json.load(open(os.path.join(finished, 'config.json')))
  assert cfg['model']['name'] == 'resnet8'


def test_kill9_then_rerun_resumes_to_same_metrics(finished, tmp_path):
  wd = str(tmp_path / 'killed')
  p = cli(f'--config={CFG}', f'--workdir={wd}', wait=False)
  deadline = time.time() + 240
  while time.time() < deadline and not os.path.isdir(os.path.join(wd, 'checkpoints', '0')):
    time.sleep(0.2)
  p.send_signal(signal.SIGKILL)
  p.wait()
  assert os.path.isdir(os.path.join(wd, 'checkpoints', '0'))
  out = cli(f'--config={CFG}', f'--workdir={wd}')
  assert out.returncode == 0, out.stderr[-3000:]
  ref, got = rows(finished), rows(wd)
  assert [r['epoch'] for r in got] == list(range(6))
  for a, b in zip(ref, got):
    assert a['train_loss'] == b['train_loss'] and a['test_top1'] == b['test_top1'], (a, b)


def test_unknown_model(tmp_path):
  assert_one_line_error(cli(f'--config={CFG}', f'--workdir={tmp_path}',
                            '--config.model.name=resnet21'), 'resnet21', 'known models')


def test_unknown_config_key(tmp_path):
  out = cli(f'--config={CFG}', f'--workdir={tmp_path}', '--config.optimizer.learnin_rate=0.1')
  assert_one_line_error(out, 'error: unknown config key optimizer.learnin_rate '
                        '(did you mean learning_rate?)')
  out = cli(f'--config={CFG}', f'--workdir={tmp_path}', '--config.optimiser.name=sgd')
  assert_one_line_error(out, 'unknown config key optimiser.name (did you mean optimizer?)')


def test_bad_value(tmp_path):
  assert_one_line_error(cli(f'--config={CFG}', f'--workdir={tmp_path}',
                            '--config.schedule.name=poly'), "'poly'", 'allowed')


def test_missing_dataset_names_prepare_command(tmp_path):
  out = cli(f'--config={CFG}', f'--workdir={tmp_path / "w"}', '--config.dataset.name=cifar10',
            f'--config.dataset.data_dir={tmp_path / "nodata"}')
  assert_one_line_error(out, 'cifar10', str(tmp_path / 'nodata'), 'common.data.prepare')


def test_corrupt_checkpoint_one_line_and_untouched(finished, tmp_path):
  import shutil
  wd = str(tmp_path / 'corrupt')
  shutil.copytree(finished, wd)
  for step in ('4', '5'):   # both kept checkpoints: with one intact, the run falls back to it
    for d, _, fs in os.walk(os.path.join(wd, 'checkpoints', step, 'state')):
      for f in fs:
        with open(os.path.join(d, f), 'wb') as fh:
          fh.write(b'\0garbage')
  before = sorted(os.listdir(os.path.join(wd, 'checkpoints')))
  out = cli(f'--config={CFG}', f'--workdir={wd}', '--config.num_epochs=7')
  assert_one_line_error(out, 'cannot be restored', 'checkpoints/5')
  assert sorted(os.listdir(os.path.join(wd, 'checkpoints'))) == before
