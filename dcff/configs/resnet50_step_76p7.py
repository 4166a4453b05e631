"""DCFF ResNet-50 on ImageNet, 'step' recipe, README FLOPs reduction 76.7% (README commands and table).

  python -m dcff.train --config=dcff/configs/resnet50_step_76p7.py --workdir=runs/dcff_r50_step_76p7 \
      --config.dataset.data_dir=DATA_DIR

Expected FLOPs 0.958B, params 7.403M (thop), top-1/top-5 71.54/90.57 (README).
"""
from dcff import cprate
from dcff.configs import recipes


def get_config():
  return recipes.imagenet_resnet50('step', cprate.README_CPRATES['resnet50_step_76.7'])
