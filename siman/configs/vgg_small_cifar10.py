"""SiMaN VGG-Small 1w1a on CIFAR-10 (``cifar/models_cifar/vgg.py``; README 92.5% top-1).

  python -m siman.train --config=siman/configs/vgg_small_cifar10.py --workdir=runs/siman_vgg_small

PReLU everywhere, pool before BN, no decay on conv1-conv5 and their alphas, 400 epochs.
Expected: ~92.5% top-1.
"""
from siman.configs import recipes


def get_config():
  return recipes.cifar10(model='siman_vgg_small')
