"""DCFF ResNet-50 on ImageNet, 'cos' recipe, README FLOPs reduction 75.1% (README commands and table).

  python -m dcff.train --config=dcff/configs/resnet50_cos_75p1.py --workdir=runs/dcff_r50_cos_75p1 \
      --config.dataset.data_dir=DATA_DIR

Expected FLOPs 1.023B, params 6.561M (thop), top-1/top-5 73.81/91.59 (README).
"""
from dcff import cprate
from dcff.configs import recipes


def get_config():
  return recipes.imagenet_resnet50('cos', cprate.README_CPRATES['resnet50_cos_75.1'])
