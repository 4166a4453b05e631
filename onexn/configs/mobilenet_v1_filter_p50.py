"""MobileNet-V1, L1 filter pruning (StructureConv baseline), p = 0.5, ImageNet; official fine-tuning setting (spec §2.5).

  python -m onexn.train --config=onexn/configs/mobilenet_v1_filter_p50.py --workdir=runs/onexn_mobilenet_v1_filter_p50 \
      --config.init_checkpoint=PRETRAINED_DENSE_MOBILENET_V1

Expected top-1 (README Table 1 (p = 50%)): 65.348.
"""
from onexn.configs import imagenet


def get_config():
  return imagenet.make('mobilenet_v1', pattern='filter', p=0.5)
