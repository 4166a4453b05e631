"""Jackpot search on ImageNet, ResNet-50: ``SPARSITY,EPOCHS[,TUNE_EPOCHS]``
(zyxxmu/lottery-jackpots ``configs/resnet50_imagenet/*.yaml``).

  python -m jackpot.train --config=jackpot/configs/imagenet.py:0.8,30 --workdir=DIR \
      --config.init_checkpoint=resnet50_torchvision.npz
  python -m jackpot.train --config=jackpot/configs/imagenet.py:0.8,30,10 --workdir=DIR ...  # +10T

The pretrained model is torchvision's ResNet-50 (76.15%), converted with
``python -m common.convert --checkpoint=resnet50-0676ba61.pth --model=resnet50 --out=FILE.npz``
(the classifier stays a dense layer: the same map as the official 1x1 conv, rate 0). Search: lr
0.1, per-epoch cosine, wd 1e-4 on the scores, batch 256; "+10T" (``*30s10t.yaml``): 10 epochs of
weight tuning with the mask fixed, lr 0.01, cosine, wd 0. Published top-1 (README, Nov 2021):

| p | 30 search epochs | + 10 tuning epochs |
|---|---|---|
| 0.8 | 75.19 | 76.66 |
| 0.9 | 72.43 | 72.62 |

The headline "more than 70% top-1 at 90% sparsity after 10 search epochs" has no shipped config:
``imagenet.py:0.9,10``.
"""
from jackpot.configs.recipes import search_config


def get_config(arg: str = '0.8,30'):
  parts = (arg or '0.8,30').split(',')
  if len(parts) not in (2, 3):
    raise ValueError(f'expected SPARSITY,EPOCHS[,TUNE_EPOCHS]; got {arg!r}')
  c = search_config(model='resnet50', dataset='imagenet2012', sparsity=float(parts[0]),
                    num_epochs=int(parts[1]), lr=0.1, weight_decay=1e-4, batch_size=256,
                    eval_batch_size=256, tune_epochs=int(parts[2]) if len(parts) == 3 else 0)
  return c
