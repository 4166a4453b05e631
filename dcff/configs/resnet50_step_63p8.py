"""DCFF ResNet-50 on ImageNet, 'step' recipe, README FLOPs reduction 63.8% (README commands and table).

  python -m dcff.train --config=dcff/configs/resnet50_step_63p8.py --workdir=runs/dcff_r50_step_63p8 \
      --config.dataset.data_dir=DATA_DIR

Expected FLOPs 1.4905B, params 10.582M (thop), top-1/top-5 74.21/91.93 (README).
"""
from dcff import cprate
from dcff.configs import recipes


def get_config():
  return recipes.imagenet_resnet50('step', cprate.README_CPRATES['resnet50_step_63.8'])
