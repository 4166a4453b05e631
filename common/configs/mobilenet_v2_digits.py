"""Dense small MobileNet-V2 (CIFAR layout, narrow widths) on digits: the 1xN quick-experiment base.

  python -m common.train --config=common/configs/mobilenet_v2_digits.py --workdir=runs/mbv2_digits
"""
from common.configs import base


def get_config():
  c = base.get_config()
  c.model.name = 'mobilenet_v2_cifar'
  c.num_epochs = 15
  c.optimizer.learning_rate = 0.05
  c.optimizer.weight_decay = 4e-5
  c.schedule.name = 'cosine'
  return c
