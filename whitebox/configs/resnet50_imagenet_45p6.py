"""White-Box ResNet-50 on ImageNet at 2.22B FLOPs (``scripts/resnet50-1.sh``: target 0.45).

  python -m whitebox.train --config=whitebox/configs/resnet50_imagenet_45p6.py \
      --workdir=runs/wb_r50_45 --config.dataset.data_dir=DATA_DIR

Published (README): FLOPs -45.6%, top-1 / top-5 75.32 / 92.43 (best epoch by top-5;
``--config.best_metric=test_top1`` selects by top-1).
"""
from whitebox.configs import recipes


def get_config():
  return recipes.imagenet_resnet50(0.45)
