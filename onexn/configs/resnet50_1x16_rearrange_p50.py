"""ResNet-50, 1x16 block pruning with filter rearrangement, p = 0.5, ImageNet; official fine-tuning setting (spec §2.5).

  python -m onexn.train --config=onexn/configs/resnet50_1x16_rearrange_p50.py --workdir=runs/onexn_resnet50_1x16_rearrange_p50 \
      --config.init_checkpoint=PRETRAINED_DENSE_RESNET50

Expected top-1 (raw_data_fig4/res50_top1.py at p = 0.5 (the figure does not say whether rearranged; dense 77.008)): 76.254.
The released code also prunes the fc at p (``cfg_len`` off by one, spec §2.7): add
``--config.method.prune_classifier=True`` to reproduce that.
"""
from onexn.configs import imagenet


def get_config():
  return imagenet.make('resnet50', pattern='block', n=16, p=0.5, rearrange=True)
