"""ReCU ResNet-18 on CIFAR-10 (cifar/run.sh with resnet18_1w1a; spec §1.5, README 92.8% top-1).

  python -m recu.train --config=recu/configs/resnet18_cifar10.py --workdir=runs/recu_r18_c10
"""
from recu.configs.common import recu_config


def get_config():
  return recu_config('recu_resnet18_cifar', 'cifar10', 600, 256, 128, 0.1, 5e-4, 'all')
