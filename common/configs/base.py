"""Defaults shared by every experiment config (the layout of ``common.train``'s config).

Every experiment file does ``config = base.get_config()`` and overrides fields; paper-specific
hyperparameters live under ``config.method``. The layout is documented in ``common/train.py``.
"""
import ml_collections


def get_config() -> ml_collections.ConfigDict:
  """Dense ResNet-20 on the embedded digits set (the smallest sensible run)."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.num_epochs = 10
  c.label_smoothing = 0.0
  # Path of a finished common.train workdir (or a checkpoint dir) whose variables initialise the
  # model; '' trains from the model's own initialisers.
  c.init_checkpoint = ''

  c.dataset = ml_collections.ConfigDict()
  c.dataset.name = 'digits'
  c.dataset.data_dir = ''
  c.dataset.batch_size = 128           # global batch over all devices and hosts
  c.dataset.eval_batch_size = 256
  c.dataset.normalization = ''        # '' = the dataset's usual mean/std
  c.dataset.augment = True
  # Per-data-set options passed to common.data.load (see its docstring), e.g. for ImageNet
  # ``crop_scale=(0.08, 1.25), lighting=0.1`` (ReCU) or ``crop_scale=(0.08, 1.25)`` (1xN).
  c.dataset.options = ml_collections.ConfigDict()

  c.model = ml_collections.ConfigDict()
  c.model.name = 'resnet20'
  c.model.num_classes = -1            # -1: taken from the dataset
  c.model.widths = ml_collections.FieldReference(None, field_type=object)
  c.model.kwargs = ml_collections.ConfigDict()

  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.name = 'sgd'
  c.optimizer.learning_rate = 0.1
  c.optimizer.momentum = 0.9
  c.optimizer.nesterov = False
  c.optimizer.weight_decay = 5e-4

  c.schedule = ml_collections.ConfigDict()
  c.schedule.name = 'cosine'
  c.schedule.milestones = ()
  c.schedule.gamma = 0.1
  c.schedule.cosine_shift = 0
  c.schedule.warmup = 'none'
  c.schedule.warmup_epochs = 0
  c.schedule.t_max = 0                # 'cosine_periodic' only: T_max in iterations
  c.schedule.eta_min = 0.0            # 'cosine_periodic' only

  # The evaluation metric whose maximum selects best/ (e.g. 'test_top5', or '<variant>/test_top1').
  c.best_metric = 'test_top1'
  c.checkpoint_every_epochs = 1
  c.keep_checkpoints = 2
  c.progress_bar = True
  # Multi-host: coordinator 'host:port'; empty = single process (or auto-detected on TPU pods).
  c.distributed = ml_collections.ConfigDict()
  c.distributed.coordinator_address = ''
  c.distributed.num_processes = 1
  c.distributed.process_id = 0

  c.method = ml_collections.ConfigDict()
  return c
