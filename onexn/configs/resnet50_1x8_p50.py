"""ResNet-50, 1x8 block pruning without rearrangement, p = 0.5, ImageNet; official fine-tuning setting (spec §2.5).

  python -m onexn.train --config=onexn/configs/resnet50_1x8_p50.py --workdir=runs/onexn_resnet50_1x8_p50 \
      --config.init_checkpoint=PRETRAINED_DENSE_RESNET50

Expected top-1: not published for this cell (the official tables report the rearranged runs).
The released code also prunes the fc at p (``cfg_len`` off by one, spec §2.7): add
``--config.method.prune_classifier=True`` to reproduce that.
"""
from onexn.configs import imagenet


def get_config():
  return imagenet.make('resnet50', pattern='block', n=8, p=0.5)
