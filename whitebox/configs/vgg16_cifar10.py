"""White-Box VGG-16 on CIFAR-10 (``scripts/vgg.sh``: lambda 0.01, target 0.75).

  python -m whitebox.train --config=whitebox/configs/vgg16_cifar10.py --workdir=runs/wb_vgg16

Published (README): FLOPs -76.4%, top-1 93.47%.
"""
from whitebox.configs import recipes


def get_config():
  return recipes.cifar10('vgg16', sparse_lambda=0.01, flops_target=0.75)
