"""The official ReCU training recipes (z-hXu/ReCU ``cifar/run.sh``, ``imagenet/run.sh``,
``imagenet_two-stage/run.sh`` and their ``main.py``) as ``common.train`` configs; each published
run is a short file that calls :func:`recu_config` with keyword arguments."""
import ml_collections

from common.configs import base


def recu_config(*, model: str, dataset: str, num_epochs: int, batch_size: int,
                eval_batch_size: int, lr: float, weight_decay: float, decay_rule: str,
                optimizer: str = 'sgd') -> ml_collections.ConfigDict:
  """SGD m0.9 (no Nesterov) / Adam, per-epoch cosine with the 5-epoch warm-up, CE without label
  smoothing, tau 0.85 -> 0.99 (``main.py``: ``CosineAnnealingLR(T_max = E - 4 warm_up)`` after
  the linear warm-up; ``utils/options.py``: ``--tau_min 0.85 --tau_max 0.99``).

  ``decay_rule``: 'all' (CIFAR ``main.py``: every parameter) or 'conv_fc' (ImageNet ``main.py``:
  names containing ``conv`` or ``fc``).
  """
  c = base.get_config()
  c.num_epochs = num_epochs
  c.label_smoothing = 0.0
  c.dataset.name = dataset
  c.dataset.batch_size = batch_size
  c.dataset.eval_batch_size = eval_batch_size
  # Both repos normalise CIFAR with the ImageNet mean/std (``dataset/dataset.py``).
  c.dataset.normalization = 'imagenet' if dataset != 'digits' else ''
  if dataset == 'imagenet2012':
    # The ReCU torch loader: RandomResizedCrop(224, scale=(0.08, 1.25)) + PCA Lighting 0.1.
    c.dataset.options = ml_collections.ConfigDict({'crop_scale': (0.08, 1.25), 'lighting': 0.1})
  c.model.name = model
  c.model.kwargs = ml_collections.ConfigDict({'act_binarizer': 'recu'})
  c.optimizer.name = optimizer
  c.optimizer.learning_rate = lr
  c.optimizer.momentum = 0.9
  c.optimizer.nesterov = False
  c.optimizer.weight_decay = weight_decay
  # lr(e) = lr0 (e+1)/5 for e < 5, then 1/2 lr0 (1 + cos(pi (e-4)/(E-4))) (``main.py``).
  c.schedule.name = 'cosine'
  c.schedule.warmup = 'per_epoch'
  c.schedule.warmup_epochs = 5
  c.schedule.cosine_shift = 4
  c.method = ml_collections.ConfigDict()
  c.method.weight_binarizer = 'recu'
  c.method.tau_min = 0.85
  c.method.tau_max = 0.99
  c.method.decay_rule = decay_rule
  c.method.teacher_checkpoint = ''
  c.method.teacher_model = 'resnet34'
  c.method.teacher_widths = ml_collections.FieldReference(None, field_type=object)
  c.method.init_strict = False
  return c
