"""pmap over 2 forced CPU devices gives the same metrics (to BN-statistics tolerance) as 1 device."""
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run_child(tmp, ndev):
  env = dict(os.environ, XLA_FLAGS=f'--xla_force_host_platform_device_count={ndev}',
             PYTHONPATH=ROOT + os.pathsep + os.environ.get('PYTHONPATH', ''))
  out = subprocess.run([sys.executable, '-m', 'tests.common.pmap_child', str(tmp / f'd{ndev}')],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  return json.loads(out.stdout.strip().splitlines()[-1])


def test_two_devices_match_one(tmp_path):
  one, two = run_child(tmp_path, 1), run_child(tmp_path, 2)
  assert one['devices'] == 1 and two['devices'] == 2
  for a, b in zip(one['rows'], two['rows']):
    # Gradients are pmean'd (exact), but each device normalises with its half-batch BN statistics
    # (PyTorch DataParallel semantics), so the trajectories agree to a tolerance, not bit for bit.
    assert abs(a['train_loss'] - b['train_loss']) < 0.02 * abs(a['train_loss']), (a, b)
    assert abs(a['test_top1'] - b['test_top1']) <= 0.1, (a, b)
    assert a['lr'] == b['lr']
