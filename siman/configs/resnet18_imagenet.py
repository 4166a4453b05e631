"""SiMaN ResNet-18 1w1a on ImageNet (``imagenet/run.sh``; README 60.1 / 82.3 top-1 / top-5).

  python -m siman.train --config=siman/configs/resnet18_imagenet.py --workdir=runs/siman_r18_in

Bi-Real blocks with PReLU, FP 1x1 downsample, BN2d gamma 1e-8, 150 epochs of cosine without
warm-up, batch 512. Expected: ~60.1% top-1.
"""
from siman.configs import recipes


def get_config():
  return recipes.imagenet(model='siman_resnet18')
