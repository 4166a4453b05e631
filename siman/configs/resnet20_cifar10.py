"""SiMaN ResNet-20 1w1a on CIFAR-10 (``cifar/run.sh``; README 87.4% top-1).

  python -m siman.train --config=siman/configs/resnet20_cifar10.py --workdir=runs/siman_resnet20

Bi-Real blocks with PReLU, option-A shortcuts, ReLU stem, 400 epochs. Expected: best test top-1
~87.4% (README), 0.27M params.
"""
from siman.configs import recipes


def get_config():
  return recipes.cifar10(model='siman_resnet20')
