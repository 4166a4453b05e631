"""MobileNet-V2, 1x8 block pruning with filter rearrangement, p = 0.5, ImageNet; official fine-tuning setting (spec §2.5).

  python -m onexn.train --config=onexn/configs/mobilenet_v2_1x8_rearrange_p50.py --workdir=runs/onexn_mobilenet_v2_1x8_rearrange_p50 \
      --config.init_checkpoint=PRETRAINED_DENSE_MOBILENET_V2

Expected top-1 (README Table 1 / rearrangement ablation (p = 50%)): 69.372.
"""
from onexn.configs import imagenet


def get_config():
  return imagenet.make('mobilenet_v2', pattern='block', n=8, p=0.5, rearrange=True)
