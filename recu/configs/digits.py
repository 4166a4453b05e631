"""ReCU on the embedded digits set: the quick experiment's recipe (``recu.quick``).

  python -m recu.train --config=recu/configs/digits.py --workdir=runs/recu_digits

ResNet-20 at width 1/2 (8/16/32; FP stem and classifier; at width 1/4 the 4-channel binary convs
learned erratically: some seeds near chance after 10 epochs), batch 128, SGD 0.1 m0.9, per-epoch
cosine with a 2-epoch warm-up (the official 5-epoch / shift-4 rule scaled: shift = warm-up - 1),
30 epochs, wd 5e-4 on all params, tau 0.85 -> 0.99 over the run. Expected: >= 85% test top-1.
``--config.method.weight_binarizer=sign_ste`` is the plain sign-STE baseline, ``none`` the same
network in full precision.
"""
from recu.configs.recipes import recu_config


def get_config():
  c = recu_config(model='recu_resnet20', dataset='digits', num_epochs=30, batch_size=128,
                  eval_batch_size=256, lr=0.1, weight_decay=5e-4, decay_rule='all')
  c.model.widths = {'stem': 8, 'stages': [8, 16, 32]}
  c.schedule.warmup_epochs = 2
  c.schedule.cosine_shift = 1
  return c
