"""ReCU ResNet-34 on ImageNet (imagenet/run.sh; README 65.10 / 85.78 top-1/top-5).

  python -m recu.train --config=recu/configs/resnet34_imagenet.py --workdir=runs/recu_r34_in
"""
from recu.configs.recipes import recu_config


def get_config():
  return recu_config(model='recu_resnet34', dataset='imagenet2012', num_epochs=200, batch_size=512,
                     eval_batch_size=256, lr=0.1, weight_decay=1e-4, decay_rule='conv_fc')
