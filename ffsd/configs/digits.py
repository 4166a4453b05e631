"""FFSD on the embedded digits set: the quick experiment's recipe (``ffsd.quick``).

  python -m ffsd.train --config=ffsd/configs/digits.py --workdir=runs/ffsd_digits
  python -m ffsd.train --config=ffsd/configs/digits.py --config.method.train_per_class=30 \
      --workdir=runs/ffsd_digits_low

CIFAR ResNet-8 with the 1x1-conv + BN projection shortcut (widths 16/32/64, feature taps 32x32 /
16x16 / 8x8: the code path of the CIFAR ResNet-20/32/56), digits upsampled to 32x32, 1000 train /
797 test, pad-2 random crop; 40 epochs, batch 64, SGD nesterov 0.9, lr 0.05, wd 5e-4, x0.1 at 20
and 30 (150/225 of 300 scaled), decoders Adam 1e-3 with the same milestones, the loss weights
warmed up over the first 5 epochs as in the code. ``--config.method.variant=dml`` is the DML
baseline, ``--config.method.variant=dml --config.method.num_students=1`` the network alone.
No published number: the quick experiment checks leader >= DML >= alone.

``method.vectorize=False``: on the CPU the vmapped students are slower than the same students one
by one (``ffsd.bench``: 1.22x with the zoo's oneDNN convolutions, which run a vmapped call
sequentially; 3.8x with XLA's, which turns it into a slow grouped convolution); the students
therefore run one by one on the CPU recipe (the same numbers, tested).
"""
from ffsd.configs.recipes import ffsd_config


def get_config():
  c = ffsd_config(model='resnet8', dataset='digits', num_epochs=40, batch_size=64, lr=0.05,
                  weight_decay=5e-4, milestones=(20, 30),
                  model_kwargs={'shortcut': 'projection'})
  c.dataset.eval_batch_size = 800
  c.dataset.options.test_size = 797
  c.method.sd_milestones = (20, 30)
  c.method.vectorize = False
  return c
