"""DCFF ResNet-56 on CIFAR-10, README cprate (30 rates, stage rates 0; the README table).

  python -m dcff.train --config=dcff/configs/resnet56_cifar10.py --workdir=runs/dcff_resnet56

Expected FLOPs 55.83M (README 55.84M, -55.88%), params 0.384M (-54.95%), top-1 93.26% (README).
"""
from dcff.configs import recipes


def get_config():
  return recipes.cifar10('resnet56')
