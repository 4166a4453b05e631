"""MobileNet-V2, L1 filter pruning (StructureConv baseline), p = 0.5, ImageNet; official fine-tuning setting (spec §2.5).

  python -m onexn.train --config=onexn/configs/mobilenet_v2_filter_p50.py --workdir=runs/onexn_mobilenet_v2_filter_p50 \
      --config.init_checkpoint=PRETRAINED_DENSE_MOBILENET_V2

Expected top-1 (README Table 1 / rearrangement ablation (p = 50%)): 66.730.
"""
from onexn.configs import imagenet


def get_config():
  return imagenet.make('mobilenet_v2', pattern='filter', p=0.5)
