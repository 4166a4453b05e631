"""Two processes on localhost, 2 CPU devices each == one process with 4 devices."""
import json
import os
import socket
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def spawn(pid, nproc, port, workdir, ndev):
  env = dict(os.environ, XLA_FLAGS=f'--xla_force_host_platform_device_count={ndev}',
             JAX_PLATFORMS='cpu', PYTHONPATH=ROOT + os.pathsep + os.environ.get('PYTHONPATH', ''))
  return subprocess.Popen([sys.executable, '-m', 'tests.common.multihost_child', str(pid),
                           str(nproc), str(port), workdir], cwd=ROOT, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_two_processes_match_one(tmp_path):
  port = free_port()
  procs = [spawn(i, 2, port, str(tmp_path / 'multi'), 2) for i in range(2)]
  outs = [p.communicate(timeout=300) for p in procs]
  for p, (o, e) in zip(procs, outs):
    assert p.returncode == 0, e[-3000:]
  single = spawn(0, 1, port, str(tmp_path / 'single'), 4)
  o, e = single.communicate(timeout=300)
  assert single.returncode == 0, e[-3000:]
  multi_rows = json.loads(outs[0][0].strip().splitlines()[-1])
  single_rows = json.loads(o.strip().splitlines()[-1])
  assert len(multi_rows) == len(single_rows) == 3
  for a, b in zip(multi_rows, single_rows):
    # Same 4 device shards of each global batch, same collectives: equal up to reduction order.
    assert abs(a['train_loss'] - b['train_loss']) < 1e-5, (a, b)
    assert a['test_top1'] == b['test_top1']
  assert os.path.isdir(tmp_path / 'multi' / 'checkpoints' / '2')
