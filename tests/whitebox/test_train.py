"""whitebox.train: the stage configs and the refusal of bad input before any training."""
import pytest

from common import train
from whitebox import train as wb_train
from whitebox.configs import (digits, mobilenet_v2_cifar10, resnet50_imagenet_45p6,
                              resnet50_imagenet_63p5, resnet56_cifar10, resnet110_cifar10,
                              vgg16_cifar10)


def test_stage_configs():
  c = digits.get_config()
  c1, c3 = wb_train.stage_configs(c)
  assert c1.num_epochs == 5 and c1.schedule.name == 'constant'
  assert c1.optimizer.learning_rate == c.method.classwise_lr
  assert c3.num_epochs == 5 and c3.method.flops_target == 0.75
  assert c3.schedule.name == 'cosine' and c3.optimizer.learning_rate == 0.05


@pytest.mark.parametrize('mod,model,target,lam,ep', [
    (vgg16_cifar10, 'vgg16', 0.75, 0.01, 30), (resnet56_cifar10, 'resnet56', 0.55, 0.0, 30),
    (resnet110_cifar10, 'resnet110', 0.65, 0.0, 30),
    (mobilenet_v2_cifar10, 'mobilenet_v2_cifar', 0.29, 0.01, 30),
    (resnet50_imagenet_45p6, 'resnet50', 0.45, 5e-4, 9),
    (resnet50_imagenet_63p5, 'resnet50', 0.63, 5e-4, 9)])
def test_published_configs(mod, model, target, lam, ep):
  c = mod.get_config()
  assert c.model.name == model and c.method.flops_target == target
  assert c.method.sparse_lambda == lam and c.method.classwise_epochs == ep
  assert c.method.min_preserve == 0.3 and c.method.classwise_lr == 0.1
  wb_train.validate(c)
  if model == 'resnet50':
    assert c.best_metric == 'test_top5' and c.schedule.name == 'imagenet_step'
  if model == 'mobilenet_v2_cifar':
    assert tuple(c.schedule.milestones) == (50, 100) and c.method.class_model_kwargs.act == 'relu'


@pytest.mark.parametrize('key,value,match', [
    ('selection', 'magnitude', "method.selection must be one of"),
    ('flops_target', 1.2, 'method.flops_target must be in'),
    ('min_preserve', -0.1, 'method.min_preserve must be in'),
    ('sparse_lambda', -1.0, 'method.sparse_lambda must be >= 0')])
def test_bad_method_values_refused_before_training(tmp_path, key, value, match):
  c = digits.get_config()
  setattr(c.method, key, value)
  with pytest.raises(train.UserError, match=match):
    wb_train.run(c, str(tmp_path))
  assert not (tmp_path / 'classwise').exists()


def test_unknown_model_refused(tmp_path):
  c = digits.get_config()
  c.model.name = 'resnet18'
  with pytest.raises(train.UserError, match="no mask layout for model 'resnet18'"):
    wb_train.run(c, str(tmp_path))
