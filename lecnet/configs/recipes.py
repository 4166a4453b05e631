"""The config layout shared by every LEC-Net experiment (``lecnet.train``).

Base session: ``config.optimizer`` / ``config.schedule`` / ``config.num_epochs`` (CEC's
pre-training recipe: icoz69/CEC-CVPR2021 ``train.py`` defaults and README commands). Incremental
sessions: ``config.method`` (ICCV2021-LEC/LEC ``Inc_test.py`` argument defaults and
``models/LECNet.py``).
"""
import ml_collections

from common.configs import base


def lecnet_config(*, protocol: str, dataset: str, model: str, base_classes: int, way: int,
                  shot: int, sessions: int, nodes: int, base_epochs: int, milestones,
                  base_lr: float = 0.1, batch_size: int = 128) -> ml_collections.ConfigDict:
  """A full LEC-Net config; the experiment files override what their paper row differs in."""
  c = base.get_config()
  c.num_epochs = base_epochs
  c.dataset.name = dataset
  c.dataset.batch_size = batch_size
  c.dataset.eval_batch_size = 256
  c.model.name = model
  c.optimizer.name = 'sgd'
  c.optimizer.learning_rate = base_lr
  c.optimizer.momentum = 0.9
  c.optimizer.nesterov = True           # CEC: SGD Nesterov, wd 5e-4
  c.optimizer.weight_decay = 5e-4
  c.schedule.name = 'multistep'
  c.schedule.milestones = tuple(milestones)
  c.schedule.gamma = 0.1
  c.keep_checkpoints = 1

  m = c.method
  m.protocol = protocol
  m.base_classes = base_classes
  m.way = way
  m.shot = shot
  m.sessions = sessions
  # TOPIC/CEC index_list/<dataset> folder (session_1.txt ...) or LEC's data_list/.../Seed_k.
  m.index_list_dir = ''
  m.cub_lists = 'topic'                 # 'topic' (fixed TOPIC lists) | 'lec' (LEC's Seed_k lists)
  m.mini_imagenet_root = ''
  m.backbone_checkpoint = ''            # converted pretrained backbone (.npz / workdir)
  m.arms = 'lec,lec_no_penalty,lec_no_gate,finetune,prototype'

  # LEC-Net (models/LECNet.py, Inc_test.py).
  m.nodes = nodes                       # N: node layer and expansion width (512)
  m.gamma = 0.6
  m.r = 0.1                             # budget of active expanded nodes (a constant; see README)
  m.penalty_weight = 0.1
  m.kd_weight = 1.0                     # Inc_test.py --lamda
  m.kd_temperature = 2.0
  m.anneal_start = 20                   # beta_e = 1 + max(e - 20, 0)
  m.train_node = False                  # also train W_1 in incremental sessions (KD protects it)
  m.session_epochs = 1000               # Inc_test.py --max_epoch
  m.passes_per_epoch = 50               # LEC epochs per engine epoch (evaluation interval)
  m.session_batch_size = 128            # > way x shot: one full-batch step per LEC epoch
  m.session_optimizer = ml_collections.ConfigDict(
      {'name': 'adam', 'learning_rate': 5e-3, 'momentum': 0.9, 'nesterov': False,
       'weight_decay': 0.0, 'b1': 0.9, 'b2': 0.999, 'eps': 1e-8})

  # Ft-CNN (TOPIC's fine-tuning baseline): all layers, CE on the shots.
  m.finetune_epochs = 50
  m.finetune_optimizer = ml_collections.ConfigDict(
      {'name': 'sgd', 'learning_rate': 0.01, 'momentum': 0.9, 'nesterov': False,
       'weight_decay': 0.0})
  # CEC's decoupled cosine classifier on class-mean prototypes.
  m.prototype_temperature = 16.0
  return c
