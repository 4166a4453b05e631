"""Dense ImageNet baselines (MobileNet-V1/V2, ResNet-18/34/50): the 1xN starting points.

  python -m common.train --config=common/configs/imagenet_dense.py:mobilenet_v2 --workdir=runs/mbv2

torchvision recipes: ResNets 90 epochs, batch 256, SGD 0.1 momentum 0.9, wd 1e-4, lr x0.1 every 30
epochs; MobileNets 150 epochs, cosine from 0.05, wd 4e-5. Use ``config.init_checkpoint`` of a paper
run to start from these.
"""
from common.configs import base


def get_config(arg: str = 'resnet50'):
  c = base.get_config()
  c.model.name = arg or 'resnet50'
  c.dataset.name = 'imagenet2012'
  c.dataset.batch_size = 256
  c.dataset.eval_batch_size = 250
  c.model.num_classes = 1000
  if c.model.name.startswith('mobilenet'):
    c.num_epochs = 150
    c.optimizer.learning_rate = 0.05
    c.optimizer.weight_decay = 4e-5
    c.schedule.name = 'cosine'
  else:
    c.num_epochs = 90
    c.optimizer.learning_rate = 0.1
    c.optimizer.weight_decay = 1e-4
    c.schedule.name = 'multistep'
    c.schedule.milestones = (30, 60)
  return c
