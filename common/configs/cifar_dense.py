"""Dense CIFAR baselines (the pretrained models 1xN / Lottery Jackpot / FDDA start from).

  python -m common.train --config=common/configs/cifar_dense.py:resnet56,cifar10 --workdir=runs/r56

Argument ``MODEL[,DATASET]``: any CIFAR model of ``common.models`` (resnet20/32/56/110,
resnet32_wide, vgg16, vgg19, mobilenet_v2_cifar, ...); DATASET cifar10 (default) or cifar100.
Recipe (akamaster-style CIFAR trainer): 200 epochs, batch 128, SGD 0.1,
momentum 0.9, wd 5e-4, lr x0.1 at epochs 100 and 150; CIFAR mean/std, pad-4 crop + flip.
"""
from common.configs import base


def get_config(arg: str = 'resnet56,cifar10'):
  parts = (arg or 'resnet56,cifar10').split(',')
  c = base.get_config()
  c.model.name = parts[0]
  c.dataset.name = parts[1] if len(parts) > 1 else 'cifar10'
  c.num_epochs = 200
  c.dataset.batch_size = 128
  c.optimizer.learning_rate = 0.1
  c.optimizer.weight_decay = 5e-4
  c.schedule.name = 'multistep'
  c.schedule.milestones = (100, 150)
  return c
