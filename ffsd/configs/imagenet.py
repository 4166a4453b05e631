"""FFSD on ImageNet (SJLeo/FFSD ``ImageNetTrainer.py``), one config per published row:

  python -m ffsd.train --config=ffsd/configs/imagenet.py:resnet18 --workdir=runs/ffsd_r18_in
  (arg: resnet18 | resnet34; default resnet18)

Published leader top-1 (SJLeo/FFSD README): ResNet-18 70.87, ResNet-34 74.69. torchvision
ResNets; feature taps layer1 .. layer4 (56x56 .. 7x7); three-block decoders 512 -> 256 -> 128 ->
64. 90 epochs, batch 256, lr 0.1 x 0.1^(e // 30) (x0.001 from epoch 80) after a 5-epoch linear
per-iteration warm-up, wd 1e-4; decoders Adam 1e-3 with milestones [150, 225] (constant here).
"""
from ffsd.configs.recipes import imagenet

PUBLISHED_LEADER_TOP1 = {'resnet18': 70.87, 'resnet34': 74.69}


def get_config(arg: str = 'resnet18'):
  if arg not in PUBLISHED_LEADER_TOP1:
    raise ValueError(f'unknown ImageNet FFSD backbone {arg!r}; allowed: '
                     f'{sorted(PUBLISHED_LEADER_TOP1)}')
  return imagenet(arg)
