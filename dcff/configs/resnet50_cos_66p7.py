"""DCFF ResNet-50 on ImageNet, 'cos' recipe, README FLOPs reduction 66.7% (README commands and table).

  python -m dcff.train --config=dcff/configs/resnet50_cos_66p7.py --workdir=runs/dcff_r50_cos_66p7 \
      --config.dataset.data_dir=DATA_DIR

Expected FLOPs 1.381B, params 11.814M (thop), top-1/top-5 74.85/92.41 (README).
"""
from dcff import cprate
from dcff.configs import recipes


def get_config():
  return recipes.imagenet_resnet50('cos', cprate.README_CPRATES['resnet50_cos_66.7'])
