"""White-Box ResNet-110 on CIFAR-10 (``scripts/resnet110.sh``: lambda 0, target 0.65).

  python -m whitebox.train --config=whitebox/configs/resnet110_cifar10.py --workdir=runs/wb_r110

Published (README): FLOPs -66.0%, top-1 94.12% (abstract: -65.23%).
"""
from whitebox.configs import recipes


def get_config():
  return recipes.cifar10('resnet110', sparse_lambda=0.0, flops_target=0.65)
