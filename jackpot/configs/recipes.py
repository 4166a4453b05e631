"""The search recipe of zyxxmu/lottery-jackpots ``configs/*.yaml`` as one ``ml_collections`` builder."""
import ml_collections

from common.configs import base


def search_config(*, model: str, dataset: str, sparsity: float, num_epochs: int, lr: float = 0.1,
                  weight_decay: float = 5e-4, batch_size: int = 256, eval_batch_size: int = 256,
                  model_kwargs=None, tune_epochs: int = 0) -> ml_collections.ConfigDict:
  """A jackpot search config (``configs/<model>_<data>/<p>sparsity<E>epoch.yaml``).

  SGD momentum 0.9 with coupled weight decay on the scores, per-epoch cosine (CIFAR
  ``CosineAnnealingLR(T_max=E)`` stepped per epoch; ImageNet ``adjust_learning_rate`` 'cos'
  computed from the epoch), no label smoothing, ``layerwise='l1'``, v2. ``init_checkpoint`` (the
  pretrained dense model) has to be given on the command line.
  """
  c = base.get_config()
  c.num_epochs = num_epochs
  c.dataset.name = dataset
  c.dataset.batch_size = batch_size
  c.dataset.eval_batch_size = eval_batch_size
  c.model.name = model
  c.model.kwargs = dict(model_kwargs or {})
  c.optimizer.name = 'sgd'
  c.optimizer.learning_rate = lr
  c.optimizer.momentum = 0.9
  c.optimizer.weight_decay = weight_decay
  c.schedule.name = 'cosine'
  m = c.method
  m.sparsity = sparsity          # p: pruned share of all conv weights (classifier excluded)
  m.variant = 'v2'               # 'v2' (HEAD) or 'v1' (April 2021 release)
  m.layerwise = 'l1'             # 'l1' (global magnitude rates) or 'uniform'
  m.score_init = 'magnitude'     # 'magnitude' (the paper) or 'random' (edge-popup-style control)
  m.swap_rate = 1.0              # the pop-up restriction rate; the official schedule is always 1
  m.tune = ml_collections.ConfigDict()
  m.tune.num_epochs = tune_epochs   # > 0: "+T" weight tuning with the mask fixed, after the search
  m.tune.learning_rate = 0.01
  m.tune.weight_decay = 0.0
  m.tune.schedule = 'cosine'
  return c
