"""FDDA W4A4 (F4L4) of the digits ResNet-8 (projection shortcut): the quick experiment's recipe.

  python -m fdda.teacher --config=fdda/configs/digits_teacher.py --workdir=runs/fdda_teacher
  python -m fdda.train --config=fdda/configs/digits.py --workdir=runs/fdda_digits \
      --config.method.teacher_checkpoint=runs/fdda_teacher

The official schedule scaled to a 2-core CPU: 10 calibration images (one per class, drawn from
the teacher's training slice), 50 iterations per epoch of 16 calibration + 16 synthetic images,
the generator alone for the first 8 epochs, activation ranges unfixed in the first 2 (on
synthetic images, as the code), 24 epochs, generator 32x32 with latent 64 and milestones at
epochs 12 and 18; the student learning rate (1e-6 is ImageNet's) is chosen on the held-out
``train[1200:]`` by ``fdda.quick``. ``--config.method.first_last_bits=8`` is F8L8,
``--config.method.arm=bns`` the plain-BNS (GDFQ) generator, ``arm=calibration`` KD on the
calibration images only. Expected (``fdda/README.md``): FDDA above the teacher-ranges PTQ.
"""
from fdda.configs import digits_teacher
from fdda.configs.recipes import fdda_config


def get_config():
  c = fdda_config(model='resnet8', dataset='digits', num_epochs=24, lr=1e-4, t_max=500)
  c.model.kwargs.shortcut = 'projection'
  c.dataset.eval_batch_size = 400
  c.method.calibration_split = digits_teacher.TRAIN_SPLIT
  c.method.iterations = 50
  c.method.warmup_epochs = 8
  c.method.unfixed_epochs = 2
  c.method.latent_dim = 32
  c.method.gen_width = 32
  c.method.gen_milestones = (12, 18)
  c.progress_bar = False
  return c
