"""The full-precision teacher of the FDDA quick experiment: dense ResNet-8 (16/32/64) with the
projection (option-B) shortcut on digits, trained on ``train[:1200]`` (the rest of the training
split is the held-out set of the learning-rate sweep).

  python -m fdda.teacher --config=fdda/configs/digits_teacher.py --workdir=runs/fdda_teacher

Expected: test top-1 about 0.97 (digits test split, 360 images) in about a minute on 2 cores.
"""
from common.configs import base

TRAIN_SPLIT = 'train[:1200]'
HELDOUT_SPLIT = 'train[1200:]'


def get_config():
  c = base.get_config()
  c.num_epochs = 20
  c.dataset.name = 'digits'
  c.dataset.batch_size = 64
  c.model.name = 'resnet8'
  c.model.kwargs.shortcut = 'projection'
  c.optimizer.learning_rate = 0.1
  c.optimizer.weight_decay = 5e-4
  c.schedule.name = 'cosine'
  c.method.train_split = TRAIN_SPLIT
  return c
