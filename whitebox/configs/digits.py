"""White-Box VGG-tiny on the embedded digits set (the quick experiment's White-Box row).

  python -m whitebox.train --config=whitebox/configs/digits.py --workdir=runs/wb_digits

VGG-tiny (16,16,M,32,32,M,64,64,M), masks after each ReLU, lambda 0.01; 5 class-wise epochs at
the constant lr 0.01 (not the CIFAR scripts' 0.1, at which this class model diverges: see
``whitebox/README.md``), batch 64; vote to the VGG-16 script's 75% FLOPs reduction
(``scripts/vgg.sh --pruning_rate 0.75``); 5 fine-tuning epochs, SGD 0.05, momentum 0.9,
per-epoch cosine, wd 5e-4. Expected: compact test top-1 around 0.9 or above (digits upsampled to
32x32, 2 CPU cores, a few minutes).
"""
from common.configs import base
from whitebox.configs import recipes


def get_config():
  c = base.get_config()
  c.seed = 0
  c.num_epochs = 5
  c.dataset.name = 'digits'
  c.dataset.batch_size = 64
  c.dataset.eval_batch_size = 256
  c.model.name = 'vgg_tiny'
  c.model.kwargs.init = 'kaiming_normal_fan_out'
  c.model.kwargs.dense_init = 'normal_0.01'
  c.optimizer.learning_rate = 0.05
  c.optimizer.momentum = 0.9
  c.optimizer.weight_decay = 5e-4
  c.schedule.name = 'cosine'
  c.method = recipes.method_config(sparse_lambda=0.01, flops_target=0.75, classwise_epochs=5)
  c.method.classwise_lr = 0.01
  c.progress_bar = False
  return c
