"""Jackpot search on the embedded digits set: the quick experiment's recipe (``jackpot.quick``).

  python -m common.train --config=common/configs/jackpot_dense.py:vgg_tiny,digits --workdir=runs/vt
  python -m jackpot.train --config=jackpot/configs/digits.py --workdir=runs/jackpot_digits \
      --config.init_checkpoint=runs/vt

VGG-tiny (16,16,M,32,32,M,64,64,M; no conv bias, 1x1-conv classifier) pretrained densely, then a
5-epoch search at 95% sparsity: lr 0.1 cosine, wd 5e-4 on the scores, v2. Batch 32 rather than
the official 256: digits has 1,437 training images, and the search needs pop-up steps (45 per
epoch here; the CIFAR recipe makes 196). Expected: within a few points of the dense model
(~0.99), where magnitude pruning without retraining is near chance.
"""
from common.configs.jackpot_dense import LAYOUTS
from jackpot.configs.recipes import search_config


def get_config():
  return search_config(model='vgg_tiny', dataset='digits', sparsity=0.95, num_epochs=5, lr=0.1,
                       weight_decay=5e-4, batch_size=32, eval_batch_size=256,
                       model_kwargs=LAYOUTS['vgg_tiny'])
