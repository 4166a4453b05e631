"""ReCU ResNet-20 on CIFAR-10 (cifar/run.sh; README 87.5% top-1 "vanilla").

  python -m recu.train --config=recu/configs/resnet20_cifar10.py --workdir=runs/recu_r20_c10

600 epochs, batch 256 (test 128), SGD 0.1 m0.9, cosine + 5-epoch warm-up, wd 5e-4 on all params.
"""
from recu.configs.recipes import recu_config


def get_config():
  return recu_config(model='recu_resnet20', dataset='cifar10', num_epochs=600, batch_size=256,
                     eval_batch_size=128, lr=0.1, weight_decay=5e-4, decay_rule='all')
