"""DCFF on the embedded digits set (the quick experiment's DCFF row).

  python -m dcff.train --config=dcff/configs/digits.py --workdir=runs/dcff_digits
  python -m dcff.evaluate --workdir=runs/dcff_digits

VGG-tiny (16,16,M,32,32,M,64,64,M -> GAP -> Linear) with rate 0.3 on every conv: compact widths
11,11,22,22,44,44, 48.6% of the dense FLOPs. SGD lr 0.05 momentum 0.9, wd 5e-4, per-epoch cosine,
batch 64, from scratch. Expected: test top-1 >= 0.9 in well under a minute on 2 CPU cores, and the
exported compact model scores exactly the fused model's accuracy.
"""
from common.configs import base
from dcff.configs import recipes


def get_config():
  c = base.get_config()
  c.seed = 0
  c.num_epochs = 15
  c.dataset.name = 'digits'
  c.dataset.batch_size = 64
  c.dataset.eval_batch_size = 256
  c.model.name = 'vgg_tiny'
  c.optimizer.learning_rate = 0.05
  c.optimizer.momentum = 0.9
  c.optimizer.weight_decay = 5e-4
  c.schedule.name = 'cosine'
  c.method = recipes.method_config('[0.3]*6')
  c.progress_bar = False
  return c
