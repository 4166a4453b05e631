"""LEC-Net few-shot class-incremental training: the base session, then every incremental session,
as one staged run (``common.train.run_stages``), with the baselines in the same runner.

  python -m lecnet.train --config=lecnet/configs/digits.py --workdir=runs/lecnet_digits

Stages, each its own ``common.train.run`` directory under ``--workdir`` (checkpointed per session;
a killed run resumes inside the stage where it stopped):

* ``session_0``: the base session, backbone + node layer ``W_1`` + base head trained with CE on
  the base classes (CEC's recipe, ``config.optimizer`` / ``config.schedule``; LEC publishes none);
* ``<arm>_session<s>`` for s = 1..S and every arm of ``method.arms``:

  - ``lec``: LEC-Net (ICCV2021-LEC/LEC ``models/LECNet.py``): frozen backbone (BN on running
    statistics), ``W_aux,s`` and ``W_c,s`` trained with CE over all seen classes + KD(T = 2) to
    the session s-1 model + 0.1 R(r = 0.1), gate slope annealed from LEC-epoch 20; the gate of the
    last training batch is stored as ``A[s]`` and used at test time;
  - ``lec_no_penalty``: the same without the compression penalty (the gate alone);
  - ``lec_no_gate``: the same with ``alpha = 1`` (plain expansion, nothing to compress);
  - ``finetune`` (Ft-CNN, TOPIC's baseline): new head rows appended, the whole network fine-tuned
    with CE on the few shots, BN in training mode;
  - ``prototype``: CEC's decoupled baseline: frozen backbone, cosine classifier on class-mean
    features (temperature 16), nothing trained (its stages run one frozen step so that they are
    ordinary runs with an evaluation); it has its own ``prototype_session0``.

An incremental LEC "epoch" (and a fine-tuning step) is one full-batch step on the session's images
(batch 128 > 5 x 10); the engine evaluates and checkpoints every ``method.passes_per_epoch`` of
them. After the run,
``sessions.json`` / ``sessions.md`` hold the per-session table (joint accuracy, LEC's
class-weighted accuracy, base / old / new accuracy, PD, active gates) and
``accuracy_vs_session.png`` the plot.
"""
from __future__ import annotations

import json
import os
import sys
from typing import Any, Dict, List, Optional, Sequence

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from common import losses
from common import train
from common.train import UserError
from lecnet import lec, metrics, protocol as protocol_lib
from lecnet.model import LECNet

ARMS = ('lec', 'lec_no_penalty', 'lec_no_gate', 'finetune', 'prototype')
LEC_ARMS = ('lec', 'lec_no_penalty', 'lec_no_gate')
ARM_LABELS = {'lec': 'LEC-Net', 'lec_no_penalty': 'LEC-Net, no compression penalty',
              'lec_no_gate': 'LEC-Net, no gate (alpha = 1)', 'finetune': 'Ft-CNN',
              'prototype': 'prototype cosine (CEC decoupled)'}
PROTOCOLS = ('digits', 'cifar100', 'caltech_birds2011', 'mini_imagenet')
CUB_LISTS = ('topic', 'lec')


def parse_arms(value: str) -> List[str]:
  """``'lec,finetune'`` -> ``['lec', 'finetune']``; UserError naming an unknown arm."""
  arms = [a.strip() for a in str(value).split(',') if a.strip()]
  bad = [a for a in arms if a not in ARMS]
  if not arms or bad:
    raise UserError(f'method.arms must be a comma-separated subset of {list(ARMS)}; got '
                    f'{value!r}')
  return arms


def build_protocol(config) -> protocol_lib.Protocol:
  """The FSCIL protocol of ``config.method.protocol`` (see ``lecnet.protocol``)."""
  m = config.method
  name = m.protocol
  if name not in PROTOCOLS:
    raise UserError(f'method.protocol must be one of {list(PROTOCOLS)}; got {name!r}')
  base, way, shot, sessions = (int(m.base_classes), int(m.way), int(m.shot), int(m.sessions))
  if min(base, way, shot, sessions) < 1:
    raise UserError(f'method.base_classes, way, shot, sessions must be >= 1; got {base}, {way}, '
                    f'{shot}, {sessions}')
  if name == 'mini_imagenet':
    root = m.get('mini_imagenet_root', '')
    if not root:
      raise UserError('method.mini_imagenet_root is empty: point it at the folder holding the '
                      'miniImageNet images/ and split/ (CEC layout)')
    tr, te, lookup = protocol_lib.mini_imagenet_splits(root, seed=int(config.seed))
    key_rows = protocol_lib.name_rows(lookup, lambda k: k.replace('\\', '/').split('/')[-1],
                                      'miniImageNet')
    return protocol_lib.from_index_lists(name, tr, te, m.index_list_dir, key_rows, base, way,
                                         shot, sessions, seed=int(config.seed))
  if config.dataset.name != name:
    raise UserError(f'method.protocol={name!r} needs dataset.name={name!r}; got '
                    f'{config.dataset.name!r}')
  tr = train.load_dataset(config, 'train')
  te = train.load_dataset(config, 'test')
  if name == 'digits':
    return protocol_lib.digits(tr, te, int(config.seed), base, way, shot, sessions)
  if not m.get('index_list_dir', ''):
    raise UserError(f'method.index_list_dir is empty: point it at the TOPIC/CEC index_list '
                    f'folder of {name} (session_1.txt ... session_{sessions + 1}.txt)')
  lookup = protocol_lib.record_keys(name, config.dataset.get('data_dir', ''), 'train')
  labelled = False
  if name == 'cifar100':
    key_rows = protocol_lib.name_rows(lookup, protocol_lib.cifar_key, 'CIFAR-100')
  else:
    lists = m.get('cub_lists', 'topic')
    if lists not in CUB_LISTS:
      raise UserError(f'method.cub_lists must be one of {list(CUB_LISTS)}; got {lists!r}')
    key_rows = protocol_lib.name_rows(lookup, protocol_lib.cub_key, 'CUB-200-2011')
    labelled = lists == 'lec'
  return protocol_lib.from_index_lists(name, tr, te, m.index_list_dir, key_rows, base, way,
                                       shot, sessions, seed=int(config.seed), labelled=labelled)


def _mask(params, trained: Sequence[str]):
  return {k: jax.tree.map(lambda _: k in trained, v) for k, v in params.items()}


class FSCILMethod(train.Method):
  """One session of one arm (a stage of the staged run).

  Args:
    config: the stage's config (``lecnet.configs``; ``stage_config`` sets the session's
      optimizer, epochs and batch).
    proto: the run's :class:`lecnet.protocol.Protocol`.
    session: s (0 = base session).
    arm: one of ``ARMS`` ('' for the shared base session).
    previous: the workdir of the session s-1 stage of this arm (None for the base session).
  """

  def __init__(self, config, *, proto: protocol_lib.Protocol, session: int, arm: str = '',
               previous: Optional[str] = None):
    super().__init__(config)
    self.proto, self.session, self.arm, self.previous = proto, int(session), arm, previous
    self.name = f'lecnet/{arm or "base"}'
    m = config.method
    self.nodes = int(m.nodes)
    self.r = float(m.r)
    if not 0.0 <= self.r <= 1.0:
      raise UserError(f'method.r must be in [0, 1] (a fraction of the {self.nodes} nodes); got '
                      f'{self.r}')
    self.passes = int(m.passes_per_epoch) if arm in LEC_ARMS + ('finetune',) else 1
    if self.passes < 1:
      raise UserError(f'method.passes_per_epoch must be >= 1; got {self.passes}')
    self.lec_train_node = bool(m.train_node)

  # --- set-up --------------------------------------------------------------------------------
  def datasets(self):
    s = self.session
    tr = self.proto.train[s]
    if self.passes > 1 and s:
      tr = tr.repeated(self.passes)
    out = {'train': tr, 'test': self.proto.test_set(s)}
    if self.arm == 'prototype':
      out['prototype_source'] = self.proto.train[s]
    return out

  def build_model(self):
    m = self.config.method
    self.model = LECNet(self.config.model.name, self.proto.base_classes, self.proto.way,
                        self.proto.sessions, self.nodes, float(m.gamma),
                        self.config.model.widths, self.model_kwargs())
    return self.model

  def init_variables(self, model, rng, images):
    if self.session == 0 and self.arm != 'prototype':
      gates = jnp.zeros((self.proto.sessions + 1, self.nodes))
      v = model.init({'params': rng}, images, session=self.proto.sessions, gates=gates)
      v = {'params': flax.core.unfreeze(v['params']),
           'batch_stats': flax.core.unfreeze(v.get('batch_stats', {}))}
      path = self.config.method.get('backbone_checkpoint', '')
      if path:
        v = _with_backbone(v, path)
      return v
    prev = train.load_state(self.previous, 'last')
    return {'params': prev['params'], 'batch_stats': prev['batch_stats']}

  def init_extra(self, params, batch_stats, rng):
    s, S, n = self.session, self.proto.sessions, self.nodes
    if self.previous is None:
      gates = np.zeros((S + 1, n), np.float32)
      gates[0] = 1.0                      # OneModel: Alpha[0] = 1 (unused)
    else:
      gates = np.asarray(train.load_state(self.previous, 'last')['extra']['gates'], np.float32)
    if self.arm == 'lec_no_gate' and s:
      gates[s] = 1.0
    extra = {'gates': jnp.asarray(gates)}
    if self.arm in LEC_ARMS and s:
      # The session s-1 model (the KD teacher). The backbone is frozen, so the teacher shares the
      # student's features: only its node layer and heads are kept.
      extra['teacher'] = {k: v for k, v in params.items() if k != 'net'}
    if self.arm == 'prototype':
      extra['prototypes'] = self._prototypes(params, batch_stats, gates)
    return extra

  def _prototypes(self, params, batch_stats, gates):
    """Class means of the backbone features ``[base + S way, F]`` of every session up to s,
    computed on un-augmented images (CEC ``replace_base_fc`` / ``update_fc_avg``); rows of
    classes not seen yet are zero."""
    prev = None
    if self.session:
      prev = np.asarray(train.load_state(self.previous, 'last')['extra']['prototypes'])
    src = self.info.datasets['prototype_source']
    variables = {'params': params, 'batch_stats': batch_stats}
    feat = jax.jit(lambda v, x: self.model.apply(v, x, False, method=LECNet.features))
    sums, counts = None, None
    for b in src.batches(int(self.config.dataset.eval_batch_size), epoch=0, train=False,
                         drop_remainder=False):
      f = np.asarray(feat(variables, b['image']), np.float64)
      if sums is None:
        k = self.proto.num_seen(self.proto.sessions)
        sums, counts = np.zeros((k, f.shape[1])), np.zeros(k)
      np.add.at(sums, b['label'], f)
      np.add.at(counts, b['label'], 1)
    protos = sums / np.maximum(counts, 1)[:, None]
    if prev is not None:
      seen = counts > 0
      protos = np.where(seen[:, None], protos, prev)
    return jnp.asarray(protos, jnp.float32)

  def trainable_mask(self, params):
    s, arm = self.session, self.arm
    if s == 0 and arm != 'prototype':
      return _mask(params, ('net', 'node', 'head_0'))
    if arm in LEC_ARMS:
      return _mask(params, (f'expand_{s}', f'head_{s}') + (('node',) if self.lec_train_node
                                                           else ()))
    if arm == 'finetune':
      return _mask(params, ('net', 'node') + tuple(f'head_{j}' for j in range(s + 1)))
    return _mask(params, ())

  # --- pure hooks ----------------------------------------------------------------------------
  def before_step(self, state, step):
    if self.arm in LEC_ARMS and self.session:
      # One LEC epoch = one pass over the session's images (a full batch).
      per_pass = max(self.info.steps_per_epoch // self.passes, 1)
      return {'lec_epoch': np.int32(step // per_pass)}
    return None

  def forward(self, model, params, batch_stats, extra, batch, train_: bool, rng):
    s, arm = self.session, self.arm
    v = {'params': params, 'batch_stats': batch_stats}
    x_img = batch['image']
    gates = extra['gates']
    if arm == 'prototype':
      x = model.apply(v, x_img, False, method=LECNet.features)
      t = float(self.config.method.prototype_temperature)
      k = self.proto.num_seen(s)
      logits = t * lec.l2_normalize(x) @ lec.l2_normalize(extra['prototypes'][:k]).T
      return logits, batch_stats, {}
    if s == 0 or arm == 'finetune':
      kw = dict(session=s, gates=gates, expansion=False)
      if train_:
        (logits, _), mut = model.apply(v, x_img, train_bn=True, mutable=['batch_stats'], **kw)
        return logits, mut['batch_stats'], {}
      logits, _ = model.apply(v, x_img, train_bn=False, **kw)
      return logits, batch_stats, {}
    # LEC arms: the backbone is frozen with BN on running statistics (s > 0).
    x = jax.lax.stop_gradient(model.apply(v, x_img, False, method=LECNet.features))
    use_gate = train_ and arm != 'lec_no_gate'
    beta = None
    if use_gate:
      beta = lec.beta_schedule(batch['method']['lec_epoch'],
                               int(self.config.method.anneal_start))
    logits, alpha = model.apply(v, x, session=s, gates=gates, beta=beta,
                                method=LECNet.classify)
    aux = {'alpha': alpha}
    if use_gate:
      aux['beta'] = beta
    if train_:
      tv = {'params': dict(params, **extra['teacher'])}
      teacher, _ = model.apply(tv, x, session=s - 1, gates=gates, method=LECNet.classify)
      aux['teacher_logits'] = jax.lax.stop_gradient(teacher)
      if use_gate:
        # A[s] = the gate of the last training batch (OneModel.finish_train).
        aux['extra'] = dict(extra, gates=gates.at[s].set(alpha))
    return logits, batch_stats, aux

  def loss(self, logits, labels, aux, params, extra):
    ce = losses.cross_entropy(logits, labels)
    if not (self.arm in LEC_ARMS and self.session):
      return ce, {}
    m = self.config.method
    kd = lec.kd_loss(logits, aux['teacher_logits'], float(m.kd_temperature))
    total = ce + float(m.kd_weight) * kd
    out = {'ce': ce, 'kd': kd}
    if self.arm == 'lec':
      pen = lec.compression_penalty(aux['alpha'], self.r)
      total = total + float(m.penalty_weight) * pen
      out['penalty'] = pen
    if self.arm != 'lec_no_gate':
      out['active_fraction'] = lec.active_fraction(aux['alpha'])
      out['gate_mean'] = jnp.mean(aux['alpha'])
    if 'beta' in aux:
      out['beta'] = aux['beta']
    return total, out

  def eval_metrics(self, logits, batch, aux):
    correct, count = metrics.block_counts(jnp.argmax(logits, -1), batch['label'],
                                          self.proto.base_classes, self.proto.way, self.session,
                                          batch['weight'])
    out = {}
    for j in range(self.session + 1):
      out[f'b{j}_correct'] = correct[j]
      out[f'b{j}_count'] = count[j]
    return out

  # --- host hooks ----------------------------------------------------------------------------
  def epoch_end(self, state, epoch):
    if self.arm in LEC_ARMS and self.session:
      a = np.asarray(state.extra['gates'][self.session])
      return {'stored_active_fraction': float((a > 0.5).mean()),
              'stored_gate_mean': float(a.mean())}
    return {}

  def results(self, state):
    s = self.session
    out = {'session': s, 'arm': self.arm or 'base', 'classes_seen': self.proto.num_seen(s)}
    if self.arm in LEC_ARMS and s:
      a = np.asarray(state.extra['gates'][s])
      out.update(active_fraction=float((a > 0.5).mean()), gate_mean=float(a.mean()),
                 penalty=float(max(a.sum() / len(a) - self.r, 0.0)))
    return out

  def flops_params(self, state):
    s = self.session
    used = ['net', 'node'] + [f'head_{j}' for j in range(s + 1)]
    if self.arm in LEC_ARMS:
      used += [f'expand_{j}' for j in range(1, s + 1)]
    n = sum(int(np.size(x)) for k in used for x in jax.tree.leaves(state.params[k]))
    return None, n


def _with_backbone(variables, path: str):
  """``variables`` with the backbone (``net``) taken from a pretrained zoo checkpoint (its
  classifier ``fc`` dropped: LEC removes the ImageNet fc)."""
  from common import pretrained
  loaded = pretrained.load_pretrained(path)
  net = dict(variables['params']['net'])
  lp = dict(loaded['params'])
  missing = sorted(set(net) - set(lp) - {'fc'})
  if missing:
    raise UserError(f'backbone_checkpoint {path!r} lacks backbone modules {missing}')
  for k in net:
    if k != 'fc':
      net[k] = lp[k]
  params = dict(variables['params'], net=net)
  stats = dict(variables['batch_stats'])
  stats['net'] = dict(loaded.get('batch_stats', {}))
  return {'params': params, 'batch_stats': stats}


# ---------------------------------------------------------------------------------------------
# The staged run


def stage_config(config, session: int, arm: str, num_examples: int):
  """The config of one stage: the base recipe for session 0, else the arm's session recipe."""
  c = ml_collections.ConfigDict(config.to_dict())
  m = config.method
  if session == 0 and arm != 'prototype':
    return c
  c.schedule.name = 'constant'
  c.schedule.warmup = 'none'
  if arm in LEC_ARMS:
    epochs, passes = int(m.session_epochs), int(m.passes_per_epoch)
    if epochs < 1 or epochs % passes:
      raise UserError(f'method.session_epochs={epochs} must be a positive multiple of '
                      f'method.passes_per_epoch={passes}')
    c.num_epochs = epochs // passes
    opt = m.session_optimizer
    batch = int(m.session_batch_size)
  elif arm == 'finetune':
    epochs, passes = int(m.finetune_epochs), int(m.passes_per_epoch)
    if epochs < 1 or epochs % passes:
      raise UserError(f'method.finetune_epochs={epochs} must be a positive multiple of '
                      f'method.passes_per_epoch={passes}')
    c.num_epochs = epochs // passes
    opt = m.finetune_optimizer
    batch = int(m.session_batch_size)
  else:
    c.num_epochs = 1
    opt = m.session_optimizer
    batch = int(m.session_batch_size)
  c.optimizer = ml_collections.ConfigDict(opt.to_dict())
  c.dataset.batch_size = min(batch, num_examples)
  c.checkpoint_every_epochs = max(int(c.num_epochs), 1)
  return c


def stages(config, workdir: str, proto: Optional[protocol_lib.Protocol] = None):
  """``(protocol, [common.train.Stage])``: the base session, then every arm's sessions."""
  arms = parse_arms(config.method.arms)
  proto = proto or build_protocol(config)
  out = [train.Stage('session_0', stage_config(config, 0, '', proto.train[0].num_examples),
                     lambda c: FSCILMethod(c, proto=proto, session=0))]
  for arm in arms:
    first = 0 if arm == 'prototype' else 1
    prev = os.path.join(workdir, 'session_0')
    for s in range(first, proto.sessions + 1):
      name = f'{arm}_session{s}'
      c = stage_config(config, s, arm, proto.train[s].num_examples)
      out.append(train.Stage(name, c, lambda c, s=s, arm=arm, prev=prev: FSCILMethod(
          c, proto=proto, session=s, arm=arm, previous=prev)))
      prev = os.path.join(workdir, name)
  return proto, out


def stage_name(arm: str, session: int) -> str:
  return 'session_0' if session == 0 and arm != 'prototype' else f'{arm}_session{session}'


def session_table(workdir: str, arms: Sequence[str], proto) -> Dict[str, List[Dict[str, Any]]]:
  """``{arm: [per-session metrics]}`` from the stages' ``results.json`` (last epoch)."""
  table = {}
  for arm in arms:
    rows = []
    for s in range(proto.sessions + 1):
      with open(os.path.join(workdir, stage_name(arm, s), 'results.json')) as f:
        res = json.load(f)
      ev = res['eval_last']
      correct = [ev[f'test_b{j}_correct'] for j in range(s + 1)]
      count = [ev[f'test_b{j}_count'] for j in range(s + 1)]
      row = {'session': s, 'classes': proto.num_seen(s), 'test_top1': ev['test_top1']}
      row.update(metrics.summarize(correct, count, proto.base_classes, proto.way))
      for k in ('active_fraction', 'gate_mean'):
        if k in res:
          row[k] = res[k]
      rows.append(row)
    pd = metrics.performance_drop([r['acc_joint'] for r in rows])
    for r in rows:
      r['pd'] = pd
    table[arm] = rows
  return table


def write_report(workdir: str, table, title: str = '') -> Dict[str, str]:
  """``sessions.json``, ``sessions.md`` and ``accuracy_vs_session.png`` in ``workdir``."""
  train.write_json(os.path.join(workdir, 'sessions.json'), table)
  n = max(len(r) for r in table.values())
  lines = ['| arm | ' + ' | '.join(f's{s}' for s in range(n)) + ' | PD | last old | last new |'
           ' active gates (last) |', '|---' * (n + 5) + '|']
  for arm, rows in table.items():
    last = rows[-1]
    act = last.get('active_fraction')
    lines.append(f'| {ARM_LABELS.get(arm, arm)} | ' + ' | '.join(
        f'{100 * r["acc_joint"]:.2f}' for r in rows) + f' | {100 * last["pd"]:.2f} | '
        f'{100 * last["acc_old"]:.2f} | {100 * last["acc_new"]:.2f} | '
        f'{"-" if act is None else f"{act:.3f}"} |')
  md = os.path.join(workdir, 'sessions.md')
  with open(md, 'w') as f:
    f.write((f'{title}\n\n' if title else '') + 'Joint test accuracy (%) after each session.\n\n'
            + '\n'.join(lines) + '\n')
  png = os.path.join(workdir, 'accuracy_vs_session.png')
  plot_sessions({a: [[r['acc_joint'] for r in rows]] for a, rows in table.items()}, png, title)
  return {'table': md, 'plot': png}


def plot_sessions(curves: Dict[str, List[List[float]]], path: str, title: str = '') -> None:
  """Joint accuracy vs session per arm (mean over runs, min-max band)."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(6, 4))
  for arm, cs in curves.items():
    a = 100 * np.asarray(cs, np.float64)
    x = np.arange(a.shape[1])
    ax.plot(x, a.mean(0), marker='o', label=ARM_LABELS.get(arm, arm))
    if len(a) > 1:
      ax.fill_between(x, a.min(0), a.max(0), alpha=0.2)
  ax.set_xlabel('session')
  ax.set_ylabel('joint test accuracy (%)')
  ax.set_xticks(range(a.shape[1]))
  ax.set_title(title or 'FSCIL accuracy vs session')
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def run(config, workdir: str, proto: Optional[protocol_lib.Protocol] = None) -> Dict[str, Any]:
  """The staged run and its report. Returns ``{'table': {arm: rows}, 'files': {...}}``."""
  proto, st = stages(config, workdir, proto)
  train.run_stages(workdir, st)
  arms = parse_arms(config.method.arms)
  table = session_table(workdir, arms, proto)
  files = write_report(workdir, table, f'{proto.name}: {config.model.name} backbone, '
                       f'{proto.base_classes} base classes + {proto.sessions} x {proto.way}-way '
                       f'{proto.shot}-shot')
  return {'table': table, 'files': files}


def main() -> None:
  """``python -m lecnet.train --config=... --workdir=...``; bad input prints one ``error:``
  line and exits with status 2."""
  from absl import app, flags
  from ml_collections import config_flags
  if 'config' not in flags.FLAGS:
    config_flags.DEFINE_config_file('config', 'lecnet/configs/digits.py', 'experiment config',
                                    lock_config=True)
    flags.DEFINE_string('workdir', None, 'output directory (resumes if it holds a run)')
    flags.mark_flags_as_required(['workdir'])

  def _main(argv):
    from absl import logging
    logging.set_verbosity(logging.WARNING)
    if len(argv) > 1:
      raise app.UsageError(f'unexpected arguments: {argv[1:]}')
    try:
      out = run(flags.FLAGS.config, flags.FLAGS.workdir)
    except (UserError, FileNotFoundError) as e:
      print(f'error: {e}', file=sys.stderr)
      sys.exit(2)
    except FloatingPointError as e:
      print(f'error: {e}', file=sys.stderr)
      sys.exit(1)
    with open(out['files']['table']) as f:
      print(f.read())

  try:
    app.run(_main)
  except SystemExit:
    raise
  except Exception as e:  # config_flags errors surface before _main runs
    print(f'error: {train.config_error_line(e)}', file=sys.stderr)
    sys.exit(2)


if __name__ == '__main__':
  main()
