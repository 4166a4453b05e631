"""Dense pretraining of the networks Lottery Jackpots prunes, in the official layout.

  python -m common.train --config=common/configs/jackpot_dense.py:vgg19,cifar10 --workdir=runs/vgg19_c10
  python -m common.train --config=common/configs/jackpot_dense.py:resnet32_wide,cifar100 \
      --workdir=runs/r32w_c100
  python -m common.train --config=common/configs/jackpot_dense.py:vgg_tiny,digits --workdir=runs/vt

Argument ``MODEL[,DATASET]``, MODEL one of ``LAYOUTS``. The params trees are exactly what
zyxxmu/lottery-jackpots ``models/`` prunes: VGG-19 (``vgg_cifar.py``) has no conv bias and its
classifier is a 1x1 conv with bias (``builder.conv1x1_fc``); the wide ResNet-32
(``resnet_cifar.py``: stem 32, stages 32/64/128, option-A shortcuts) also ends in a 1x1-conv
classifier. The repository ships no training recipe for its pretrained checkpoints (a Drive
folder); CIFAR uses the dense recipe of ``common/configs/cifar_dense.py`` (200 epochs, SGD 0.1,
wd 5e-4, x0.1 at 100 and 150; expected ~93.5-94% on CIFAR-10 for both, the paper's dense
baselines). ``vgg_tiny,digits`` is the pretrained model of ``jackpot.quick`` (15 epochs, cosine;
expected >= 0.97 test top-1 in about a minute on 2 cores).
"""
from common.configs import base
from common.configs import cifar_dense

# model name -> model.kwargs of the official layout.
LAYOUTS = {
    'vgg19': {'conv_bias': False, 'classifier_as_conv': True},
    'resnet32_wide': {'classifier_as_conv': True},
    'vgg_tiny': {'conv_bias': False, 'classifier_as_conv': True},
}


def get_config(arg: str = 'vgg19,cifar10'):
  parts = (arg or 'vgg19,cifar10').split(',')
  name = parts[0]
  if name not in LAYOUTS:
    raise ValueError(f'jackpot_dense model must be one of {sorted(LAYOUTS)}; got {name!r}')
  dataset = parts[1] if len(parts) > 1 else 'cifar10'
  if dataset == 'digits':
    c = base.get_config()
    c.model.name = name
    c.num_epochs = 15
    c.dataset.batch_size = 128
    c.optimizer.learning_rate = 0.05
    c.optimizer.weight_decay = 5e-4
    c.schedule.name = 'cosine'
  else:
    c = cifar_dense.get_config(f'{name},{dataset}')
  c.model.kwargs = dict(LAYOUTS[name])
  return c
