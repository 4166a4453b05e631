"""DCFF ResNet-50 on ImageNet, 'cos' recipe, README FLOPs reduction 63.0% (README commands and table).

  python -m dcff.train --config=dcff/configs/resnet50_cos_63p0.py --workdir=runs/dcff_r50_cos_63p0 \
      --config.dataset.data_dir=DATA_DIR

Expected FLOPs 1.523B, params 11.047M (thop), top-1/top-5 75.60/92.55 (README).
"""
from dcff import cprate
from dcff.configs import recipes


def get_config():
  return recipes.imagenet_resnet50('cos', cprate.README_CPRATES['resnet50_cos_63.0'])
