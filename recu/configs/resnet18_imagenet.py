"""ReCU ResNet-18 on ImageNet (imagenet/run.sh; README 60.98 / 82.57 top-1/top-5).

  python -m recu.train --config=recu/configs/resnet18_imagenet.py --workdir=runs/recu_r18_in

200 epochs, batch 512 (test 256), SGD 0.1 m0.9, cosine + 5-epoch warm-up, wd 1e-4 only on
parameters whose name contains conv/fc (not BN, not the FP downsample conv).
"""
from recu.configs.recipes import recu_config


def get_config():
  return recu_config(model='recu_resnet18', dataset='imagenet2012', num_epochs=200, batch_size=512,
                     eval_batch_size=256, lr=0.1, weight_decay=1e-4, decay_rule='conv_fc')
