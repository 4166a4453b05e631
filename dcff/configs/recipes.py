"""The official DCFF training recipes (the README commands); every published run is one call.

* CIFAR-10 (``main_cifar.py`` README commands): 300 epochs, batch 256 (test 256), SGD lr 0.1,
  momentum 0.9, weight decay 5e-4 (coupled, every parameter), lr x0.1 at epochs 150 and 225
  (``MultiStepLR`` stepped per epoch), plain CE, CIFAR crop + flip, from scratch.
* ImageNet ResNet-50 (``main_imagenet.py``), batch 256, weight decay 1e-4, from scratch, with a
  5-epoch linear warm-up per iteration ``lr *= (1 + step + e * iters) / (5 * iters)``:
  'step': 90 epochs, SGD momentum 0.9, lr 0.1, ``0.1 ** (e // 30 + [e >= 80])``;
  'cos': 180 epochs, SGD momentum **0.99**, lr 0.01, ``0.5 lr (1 + cos(pi (e - 5) / (E - 5)))``
  per epoch.

``config.method`` fields: ``cprate`` (the official ``--cprate`` string), ``temperature_start`` /
``temperature_end`` / ``temperature_k`` (code constants 1, 1e4, 1), ``score_mode`` ('faithful':
float32 official numerics, the selection freezes after epoch 0; 'dynamic': float64 log-space KL at
``min(T, score_temperature_cap)``, an ablation that keeps the selection dynamic) and ``export``
(export + evaluate the compact model after training).
"""
import ml_collections

from common.configs import base
from dcff import cprate as cprate_lib


def method_config(cprate: str, score_mode: str = 'faithful') -> ml_collections.ConfigDict:
  """``config.method`` of ``dcff.train``."""
  m = ml_collections.ConfigDict()
  m.cprate = cprate
  m.temperature_start = 1.0
  m.temperature_end = 1e4
  m.temperature_k = 1.0
  m.score_mode = score_mode
  m.score_temperature_cap = 1.0
  m.export = True
  return m


def cifar10(model: str, cprate: str = '') -> ml_collections.ConfigDict:
  """A README CIFAR-10 run of ``model`` (vgg16 | resnet56 | resnet110)."""
  c = base.get_config()
  c.num_epochs = 300
  c.label_smoothing = 0.0
  c.dataset.name = 'cifar10'
  c.dataset.batch_size = 256
  c.dataset.eval_batch_size = 256
  c.model.name = model
  c.model.num_classes = 10
  c.optimizer.name = 'sgd'
  c.optimizer.learning_rate = 0.1
  c.optimizer.momentum = 0.9
  c.optimizer.nesterov = False
  c.optimizer.weight_decay = 5e-4
  c.schedule.name = 'multistep'
  c.schedule.milestones = (150, 225)
  c.schedule.gamma = 0.1
  c.method = method_config(cprate or cprate_lib.README_CPRATES[model])
  return c


def imagenet_resnet50(schedule: str, cprate: str) -> ml_collections.ConfigDict:
  """A README ImageNet ResNet-50 run with the 'step' or 'cos' recipe."""
  if schedule not in ('step', 'cos'):
    raise ValueError(f"schedule must be 'step' or 'cos'; got {schedule!r}")
  c = base.get_config()
  c.label_smoothing = 0.0
  c.dataset.name = 'imagenet2012'
  c.dataset.batch_size = 256
  c.dataset.eval_batch_size = 256
  c.model.name = 'resnet50'
  c.model.num_classes = 1000
  c.optimizer.name = 'sgd'
  c.optimizer.nesterov = False
  c.optimizer.weight_decay = 1e-4
  c.schedule.warmup = 'per_step'
  c.schedule.warmup_epochs = 5
  if schedule == 'step':
    c.num_epochs = 90
    c.optimizer.learning_rate = 0.1
    c.optimizer.momentum = 0.9
    c.schedule.name = 'imagenet_step'
  else:
    c.num_epochs = 180
    c.optimizer.learning_rate = 0.01
    c.optimizer.momentum = 0.99
    c.schedule.name = 'cosine'
    c.schedule.cosine_shift = 5
  c.method = method_config(cprate)
  return c
