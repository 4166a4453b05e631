"""White-Box ResNet-50 on ImageNet at 1.50B FLOPs (``scripts/resnet50-2.sh``: target 0.63).

  python -m whitebox.train --config=whitebox/configs/resnet50_imagenet_63p5.py \
      --workdir=runs/wb_r50_63 --config.dataset.data_dir=DATA_DIR

Published (README): FLOPs -63.5%, top-1 / top-5 74.21 / 92.01 (best epoch by top-5;
``--config.best_metric=test_top1`` selects by top-1).
"""
from whitebox.configs import recipes


def get_config():
  return recipes.imagenet_resnet50(0.63)
