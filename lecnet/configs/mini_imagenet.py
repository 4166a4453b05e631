"""LEC-Net on miniImageNet FSCIL (60 base classes + 8 sessions of 5-way 5-shot), read from the
user's image folder.

  python -m lecnet.train --config=lecnet/configs/mini_imagenet.py --workdir=runs/lecnet_mini \\
      --config.method.mini_imagenet_root=/path/to/miniimagenet \\
      --config.method.index_list_dir=/path/to/CEC-CVPR2021/data/index_list/mini_imagenet

``mini_imagenet_root`` holds ``images/*.jpg`` and ``split/train.csv``, ``split/test.csv`` (CEC's
layout). LEC publishes no miniImageNet result (TOPIC: 61.31 -> 24.42, CEC: 72.00 -> 47.63). Base
session: CEC's recipe (SGD Nesterov lr 0.1, wd 5e-4, steps at 40 / 70 of 100 epochs), ResNet-18
from scratch at 84x84.
"""
from lecnet.configs.recipes import lecnet_config


def get_config():
  c = lecnet_config(protocol='mini_imagenet', dataset='mini_imagenet', model='resnet18',
                    base_classes=60, way=5, shot=5, sessions=8, nodes=512, base_epochs=100,
                    milestones=(40, 70))
  return c
