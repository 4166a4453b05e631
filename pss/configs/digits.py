"""PSS-Net on the embedded digits set: the quick experiment's recipe (``pss.quick``).

  python -m pss.train --config=pss/configs/digits.py --workdir=runs/pss_digits

The tiny MobileNet-V1 (stem 16 stride 1; blocks 32, 64/2, 64, 128/2, 128; ReLU6), 6 per-layer
multipliers in [0.5, 1.0], resolutions {24, 28, 32} (bilinear resize of the 32x32 digits),
FLOPs bins of 0.5 MFLOPs over 1.0..4.5 keeping the interior bins 1.5..4.0, pools of 10, p and T
from 1 to 0.01, 15 epochs of batch 32 (35 steps per epoch, so that each of the 6 pools is
visited ~90 times), Nesterov SGD 0.05 with a per-step cosine, wd 5e-4.
Training on train[:1137], selection on the held-out train[1137:] (300 images), test on the 360
test images. Max net 4.60 MFLOPs, min net 0.78 MFLOPs. Expected: max net >= 90% test top-1;
``--config.method.p_start=1 --config.method.p_end=1`` is the uniform-sampling arm.
"""
from pss.configs.recipes import pss_config


def get_config():
  c = pss_config('slim_mobilenet_v1_tiny', 'digits', num_epochs=15, batch_size=32, lr=0.05,
                 weight_decay=5e-4, width_range=(0.5, 1.0), resolution_range=(24, 32),
                 resolution_step=4, target_start=1.0, target_stop=4.5, target_step=0.5,
                 pool_size=10, prior_size=20_000, valid_topk=3, recal_batches=8,
                 random_per_bin=10, train_split='train[:1137]', heldout_split='train[1137:]')
  c.progress_bar = False
  return c
