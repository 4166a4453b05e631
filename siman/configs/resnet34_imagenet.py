"""SiMaN ResNet-34 1w1a on ImageNet (``imagenet/run.sh`` with ``--model resnet34_1w1a``; README
63.9 / 84.8 top-1 / top-5).

  python -m siman.train --config=siman/configs/resnet34_imagenet.py --workdir=runs/siman_r34_in

Expected: ~63.9% top-1.
"""
from siman.configs import recipes


def get_config():
  return recipes.imagenet(model='siman_resnet34')
