"""White-Box MobileNet-V2 on CIFAR-10 (``scripts/mobilenetv2.sh``: lambda 0.01, target 0.29,
weight decay 4e-5, milestones 50, 100 by default).

  python -m whitebox.train --config=whitebox/configs/mobilenet_v2_cifar10.py --workdir=runs/wb_mbv2

The class model uses ReLU and strides 2 at blocks 3, 6, 13; the pruned model ReLU6 and strides at
blocks 6, 13 (``method.class_model_kwargs``). Published (README): FLOPs -29.2%, top-1 95.28%.
"""
from whitebox.configs import recipes


def get_config():
  return recipes.cifar10('mobilenet_v2_cifar', sparse_lambda=0.01, flops_target=0.29,
                         milestones=(50, 100), weight_decay=4e-5)
