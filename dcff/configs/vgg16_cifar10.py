"""DCFF VGG-16 on CIFAR-10, README cprate ``[0.5]*2+[0.4]*2+[0.35]*3+[0.85]*6`` (README table).

  python -m dcff.train --config=dcff/configs/vgg16_cifar10.py --workdir=runs/dcff_vgg16

Compact widths [32, 32, 76, 76, 166, 166, 166, 76 x 6]; expected FLOPs 72.77M (-76.83%), params
1.071M (README 1.06M, -92.80%), top-1 93.47% (README, best over 300 epochs).
"""
from dcff.configs import recipes


def get_config():
  return recipes.cifar10('vgg16')
