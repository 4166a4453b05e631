"""ReCU ResNet-34 on ImageNet (imagenet/run.sh; spec §1.5, README 65.10 / 85.78 top-1/top-5).

  python -m recu.train --config=recu/configs/resnet34_imagenet.py --workdir=runs/recu_r34_in
"""
from recu.configs.common import recu_config


def get_config():
  return recu_config('recu_resnet34', 'imagenet2012', 200, 512, 256, 0.1, 1e-4, 'conv_fc')
