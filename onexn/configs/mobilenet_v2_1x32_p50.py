"""MobileNet-V2, 1x32 block pruning without rearrangement, p = 0.5, ImageNet; official fine-tuning setting (spec §2.5).

  python -m onexn.train --config=onexn/configs/mobilenet_v2_1x32_p50.py --workdir=runs/onexn_mobilenet_v2_1x32_p50 \
      --config.init_checkpoint=PRETRAINED_DENSE_MOBILENET_V2

Expected top-1 (README Table 1 / rearrangement ablation (p = 50%)): 68.431.
MobileNet-V2 has layers with C_out % N != 0 at this N (projections to 16/24, expansions
to 144); ``straddle_blocks=True`` reproduces the official flattened grouping (blocks that
straddle two input channels), needed to reproduce the published number; those layers are
left dense (masked) by the sparse export.
"""
from onexn.configs import imagenet


def get_config():
  return imagenet.make('mobilenet_v2', pattern='block', n=32, p=0.5, straddle_blocks=True)
