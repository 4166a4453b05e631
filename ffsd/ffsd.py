"""FFSD's per-network losses and their sum (SJLeo/FFSD ``CIFARTrainer.train_with_test``).

Notation: m common students ``S_i`` with logits ``z_i`` and feature taps ``f_i^k`` (``k = -1`` the
last), the fusion module's logits ``z_F`` and fused map ``f_F``, the leader's ``z_L``, ``f_L^k``
and trans-fusion output ``t_L``; ``A`` = :func:`ffsd.losses.attention_map`, ``NMSE`` =
:func:`ffsd.losses.normalized_mse`, ``KL_T(t || s) = T^2 KL(p^T(sg t) || p^T(s))``:

* student ``i``: ``CE(z_i, y) + T^2/(m-1) sum_{j != i} KL(p^T(sg z_j) || p^T(z_i))``
  ``+ [i >= 1] lam_div (D(A(f_i^-1), sg A(f_{i-1}^-1)) + sum_k NMSE(A(f_i^k), sg A(d_{i,k})))``,
  ``d_i`` = decoder ``SD_i`` (eval mode) on the diversity-shifted ``f_{i-1}^-1``. The code scales
  this self-distillation term by ``lambda_diversity``, not ``lambda_self_distillation``; kept.
* fusion module: ``CE(z_F, y) + KL_T(mean_i z_i || z_F)`` (the mean of logits).
* leader: ``CE(z_L, y) + KL_T(z_F || z_L) + lam_fus (NMSE(A(f_L^-1), sg A(f_F))``
  ``+ NMSE(A(t_L), A(sg concat_i f_i^-1)) + sum_k NMSE(A(f_L^k), sg A(d_{L,k})))``, ``d_L`` = the
  leader's decoder (eval mode) on ``sg f_F``.
* decoders (train mode, on the network's own detached last feature):
  ``lam_sd sum_k NMSE(d_k, sg f^k) + NMSE(A(d_k), sg A(f^k))``, k over the shallower taps.

Every cross-network input is detached, so the gradient of :func:`total_loss` with respect to a
network's parameters is the gradient of that network's own loss: one backward of the sum gives
every network exactly the gradient the official code's separate ``backward()`` calls give it.
"""
from __future__ import annotations

from typing import Any, Dict, Mapping, Tuple

import jax
import jax.numpy as jnp

from common import losses as common_losses
from ffsd import losses as F

Array = jax.Array
sg = jax.lax.stop_gradient

TEMPERATURE = 2.0            # options.py: --temperature 2
LAMBDA_DIVERSITY = 1e-5      # README: --lambda_diversity 1e-5
LAMBDA_SELF_DISTILLATION = 1000.0   # README: --lambda_self_distillation 1000
LAMBDA_FUSION = 10.0         # README: --lambda_fusion 10


def _top1(logits, labels):
  return jnp.mean((jnp.argmax(logits, -1) == labels).astype(jnp.float32))


def student_losses(s_logits: Array, s_feats, labels: Array, temperature: float,
                   lam_div, sd_targets=None) -> Tuple[Array, Dict[str, Array]]:
  """Every common student's loss, ``[m]``, and its parts.

  Args:
    s_logits: ``[m, B, K]``.
    s_feats: list over taps of ``[m, B, H_k, W_k, C_k]`` (the last tap last).
    labels: ``[B]`` int.
    temperature: T of the DML term.
    lam_div: the (warmed-up) diversity weight, scalar.
    sd_targets: list over the shallower taps of ``[m - 1, B, H_k, W_k, C'_k]``, the decoder
      outputs for students ``1..m-1`` (None: no diversity or self-distillation term, the DML
      baseline).
  Returns:
    ``(losses [m], parts)`` with ``parts`` = ``ce, dml [m]`` and, with targets,
    ``diversity, self_distillation [m - 1]`` (before the weight).
  """
  ce = jax.vmap(lambda z: common_losses.cross_entropy(z, labels))(s_logits)
  dml = F.dml_losses(s_logits, temperature)
  total = ce + dml
  parts = {'ce': ce, 'dml': dml}
  if sd_targets is not None:
    last = s_feats[-1]
    div = jax.vmap(F.diversity_loss)(F.attention_map(last[1:]), F.attention_map(last[:-1]))
    sd = jax.vmap(lambda fs, ts: F.attention_sum(fs, ts))([f[1:] for f in s_feats[:-1]],
                                                           list(sd_targets))
    extra = lam_div * (div + sd)
    total = total + jnp.concatenate([jnp.zeros((1,), extra.dtype), extra])
    parts.update(diversity=div, self_distillation=sd)
  return total, parts


def fusion_loss(f_logits: Array, s_logits: Array, labels: Array, temperature: float):
  """``CE(z_F, y) + T^2 KL(p^T(sg mean_i z_i) || p^T(z_F))``; ``[B, K], [m, B, K]`` -> scalar."""
  ens = sg(jnp.mean(s_logits, axis=0))
  return (common_losses.cross_entropy(f_logits, labels)
          + common_losses.kl_divergence(f_logits, ens, temperature, True))


def leader_loss(l_logits: Array, l_feats, trans: Array, f_logits: Array, fused: Array,
                fusion_in: Array, sd_targets, labels: Array, temperature: float,
                lam_fus) -> Tuple[Array, Dict[str, Array]]:
  """The leader's loss (module docstring) and its parts.

  Args:
    l_logits ``[B, K]``; l_feats: list over taps of ``[B, H_k, W_k, C_k]``; trans ``[B, s, s,
    m C]``; f_logits ``[B, K]``; fused ``[B, s, s, C]``; fusion_in ``[B, s, s, m C]``;
    sd_targets: list over the shallower taps of ``[B, H_k, W_k, C'_k]``.
  """
  ce = common_losses.cross_entropy(l_logits, labels)
  kd = common_losses.kl_divergence(l_logits, f_logits, temperature, True)
  fus = F.normalized_mse(F.attention_map(l_feats[-1]), sg(F.attention_map(fused)))
  trans_l = F.normalized_mse(F.attention_map(trans), sg(F.attention_map(fusion_in)))
  sd = F.attention_sum(l_feats[:-1], sd_targets)
  total = ce + kd + lam_fus * (fus + trans_l + sd)
  return total, {'ce': ce, 'kd': kd, 'fused_feature': fus, 'trans_fusion': trans_l,
                 'self_distillation': sd}


def decoder_losses(decoded, s_feats, l_feats, lam_sd) -> Tuple[Array, Array]:
  """``lam_sd * reconstruction`` of each of the m decoders, ``[m]``, and the unweighted ``[m]``.

  ``decoded``: list over the shallower taps of ``[m, B, H_k, W_k, C_k]`` (decoders ``0..m-2``
  belong to students ``1..m-1``, decoder ``m-1`` to the leader); their targets are those networks'
  own taps.
  """
  targets = [jnp.concatenate([f[1:], l[None]], 0) for f, l in zip(s_feats[:-1], l_feats[:-1])]
  rec = jax.vmap(F.reconstruction_loss)(list(decoded), targets)
  return lam_sd * rec, rec


def total_loss(out: Mapping[str, Any], labels: Array, lambdas: Mapping[str, Array],
               temperature: float = TEMPERATURE) -> Tuple[Array, Dict[str, Array]]:
  """Sum of every network's loss and the metrics of each part.

  Args:
    out: ``ffsd.networks.FFSDNetworks.train_outputs`` (the DML baseline's has only the
      students' entries).
    labels: ``[B]``.
    lambdas: ``{'lam_div', 'lam_fus', 'lam_sd'}`` scalars of the current epoch
      (:func:`ffsd.losses.lambda_warmup`).
  Returns:
    ``(scalar, metrics)``; the leader's top-1 is ``leader_top1`` (FFSD) and every student's
    ``student<i>_top1``.
  """
  s_logits, s_feats = out['s_logits'], out['s_feats']
  ffsd = 'l_logits' in out
  s_tot, s_parts = student_losses(s_logits, s_feats, labels, temperature, lambdas['lam_div'],
                                  out['sd_student_targets'] if ffsd else None)
  total = jnp.sum(s_tot)
  metrics = {'students_loss': jnp.mean(s_tot), 'students_ce': jnp.mean(s_parts['ce']),
             'students_dml': jnp.mean(s_parts['dml'])}
  for i in range(s_logits.shape[0]):
    metrics[f'student{i}_top1'] = _top1(s_logits[i], labels)
  if not ffsd:
    return total, metrics
  metrics['students_diversity'] = jnp.mean(s_parts['diversity'])
  metrics['students_self_distillation'] = jnp.mean(s_parts['self_distillation'])
  f_tot = fusion_loss(out['f_logits'], s_logits, labels, temperature)
  l_tot, l_parts = leader_loss(out['l_logits'], out['l_feats'], out['trans'], out['f_logits'],
                               out['fused'], out['fusion_in'], out['sd_leader_targets'], labels,
                               temperature, lambdas['lam_fus'])
  d_tot, d_rec = decoder_losses(out['sd_decoded'], s_feats, out['l_feats'], lambdas['lam_sd'])
  total = total + f_tot + l_tot + jnp.sum(d_tot)
  metrics.update(fusion_loss=f_tot, fusion_top1=_top1(out['f_logits'], labels),
                 leader_loss=l_tot, leader_top1=_top1(out['l_logits'], labels),
                 decoder_reconstruction=jnp.mean(d_rec))
  metrics.update({f'leader_{k}': v for k, v in l_parts.items()})
  return total, metrics
