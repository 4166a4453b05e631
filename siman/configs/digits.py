"""SiMaN on the embedded digits set (the quick experiment's SiMaN arm, ``siman.quick``).

  python -m siman.train --config=siman/configs/digits.py --workdir=runs/siman_digits

SiMaN VGG-Small 1w1a (PReLU, pool before BN, FP conv0 and classifier) at 1/8 width
(16-16-32-32-64-64), digits upsampled to 32x32, batch 128, SGD 0.1 momentum 0.9, wd 5e-4 (0 on the
binary convs conv1-5 and their alphas), cosine with a 2-epoch per-epoch warm-up, ``EPOCHS``
epochs. Expected: test top-1 ~0.98 in about a minute on 2 otherwise idle CPU cores.
"""
import ml_collections

from common.configs import base
from siman.configs import recipes

WIDTHS = [16, 16, 32, 32, 64, 64]     # VGG-Small 128-128-256-256-512-512 at 1/8
EPOCHS = 10


def get_config():
  c = base.get_config()
  c.seed = 0
  c.num_epochs = EPOCHS
  c.dataset.name = 'digits'
  c.dataset.batch_size = 128
  c.dataset.eval_batch_size = 360
  c.model.name = 'siman_vgg_small'
  c.model.widths = list(WIDTHS)
  c.model.kwargs = ml_collections.ConfigDict({'act_binarizer': 'siman'})
  c.optimizer.name = 'sgd'
  c.optimizer.learning_rate = 0.1
  c.optimizer.momentum = 0.9
  c.optimizer.weight_decay = 5e-4
  c.schedule.name = 'cosine'
  c.schedule.cosine_shift = 1        # as the official T_max = E - 4 after its 5 warm-up epochs
  c.schedule.warmup = 'per_epoch'
  c.schedule.warmup_epochs = 2
  c.method = recipes.method_config(weight_binarizer='siman')
  c.progress_bar = False
  c.keep_checkpoints = 1
  return c
