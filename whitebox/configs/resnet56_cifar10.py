"""White-Box ResNet-56 on CIFAR-10 (``scripts/resnet56.sh``: lambda 0, target 0.55).

  python -m whitebox.train --config=whitebox/configs/resnet56_cifar10.py --workdir=runs/wb_r56

Published (README): FLOPs -55.6%, top-1 93.54%.
"""
from whitebox.configs import recipes


def get_config():
  return recipes.cifar10('resnet56', sparse_lambda=0.0, flops_target=0.55)
