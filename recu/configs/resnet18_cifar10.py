"""ReCU ResNet-18 on CIFAR-10 (cifar/run.sh with resnet18_1w1a; README 92.8% top-1).

  python -m recu.train --config=recu/configs/resnet18_cifar10.py --workdir=runs/recu_r18_c10
"""
from recu.configs.recipes import recu_config


def get_config():
  return recu_config(model='recu_resnet18_cifar', dataset='cifar10', num_epochs=600, batch_size=256,
                     eval_batch_size=128, lr=0.1, weight_decay=5e-4, decay_rule='all')
