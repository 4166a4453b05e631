"""LEC-Net on CIFAR-100 FSCIL (TOPIC/CEC protocol: 60 base classes + 8 sessions of 5-way 5-shot).

  python -m common.data.prepare --dataset=cifar100 --source=/path/to/cifar-100-python.tar.gz
  python -m lecnet.train --config=lecnet/configs/cifar100.py --workdir=runs/lecnet_cifar100 \\
      --config.method.index_list_dir=/path/to/CEC-CVPR2021/data/index_list/cifar100

Published (ICCV2021-LEC/LEC README): 64.10, 53.23, 44.19, 41.87, 38.54, 39.54, 37.34, 34.73, 34.73
(sessions 0-8; the base 64.10 equals TOPIC's ResNet-20 base, so ResNet-20 is used). Base session:
CEC's CIFAR recipe (SGD Nesterov lr 0.1, wd 5e-4, batch 128, 100 epochs, steps at 60 / 70);
LEC's CIFAR augmentation (RandomCrop 32 with padding 8, flip, ImageNet mean/std). Sessions: 1000
full-batch LEC epochs, Adam lr 5e-3, N = 64 nodes (the ResNet-20 feature width).
"""
from lecnet.configs.recipes import lecnet_config


def get_config():
  c = lecnet_config(protocol='cifar100', dataset='cifar100', model='resnet20', base_classes=60,
                    way=5, shot=5, sessions=8, nodes=64, base_epochs=100, milestones=(60, 70))
  c.dataset.normalization = 'imagenet'
  c.dataset.options = {'pad': 8}
  return c
