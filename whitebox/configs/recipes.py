"""The official White-Box recipes (zyxxmu/White-Box ``scripts/*.sh``); every published run is one
call.

* CIFAR-10 (``cifar.py``): 30 epochs of class-wise training at the constant lr 0.1, then 300
  epochs of fine-tuning, SGD momentum 0.9, lr 0.1 x0.1 at ``--lr_decay_step`` (MultiStepLR per
  epoch; MobileNet-V2's script gives none, so the default 50, 100 applies), coupled weight decay
  on every parameter (masks included), batch 256, test batch 100, min_preserve 0.3, from scratch.
* ImageNet ResNet-50 (``imagenet.py``): 9 class-wise epochs, 90 fine-tuning epochs with
  ``0.1 * 0.1 ** (e // 30)`` and one more x0.1 from epoch 80, no warm-up, weight decay 1e-4,
  batch 256 (test 256), the best epoch kept by top-5.
"""
import ml_collections

from common.configs import base
from whitebox import families


def method_config(sparse_lambda: float, flops_target: float, classwise_epochs: int,
                  class_model_kwargs=None) -> ml_collections.ConfigDict:
  """``config.method`` of ``whitebox.train`` (its module docstring names every field)."""
  m = ml_collections.ConfigDict()
  m.classwise_epochs = int(classwise_epochs)
  m.classwise_lr = 0.1                 # the code trains the class model at args.lr, constant
  m.sparse_lambda = float(sparse_lambda)
  m.flops_target = float(flops_target)  # --pruning_rate
  m.min_preserve = 0.3
  m.random_layers = True               # VGG last conv / MobileNet-V2 conv_last narrowed at random
  m.bn_fold = True                     # BN gamma, beta *= sum_k M / 2
  m.fold_unused = True                 # CIFAR ResNets: also the unused masks' scales
  m.fresh_shortcuts = True             # ResNet-50 downsample, MobileNet-V2 shortcut: fresh init
  m.selection = 'whitebox'             # 'l1' | 'random': baselines at the vote's widths
  m.class_model_kwargs = ml_collections.ConfigDict(class_model_kwargs or {})
  return m


def cifar10(model: str, sparse_lambda: float, flops_target: float, milestones=(150, 225),
            weight_decay: float = 5e-4) -> ml_collections.ConfigDict:
  """A ``scripts/*.sh`` CIFAR-10 run of ``model`` (vgg16 | resnet56 | resnet110 |
  mobilenet_v2_cifar)."""
  c = base.get_config()
  c.num_epochs = 300
  c.dataset.name = 'cifar10'
  c.dataset.batch_size = 256
  c.dataset.eval_batch_size = 100
  c.model.name = model
  c.model.num_classes = 10
  if model == 'vgg16':   # model/vgg_cifar.py: _initialize_weights
    c.model.kwargs.init = 'kaiming_normal_fan_out'
    c.model.kwargs.dense_init = 'normal_0.01'
  c.optimizer.learning_rate = 0.1
  c.optimizer.momentum = 0.9
  c.optimizer.weight_decay = weight_decay
  c.schedule.name = 'multistep'
  c.schedule.milestones = tuple(milestones)
  c.schedule.gamma = 0.1
  kw = families.CLASS_MODEL_KWARGS.get(model)
  if kw is not None:
    kw = dict(kw, strides=list(kw['strides']))
  c.method = method_config(sparse_lambda, flops_target, 30, kw)
  return c


def imagenet_resnet50(flops_target: float) -> ml_collections.ConfigDict:
  """``scripts/resnet50-{1,2}.sh``."""
  c = base.get_config()
  c.num_epochs = 90
  c.dataset.name = 'imagenet2012'
  c.dataset.batch_size = 256
  c.dataset.eval_batch_size = 256
  c.model.name = 'resnet50'
  c.model.num_classes = 1000
  c.optimizer.learning_rate = 0.1
  c.optimizer.momentum = 0.9
  c.optimizer.weight_decay = 1e-4
  c.schedule.name = 'imagenet_step'
  c.best_metric = 'test_top5'   # imagenet.py keeps the model of best top-5
  c.method = method_config(5e-4, flops_target, 9)
  return c
