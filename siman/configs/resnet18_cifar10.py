"""SiMaN ResNet-18 1w1a on CIFAR-10 (``cifar/models_cifar/resnet2.py``; README 92.5% top-1).

  python -m siman.train --config=siman/configs/resnet18_cifar10.py --workdir=runs/siman_resnet18_c10

Standard blocks with Hardtanh, binarized 1x1 shortcut convs (weight-decayed: their official name
``shortcut.0`` has no ``conv``), PyTorch default init, 400 epochs. Expected: ~92.5% top-1.
"""
from siman.configs import recipes


def get_config():
  return recipes.cifar10(model='siman_resnet18_cifar')
