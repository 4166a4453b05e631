"""Checksummed checkpoints: damage is detected, the run falls back or refuses, never resumes silently.

Each damage (flipped 64-byte runs, truncation, deleted files) hits the newest checkpoint of a run
that was stopped after three of four epochs; the rerun must either fall back to the previous
checkpoint and end with exactly the metrics of an uninterrupted run, or raise one
``CheckpointError`` and leave the directory byte-for-byte as it was.
"""
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest

from common import checkpoint, train
from tests.common.engine_fixtures import ToyMethod, toy_config, use_toy_data

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EPOCHS = 4


class StopAfter(ToyMethod):
  """Stops the run after epoch ``last`` is checkpointed, as a kill between two epochs would."""

  def __init__(self, config, last):
    super().__init__(config)
    self.last = last

  def epoch_start(self, state, epoch):
    if epoch == self.last + 1:
      raise KeyboardInterrupt('simulated stop')
    return state


def read_rows(wd):
  with open(os.path.join(wd, 'metrics.jsonl')) as f:
    return [json.loads(l) for l in f if l.strip()]


def same_metrics(ref, got):
  assert [r['epoch'] for r in got] == [r['epoch'] for r in ref]
  for a, b in zip(ref, got):
    for k in ('train_loss', 'train_top1', 'test_top1', 'test_loss', 'lr'):
      assert a[k] == b[k], (k, a, b)


def tree_digest(d):
  """Hash of every file's relative path and bytes under ``d`` (to show nothing changed)."""
  h = hashlib.sha256()
  for root, dirs, files in sorted(os.walk(d)):
    dirs.sort()
    for f in sorted(files):
      p = os.path.join(root, f)
      h.update(os.path.relpath(p, d).encode())
      with open(p, 'rb') as fh:
        h.update(fh.read())
  return h.hexdigest()


def data_files(step_dir):
  """The array data files (orbax/tensorstore OCDBT ``.../d/<hash>``) under ``step_dir``."""
  return sorted(os.path.join(r, f) for r, _, fs in os.walk(step_dir) for f in fs
                if os.path.basename(r) == 'd')


def flip(path, runs=4, seed=0):
  """Inverts every bit of ``runs`` 64-byte runs at random offsets (fewer bytes in small files)."""
  b = bytearray(open(path, 'rb').read())
  n = min(64, len(b))
  for o in np.random.RandomState(seed).randint(0, len(b) - n + 1, runs):
    b[o:o + n] = bytes(255 - x for x in b[o:o + n])
  with open(path, 'wb') as f:
    f.write(bytes(b))


def truncate(path):
  with open(path, 'r+b') as f:
    f.truncate(os.path.getsize(path) // 2)


def edit_meta(step_dir, fn):
  """Rewrites the step's JSON item (``{'meta', 'integrity'}``) as valid JSON ``fn(record)``."""
  path = os.path.join(step_dir, 'meta', 'metadata')
  with open(path) as f:
    rec = json.load(f)
  with open(path, 'w') as f:
    json.dump(fn(rec), f)


FILE_DAMAGE = {'flip': flip, 'truncate': truncate, 'delete': os.remove}

DAMAGE = {
    'flip_data': lambda d: [flip(f) for f in data_files(d)],
    'truncate_data': lambda d: [truncate(f) for f in data_files(d)],
    'delete_data': lambda d: [os.remove(f) for f in data_files(d)],
    'delete_state_metadata': lambda d: os.remove(os.path.join(d, 'state', '_METADATA')),
    'delete_meta': lambda d: shutil.rmtree(os.path.join(d, 'meta')),
    'drop_checksums': lambda d: edit_meta(d, lambda rec: rec['meta']),
    'edit_meta': lambda d: edit_meta(d, lambda rec: dict(rec, meta=dict(rec['meta'], epoch=1))),
}


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  """The uninterrupted reference run, and a run stopped after epoch 2 (checkpoints 1 and 2)."""
  mp = pytest.MonkeyPatch()
  use_toy_data(mp)
  base = tmp_path_factory.mktemp('integrity')
  c = toy_config(EPOCHS)
  ref = str(base / 'ref')
  res = train.run(c, ref, ToyMethod(c))
  stopped = str(base / 'stopped')
  with pytest.raises(KeyboardInterrupt):
    train.run(c, stopped, StopAfter(c, 2))
  assert sorted(os.listdir(os.path.join(stopped, 'checkpoints'))) == ['1', '2']
  yield {'ref': ref, 'res': res, 'stopped': stopped, 'base': base}
  mp.undo()


@pytest.mark.parametrize('damage', sorted(DAMAGE))
def test_damaged_latest_falls_back_to_previous_and_matches_uninterrupted(runs, damage, tmp_path,
                                                                         monkeypatch, capsys):
  use_toy_data(monkeypatch)
  wd = str(tmp_path / 'w')
  shutil.copytree(runs['stopped'], wd)
  ck_dir = os.path.join(wd, 'checkpoints')
  DAMAGE[damage](os.path.join(ck_dir, '2'))
  c = toy_config(EPOCHS)
  capsys.readouterr()
  res = train.run(c, wd, ToyMethod(c))
  err = capsys.readouterr().err
  warn = [l for l in err.splitlines() if l.startswith('warning:')]
  assert any(f'{ck_dir}/2 cannot be restored' in l for l in warn), err
  assert any(f'falling back to {ck_dir}/1' in l for l in warn), err
  same_metrics(read_rows(runs['ref']), read_rows(wd))
  assert res['top1_last'] == runs['res']['top1_last']
  # The damaged step is kept aside and no longer counts: the newest two steps are fresh and verify.
  assert sorted(os.listdir(ck_dir)) == ['2', '3', 'corrupt-2']
  ck = checkpoint.Checkpointer(ck_dir)
  assert ck.latest_step() == 3
  _, meta = ck.restore_raw()
  assert meta['epoch'] == 3
  ck.close()


@pytest.mark.parametrize('kind', sorted(FILE_DAMAGE))
def test_damage_to_any_single_file_is_detected_or_harmless(runs, kind, tmp_path, capsys):
  """Each file of the newest step in turn: the restore falls back (with a warning naming the step)
  or returns arrays bit-identical to the undamaged checkpoint (the file is not read on restore,
  e.g. orbax's commit markers or the per-process OCDBT copy merged into the top-level one)."""
  src = os.path.join(runs['stopped'], 'checkpoints')
  ck = checkpoint.Checkpointer(src)
  good, good_meta = ck.restore_raw()
  ck.close()
  assert good_meta['epoch'] == 2
  good_leaves = jax.tree_util.tree_leaves_with_path(good)
  rels = sorted(os.path.relpath(os.path.join(r, f), os.path.join(src, '2'))
                for r, _, fs in os.walk(os.path.join(src, '2')) for f in fs)
  detected = []
  for i, rel in enumerate(rels):
    ck_dir = str(tmp_path / str(i))
    shutil.copytree(src, ck_dir)
    FILE_DAMAGE[kind](os.path.join(ck_dir, '2', rel))
    ck = checkpoint.Checkpointer(ck_dir)
    capsys.readouterr()
    got, meta = ck.restore_raw()
    ck.close()
    err = capsys.readouterr().err
    if meta['epoch'] == 1:
      assert f'warning: checkpoint {ck_dir}/2 cannot be restored' in err, (rel, err)
      detected.append(rel)
    else:
      assert meta == good_meta and 'warning' not in err, (rel, err)
      leaves = jax.tree_util.tree_leaves_with_path(got)
      assert [p for p, _ in leaves] == [p for p, _ in good_leaves], rel
      for (_, a), (_, b) in zip(leaves, good_leaves):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=rel)
  for must in ('meta/metadata', 'state/_METADATA', 'state/manifest.ocdbt'):
    assert must in detected, (must, detected)
  assert any(r.startswith('state/') and '/d/' in '/' + r for r in detected), detected


def test_valid_encoding_with_wrong_numbers_names_the_array(runs, tmp_path, capsys):
  """Data that decodes cleanly but holds other numbers is caught by its crc32 and named."""
  wd = str(tmp_path / 'w')
  shutil.copytree(runs['stopped'], wd)
  ck_dir = os.path.join(wd, 'checkpoints')
  ck = checkpoint.Checkpointer(ck_dir)
  good, _ = ck.restore_raw(step=2)
  # Rewrite one array inside the checkpoint through orbax itself (valid encoding, wrong numbers),
  # the case a decoder cannot notice.
  import orbax.checkpoint as ocp
  mngr = ocp.CheckpointManager(os.path.join(str(tmp_path), 'forged'))
  forged = dict(good)
  forged['params'] = dict(good['params'])
  forged['params']['fc'] = dict(good['params']['fc'])
  forged['params']['fc']['kernel'] = np.asarray(good['params']['fc']['kernel']) + 1e-3
  mngr.save(2, args=ocp.args.Composite(state=ocp.args.StandardSave(forged)), force=True)
  mngr.wait_until_finished()
  mngr.close()
  shutil.rmtree(os.path.join(ck_dir, '2', 'state'))
  shutil.copytree(os.path.join(str(tmp_path), 'forged', '2', 'state'),
                  os.path.join(ck_dir, '2', 'state'))
  ck = checkpoint.Checkpointer(ck_dir)
  with pytest.raises(checkpoint.CheckpointError,
                     match=r'checkpoints/2 cannot be restored: 1 of \d+ arrays fail verification: '
                           r'params/fc/kernel crc32'):
    ck.restore_raw(step=2)
  capsys.readouterr()
  _, meta = ck.restore_raw()   # read-only fallback: warns, returns step 1, moves nothing
  assert meta['epoch'] == 1
  assert 'params/fc/kernel crc32' in capsys.readouterr().err
  assert sorted(os.listdir(ck_dir)) == ['1', '2']
  ck.close()


@pytest.mark.parametrize('damage', ['flip_data', 'truncate_data', 'drop_checksums'])
def test_every_checkpoint_damaged_refuses_and_changes_nothing(runs, damage, tmp_path, monkeypatch):
  use_toy_data(monkeypatch)
  wd = str(tmp_path / 'w')
  shutil.copytree(runs['stopped'], wd)
  ck_dir = os.path.join(wd, 'checkpoints')
  for s in ('1', '2'):
    DAMAGE[damage](os.path.join(ck_dir, s))
  before = tree_digest(wd)
  c = toy_config(EPOCHS)
  with pytest.raises(checkpoint.CheckpointError) as e:
    train.run(c, wd, ToyMethod(c))
  msg = str(e.value)
  assert '\n' not in msg
  assert f'no checkpoint in {ck_dir} verifies' in msg
  assert f'{ck_dir}/2 cannot be restored' in msg and f'{ck_dir}/1 cannot be restored' in msg
  assert tree_digest(wd) == before


def test_best_and_init_checkpoint_and_load_variables_verify(runs, tmp_path, monkeypatch):
  use_toy_data(monkeypatch)
  wd = str(tmp_path / 'w')
  shutil.copytree(runs['ref'], wd)
  best = os.path.join(wd, 'best')
  (step,) = os.listdir(best)
  good = train.load_variables(wd)
  DAMAGE['flip_data'](os.path.join(best, step))
  before = tree_digest(wd)
  with pytest.raises(checkpoint.CheckpointError, match=f'no checkpoint in {best} verifies'):
    train.load_variables(wd)   # never substitutes the last checkpoint for the best one
  c = toy_config(1)
  c.init_checkpoint = wd
  with pytest.raises(checkpoint.CheckpointError, match=f'no checkpoint in {best} verifies'):
    train.run(c, str(tmp_path / 'finetune'), ToyMethod(c))
  assert tree_digest(wd) == before
  # 'last' falls back from a damaged newest step to the previous one, read-only.
  ck_dir = os.path.join(wd, 'checkpoints')
  DAMAGE['flip_data'](os.path.join(ck_dir, str(EPOCHS - 1)))
  last = train.load_variables(wd, which='last')
  assert last['params']['fc']['kernel'].shape == good['params']['fc']['kernel'].shape
  assert sorted(os.listdir(ck_dir)) == [str(EPOCHS - 2), str(EPOCHS - 1)]


def test_explicit_step_is_verified_and_not_replaced(runs, tmp_path):
  wd = str(tmp_path / 'w')
  shutil.copytree(runs['stopped'], wd)
  ck_dir = os.path.join(wd, 'checkpoints')
  DAMAGE['truncate_data'](os.path.join(ck_dir, '1'))
  ck = checkpoint.Checkpointer(ck_dir)
  with pytest.raises(checkpoint.CheckpointError, match=f'checkpoint {ck_dir}/1 cannot be restored'):
    ck.restore_raw(step=1)
  _, meta = ck.restore_raw(step=2)
  assert meta['epoch'] == 2
  ck.close()


def test_checksums_cover_shape_dtype_and_bytes():
  a = {'w': np.arange(6, dtype=np.float32).reshape(2, 3), 's': np.int32(3)}
  c = checkpoint.checksums(a)
  assert c['w']['shape'] == [2, 3] and c['w']['dtype'] == 'float32' and c['s']['shape'] == []
  b = {'w': a['w'].copy(), 's': a['s']}
  b['w'][1, 2] = np.nextafter(b['w'][1, 2], np.float32(10))   # one ulp
  assert checkpoint.checksums(b)['w']['crc32'] != c['w']['crc32']
  assert checkpoint.checksums({'w': a['w'].T.copy().T, 's': a['s']}) == c   # layout-independent
  assert checkpoint.checksums({'w': a['w'].astype(np.float64), 's': a['s']})['w'] != c['w']


KILL_CHILD = r'''
import os, signal, sys
sys.path.insert(0, {root!r})
import pytest
from orbax.checkpoint._src.path import atomicity
from common import train
from tests.common.engine_fixtures import ToyMethod, toy_config, use_toy_data

real = atomicity.AtomicRenameTemporaryPath.finalize

async def finalize(self, *a, **k):
  # Every item of step 2 (arrays, meta, checksums) is written to the temporary directory; die
  # before orbax renames it into place, as kill -9 during a save would.
  if str(self._final_path).endswith(os.path.join('checkpoints', '2')):
    os.kill(os.getpid(), signal.SIGKILL)
  return await real(self, *a, **k)

atomicity.AtomicRenameTemporaryPath.finalize = finalize
use_toy_data(pytest.MonkeyPatch())
c = toy_config({epochs})
train.run(c, {wd!r}, ToyMethod(c))
'''


def test_kill9_during_save_then_rerun_matches_uninterrupted(runs, tmp_path, monkeypatch):
  wd = str(tmp_path / 'killed')
  code = KILL_CHILD.format(root=ROOT, epochs=EPOCHS, wd=wd)
  p = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True,
                     timeout=600)
  assert p.returncode == -signal.SIGKILL, p.stderr[-3000:]
  ck_dir = os.path.join(wd, 'checkpoints')
  names = sorted(os.listdir(ck_dir))
  assert names[:2] == ['0', '1'] and len(names) == 3 and names[2].startswith('2.orbax-checkpoint'), \
      names
  use_toy_data(monkeypatch)
  c = toy_config(EPOCHS)
  res = train.run(c, wd, ToyMethod(c))
  same_metrics(read_rows(runs['ref']), read_rows(wd))
  assert res['top1_last'] == runs['res']['top1_last']
  assert sorted(os.listdir(ck_dir)) == ['2', '3']   # the half-written temporary is gone


def test_cli_flipped_runs_in_latest_checkpoint_fall_back_and_match(tmp_path):
  """The user's path: `python -m common.train` on tiny digits, 64-byte runs overwritten in the
  largest data file of the newest checkpoint, the same command again."""
  cfg = 'tests/common/configs/tiny_digits.py'
  env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get('PYTHONPATH', ''))

  def cli(wd):
    return subprocess.run([sys.executable, '-m', 'common.train', f'--config={cfg}',
                           f'--workdir={wd}', '--config.num_epochs=3'], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)

  ref = str(tmp_path / 'ref')
  out = cli(ref)
  assert out.returncode == 0, out.stderr[-3000:]
  wd = str(tmp_path / 'damaged')
  shutil.copytree(ref, wd)
  ck_dir = os.path.join(wd, 'checkpoints')
  flip(max(data_files(os.path.join(ck_dir, '2')), key=os.path.getsize))
  out = cli(wd)
  assert out.returncode == 0, out.stderr[-3000:]
  assert 'error:' not in out.stderr
  assert f'warning: checkpoint {ck_dir}/2 cannot be restored' in out.stderr, out.stderr[-3000:]
  assert f'warning: falling back to {ck_dir}/1' in out.stderr, out.stderr[-3000:]
  assert f'resuming {wd} from epoch 2' in out.stdout
  same_metrics(read_rows(ref), read_rows(wd))
  assert sorted(os.listdir(ck_dir)) == ['1', '2', 'corrupt-2']
