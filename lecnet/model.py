"""LEC-Net with every session's head and expansion branch allocated up front.

ICCV2021-LEC/LEC ``models/LECNet.py`` (``OneModel``) creates ``fc1`` (the node layer ``W_1``),
``fc2`` (base head), ``fc{i+2}`` (session heads) and ``fc_aux{i+2}`` (expansion branches) for all
sessions at construction (with ``exec``), and a buffer ``Alpha [S+1, N]`` of stored gates. The same
here: the params tree has one shape for the whole run (checkpoints and optimizer states keep
their structure across sessions); the ``session`` argument (static) selects how many are used.

Params: ``net`` (the ``common.models`` zoo backbone; its own 1-output classifier ``fc`` is never
used),
``node [F, N]``, ``head_0 [N, base]``, ``expand_j [F, N]`` and ``head_j [N, way]`` for
``j = 1..S``; all without bias, initialised as PyTorch's ``nn.Linear``
(uniform +-1/sqrt(fan_in)).
"""
from __future__ import annotations

from typing import Any, Dict, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from common import models
from lecnet import lec

Array = jax.Array


def torch_linear_init(key, shape, dtype=jnp.float32):
  """``nn.Linear``'s default weight init ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))`` for ``[in, out]``."""
  bound = 1.0 / jnp.sqrt(shape[0])
  return jax.random.uniform(key, shape, dtype, -bound, bound)


class LECNet(nn.Module):
  """Backbone + node layer + pre-allocated session heads and expansion branches.

  Attributes:
    backbone: zoo model name (``resnet8``, ``resnet20``, ``resnet18``...).
    backbone_widths: its width config (None = the zoo default).
    base_classes, way, sessions: the protocol (K_0, classes per session, S).
    nodes: N, the width of the embedding and of every expansion branch (512 in LEC).
    gamma: weight of ``u`` in the session features (0.6).
  """
  backbone: str
  base_classes: int
  way: int
  sessions: int
  nodes: int
  gamma: float = lec.GAMMA
  backbone_widths: Any = None
  backbone_kwargs: Optional[Dict[str, Any]] = None

  def setup(self):
    self.net = models.get_model(self.backbone, 1, widths=self.backbone_widths,
                                **dict(self.backbone_kwargs or {}))
    feat = self._feature_width()
    self.node = self.param('node', torch_linear_init, (feat, self.nodes))
    self.heads = [self.param('head_0', torch_linear_init, (self.nodes, self.base_classes))] + [
        self.param(f'head_{j}', torch_linear_init, (self.nodes, self.way))
        for j in range(1, self.sessions + 1)]
    self.expand = [None] + [self.param(f'expand_{j}', torch_linear_init, (feat, self.nodes))
                            for j in range(1, self.sessions + 1)]

  def _feature_width(self) -> int:
    widths = self.backbone_widths or models.default_widths(self.backbone)
    if hasattr(widths, 'keys') and 'stages' in widths:
      return int(widths['stages'][-1])
    raise ValueError(f'cannot read the feature width of backbone {self.backbone!r} from its '
                     f'widths {widths!r}')

  def features(self, images: Array, train: bool) -> Array:
    """Pooled backbone features ``[B, F]`` of ``images [B, H, W, C]`` (BN batch statistics when
    ``train``)."""
    found = []

    def keep(site, h):
      if site == 'features':
        found.append(h)
      return h

    self.net(images, train, tap=keep)
    return found[0]

  def __call__(self, images: Array, *, session: int, gates: Array, train_bn: bool = False,
               beta: Optional[Array] = None, expansion: bool = True,
               freeze_backbone: bool = False):
    """Logits over every class seen up to ``session``.

    Args:
      images: ``[B, H, W, C]``.
      session: s (static), 0 = base session.
      gates: ``[S + 1, N]`` stored gates ``A`` (row 0 unused).
      train_bn: BN of the backbone on batch statistics (base training) or running averages.
      beta: when given, the current session's gate is the self-activation gate
        ``sigmoid(beta * mean_b a_s)`` (training); when None, the stored ``gates[s]`` (testing).
      expansion: False drops the expansion branches (every ``z_j = n(gamma u)``; fine-tuning).
      freeze_backbone: no gradient into the backbone (LEC's ``torch.no_grad`` for ``s > 0``).
    Returns:
      ``(logits [B, base + s way], alpha [N])``: alpha is the current session's gate (ones in the
      base session).
    """
    if not 0 <= session <= self.sessions:
      raise ValueError(f'session must be in [0, {self.sessions}]; got {session}')
    x = self.features(images, train_bn)
    if freeze_backbone:
      x = jax.lax.stop_gradient(x)
    return self.classify(x, session=session, gates=gates, beta=beta, expansion=expansion)

  def classify(self, x: Array, *, session: int, gates: Array, beta: Optional[Array] = None,
               expansion: bool = True):
    """The heads on backbone features ``x [B, F]`` (see ``__call__``)."""
    u = x @ self.node
    alpha = jnp.ones((self.nodes,), jnp.float32)
    if not expansion:
      zero = jnp.zeros((self.nodes,), u.dtype)
      expanded = [jnp.zeros_like(u)] * session
      g = [zero] * session
    else:
      expanded = [x @ self.expand[j] for j in range(1, session + 1)]
      g = [gates[j] for j in range(1, session + 1)]
      if session > 0 and beta is not None:
        alpha = lec.gate(expanded[-1], beta)
        g[-1] = alpha
      elif session > 0:
        alpha = gates[session]
    logits = lec.session_logits(u, expanded, g, self.heads[:session + 1], self.gamma)
    return logits, alpha
