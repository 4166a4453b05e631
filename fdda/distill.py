"""The student (quantized network) loss of FDDA's fine-tuning (zysxmu/FDDA ``trainer_DBNS_CBNS.py``:
``loss_fn_kd``): ``L_S = CE(s, y) + alpha T^2 KL(softmax(t / T) || softmax(s / T))``, batch means,
``alpha = 20``, ``T = 20``, the teacher's logits detached."""
from __future__ import annotations

from common import losses

ALPHA = 20.0
TEMPERATURE = 20.0


def student_loss(student_logits, teacher_logits, labels, alpha: float = ALPHA,
                 temperature: float = TEMPERATURE):
  """``L_S`` for ``[B, K]`` logits and ``[B]`` labels -> ``(scalar, {'ce', 'kd'})``."""
  ce = losses.cross_entropy(student_logits, labels)
  kd = losses.kl_divergence(student_logits, teacher_logits, temperature, scale_by_t2=True)
  return ce + alpha * kd, {'ce': ce, 'kd': kd}
