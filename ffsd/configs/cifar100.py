"""FFSD on CIFAR-100 (SJLeo/FFSD README "Train on CIFAR-100"), one config per published row:

  python -m ffsd.train --config=ffsd/configs/cifar100.py:resnet32 --workdir=runs/ffsd_r32_c100
  (arg: resnet20 | resnet32 | resnet56 | wrn_16_2 | wrn_40_2 | densenet40 | googlenet;
   default resnet32)

Published leader top-1 (SJLeo/FFSD README, three runs each): ResNet-20 72.64 / 72.58 / 72.88,
ResNet-32 74.92 / 74.82 / 74.82, ResNet-56 75.84 / 75.66 / 75.91, WRN-16-2 75.87 / 75.86 / 75.69,
WRN-40-2 79.13 / 79.19 / 79.11, DenseNet-40 k=12 77.29 / 77.70 / 77.17, GoogLeNet 81.52 /
81.93 / 81.34.

DenseNet-40 (``common.models.densenet``) and GoogLeNet (``common.models.googlenet``) have the
official init built in; their decoders have the code's explicit widths
(``CIFARTrainer.init_self_ditsllation_models``: ``DIYSelfDistillationModel([456, 312, 168])`` and
``([1024, 832, 480])``), which are their shallower taps' widths, not the halving of the others.

The CIFAR ResNets have the 1x1-conv + BN projection shortcut (SJLeo/FFSD
``models/resnet_cifar.py``), conv init N(0, 2 / (k k C_out)). Recipe: ``ffsd/configs/recipes.py``
(299 epochs, batch 128, SGD nesterov 0.1, wd 1e-4, x0.1 at 150 / 225; fusion wd 1e-5; decoders
Adam 1e-3). Selection as the code: the best epoch of the leader (``results.json``:
``top1_best_leader``).
"""
from ffsd.configs.recipes import cifar100

PUBLISHED_LEADER_TOP1 = {'resnet20': (72.64, 72.58, 72.88), 'resnet32': (74.92, 74.82, 74.82),
                         'resnet56': (75.84, 75.66, 75.91), 'wrn_16_2': (75.87, 75.86, 75.69),
                         'wrn_40_2': (79.13, 79.19, 79.11), 'densenet40': (77.29, 77.70, 77.17),
                         'googlenet': (81.52, 81.93, 81.34)}
# Output widths of the decoder blocks, deep to shallow (the DIY models' channel lists after the
# input width).
DECODER_CHANNELS = {'densenet40': (312, 168), 'googlenet': (832, 480)}


def get_config(arg: str = 'resnet32'):
  if arg not in PUBLISHED_LEADER_TOP1:
    raise ValueError(f'unknown CIFAR-100 FFSD backbone {arg!r}; allowed: '
                     f'{sorted(PUBLISHED_LEADER_TOP1)}')
  if arg in DECODER_CHANNELS:
    return cifar100(arg, model_kwargs={'init': None}, decoder_channels=DECODER_CHANNELS[arg])
  if arg.startswith('wrn'):
    # common.models.wrn: the official init is built in (no init option).
    return cifar100(arg, model_kwargs={'init': None})
  return cifar100(arg, model_kwargs={'shortcut': 'projection'})
