"""LEC-Net on the embedded digits set: the quick experiment's recipe (``lecnet.quick``).

  python -m lecnet.train --config=lecnet/configs/digits.py --workdir=runs/lecnet_digits

Digits 0-3 as the base session (all their training images), then 3 sessions of 2-way 5-shot
(4-5, 6-7, 8-9; the shots drawn by the seed); ResNet-8 (16/32/64, a 64-d feature), N = 64 nodes,
r = 0.1. Base: 15 epochs, batch 64, SGD Nesterov lr 0.1, wd 5e-4, steps at epochs 9 and 11 (CEC's
60/70 of 100 scaled). Sessions: 100 full-batch LEC epochs (gate annealing from epoch 20), Adam
lr 5e-3. The quick experiment's claims and what it measured (three seeds) are in
``lecnet/README.md``.
"""
from lecnet.configs.recipes import lecnet_config


def get_config():
  c = lecnet_config(protocol='digits', dataset='digits', model='resnet8', base_classes=4, way=2,
                    shot=5, sessions=3, nodes=64, base_epochs=15, milestones=(9, 11),
                    batch_size=64)
  c.method.session_epochs = 100
  c.method.passes_per_epoch = 25
  c.progress_bar = False
  return c
