"""ReCU VGG-Small on CIFAR-10 (cifar/run.sh with vgg_small_1w1a; spec §1.5, README 92.2% top-1).

  python -m recu.train --config=recu/configs/vgg_small_cifar10.py --workdir=runs/recu_vgg_c10
"""
from recu.configs.common import recu_config


def get_config():
  return recu_config('recu_vgg_small', 'cifar10', 600, 256, 128, 0.1, 5e-4, 'all')
