"""DCFF ResNet-110 on CIFAR-10, README cprate (57 rates, stage widths 6/25/32; the README table).

  python -m dcff.train --config=dcff/configs/resnet110_cifar10.py --workdir=runs/dcff_resnet110

Expected FLOPs 85.30M (-66.55%), params 0.555M (README 0.56M, -67.86%), top-1 93.80% (README).
"""
from dcff.configs import recipes


def get_config():
  return recipes.cifar10('resnet110')
