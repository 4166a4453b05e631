"""DCFF ResNet-50 on ImageNet, 'step' recipe, README FLOPs reduction 45.3% (README commands and table).

  python -m dcff.train --config=dcff/configs/resnet50_step_45p3.py --workdir=runs/dcff_r50_step_45p3 \
      --config.dataset.data_dir=DATA_DIR

Expected FLOPs 2.249B, params 15.164M (thop), top-1/top-5 75.18/92.56 (README).
"""
from dcff import cprate
from dcff.configs import recipes


def get_config():
  return recipes.imagenet_resnet50('step', cprate.README_CPRATES['resnet50_step_45.3'])
