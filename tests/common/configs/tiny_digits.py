"""A seconds-long dense run on digits for CLI tests: ResNet-8 at widths 8/16/32."""
from common.configs import base


def get_config():
  c = base.get_config()
  c.num_epochs = 6
  c.model.name = 'resnet8'
  c.model.widths = {'stem': 8, 'stages': [8, 16, 32], 'inner': [[8], [16], [32]]}
  c.dataset.batch_size = 64
  c.optimizer.learning_rate = 0.05
  c.progress_bar = False
  return c
