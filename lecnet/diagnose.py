"""Where an LEC-Net run loses its old classes and why its gates stay open, from a finished
``lecnet.train`` workdir.

  python -m lecnet.diagnose --config=lecnet/configs/digits.py --workdir=runs/quick/lecnet/seed0

For every incremental session ``s`` of one arm (default ``lec``) it reports

* the block confusion of the joint test set: rows the session block of the true class (0 = base),
  columns the block of the predicted class. With the backbone, ``W_1``, the old heads and the old
  gates frozen the old logits are unchanged, so every old-class error lands in a newer block;
* the mean largest logit of every head block on the test images of every block, and the column
  norms of every head (``z_j`` is unit-norm, so a block's logits are bounded by its norms);
* at the start of the session (the session s-1 parameters, ``expand_s`` and ``head_s`` still at
  their initial values, ``beta = 1``) and with the stored end-of-session parameters (``beta`` of
  the last LEC epoch), on the session's un-augmented images: how the CE over all seen classes
  and the compression penalty (``models/LECNet.py``: ``0.1 * R1``) move each gate's
  pre-activation ``t_k = mean_b(x) . W_aux,s[:, k]`` under gradient descent. A gate closes only
  where the penalty's push down outweighs the CE's, whose gradient reaches ``W_aux,s`` through
  the gated activations as well as through the gate.

The report is printed as JSON and written to ``<workdir>/diagnosis_<arm>.json``.
"""
from __future__ import annotations

import json
import os
import sys
from typing import Any, Dict

import jax
import jax.numpy as jnp
import numpy as np

from common import losses
from common import train
from common.train import UserError
from lecnet import lec, metrics
from lecnet import train as lec_train
from lecnet.model import LECNet


def block_confusion(predictions, labels, base: int, way: int, session: int) -> np.ndarray:
  """``[s + 1, s + 1]`` counts: entry ``(i, j)`` = test images of session block ``i`` predicted
  as a class of block ``j`` (``lecnet.metrics.session_of_class``) for int ``[B]`` inputs."""
  t = np.asarray(metrics.session_of_class(np.asarray(labels), base, way))
  p = np.asarray(metrics.session_of_class(np.asarray(predictions), base, way))
  if t.max(initial=0) > session or p.max(initial=0) > session:
    raise ValueError(f'labels or predictions beyond session {session}')
  out = np.zeros((session + 1, session + 1), np.int64)
  np.add.at(out, (t, p), 1)
  return out


def expansion_gradients(params, x, labels, session: int, gates, beta, r: float = lec.R_BUDGET,
                        penalty_weight: float = lec.PENALTY_WEIGHT, gamma: float = lec.GAMMA):
  """The CE's and the penalty's gradients with respect to the current expansion branch.

  CE over the ``base + s way`` seen classes through both paths of ``W_aux,s`` (the gated
  activations ``alpha_s * a_s`` in ``z_s`` and the gate ``alpha_s = sigmoid(beta * mean_b(x
  W_aux,s))``), and ``penalty_weight * R(alpha_s)`` (``models/LECNet.py``: ``0.1 * R1``).

  Args:
    params: LECNet params (``node``, ``head_j``, ``expand_j``).
    x: ``[B, F]`` backbone features; labels ``[B]``.
    session: s >= 1; gates ``[S + 1, N]`` stored gates (rows ``1..s-1`` used).
  Returns:
    ``(grad_ce [F, N], grad_penalty [F, N], alpha [N])``.
  """
  if session < 1:
    raise ValueError(f'the gate exists from session 1 on; got session {session}')
  u = x @ params['node']
  old = [x @ params[f'expand_{j}'] for j in range(1, session)]
  heads = [params[f'head_{j}'] for j in range(session + 1)]
  g_old = [gates[j] for j in range(1, session)]

  def ce(w):
    a = x @ w
    logits = lec.session_logits(u, old + [a], g_old + [lec.gate(a, beta)], heads, gamma)
    return losses.cross_entropy(logits, labels)

  def penalty(w):
    return penalty_weight * lec.compression_penalty(lec.gate(x @ w, beta), r)

  w = params[f'expand_{session}']
  return jax.grad(ce)(w), jax.grad(penalty)(w), lec.gate(x @ w, beta)


def _gradient_row(x, grad_ce, grad_pen, alpha) -> Dict[str, float]:
  """How each loss moves the gates' pre-activations ``t = mean_b(x) W_aux,s`` under gradient
  descent: ``dt_k = -lr mean_b(x) . grad[:, k]``."""
  mx = np.asarray(x, np.float64).mean(0)
  ce_t = mx @ np.asarray(grad_ce, np.float64)
  pen_t = mx @ np.asarray(grad_pen, np.float64)
  return {'gate_mean': float(np.mean(alpha)),
          'active_fraction': float(np.mean(np.asarray(alpha) > 0.5)),
          'ce_raises_t_fraction': float(np.mean(ce_t < 0)),
          'total_lowers_t_fraction': float(np.mean(ce_t + pen_t > 0)),
          'ce_t_abs_mean': float(np.abs(ce_t).mean()),
          'penalty_t_mean': float(pen_t.mean()),
          'ce_over_penalty': float(np.abs(ce_t).mean() / pen_t.mean()) if pen_t.mean() > 0
                             else float('inf')}


def diagnose(config, workdir: str, arm: str = 'lec') -> Dict[str, Any]:
  """The per-session report of one arm of a finished run (see the module doc)."""
  if arm not in lec_train.LEC_ARMS:
    raise UserError(f'arm must be one of {list(lec_train.LEC_ARMS)}; got {arm!r}')
  proto = lec_train.build_protocol(config)
  m = config.method
  model = LECNet(config.model.name, proto.base_classes, proto.way, proto.sessions, int(m.nodes),
                 float(m.gamma), config.model.widths)
  feats = jax.jit(lambda v, im: model.apply(v, im, False, method=LECNet.features))

  def load(s):
    path = os.path.join(workdir, lec_train.stage_name(arm, s))
    if not os.path.exists(os.path.join(path, 'results.json')):
      raise UserError(f'{path} holds no finished stage (run lecnet.train with '
                      f'method.arms including {arm!r} first)')
    return train.load_state(path, 'last')

  def features(state, ds):
    v = {'params': state['params'], 'batch_stats': state['batch_stats']}
    xs, ys = [], []
    for b in ds.batches(int(config.dataset.eval_batch_size), epoch=0, train=False,
                        drop_remainder=False):
      n = int(np.sum(b['weight'])) if 'weight' in b else len(b['label'])
      xs.append(np.asarray(feats(v, b['image']))[:n])
      ys.append(np.asarray(b['label'])[:n])
    return jnp.asarray(np.concatenate(xs)), np.concatenate(ys)

  states = {0: load(0)}
  sessions = []
  last_epoch = int(m.session_epochs) - 1
  for s in range(1, proto.sessions + 1):
    states[s] = load(s)
    st = states[s]
    gates = jnp.asarray(st['extra']['gates'])
    x, y = features(st, proto.test_set(s))
    logits, _ = model.apply({'params': st['params']}, x, session=s, gates=gates,
                            method=LECNet.classify)
    logits = np.asarray(logits)
    conf = block_confusion(logits.argmax(1), y, proto.base_classes, proto.way, s)
    blocks = np.asarray(metrics.session_of_class(y, proto.base_classes, proto.way))
    edges = [0] + [proto.num_seen(j) for j in range(s + 1)]
    max_logit = [[float(logits[blocks == i, edges[j]:edges[j + 1]].max(1).mean())
                  for i in range(s + 1)] for j in range(s + 1)]
    norms = [float(np.linalg.norm(np.asarray(st['params'][f'head_{j}']), axis=0).mean())
             for j in range(s + 1)]
    xt, yt = features(st, proto.train[s])
    row = {'session': s, 'accuracy': float((logits.argmax(1) == y).mean()),
           'block_confusion': conf.tolist(),
           'mean_max_logit[head block][true block]': max_logit,
           'head_column_norm': norms}
    prev = states[s - 1]
    for tag, p, g, beta in (
        ('start', prev['params'], jnp.asarray(prev['extra']['gates']),
         lec.beta_schedule(0, int(m.anneal_start))),
        ('end', st['params'], gates, lec.beta_schedule(last_epoch, int(m.anneal_start)))):
      pw = float(m.penalty_weight) if arm == 'lec' else 0.0
      g_ce, g_pen, alpha = expansion_gradients(p, xt, jnp.asarray(yt), s, g, beta, float(m.r),
                                               pw, float(m.gamma))
      row[f'gate_gradient_{tag}'] = dict(beta=float(beta), **_gradient_row(xt, g_ce, g_pen,
                                                                          alpha))
    sessions.append(row)
  out = {'arm': arm, 'workdir': workdir, 'sessions': sessions}
  train.write_json(os.path.join(workdir, f'diagnosis_{arm}.json'), out)
  return out


def main() -> None:
  """``python -m lecnet.diagnose --config=... --workdir=... [--arm=lec]``; bad input prints one
  ``error:`` line and exits with status 2."""
  from absl import app, flags
  from ml_collections import config_flags
  config_flags.DEFINE_config_file('config', 'lecnet/configs/digits.py', 'the run\'s config',
                                  lock_config=True)
  flags.DEFINE_string('workdir', None, 'a finished lecnet.train workdir')
  flags.DEFINE_string('arm', 'lec', 'which LEC arm to diagnose')
  flags.mark_flags_as_required(['workdir'])

  def _main(argv):
    if len(argv) > 1:
      raise app.UsageError(f'unexpected arguments: {argv[1:]}')
    try:
      out = diagnose(flags.FLAGS.config, flags.FLAGS.workdir, flags.FLAGS.arm)
    except (UserError, FileNotFoundError) as e:
      print(f'error: {e}', file=sys.stderr)
      sys.exit(2)
    print(json.dumps(out, indent=1))

  try:
    app.run(_main)
  except SystemExit:
    raise
  except Exception as e:  # config_flags errors surface before _main runs
    print(f'error: {train.config_error_line(e)}', file=sys.stderr)
    sys.exit(2)


if __name__ == '__main__':
  main()
