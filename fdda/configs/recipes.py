"""The FDDA recipe shared by the experiment files (zysxmu/FDDA ``imagenet_config.hocon`` and the
trainer's constants); each file overrides what its setting changes."""
import ml_collections

from common.configs import base


def method_config() -> ml_collections.ConfigDict:
  """``config.method`` of ``fdda.train`` with the official values (field meanings in
  ``fdda/train.py``)."""
  m = ml_collections.ConfigDict()
  m.arm = 'fdda'                 # fdda | bns (GDFQ: CE + BNS only) | calibration (KD on real only)
  m.weight_bits = 4              # qw
  m.act_bits = 4                 # qa
  m.first_last_bits = 0          # 0: F{k}L{k} (main_DBNS_CBNS.py); 8: F8L8 (main_DBNS_CBNS_8F8L.py)
  m.teacher_checkpoint = ''      # common.train workdir or common.convert .npz (required)
  m.calibration_per_class = 1    # BNScenters.py: one image per class (batch size 1)
  m.calibration_seed = 0
  m.calibration_split = 'train'
  m.eval_split = 'test'
  m.iterations = 200             # trainer: iters = 200 per epoch
  m.synthetic_batch = 16         # batchSize
  m.warmup_epochs = 50           # generator-only epochs
  m.unfixed_epochs = 4           # main: activation ranges unfixed while epoch < 4
  m.range_calibration = 'synthetic'   # the code; 'real' calibrates on the calibration images
  m.early_epochs = 5             # cal_true_BNLoss: `if self.epoch <= 4` branch
  m.latent_dim = 100
  m.gen_width = 128
  m.gen_lr = 1e-3                # lr_G
  m.gen_b1 = 0.5
  m.gen_b2 = 0.999
  m.gen_milestones = (100, 200, 300)   # step_G, multi_step
  m.gen_gamma = 0.1              # decayRate_G
  m.bns_weight = 0.2             # BNLoss_weight
  m.d_bns_weight = 0.9           # D_BNSLoss_weight
  m.c_bns_weight = 0.01          # C_BNSLoss_weight
  m.ce_weight = 0.5              # loss_one_hot * 0.5 with FDDA (1 for arm='bns')
  m.ce_c_weight = 0.5            # loss_one_hot_BNScenters * 0.5
  m.noise_std_mean = 0.5         # torch.normal(mean=centre, std=0.5)
  m.noise_std_var = 1.0          # torch.normal(mean=centre, std=1.0)
  m.alpha = 20.0                 # settings.alpha
  m.temperature = 20.0           # settings.temperature
  m.float_student = False       # True: no quantizers (fdda.bench's full-precision step)
  m.grid_classes = 10            # synthetic_class_<c>.png for the first classes
  m.grid_images = 16
  return m


def fdda_config(*, model: str, dataset: str, num_epochs: int, lr: float,
                t_max: int) -> ml_collections.ConfigDict:
  """Student: Nesterov SGD, momentum 0.9, wd 1e-4, ``CosineAnnealingLR(T_max=t_max)`` per
  iteration (periodic past ``t_max``); batch 16 calibration images per step."""
  c = base.get_config()
  c.num_epochs = num_epochs
  c.dataset.name = dataset
  c.dataset.batch_size = 16
  c.model.name = model
  c.optimizer.name = 'sgd'
  c.optimizer.learning_rate = lr
  c.optimizer.momentum = 0.9
  c.optimizer.nesterov = True
  c.optimizer.weight_decay = 1e-4
  c.schedule.name = 'cosine_periodic'
  c.schedule.t_max = t_max
  c.schedule.eta_min = 0.0
  c.checkpoint_every_epochs = 1
  c.method = method_config()
  return c
