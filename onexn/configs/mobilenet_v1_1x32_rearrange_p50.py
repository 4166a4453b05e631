"""MobileNet-V1, 1x32 block pruning with filter rearrangement, p = 0.5, ImageNet; official fine-tuning setting (spec §2.5).

  python -m onexn.train --config=onexn/configs/mobilenet_v1_1x32_rearrange_p50.py --workdir=runs/onexn_mobilenet_v1_1x32_rearrange_p50 \
      --config.init_checkpoint=PRETRAINED_DENSE_MOBILENET_V1

Expected top-1 (README Table 1 (p = 50%)): 69.541.
"""
from onexn.configs import imagenet


def get_config():
  return imagenet.make('mobilenet_v1', pattern='block', n=32, p=0.5, rearrange=True)
