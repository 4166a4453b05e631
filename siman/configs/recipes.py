"""The official SiMaN training recipes (lmbxmu/SiMaN ``cifar/run.sh`` and ``imagenet/run.sh`` with
their ``main.py``) as ``common.train`` configs; each published run is a one-line file that calls
one of these with keyword arguments."""
import ml_collections

from common.configs import base
from siman.siman import SIMAN_TRAINING


def method_config(*, weight_binarizer: str = 'siman') -> ml_collections.ConfigDict:
  """``config.method`` of ``siman.train`` (field meanings in that module's docstring)."""
  m = ml_collections.ConfigDict()
  m.weight_binarizer = weight_binarizer
  m.percent_max = 15.0            # main.py: percent = 15 (1 - e/E) at each epoch start
  m.code_method = 'median'        # the default `--sort topk` runs BinarizeConv2d's median branch
  m.decay_rule = 'official' if weight_binarizer in SIMAN_TRAINING else 'all'
  m.eval_projections = -1         # each validation forward re-projects the weights
  m.histogram = True
  return m


def cifar10(*, model: str) -> ml_collections.ConfigDict:
  """``cifar/run.sh``: 400 epochs, batch 256 (test 128), SGD 0.1 momentum 0.9, wd 5e-4 (0 on the
  binary block convs and alphas), cosine with the 5-epoch per-epoch warm-up (T_max = E - 4),
  CIFAR-10 normalised with the ImageNet mean/std, crop 32 pad 4 + flip, seed 123."""
  c = base.get_config()
  c.seed = 123
  c.num_epochs = 400
  c.dataset.name = 'cifar10'
  c.dataset.batch_size = 256
  c.dataset.eval_batch_size = 128
  c.dataset.normalization = 'imagenet'   # the code's CIFAR-10 entry uses the ImageNet mean/std
  c.model.name = model
  c.model.kwargs = ml_collections.ConfigDict({'act_binarizer': 'siman'})
  c.optimizer.name = 'sgd'
  c.optimizer.learning_rate = 0.1
  c.optimizer.momentum = 0.9
  c.optimizer.nesterov = False
  c.optimizer.weight_decay = 5e-4
  c.schedule.name = 'cosine'
  c.schedule.cosine_shift = 4             # main.py: CosineAnnealingLR(T_max = E - 4 * warm_up)
  c.schedule.warmup = 'per_epoch'
  c.schedule.warmup_epochs = 5
  c.label_smoothing = 0.0
  c.method = method_config()
  return c


def imagenet(*, model: str) -> ml_collections.ConfigDict:
  """``imagenet/run.sh``: 150 epochs, batch 512 (test 256), SGD 0.1 momentum 0.9, wd 1e-4 (0 on
  the binary block convs and alphas), cosine over 150 epochs with *no* warm-up, DALI-style
  RandomResizedCrop(224, scale 0.08-1.25) + flip, Resize 256 / CenterCrop 224 for validation."""
  c = base.get_config()
  c.seed = 0
  c.num_epochs = 150
  c.dataset.name = 'imagenet2012'
  c.dataset.batch_size = 512
  c.dataset.eval_batch_size = 256
  # DALI and torch loaders of the SiMaN code: RandomResizedCrop(224, area 0.08-1.25), no Lighting.
  c.dataset.options = ml_collections.ConfigDict({'crop_scale': (0.08, 1.25), 'lighting': 0.0})
  c.model.name = model
  c.model.kwargs = ml_collections.ConfigDict({'act_binarizer': 'siman'})
  c.optimizer.name = 'sgd'
  c.optimizer.learning_rate = 0.1
  c.optimizer.momentum = 0.9
  c.optimizer.nesterov = False
  c.optimizer.weight_decay = 1e-4
  c.schedule.name = 'cosine'
  c.schedule.cosine_shift = 0
  c.schedule.warmup = 'none'
  c.schedule.warmup_epochs = 0
  c.label_smoothing = 0.0
  c.method = method_config()
  return c
