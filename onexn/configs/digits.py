"""1xN fine-tuning of the narrow digits MobileNet-V2 (``onexn/quick.py``'s setting).

  python -m onexn.train --config=onexn/configs/digits_dense.py --workdir=runs/mbv2_digits
  python -m onexn.train --config=onexn/configs/digits.py:n=4,p=0.75,rearrange=1 \
      --workdir=runs/onexn_digits_1x4 --config.init_checkpoint=runs/mbv2_digits

Argument keys as ``onexn/configs/imagenet.py`` (pattern, n, p, rearrange, straddle), without the
model. Fine-tuning: 2 epochs (short, to keep the quick experiment within minutes; the official
recipe is 180 ImageNet epochs), SGD 0.01 momentum 0.9, per-epoch cosine, wd 4e-5, batch 64, masks
computed once from the dense model, classifier dense.

Expected (quick experiment, 3 seeds): at p = 0.75 1x4 > filter pruning both right after pruning
and after fine-tuning; weight >= 1x4 >= 1x8 > filter before fine-tuning.
"""
from onexn.configs import digits_dense
from onexn.configs import imagenet


def get_config(arg: str = ''):
  """``arg`` = ``key=value[,...]`` with keys pattern, n, p, rearrange, straddle."""
  model_cfg = imagenet.get_config(','.join(['mobilenet_v2'] + [a for a in (arg or '').split(',')
                                                                if a.strip()]))
  c = digits_dense.get_config()
  c.num_epochs = 2
  c.optimizer.learning_rate = 0.01
  c.optimizer.weight_decay = 4e-5
  c.schedule.name = 'cosine'
  c.method = model_cfg.method
  c.method.latency_batch = 1
  return c
