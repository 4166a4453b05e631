"""The shared PSS-Net recipe (chenbong/PSS-Net ``utils/config.py`` defaults and
``scripts/train/*.sh``), specialised by each experiment file."""
import ml_collections

from common.configs import base


def pss_config(model: str, dataset: str, *, num_epochs: int, batch_size: int, lr: float,
               weight_decay: float, width_range, resolution_range, resolution_step: int,
               target_start: float, target_stop: float, target_step: float, metric: str = 'flops',
               latency_table: str = '', pool_size: int = 50, prior_size: int = 100_000,
               valid_topk: int = 5, recal_batches: int = 9, random_per_bin: int = 0,
               train_split: str = 'train', heldout_split: str = '',
               eval_batch_size: int = 256) -> ml_collections.ConfigDict:
  """A PSS-Net config; the defaults are the official code's."""
  c = base.get_config()
  c.num_epochs = num_epochs
  c.dataset.name = dataset
  c.dataset.batch_size = batch_size
  c.dataset.eval_batch_size = eval_batch_size
  c.model.name = model
  c.optimizer.name = 'sgd'
  c.optimizer.learning_rate = lr
  c.optimizer.momentum = 0.9
  c.optimizer.nesterov = True          # train.py: get_optimizer, 'nesterov': True
  c.optimizer.weight_decay = weight_decay
  c.schedule.name = 'cosine'           # what metrics.jsonl logs; the step uses the per-step cosine
  c.best_metric = 'test_top1'
  m = c.method
  m.width_range = tuple(width_range)               # width_mult_range
  m.resolution_range = tuple(resolution_range)     # resolution_range
  m.resolution_step = resolution_step              # resolution_step
  m.metric = metric                                # 'flops' | 'latency'
  m.latency_table = latency_table                  # JSON of python -m pss.latency_table
  m.target_start = float(target_start)             # infer_metric_target_range start
  m.target_stop = float(target_stop)               # ... stop
  m.target_step = float(target_step)               # infer_metric_target_step
  m.target_offset = 0.0                            # start mod step (0 in every script)
  m.prior_size = prior_size                        # gen_map_num
  m.pool_size = pool_size                          # pool_size
  m.metric_lambda = 0.9                            # metric_lambda
  m.p_start, m.p_end = 1.0, 0.01                   # supernet_p_range
  m.t_start, m.t_end = 1.0, 0.01                   # pool_softmax_t_range
  m.valid_topk = valid_topk                        # valid_topk
  m.recal_batches = recal_batches                  # ComputePostBN: 9 batches
  m.random_per_bin = random_per_bin                # random prior subnets scored per bin (0: none)
  m.lr_per_step_cosine = True                      # CosineAnnealingLR stepped per iteration
  m.train_split = train_split
  m.heldout_split = heldout_split                  # '' : select on the test split
  return c


def imagenet_config(model: str, *, metric: str, target_start: float, target_stop: float,
                    target_step: float, latency_table: str = '',
                    prior_size: int = 100_000) -> ml_collections.ConfigDict:
  """The official ImageNet recipe (``scripts/train/pss-*.sh`` + ``utils/config.py``): 250 epochs,
  batch 1024, Nesterov SGD lr 0.3 with a per-iteration cosine to 0, wd 1e-4 on non-depthwise
  convs and FC, widths [0.75, 1], resolutions 128..224 step 8, pools of 50, top-5 re-evaluated,
  the 'imagenet1k_mobile' augmentation (RandomResizedCrop 224 scale (0.25, 1), ColorJitter 0.4,
  lighting 0.1, flip)."""
  c = pss_config(model, 'imagenet2012', num_epochs=250, batch_size=1024, lr=0.3,
                 weight_decay=1e-4, width_range=(0.75, 1.0), resolution_range=(128, 224),
                 resolution_step=8, target_start=target_start, target_stop=target_stop,
                 target_step=target_step, metric=metric, latency_table=latency_table,
                 pool_size=50, prior_size=prior_size, valid_topk=5, recal_batches=9,
                 eval_batch_size=1000)
  c.dataset.options = ml_collections.ConfigDict({'crop_scale': (0.25, 1.0), 'color_jitter': 0.4,
                                                 'lighting': 0.1})
  return c
