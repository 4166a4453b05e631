"""FDDA on ImageNet, the official setting; every published cell is one argument string:

  python -m fdda.train --config=fdda/configs/imagenet.py:resnet18,w4a4,f8l8 \
      --workdir=runs/fdda_r18_w4a4_f8l8 --config.method.teacher_checkpoint=R18.npz

Argument: ``<model>,w<k>a<k>,<first/last>`` with model ``resnet18 | mobilenet_v1 | mobilenet_v2 |
regnetx_600mf``, ``w4a4 | w5a5`` and ``f4l4`` / ``f5l5`` (first and last layer at the same width,
``main_DBNS_CBNS.py``) or ``f8l8`` (8-bit first / last layer, ``main_DBNS_CBNS_8F8L.py``).
``teacher_checkpoint`` is the full-precision model: a ``common.convert`` ``.npz`` (e.g. torchvision's
ResNet-18 / MobileNet-V2) or a finished ``common.train`` workdir.

Published ImageNet top-1 (zysxmu/FDDA README, best epoch):

| model | W4A4 F4L4 | W4A4 F8L8 | W5A5 F5L5 | W5A5 F8L8 |
|---|---|---|---|---|
| resnet18 | 68.884 | 69.758 | 70.558 | 70.864 |
| mobilenet_v1 | 63.748 | 65.760 | 70.258 | 71.764 |
| mobilenet_v2 | 68.382 | 69.322 | 71.63 | 71.99 |
| regnetx_600mf | 68.960 | 70.326 | 73.620 | 73.996 |

Official hyperparameters (``imagenet_config.hocon`` and the trainer): 1000 calibration images (one
per class), 400 epochs x 200 iterations of 16 calibration + 16 synthetic images, 50 generator-only
epochs, activation ranges unfixed in epochs 0-3, student SGD (Nesterov, momentum 0.9, wd 1e-4,
lr 1e-6, per-iteration cosine with T_max 20,000, periodic), generator Adam 1e-3 (0.5, 0.999) x0.1
at epochs 100/200/300, latent 100, alpha = T = 20.
"""
from fdda.configs.recipes import fdda_config

MODELS = ('resnet18', 'mobilenet_v1', 'mobilenet_v2', 'regnetx_600mf')
PUBLISHED = {
    'resnet18': {'w4a4,f4l4': 68.884, 'w4a4,f8l8': 69.758, 'w5a5,f5l5': 70.558,
                 'w5a5,f8l8': 70.864},
    'mobilenet_v1': {'w4a4,f4l4': 63.748, 'w4a4,f8l8': 65.760, 'w5a5,f5l5': 70.258,
                     'w5a5,f8l8': 71.764},
    'mobilenet_v2': {'w4a4,f4l4': 68.382, 'w4a4,f8l8': 69.322, 'w5a5,f5l5': 71.63,
                     'w5a5,f8l8': 71.99},
    'regnetx_600mf': {'w4a4,f4l4': 68.960, 'w4a4,f8l8': 70.326, 'w5a5,f5l5': 73.620,
                      'w5a5,f8l8': 73.996},
}


def get_config(arg: str = 'resnet18,w4a4,f4l4'):
  parts = [p.strip() for p in str(arg).split(',')]
  if len(parts) != 3 or parts[0] not in MODELS:
    raise ValueError(f'argument must be <model>,w<k>a<k>,f<j>l<j> with model in {list(MODELS)}; '
                     f'got {arg!r}')
  model, wa, fl = parts
  cell = f'{wa},{fl}'
  if cell not in PUBLISHED[model]:
    raise ValueError(f'unknown setting {cell!r}; published: {sorted(PUBLISHED[model])}')
  bits = int(wa[1])
  c = fdda_config(model=model, dataset='imagenet2012', num_epochs=400, lr=1e-6, t_max=20000)
  c.model.num_classes = 1000
  c.dataset.eval_batch_size = 200
  c.method.weight_bits = bits
  c.method.act_bits = bits
  c.method.first_last_bits = 8 if fl == 'f8l8' else 0
  c.method.published_top1 = PUBLISHED[model][cell]   # recorded in config.json
  return c
