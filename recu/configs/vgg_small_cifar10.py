"""ReCU VGG-Small on CIFAR-10 (cifar/run.sh with vgg_small_1w1a; README 92.2% top-1).

  python -m recu.train --config=recu/configs/vgg_small_cifar10.py --workdir=runs/recu_vgg_c10
"""
from recu.configs.recipes import recu_config


def get_config():
  return recu_config(model='recu_vgg_small', dataset='cifar10', num_epochs=600, batch_size=256,
                     eval_batch_size=128, lr=0.1, weight_decay=5e-4, decay_rule='all')
