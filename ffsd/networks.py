"""The networks FFSD trains together, as one pure forward over one params tree.

``FFSDNetworks`` holds the (static) linen modules; its methods are pure functions of the params
tree::

    params = {'students': <m stacked zoo-model trees>,  # leading axis m, run with jax.vmap
              'leader': <zoo-model tree>,              # the deployed network
              'trans_fusion': ..., 'fusion': ...,      # training-only heads
              'sd': <m stacked decoder trees>}         # SD_1..SD_{m-1} (students), SD_L (last)

(``batch_stats`` has the same keys.) The common students are one stacked tree, so the ``m``
forwards are one ``jax.vmap``-ed call, and the whole system trains in one jitted step. The DML
baseline (``variant='dml'``) keeps only ``'students'``.

The official code (SJLeo/FFSD ``CIFARTrainer.train_with_test``) forwards the leader, every student
and the fusion module once with the pre-update parameters, then steps each network on its own loss,
and every input a loss takes from another network is detached; :meth:`train_outputs` is that one
forward. Feature maps are read at the zoo models' tap sites (``common.models.taps``), the
official code's forward hooks: for the CIFAR and ImageNet ResNets the output of the last block of
every stage (``layer1 .. layer3`` / ``layer1 .. layer4``).
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any, Dict, List, Optional, Sequence, Tuple

Array = Any

import jax
import jax.numpy as jnp

from common.models import taps as taps_lib
from ffsd import losses as F
from ffsd import modules

VARIANTS = ('ffsd', 'dml')
_BLOCK_OUT = re.compile(r'^layer(\d+)_(\d+)/out$')
_DENSENET_SITES = ('dense1/out', 'dense2/out', 'act_last')
_GOOGLENET_SITES = ('inception_b3/out', 'inception_e4/out', 'inception_b5/out')


def _stage_outputs(sites: Sequence[str]) -> List[str]:
  """The output site of the last block of every stage (``layer<s>_<b>/out``), by stage."""
  last: Dict[int, Tuple[int, str]] = {}
  for s in sites:
    m = _BLOCK_OUT.match(s)
    if m:
      stage, block = int(m.group(1)), int(m.group(2))
      if stage not in last or block > last[stage][0]:
        last[stage] = (block, s)
  return [last[k][1] for k in sorted(last)]


def feature_sites(model_name: str, sites: Sequence[str]) -> Tuple[str, ...]:
  """The tap sites whose activations are FFSD's features, shallow to deep.

  ResNets (``resnet8..110``, ``resnet18/34/50``): the output of the last block of each stage
  (SJLeo/FFSD ``models/resnet_cifar.py`` / ``resnet_imagenet.py``: ``extract_layers = ['layer1',
  'layer2', 'layer3'(, 'layer4')]``). WRN (``models/wideresnet_cifar.py``: ``['layer1',
  'layer2', 'relu1']``): the outputs of stages 1 and 2, then the final BN-ReLU ``act_last``.
  DenseNet (``models/densenet_cifar.py``: ``['dense1', 'dense2', 'relu']``): the outputs of dense
  blocks 1 and 2, then ``act_last``. GoogLeNet (``models/googlenet_cifar.py``:
  ``['inception_b3', 'inception_e4', 'inception_b5']``): those inceptions' outputs.

  Raises:
    ValueError: a model whose sites match none of these rules.
  """
  for fixed in (_DENSENET_SITES, _GOOGLENET_SITES):
    if all(s in sites for s in fixed):
      return fixed
  stages = _stage_outputs(sites)
  if model_name.startswith('wrn') and 'act_last' in sites and len(stages) == 3:
    return tuple(stages[:2]) + ('act_last',)
  if len(stages) < 2:
    raise ValueError(f'FFSD needs >= 2 feature taps; model {model_name!r} has no '
                     f"'layer<s>_<b>/out' sites (known families: CIFAR / ImageNet ResNets, WRN, "
                     f"DenseNet, GoogLeNet)")
  return tuple(stages)


def _stack(trees):
  return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


@dataclasses.dataclass(frozen=True)
class FFSDNetworks:
  """The static part of FFSD: the backbone, the heads and their shapes.

  Attributes:
    backbone: the zoo model every student and the leader are (``__call__(x, train, tap)``).
    sites: its feature tap sites, shallow to deep (:func:`feature_sites`).
    feature_shapes: ``(H, W, C)`` of each site.
    num_students: m, the common students.
    num_classes: K.
    variant: 'ffsd' (students + leader + fusion + decoders) or 'dml' (students only).
    decoder_channels: output widths of the decoder blocks (``None``: halving from C).
    vectorize: run the stacked students and decoders with ``jax.vmap`` (True) or one by one in a
      Python loop over the stack, the outputs stacked after (False; the same numbers, the
      baseline of ``ffsd.bench``).
  """
  backbone: Any
  sites: Tuple[str, ...]
  feature_shapes: Tuple[Tuple[int, ...], ...]
  num_students: int
  num_classes: int
  variant: str = 'ffsd'
  decoder_channels: Optional[Tuple[int, ...]] = None
  bn_axis_name: Optional[str] = None
  vectorize: bool = True

  def _map(self, fn, *stacked):
    """``jax.vmap(fn)(*stacked)``, or the same one slice at a time when not ``vectorize``."""
    if self.vectorize:
      return jax.vmap(fn)(*stacked)
    n = jax.tree.leaves(stacked)[0].shape[0]
    outs = [fn(*jax.tree.map(lambda a, i=i: a[i], stacked)) for i in range(n)]
    return _stack(outs)

  def __post_init__(self):
    if self.variant not in VARIANTS:
      raise ValueError(f'unknown variant {self.variant!r}; allowed: {list(VARIANTS)}')
    m = self.num_students
    if isinstance(m, bool) or not isinstance(m, int) or m < (2 if self.variant == 'ffsd' else 1):
      raise ValueError(f'num_students must be an int >= {2 if self.variant == "ffsd" else 1} '
                       f'for variant {self.variant!r}; got {m!r}')
    hs = [s[0] for s in self.feature_shapes]
    if any(b != 2 * a for a, b in zip(hs[1:], hs[:-1])) and self.variant == 'ffsd':
      raise ValueError(f'the self-distillation decoder doubles H per block; feature sizes '
                       f'{self.feature_shapes} at {self.sites} do not halve from tap to tap')

  # --- modules ---------------------------------------------------------------------------------
  @property
  def channels(self) -> int:
    return int(self.feature_shapes[-1][-1])

  @property
  def fusion(self):
    return modules.FusionModule(self.channels, self.num_classes, self.bn_axis_name)

  @property
  def trans_fusion(self):
    return modules.TransFusion(self.num_students * self.channels, self.bn_axis_name)

  @property
  def decoder(self):
    n = len(self.sites) - 1
    ch = self.decoder_channels or modules.halving_channels(self.channels, n)
    if len(ch) != n:
      raise ValueError(f'decoder_channels must list {n} widths; got {ch}')
    return modules.SelfDistillationDecoder(tuple(int(c) for c in ch), self.bn_axis_name)

  # --- variables -------------------------------------------------------------------------------
  def init(self, rng, images) -> Dict[str, Any]:
    """``{'params', 'batch_stats'}`` of every network; ``images [B, H, W, C]`` fixes shapes.

    Every network gets its own key (students ``0..m-1``, leader, heads, decoders). Jitted: the
    eager, op-by-op initialisation of m + 1 backbones and the heads costs minutes on a loaded CPU.
    """
    return jax.jit(self._init)(rng, images)

  def _init(self, rng, images):
    m = self.num_students
    keys = jax.random.split(rng, m + 4)

    def one(k):
      v = self.backbone.init({'params': k, 'dropout': k}, images, train=False)
      return v['params'], v.get('batch_stats', {})

    sp, sb = jax.vmap(one)(keys[:m])
    params, stats = {'students': sp}, {'students': sb}
    if self.variant == 'ffsd':
      lp, lb = one(keys[m])
      b = images.shape[0]
      h, w, c = self.feature_shapes[-1]
      last = jnp.zeros((b, h, w, c), jnp.float32)
      tv = self.trans_fusion.init(keys[m + 1], last, train=False)
      fv = self.fusion.init(keys[m + 2], jnp.zeros((b, h, w, m * c)), train=False)
      dv = jax.vmap(lambda k: self.decoder.init(k, last, train=False))(
          jax.random.split(keys[m + 3], m))
      for name, v in (('trans_fusion', tv), ('fusion', fv), ('sd', dv)):
        params[name], stats[name] = v['params'], v['batch_stats']
      params['leader'], stats['leader'] = lp, lb
    return {'params': params, 'batch_stats': stats}

  # --- forwards --------------------------------------------------------------------------------
  def backbone_forward(self, params, batch_stats, images, train: bool):
    """One backbone: ``(logits [B, K], [feature at each site], new batch_stats)``."""
    found = {}

    def record(site, h):
      if site in self.sites:
        found[site] = h
      return h

    v = {'params': params, 'batch_stats': batch_stats}
    if train:
      logits, mut = self.backbone.apply(v, images, train=True, tap=record,
                                        mutable=['batch_stats'])
      new_bs = mut.get('batch_stats', batch_stats)
    else:
      logits, new_bs = self.backbone.apply(v, images, train=False, tap=record), batch_stats
    return logits, [found[s] for s in self.sites], new_bs

  def students_forward(self, params, batch_stats, images, train: bool):
    """The m common students in one ``jax.vmap``: ``(logits [m, B, K], [[m, B, H_k, W_k, C_k]],
    new stacked batch_stats)``; every student sees the same ``images``."""
    return self._map(lambda p, s: self.backbone_forward(p, s, images, train), params, batch_stats)

  def decoders_forward(self, params, batch_stats, inputs, train: bool):
    """The m stacked decoders on ``inputs [m, B, s, s, C]`` (decoder j on ``inputs[j]``):
    ``([[m, B, H_k, W_k, C_k]] shallow first, new batch_stats)``."""
    def one(p, s, x):
      v = {'params': p, 'batch_stats': s}
      if train:
        out, mut = self.decoder.apply(v, x, train=True, mutable=['batch_stats'])
        return out, mut['batch_stats']
      return self.decoder.apply(v, x, train=False), s
    return self._map(one, params, batch_stats, inputs)

  def train_outputs(self, params, batch_stats, images) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """The one training-mode forward of every network, with the pre-update parameters.

    Returns ``(out, new batch_stats)``; ``out`` holds (m students, B batch, K classes):
      ``s_logits [m, B, K]``, ``s_feats`` (list over sites of ``[m, B, H, W, C]``) and, for
      'ffsd': ``fusion_in [B, s, s, m C]`` (the students' last features, detached, concatenated
      in student order), ``f_logits [B, K]``, ``fused [B, s, s, C]``, ``l_logits``, ``l_feats``,
      ``trans [B, s, s, m C]``, ``sd_student_targets`` (decoders ``0..m-2`` in eval mode on the
      diversity-shifted last features of students ``0..m-2``, detached), ``sd_leader_targets``
      (the leader's decoder in eval mode on the detached fused map), ``sd_decoded`` (all m
      decoders in train mode on the detached last features of students ``1..m-1`` and the
      leader: what they are trained on).
    """
    sg = jax.lax.stop_gradient
    s_logits, s_feats, s_bs = self.students_forward(params['students'],
                                                    batch_stats['students'], images, True)
    out = {'s_logits': s_logits, 's_feats': s_feats}
    new_bs = {'students': s_bs}
    if self.variant == 'dml':
      return out, new_bs
    m = self.num_students
    last = sg(s_feats[-1])                                        # [m, B, s, s, C]
    fusion_in = jnp.concatenate(list(last), axis=-1)              # torch.cat(dim=1), in order
    (f_logits, fused), fmut = self.fusion.apply(
        {'params': params['fusion'], 'batch_stats': batch_stats['fusion']}, fusion_in,
        train=True, mutable=['batch_stats'])
    l_logits, l_feats, l_bs = self.backbone_forward(params['leader'], batch_stats['leader'],
                                                    images, True)
    trans, tmut = self.trans_fusion.apply(
        {'params': params['trans_fusion'], 'batch_stats': batch_stats['trans_fusion']},
        l_feats[-1], train=True, mutable=['batch_stats'])
    # Decoder targets, eval mode (SD running statistics, no update), detached: decoders 0..m-2
    # read the shifted last feature of students 0..m-2, the leader's decoder the fused map.
    eval_in = jnp.concatenate([jax.vmap(F.diversity_shift)(last[:m - 1]), sg(fused)[None]], 0)
    targets, _ = self.decoders_forward(params['sd'], batch_stats['sd'], eval_in, False)
    targets = [sg(t) for t in targets]
    # Decoder training: own network's pre-update last feature in, own shallower taps as targets.
    train_in = jnp.concatenate([last[1:], sg(l_feats[-1])[None]], 0)
    decoded, sd_bs = self.decoders_forward(params['sd'], batch_stats['sd'], train_in, True)
    out.update(fusion_in=fusion_in, f_logits=f_logits, fused=fused, l_logits=l_logits,
               l_feats=l_feats, trans=trans,
               sd_student_targets=[t[:m - 1] for t in targets],
               sd_leader_targets=[t[m - 1] for t in targets], sd_decoded=decoded)
    new_bs.update(fusion=fmut['batch_stats'], leader=l_bs, trans_fusion=tmut['batch_stats'],
                  sd=sd_bs)
    return out, new_bs

  def eval_logits(self, params, batch_stats, images) -> Dict[str, Array]:
    """Evaluation-mode logits ``[B, K]`` of every network in one pass (each backbone runs once):
    ``{'leader', 'student<i>', 'fusion', 'ensemble'}`` (:meth:`network_names`); 'fusion' runs on
    the students' last features, 'ensemble' is the mean of the students' logits (FFSD's
    ``ensemble_output``)."""
    s_logits, s_feats, _ = self.students_forward(params['students'], batch_stats['students'],
                                                 images, False)
    out = {f'student{i}': s_logits[i] for i in range(self.num_students)}
    if self.num_students > 1:
      out['ensemble'] = jnp.mean(s_logits, axis=0)
    if self.variant == 'ffsd':
      out['leader'] = self.backbone_forward(params['leader'], batch_stats['leader'], images,
                                            False)[0]
      fusion_in = jnp.concatenate(list(s_feats[-1]), axis=-1)
      out['fusion'] = self.fusion.apply(
          {'params': params['fusion'], 'batch_stats': batch_stats['fusion']}, fusion_in,
          train=False)[0]
    return out

  def network_names(self) -> List[str]:
    """Every evaluable network: the leader (ffsd), the students, the fusion head, the ensemble."""
    names = ['leader'] if self.variant == 'ffsd' else []
    names += [f'student{i}' for i in range(self.num_students)]
    if self.variant == 'ffsd':
      names.append('fusion')
    if self.num_students > 1:
      names.append('ensemble')
    return names


def build(backbone, model_name: str, image_shape, num_students: int, num_classes: int,
          variant: str = 'ffsd', decoder_channels=None, bn_axis_name=None,
          vectorize: bool = True) -> FFSDNetworks:
  """:class:`FFSDNetworks` for a zoo ``backbone``, its feature sites found by tracing
  (``common.models.tap_sites`` under ``jax.eval_shape``: no FLOPs)."""
  sites_shapes = taps_lib.tap_sites(backbone, (1,) + tuple(image_shape))
  names = [s for s, _ in sites_shapes]
  sites = feature_sites(model_name, names)
  shapes = dict(sites_shapes)
  return FFSDNetworks(backbone=backbone, sites=sites,
                      feature_shapes=tuple(tuple(shapes[s][1:]) for s in sites),
                      num_students=int(num_students), num_classes=int(num_classes),
                      variant=variant,
                      decoder_channels=None if decoder_channels is None
                      else tuple(int(c) for c in decoder_channels),
                      bn_axis_name=bn_axis_name, vectorize=vectorize)
