"""Jackpot search on CIFAR: ``MODEL,DATASET,SPARSITY,EPOCHS`` (zyxxmu/lottery-jackpots
``configs/{vgg19,resnet32}_cifar{10,100}/*.yaml``).

  python -m jackpot.train --config=jackpot/configs/cifar.py:vgg19,cifar10,0.9,30 --workdir=DIR \
      --config.init_checkpoint=PRETRAINED

PRETRAINED: a dense model of the same layout
(``python -m common.train --config=common/configs/jackpot_dense.py:vgg19,cifar10``) or a converted
official checkpoint. MODEL ``vgg19`` or ``resnet32_wide``; SPARSITY 0.9 or 0.95; EPOCHS 30 or 160
(the yaml named ``90sparsity60epoch`` holds ``num_epochs: 160``). lr 0.1, cosine, wd 5e-4 on the
scores, batch 256. Published top-1 (README):

| model | data | p | 30 epochs | 160 epochs |
|---|---|---|---|---|
| VGG-19 | C10 | 0.90 | 93.88 | 93.94 |
| VGG-19 | C10 | 0.95 | 93.49 | 93.74 |
| VGG-19 | C100 | 0.90 | 72.59 | 74.61 |
| VGG-19 | C100 | 0.95 | 71.76 | 73.35 |
| ResNet-32 | C10 | 0.90 | 93.70 | 94.39 |
| ResNet-32 | C10 | 0.95 | 92.90 | 93.41 |
| ResNet-32 | C100 | 0.90 | 72.22 | 73.43 |
| ResNet-32 | C100 | 0.95 | 69.38 | 70.31 |
"""
from common.configs.jackpot_dense import LAYOUTS
from jackpot.configs.recipes import search_config

MODELS = ('vgg19', 'resnet32_wide')
DATASETS = ('cifar10', 'cifar100')


def get_config(arg: str = 'vgg19,cifar10,0.9,30'):
  parts = (arg or 'vgg19,cifar10,0.9,30').split(',')
  if len(parts) != 4:
    raise ValueError(f'expected MODEL,DATASET,SPARSITY,EPOCHS; got {arg!r}')
  model, dataset, p, epochs = parts
  if model not in MODELS:
    raise ValueError(f'model must be one of {list(MODELS)}; got {model!r}')
  if dataset not in DATASETS:
    raise ValueError(f'dataset must be one of {list(DATASETS)}; got {dataset!r}')
  return search_config(model=model, dataset=dataset, sparsity=float(p), num_epochs=int(epochs),
                       lr=0.1, weight_decay=5e-4, batch_size=256, eval_batch_size=256,
                       model_kwargs=LAYOUTS[model])
