"""The shared FFSD recipe behind every config here (SJLeo/FFSD ``options/options.py``, README).

CIFAR-100: 299 epochs (``range(1, 300)``), batch 128, SGD nesterov 0.9, lr 0.1, wd 1e-4, x0.1 at
epochs 150 and 225 for every network; the fusion module's wd 1e-5; the decoders Adam 1e-3 with
wd 1e-4 and the same milestones. ImageNet: 90 epochs, batch 256, ``0.1 * 0.1^(e // 30)`` (one more
factor from epoch 80) after a 5-epoch per-iteration linear warm-up, the decoders' milestones
[150, 225] (constant within 90 epochs). T = 2, lambda_diversity 1e-5, lambda_fusion 10,
lambda_self_distillation 1000, two common students.
"""
import ml_collections

from common.configs import base


def ffsd_config(*, model: str, dataset: str, num_epochs: int, batch_size: int, lr: float = 0.1,
                weight_decay: float = 1e-4, milestones=(150, 225), variant: str = 'ffsd',
                schedule: str = 'multistep', model_kwargs=None) -> ml_collections.ConfigDict:
  """An FFSD config; ``model_kwargs`` go to ``common.models.get_model`` (default: the zoo ResNets'
  ``init='kaiming_normal_fan_out'``, the official ``N(0, 2 / (k k C_out))``, plus the given ones;
  ``init=None`` drops it for models that have one init only, e.g. the WRNs)."""
  c = base.get_config()
  c.num_epochs = num_epochs
  c.dataset.name = dataset
  c.dataset.batch_size = batch_size
  c.dataset.eval_batch_size = 256
  c.model.name = model
  kw = {'init': 'kaiming_normal_fan_out'}
  kw.update(model_kwargs or {})
  kw = {k: v for k, v in kw.items() if v is not None}
  c.model.kwargs = ml_collections.ConfigDict(kw)
  c.optimizer.name = 'sgd'
  c.optimizer.learning_rate = lr
  c.optimizer.momentum = 0.9
  c.optimizer.nesterov = True
  c.optimizer.weight_decay = weight_decay
  c.schedule.name = schedule
  c.schedule.milestones = tuple(milestones)
  c.schedule.gamma = 0.1
  c.best_metric = 'test_top1'        # '' variant = the leader
  m = c.method
  m.variant = variant
  m.num_students = 2
  m.temperature = 2.0
  m.lambda_diversity = 1e-5
  m.lambda_fusion = 10.0
  m.lambda_self_distillation = 1000.0
  m.warmup_epochs = 5
  m.fusion_weight_decay = 1e-5
  m.sd_learning_rate = 1e-3
  m.sd_weight_decay = 1e-4
  m.sd_milestones = (150, 225)
  m.decoder_channels = ()
  m.train_per_class = 0
  m.vectorize = True
  return c


def cifar100(model: str, model_kwargs=None, decoder_channels=()):
  c = ffsd_config(model=model, dataset='cifar100', num_epochs=299, batch_size=128,
                  model_kwargs=model_kwargs)
  c.method.decoder_channels = tuple(decoder_channels)
  return c


def imagenet(model: str):
  c = ffsd_config(model=model, dataset='imagenet2012', num_epochs=90, batch_size=256,
                  schedule='imagenet_step', milestones=(),
                  model_kwargs={'init': 'kaiming_normal_fan_out'})
  c.schedule.warmup = 'per_step'
  c.schedule.warmup_epochs = 5
  return c
